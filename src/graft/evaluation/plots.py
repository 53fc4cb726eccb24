"""The report's plots, drawn with matplotlib and inlined as PNG data URIs (the report stays one file).

Each function takes the JSON-able data the report already holds and returns an ``<img>`` tag, or an
empty string when there is nothing to draw. A plot that fails to draw returns a note in its place
and warns, naming the plot (:func:`_isolated`): the report, and the bundle it is written into, must
not be lost to a picture.
"""

from __future__ import annotations

import base64
import functools
import html
import io
import math
import warnings
from collections.abc import Callable
from typing import Any

WIDTH, HEIGHT = 5.2, 3.6  # inches at 100 dpi: 520 x 360 pixels


def _isolated(name: str) -> Callable[[Callable[..., str]], Callable[..., str]]:
    """Catch any failure of the plot ``name``: a note in the report instead of the picture, and a
    :class:`~graft.errors.GraftWarning` that names the plot and the error. matplotlib refuses values we
    can legitimately hold (an error bar of negative length, limits of nan), and a run that trained for
    an hour must still write its bundle; the warning keeps the bug visible (and tests turn it into an
    error)."""

    def wrap(draw: Callable[..., str]) -> Callable[..., str]:
        @functools.wraps(draw)
        def isolated(*args: Any, **kwargs: Any) -> str:
            plt = _pyplot()
            before = set(plt.get_fignums())
            try:
                return draw(*args, **kwargs)
            except Exception as exc:  # the isolation boundary: warned and noted below
                for number in set(plt.get_fignums()) - before:  # the user's own figures stay open
                    plt.close(number)
                return _failed(name, f"{type(exc).__name__}: {exc}")

        return isolated

    return wrap


def _failed(name: str, why: str) -> str:
    from graft.errors import GraftWarning

    warnings.warn(
        f"the report's {name} plot could not be drawn ({why}); the report holds a note in its place. "
        "This is a bug in graft: please report it",
        GraftWarning,
        stacklevel=3,
    )
    return f"<p class='note'>The {html.escape(name)} plot could not be drawn ({html.escape(why)}).</p>"


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _figure(width: float = WIDTH, height: float = HEIGHT) -> tuple[Any, Any]:
    fig, ax = _pyplot().subplots(figsize=(width, height), dpi=100)
    ax.grid(alpha=0.3)
    return fig, ax


def _img(fig: Any, alt: str) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img class="plot" alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


@_isolated("confusion matrix")
def confusion_plot(confusion: dict[str, Any]) -> str:
    """Rows true classes, columns predicted; each row as shares of its class (counts written in)."""
    import numpy as np

    labels, matrix = confusion.get("labels"), np.asarray(confusion.get("matrix", []), dtype=float)
    if not labels or matrix.size == 0:
        return ""
    k = len(labels)
    side = min(9.0, 2.2 + 0.45 * k)
    fig, ax = _figure(side, side * 0.85)
    ax.grid(False)
    shares = matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
    ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(k), [str(x)[:14] for x in labels], rotation=45, ha="right")
    ax.set_yticks(range(k), [str(x)[:14] for x in labels])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if k <= 20:
        for i in range(k):
            for j in range(k):
                colour = "white" if shares[i, j] > 0.6 else "black"
                ax.text(j, i, f"{int(matrix[i, j])}", ha="center", va="center", fontsize=8, color=colour)
    return _img(fig, "confusion matrix (rows: true class, shares of the row)")


@_isolated("reliability diagram")
def reliability_plot(calibration: dict[str, Any]) -> str:
    """Accuracy against mean confidence per bin, before and after temperature scaling."""
    before, after = calibration.get("reliability_before") or [], calibration.get("reliability_after") or []
    if not after:
        return ""
    fig, ax = _figure()
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfect calibration")
    for rows, name, style in ((before, "before", "o:"), (after, "after temperature scaling", "s-")):
        if rows:
            ece = calibration.get("ece_" + name.split()[0])
            label = f"{name} (ECE {ece:.3f})" if ece is not None else name
            ax.plot([r["confidence"] for r in rows], [r["accuracy"] for r in rows], style, label=label)
    ax.set_xlabel("confidence (top probability)")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.legend(loc="upper left", fontsize=8)
    return _img(fig, "reliability diagram")


@_isolated("coverage")
def coverage_plot(abstain: dict[str, Any]) -> str:
    """Test accuracy when answering only the most confident share of inputs."""
    curve = abstain.get("curve") or []
    if len(curve) < 2:
        return ""
    fig, ax = _figure()
    ax.plot([r["coverage"] for r in curve], [r["accuracy"] for r in curve], "-", label="test rows")
    test = abstain.get("test")
    if test and test["answered"]:
        ax.plot([test["coverage"]], [test["precision"]], "o", color="C3",
                label=f"--target-precision {abstain['chosen']['target_precision']:g}")  # fmt: skip
    ax.set_xlabel("coverage (share of inputs answered)")
    ax.set_ylabel("accuracy of the answered")
    ax.set_xlim(0, 1.02)
    ax.legend(loc="lower left", fontsize=8)
    return _img(fig, "coverage against accuracy")


@_isolated("training curves")
def history_plot(history: list[dict[str, Any]]) -> str:
    """Training loss and validation metric per epoch."""
    if len(history) < 2:
        return ""
    fig, ax = _figure()
    epochs = [h.get("epoch", i + 1) for i, h in enumerate(history)]
    ax.plot(epochs, [h.get("train_loss") for h in history], "o-", label="training loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss")
    metric = [h.get("val_metric") for h in history]
    if any(m is not None for m in metric):
        twin = ax.twinx()
        twin.plot(epochs, metric, "s--", color="C1", label="validation metric")
        twin.set_ylabel("validation metric")
        twin.legend(loc="upper right", fontsize=8)
    ax.legend(loc="upper left", fontsize=8)
    return _img(fig, "training curves")


@_isolated("model and baselines")
def models_plot(metric: str, rows: list[tuple[str, float, list[float] | None]]) -> str:
    """The model and its baselines on one metric, with 95% intervals where known."""
    rows = [r for r in rows if r[1] is not None and math.isfinite(r[1])]
    if len(rows) < 2:
        return ""
    fig, ax = _figure(WIDTH, 0.9 + 0.45 * len(rows))
    ends = [0.0, 1.0]
    for i, (_name, value, interval) in enumerate(rows):
        colour = "C0" if i == 0 else "C7"
        ax.barh(i, value, color=colour, alpha=0.8)
        ends.append(value)
        if interval and all(math.isfinite(end) for end in interval):
            # an arm never has negative length, even for an interval that misses its value by a rounding
            arms = [[max(0.0, value - interval[0])], [max(0.0, interval[1] - value)]]
            ax.errorbar(value, i, xerr=arms, color="black", capsize=3)
            ends += interval
    ax.set_yticks(range(len(rows)), [r[0] for r in rows])
    ax.invert_yaxis()
    ax.set_xlabel(f"test {metric}")
    ax.set_xlim(min(ends), max(ends))  # 0 to 1, wider for a negative R² and its interval
    return _img(fig, f"test {metric}: model and baselines")


@_isolated("learning curve")
def learning_curve_plot(curve: dict[str, Any]) -> str:
    """Score against labeled examples per class, one line per strategy, with 95% intervals."""
    lines = curve.get("lines") or {}
    if not lines:
        return ""
    fig, ax = _figure(WIDTH + 0.8, HEIGHT + 0.4)
    for name, points in lines.items():
        xs = [p["size"] for p in points]
        ys = [p["mean"] for p in points]
        ax.plot(xs, ys, "o-", label=name)
        lows = [p["interval_95"][0] for p in points]
        highs = [p["interval_95"][1] for p in points]
        ax.fill_between(xs, lows, highs, alpha=0.15)
    ax.set_xscale("log")
    ax.set_xlabel(curve.get("x_label", "labeled examples per class"))
    ax.set_ylabel(f"test {curve.get('metric', 'accuracy')}")
    ax.legend(fontsize=8)
    return _img(fig, "learning curve")
