"""Learning curves: the recipe at growing numbers of labels, so a user can see whether more labels or
more unfreezing pays.

``graft curve DATA --sizes 8,32,128,all --strategies linear_probe,auto --seeds 3`` draws k labeled
examples of every class from DATA (seeded; the same sample for every strategy), fits each strategy
with graft's protocol and scores it on the same test rows: the ``--test`` file, or a stratified,
duplicate-grouped hold-out of DATA cut once before any sample is drawn. Each point is the mean test
score over seeds with a 95% interval (t over seeds; with one seed, the run's own interval).

Example:
    >>> curve = learning_curve("train.csv", sizes=[8, 32, "all"], strategies=["linear_probe"],
    ...                        test="test.csv")                                    # doctest: +SKIP
    >>> curve.table()                                                                # doctest: +SKIP
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from graft.config import RunConfig
from graft.errors import ConfigError


def parse_sizes(text: str) -> list[int | str]:
    """``"8,32,128,all"`` -> ``[8, 32, 128, "all"]``."""
    sizes: list[int | str] = []
    for part in (p.strip() for p in str(text).split(",") if p.strip()):
        if part == "all":
            sizes.append("all")
        elif part.isdigit() and int(part) > 0:
            sizes.append(int(part))
        else:
            raise ConfigError(
                f"--sizes: {part!r} is not a number of examples per class or 'all' (e.g. 8,32,all)"
            )
    if not sizes:
        raise ConfigError("--sizes: give at least one size, e.g. 8,32,128,all")
    return sizes


@dataclass
class Curve:
    """Every run of a learning curve and its points."""

    metric: str
    test: str
    runs: list[dict[str, Any]] = field(default_factory=list)

    def points(self) -> dict[str, list[dict[str, Any]]]:
        """Per strategy: per size, the mean over seeds with a 95% interval."""
        from scipy import stats

        lines: dict[str, list[dict[str, Any]]] = {}
        for strategy in dict.fromkeys(r["strategy"] for r in self.runs):
            for size in dict.fromkeys(r["size"] for r in self.runs):
                mine = [r for r in self.runs if (r["strategy"], r["size"]) == (strategy, size)]
                if not mine:
                    continue
                scores = np.array([r["score"] for r in mine])
                if len(scores) > 1:
                    half = stats.t.ppf(0.975, len(scores) - 1) * scores.std(ddof=1) / np.sqrt(len(scores))
                    interval = [float(scores.mean() - half), float(scores.mean() + half)]
                else:
                    interval = mine[0]["interval_95"]
                lines.setdefault(strategy, []).append({
                    "size": float(np.mean([r["per_class"] for r in mine])), "label": str(size),
                    "mean": float(scores.mean()), "interval_95": interval, "seeds": len(scores),
                    "seconds": float(np.mean([r["seconds"] for r in mine])),
                })  # fmt: skip
        return lines

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "test": self.test, "runs": self.runs, "lines": self.points()}

    def table(self) -> str:
        rows = [
            f"{'strategy':<14}{'per class':>10}{self.metric:>10}{'95% interval':>20}{'seeds':>7}{'s/run':>8}"
        ]
        for strategy, points in self.points().items():
            for p in points:
                lo, hi = p["interval_95"]
                rows.append(
                    f"{strategy:<14}{p['label']:>10}{p['mean']:>10.4f}{f'[{lo:.4f}, {hi:.4f}]':>20}"
                    f"{p['seeds']:>7}{p['seconds']:>8.0f}"
                )
        return "\n".join(rows)

    def to_html(self) -> str:
        from graft.evaluation import plots
        from graft.evaluation.report import _e, _page, _table

        chart = plots.learning_curve_plot({"lines": self.points(), "metric": self.metric})
        rows = [
            [s, p["label"], p["mean"], f"[{p['interval_95'][0]:.4f}, {p['interval_95'][1]:.4f}]", p["seeds"]]
            for s, points in self.points().items()
            for p in points
        ]
        return _page(
            f"<h1>graft learning curve</h1><p>Test rows: {_e(self.test)}. Each point: the mean test "
            f"{self.metric} over seeds, with a 95% interval.</p>" + chart
            + _table(["strategy", "labeled per class", self.metric, "95% interval", "seeds"], rows)
        )  # fmt: skip


def learning_curve(
    data: Any,
    *,
    sizes: list[int | str],
    strategies: list[str],
    seeds: int = 3,
    test: Any = None,
    config: RunConfig | None = None,
    progress: bool = True,
) -> Curve:
    """Fit every strategy at every size (examples per class, or ``"all"``) over ``seeds`` samples and
    score each on the same test rows. ``config``'s data and backbone settings apply to every run."""
    import graft
    from graft.data import read_dataset
    from graft.data.splits import holdout, sample_per_class

    cfg = config or RunConfig()
    source = read_dataset(data, cfg.data)
    if source.task != "multiclass":
        raise ConfigError(f"graft curve draws examples per class: {source.task} data is not supported yet")
    if test is None:
        keep, out, how = holdout(source, cfg.data.test_fraction, cfg.train.seed, "test")
        pool, rows = source.subset(keep), source.subset(out, source=f"{source.source} [test split]")
        where = f"a {how} {cfg.data.test_fraction:.0%} hold-out of {source.source} ({len(rows)} rows)"
    else:
        pool, rows, where = source, test, str(test)
    _check_sizes(sizes, pool, split=test is None)
    curve = Curve(metric="accuracy", test=where)
    total = sum(1 if size == "all" else seeds for size in sizes) * len(strategies)
    for size in sizes:
        for seed in range(seeds if size != "all" else 1):
            sample = pool if size == "all" else sample_per_class(pool, int(size), seed)
            per_class = len(sample) / max(1, len(sample.label_space))
            for strategy in strategies:
                t = time.perf_counter()
                _say(
                    progress,
                    f"curve: {strategy}, {size} per class, seed {seed} ({len(curve.runs) + 1}/{total})",
                )
                model = graft.fit(
                    _columns(sample), strategy=strategy, test=_columns(rows) if test is None else test,
                    config=cfg.replace("train", seed=seed), baselines="none", progress=False,
                )  # fmt: skip
                result = model.report_.test
                curve.runs.append({
                    "strategy": strategy, "size": size, "per_class": per_class, "seed": seed,
                    "score": float(result.metrics["accuracy"]), "interval_95": result.intervals["accuracy"],
                    "seconds": time.perf_counter() - t, "shipped": model.report_.strategy.get("shipped"),
                })  # fmt: skip
    return curve


def _check_sizes(sizes: list[int | str], pool: Any, split: bool) -> None:
    """A size is a number of examples of every class: one larger than the smallest class would label a
    point "k per class" that holds fewer, so it is refused before any fit ("all" takes every example)."""
    counts = pool.class_counts()
    rare = min(counts, key=counts.__getitem__)
    too_big = [str(size) for size in sizes if size != "all" and int(size) > counts[rare]]
    if too_big:
        after = " after the test split is held out" if split else ""
        raise ConfigError(
            f"--sizes {','.join(too_big)}: more examples per class than the training data holds: class "
            f"{rare!r} has {counts[rare]}{after}; use sizes up to {counts[rare]}, or 'all'"
        )


def _columns(ds: Any) -> dict[str, list[Any]]:
    """A dataset as the columns ``graft.fit`` reads (text or path, and label)."""
    name = "text" if ds.modality == "text" else "path"
    return {name: list(ds.examples), "label": [ds.label_space[i] for i in ds.targets]}


def _say(progress: bool, message: str) -> None:
    if progress:
        print(message, file=sys.stderr, flush=True)
