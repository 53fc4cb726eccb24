"""95% confidence intervals that hold on small test sets.

* **Proportions** (accuracy, a class's precision and recall): the Wilson score interval. The
  percentile bootstrap covers the true accuracy only ~88% of the time at 20 test rows; Wilson keeps
  ~95% down to a handful of rows and never leaves [0, 1].
* **Balanced accuracy** (a mean of per-class recalls): an adjusted normal interval (Price & Bonett).
* **Everything else** (macro-F1, per-class F1, MAE, RMSE, R², differences between
  two models): the bias-corrected and accelerated (BCa) bootstrap (Efron 1987), which corrects the
  percentile bootstrap's bias and skew at small n.

The bootstrap here works on *row types*: a classification test set of n rows has at most k² distinct
(truth, prediction) rows, so a resample is a multinomial draw of counts over the types and the
jackknife that BCa needs takes one evaluation per type, not per row. A statistic is therefore
written once, over weighted types: ``stat(types, weights) -> values`` with ``weights`` of shape
``[B, U]`` (how often each of the U types occurs in each of B samples) and values ``[B]`` or
``[B, m]``.

Example:
    >>> lo, hi = wilson(15, 20)
    >>> round(lo, 3), round(hi, 3)
    (0.531, 0.888)
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

Z95 = 1.959963984540054
RESAMPLES = 2000
_CHUNK = 250  # bootstrap samples evaluated at once (memory: CHUNK x types weights)

Statistic = Callable[[np.ndarray, np.ndarray], np.ndarray]


def wilson(successes: float, n: float, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion ``successes / n`` (``(nan, nan)`` when n is 0)."""
    if n <= 0:
        return float("nan"), float("nan")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


def balanced_accuracy_interval(y_true: np.ndarray, y_pred: np.ndarray, z: float = Z95) -> tuple[float, float]:
    """Balanced accuracy is the mean of the k classes' recalls, each a proportion: a normal interval
    around the recalls with 2/k successes and 2/k failures added per class (the adjustment of Price &
    Bonett 2004 for linear combinations of proportions). Simulated here: 94-96% coverage at 20, 50
    and 500 test rows for 2, 3 and 6 classes, where BCa gave 89% at 20 rows (3 classes) and adding
    one success and one failure per class (Agresti-Caffo) 87% (6 classes)."""
    classes = np.unique(y_true)
    hits = np.array([np.sum((y_true == c) & (y_pred == c)) for c in classes], dtype=np.float64)
    sizes = np.array([np.sum(y_true == c) for c in classes], dtype=np.float64)
    add = 2 / len(classes)
    adjusted = (hits + add) / (sizes + 2 * add)
    centre = adjusted.mean()
    half = z * np.sqrt(np.sum(adjusted * (1 - adjusted) / (sizes + 2 * add))) / len(classes)
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


def row_types(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distinct rows, how often each occurs) of a ``[n, d]`` array."""
    types, counts = np.unique(np.asarray(rows), axis=0, return_counts=True)
    return types, counts


def bca(
    stat: Statistic,
    types: np.ndarray,
    counts: np.ndarray,
    *,
    resamples: int = RESAMPLES,
    seed: int = 0,
    level: float = 0.95,
) -> np.ndarray:
    """BCa intervals ``[m, 2]`` of each of the ``m`` values of ``stat`` on data given as row types
    and their counts. A value whose bootstrap distribution is a single point (e.g. a perfect score)
    gets that point as both ends; an undefined value (nan) gets nan."""
    from scipy.stats import norm

    counts = np.asarray(counts, dtype=np.int64)
    n = int(counts.sum())
    estimate = _as_2d(stat(types, counts[None, :].astype(np.float64)))[0]
    rng = np.random.default_rng(seed)
    probs = counts / n
    boot = np.concatenate(
        [
            _as_2d(stat(types, rng.multinomial(n, probs, size=min(_CHUNK, resamples - s)).astype(np.float64)))
            for s in range(0, resamples, _CHUNK)
        ]
    )
    jack = _jackknife(stat, types, counts)
    out = np.full((len(estimate), 2), np.nan)
    alphas = np.array([(1 - level) / 2, 1 - (1 - level) / 2])
    for j, theta in enumerate(estimate):
        b = boot[:, j][np.isfinite(boot[:, j])]
        if not np.isfinite(theta) or len(b) < resamples // 2:
            continue
        if np.ptp(b) == 0:
            out[j] = theta
            continue
        below = (np.sum(b < theta) + 0.5 * np.sum(b == theta)) / len(b)
        z0 = norm.ppf(np.clip(below, 0.5 / len(b), 1 - 0.5 / len(b)))
        d = jack[:, j]
        ok = np.isfinite(d)
        w, d = counts[ok], d[ok]
        centred = np.sum(w * d) / max(np.sum(w), 1) - d
        spread = np.sum(w * centred**2)
        a = np.sum(w * centred**3) / (6 * spread**1.5) if spread > 0 else 0.0
        z = norm.ppf(alphas)
        adjusted = norm.cdf(z0 + (z0 + z) / (1 - a * (z0 + z)))
        out[j] = np.quantile(b, np.clip(adjusted, 0, 1))
    return out


def _jackknife(stat: Statistic, types: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """``stat`` with one row of each type left out: ``[U, m]``."""
    u = len(counts)
    parts = []
    for s in range(0, u, _CHUNK):
        idx = np.arange(s, min(u, s + _CHUNK))
        w = np.tile(counts.astype(np.float64), (len(idx), 1))
        w[np.arange(len(idx)), idx] -= 1
        with np.errstate(divide="ignore", invalid="ignore"):
            parts.append(_as_2d(stat(types, w)))
    return np.concatenate(parts)


def _as_2d(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    return values[:, None] if values.ndim == 1 else values


# -- statistics over weighted row types ------------------------------------------------------------


def confusion_counts(types: np.ndarray, weights: np.ndarray, k: int) -> np.ndarray:
    """Weighted confusion matrices ``[B, k, k]`` from (truth, prediction) types."""
    onehot = np.zeros((len(types), k * k))
    onehot[np.arange(len(types)), types[:, 0] * k + types[:, 1]] = 1
    return (weights @ onehot).reshape(len(weights), k, k)


def multiclass_stat(k: int) -> tuple[list[str], Statistic]:
    """Names and statistic of the multiclass metrics that are not single proportions: balanced
    accuracy, macro-F1, weighted F1, and each class's F1 (``f1:<id>``)."""
    names = ["balanced_accuracy", "macro_f1", "weighted_f1"] + [f"f1:{c}" for c in range(k)]

    def stat(types: np.ndarray, weights: np.ndarray) -> np.ndarray:
        cm = confusion_counts(types, weights, k)
        tp = cm.diagonal(axis1=1, axis2=2)
        support, predicted = cm.sum(2), cm.sum(1)
        with np.errstate(divide="ignore", invalid="ignore"):
            present = support > 0
            recall = np.where(present, tp / np.where(present, support, 1), 0.0)
            balanced = (recall * present).sum(1) / present.sum(1)
            denom = support + predicted
            f1 = np.where(denom > 0, 2 * tp / np.maximum(denom, 1e-12), 0.0)
            # scikit-learn's labels: classes present in the truth or the predictions of this sample
            macro = (f1 * (denom > 0)).sum(1) / (denom > 0).sum(1)
            weighted = (f1 * support).sum(1) / support.sum(1)
            per_class = np.where(denom > 0, f1, np.nan)
        return np.column_stack([balanced, macro, weighted, per_class])

    return names, stat


def multilabel_stat(n_labels: int) -> tuple[list[str], Statistic]:
    """Micro- and macro-F1 over (truth row, prediction row) types of 0/1 label matrices."""

    def stat(types: np.ndarray, weights: np.ndarray) -> np.ndarray:
        t, p = types[:, :n_labels], types[:, n_labels:]
        tp, pred_pos, true_pos = weights @ (t * p), weights @ p, weights @ t
        denom = pred_pos + true_pos
        with np.errstate(divide="ignore", invalid="ignore"):
            micro = 2 * tp.sum(1) / denom.sum(1)
            f1 = np.where(denom > 0, 2 * tp / np.maximum(denom, 1e-12), 0.0)
            macro = (f1 * (denom > 0)).sum(1) / (denom > 0).sum(1)
        return np.column_stack([micro, macro])

    return ["micro_f1", "macro_f1"], stat


def regression_stat(types: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """MAE, RMSE and R² over (truth, prediction) types."""
    t, p = types[:, 0], types[:, 1]
    w = weights / weights.sum(1, keepdims=True)
    err = p - t
    mae = w @ np.abs(err)
    mse = w @ (err**2)
    mean_t = w @ t
    var_t = w @ (t**2) - mean_t**2
    with np.errstate(divide="ignore", invalid="ignore"):
        r2 = np.where(var_t > 1e-12 * np.maximum(1.0, mean_t**2), 1 - mse / var_t, np.nan)
    return np.column_stack([mae, np.sqrt(mse), r2])


REGRESSION_NAMES = ["mae", "rmse", "r2"]
