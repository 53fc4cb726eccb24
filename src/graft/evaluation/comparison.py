"""Comparing models on the same test rows: the prior baseline, paired differences, and their words.

* The **prior** baseline is chance for the class distribution: predicting at random with the
  training data's class frequencies. Its expected scores are exact formulas, not a draw. (A
  tie-broken "majority class" scores whatever the rarest test class happens to be at 8 labels per
  class: 0.018 on TREC.)
* A **paired difference** between two models scored on the same rows resamples rows, not models:
  its BCa interval is much narrower than two separate intervals would suggest when the models agree
  on most rows, and it is the honest test of "did transfer help".

Example:
    >>> import numpy as np
    >>> prior_metrics("multiclass", {"frequencies": [0.5, 0.5]}, np.array([0, 1, 1, 1]), 2)["accuracy"]
    0.5
"""

from __future__ import annotations

from typing import Any

import numpy as np

from graft.evaluation import intervals as ci
from graft.evaluation.metrics import HEADLINE


def prior_metrics(
    task: str, fitted: dict[str, Any], test_targets: np.ndarray, n_classes: int
) -> dict[str, float]:
    """Expected test scores of predicting at random with the training class ``frequencies`` of
    ``fitted`` (from :func:`graft.evaluation.fit_majority`; for regression: always its ``mean``)."""
    test_targets = np.asarray(test_targets)
    if task == "regression":
        err = np.full(len(test_targets), float(fitted["mean"])) - test_targets
        var = float(np.var(test_targets))
        return {
            "mae": float(np.mean(np.abs(err))),
            "rmse": float(np.sqrt(np.mean(err**2))),
            "r2": 1 - float(np.mean(err**2)) / var if var > 0 else float("nan"),
        }
    pi = np.asarray(fitted["frequencies"], dtype=np.float64)
    if task == "multiclass":
        q = np.bincount(test_targets, minlength=n_classes) / len(test_targets)
    else:  # multilabel: each label predicted independently with its training frequency
        q = test_targets.mean(0)
    # per class: expected true positives q·pi, predicted positives pi, actual positives q (per row)
    denom = pi + q
    f1 = np.where(denom > 0, 2 * q * pi / np.where(denom > 0, denom, 1), 0.0)
    present = denom > 0
    macro = float(f1[present].mean()) if present.any() else 0.0
    if task == "multilabel":
        return {"micro_f1": float(2 * np.sum(q * pi) / max(np.sum(denom), 1e-12)), "macro_f1": macro}
    support = q > 0
    return {
        "accuracy": float(np.sum(pi * q)),
        "macro_f1": macro,
        "weighted_f1": float(np.sum(f1 * q)),
        "balanced_accuracy": float(pi[support].mean()) if support.any() else 0.0,
    }


def _accuracy(types: np.ndarray, weights: np.ndarray) -> np.ndarray:
    return (weights @ (types[:, 0] == types[:, 1]).astype(np.float64)) / weights.sum(1)


def _single_stat(task: str, n_classes: int, width: int) -> tuple[list[str], ci.Statistic]:
    """The headline metrics' statistic over (truth, prediction) types of one model."""
    if task == "multiclass":
        names, stat = ci.multiclass_stat(n_classes)
        macro = names.index("macro_f1")
        return ["accuracy", "macro_f1"], lambda t, w: np.column_stack([_accuracy(t, w), stat(t, w)[:, macro]])
    if task == "multilabel":
        return ci.multilabel_stat(width)
    return ci.REGRESSION_NAMES, ci.regression_stat


def paired_difference(
    task: str,
    y_true: np.ndarray,
    pred_a: np.ndarray,
    pred_b: np.ndarray,
    n_classes: int,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """``a`` minus ``b`` on each headline metric, with a paired 95% BCa interval (rows resampled
    together): ``{metric: {"difference": d, "interval_95": [lo, hi]}}``."""
    y_true, pred_a, pred_b = (np.asarray(v) for v in (y_true, pred_a, pred_b))
    width = y_true.shape[1] if y_true.ndim == 2 else 1
    names, stat = _single_stat(task, n_classes, width)

    def columns(v: np.ndarray) -> np.ndarray:
        return v.reshape(len(v), -1).astype(np.float64 if task == "regression" else np.int64)

    rows = np.column_stack([columns(y_true), columns(pred_a), columns(pred_b)])

    def diff(types: np.ndarray, weights: np.ndarray) -> np.ndarray:
        truth, a, b = types[:, :width], types[:, width : 2 * width], types[:, 2 * width :]
        return _as_cols(stat(np.column_stack([truth, a]), weights)) - _as_cols(
            stat(np.column_stack([truth, b]), weights)
        )

    types, counts = ci.row_types(rows)
    point = diff(types, counts[None, :].astype(np.float64))[0]
    bounds = ci.bca(diff, types, counts, seed=seed) if len(y_true) >= 2 else np.full((len(names), 2), np.nan)
    if task == "multiclass":  # accuracy's difference: Newcombe's interval (BCa under-covers at 20 rows)
        bounds[names.index("accuracy")] = ci.paired_proportions(pred_a == y_true, pred_b == y_true)
    wanted = HEADLINE[task]
    return {
        name: {"difference": float(point[j]), "interval_95": list(ci.enclose(point[j], *bounds[j]))}
        for j, name in enumerate(names)
        if name in wanted
    }


def _as_cols(values: np.ndarray) -> np.ndarray:
    return values[:, None] if values.ndim == 1 else values


LOWER_IS_BETTER = {"mae", "rmse"}


def difference_sentence(what: str, metric: str, diff: dict[str, Any]) -> str:
    """E.g. ``transfer gain (model - scratch): accuracy +0.120 [+0.080, +0.160]: the model is better``."""
    d, (lo, hi) = diff["difference"], diff["interval_95"]
    text = f"{what}: {metric} {d:+.3f} [{lo:+.3f}, {hi:+.3f}]"
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return text + ": too few test rows for an interval"
    better = -1 if metric in LOWER_IS_BETTER else 1
    if lo <= 0 <= hi:
        return text + ": the test set cannot tell them apart"
    return text + (": the model is better" if d * better > 0 else ": the model is worse")
