"""95% confidence intervals that hold on small test sets.

* **Proportions** (accuracy, a class's precision and recall): the Wilson score interval. The
  percentile bootstrap covers the true accuracy only ~88% of the time at 20 test rows; Wilson keeps
  ~95% down to a handful of rows and never leaves [0, 1].
* **Balanced accuracy** (a mean of per-class recalls): an adjusted normal interval (Price & Bonett).
* **A difference of two accuracies on the same rows**: Newcombe's paired hybrid score interval.
* **Everything else** (macro-F1, per-class F1, MAE, RMSE, R², differences between
  two models): the bias-corrected and accelerated (BCa) bootstrap (Efron 1987), which corrects the
  percentile bootstrap's bias and skew at small n.

Every interval contains its own point estimate, floating point included (:func:`enclose`): a
perfect score's Wilson interval ends at exactly 1.0, a zero score's starts at exactly 0.0, and a BCa
interval whose bias correction (or rounding) lands beside the estimate is extended to reach it —
wider, never narrower, so coverage can only grow. Readers, plots and error bars rely on
``lo <= estimate <= hi``.

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


def enclose(point: float, lo: float, hi: float) -> tuple[float, float]:
    """``(lo, hi)`` extended to hold ``point`` where rounding or a bias correction left it beside the
    interval (``(lo, hi)`` unchanged when any of the three is nan: no interval to mend).

    Example:
        >>> enclose(1.0, 0.95, 0.9999999999999999)
        (0.95, 1.0)
    """
    point, lo, hi = float(point), float(lo), float(hi)
    if np.isnan(point) or np.isnan(lo) or np.isnan(hi):
        return lo, hi
    return min(lo, point), max(hi, point)


def wilson(successes: float, n: float, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion ``successes / n`` (``(nan, nan)`` when n is 0)."""
    if n <= 0:
        return float("nan"), float("nan")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # at p = 1 the upper end is 1 only in exact arithmetic (0.9999999999999999 at n = 80)
    return enclose(p, max(0.0, centre - half), min(1.0, centre + half))


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
    # the adjusted centre is pulled towards 1/2: at a perfect or zero score the estimate is the bound
    return enclose(np.mean(hits / sizes), max(0.0, centre - half), min(1.0, centre + half))


def paired_proportions(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Interval of ``mean(a) - mean(b)`` for two 0/1 outcomes on the same rows (e.g. two models'
    correct predictions): Newcombe's hybrid score method 10, Wilson intervals of each proportion
    combined with their correlation. Simulated here at 20 rows: 92-100% coverage where BCa gave 89%."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    n = len(a)
    n11, n10, n01 = int(np.sum(a & b)), int(np.sum(a & ~b)), int(np.sum(~a & b))
    n00 = n - n11 - n10 - n01
    pa, pb = (n11 + n10) / n, (n11 + n01) / n
    l1, u1 = wilson(n11 + n10, n)
    l2, u2 = wilson(n11 + n01, n)
    den = float(n11 + n10) * (n01 + n00) * (n11 + n01) * (n10 + n00)
    phi = (n11 * n00 - n10 * n01) / np.sqrt(den) if den > 0 else 0.0
    below = (pa - l1) ** 2 - 2 * phi * (pa - l1) * (u2 - pb) + (u2 - pb) ** 2
    above = (u1 - pa) ** 2 - 2 * phi * (u1 - pa) * (pb - l2) + (pb - l2) ** 2
    d = pa - pb
    return enclose(d, d - np.sqrt(max(below, 0.0)), d + np.sqrt(max(above, 0.0)))


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
    and their counts, each holding its estimate (:func:`enclose`). A value whose bootstrap
    distribution is a single point (e.g. a perfect score) gets that point as both ends; an undefined
    value (nan) gets nan."""
    from scipy.stats import norm

    counts = np.asarray(counts, dtype=np.int64)
    estimate = _as_2d(stat(types, counts[None, :].astype(np.float64)))[0]
    boot = _resample(stat, types, counts, resamples, seed)
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
        out[j] = enclose(theta, *np.quantile(b, np.clip(adjusted, 0, 1)))
    return out


def percentile(
    stat: Statistic, types: np.ndarray, counts: np.ndarray, *, resamples: int = 400, seed: int = 0
) -> np.ndarray:
    """Percentile-bootstrap intervals ``[m, 2]``, each holding its estimate: for large test sets,
    where BCa's jackknife is too costly and its correction negligible."""
    estimate = _as_2d(stat(types, np.asarray(counts, dtype=np.float64)[None, :]))[0]
    bounds = np.nanpercentile(_resample(stat, types, counts, resamples, seed), [2.5, 97.5], axis=0).T
    return np.array([enclose(theta, lo, hi) for theta, (lo, hi) in zip(estimate, bounds, strict=True)])


def _resample(
    stat: Statistic, types: np.ndarray, counts: np.ndarray, resamples: int, seed: int
) -> np.ndarray:
    """``stat`` on ``resamples`` bootstrap samples (multinomial counts over the row types): ``[B, m]``."""
    counts = np.asarray(counts, dtype=np.int64)
    n = int(counts.sum())
    rng = np.random.default_rng(seed)
    parts = []
    for s in range(0, resamples, _CHUNK):
        weights = rng.multinomial(n, counts / n, size=min(_CHUNK, resamples - s)).astype(np.float64)
        parts.append(_as_2d(stat(types, weights)))
    return np.concatenate(parts)


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


def mean_stat(types: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The weighted mean of per-row values in ``types[:, 0]`` (log loss, Brier score)."""
    return (weights @ types[:, 0]) / weights.sum(1)


def ranking_stat(n_tasks: int) -> Statistic:
    """ROC-AUC and average precision (PR-AUC) of ``n_tasks`` one-vs-rest scorings, averaged over the
    tasks where both outcomes occur: ``types`` holds ``n_tasks`` score columns then ``n_tasks`` 0/1
    columns. Values ``[B, 2]`` (ROC-AUC, PR-AUC); ties count half (ROC) and form one threshold (PR),
    as in scikit-learn."""

    def stat(types: np.ndarray, weights: np.ndarray) -> np.ndarray:
        roc, ap, used = np.zeros(len(weights)), np.zeros(len(weights)), np.zeros(len(weights))
        for t in range(n_tasks):
            r, a = _roc_ap(types[:, t], types[:, n_tasks + t], weights)
            ok = np.isfinite(r)
            roc[ok] += r[ok]
            ap[ok] += a[ok]
            used += ok
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.column_stack([roc / used, ap / used])

    return stat


def _roc_ap(score: np.ndarray, label: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(score, kind="stable")
    s, pos = score[order], label[order] > 0.5
    w = weights[:, order]
    wp, wn = w * pos, w * ~pos
    total_p, total_n = wp.sum(1), wn.sum(1)
    zero = np.zeros((len(w), 1))
    cum_n = np.concatenate([zero, np.cumsum(wn, 1)], 1)
    first, after = np.searchsorted(s, s, "left"), np.searchsorted(s, s, "right")
    below = cum_n[:, first] + 0.5 * (cum_n[:, after] - cum_n[:, first])
    with np.errstate(invalid="ignore", divide="ignore"):
        roc = (wp * below).sum(1) / (total_p * total_n)
        # average precision: thresholds from the highest score down, one per distinct score
        cum_p_desc = total_p[:, None] - np.concatenate([zero, np.cumsum(wp, 1)], 1)[:, first]
        cum_n_desc = total_n[:, None] - cum_n[:, first]  # rows scoring >= s (ties included)
        precision = cum_p_desc / (cum_p_desc + cum_n_desc)
        is_first = first == np.arange(len(s))  # one term per distinct score
        gained = np.concatenate([zero, np.cumsum(wp, 1)], 1)
        dtp = gained[:, after] - gained[:, first]  # positives at this score
        ap = np.where((dtp > 0) & is_first, dtp * precision, 0.0).sum(1) / total_p
    bad = (total_p <= 0) | (total_n <= 0)
    roc[bad], ap[bad] = np.nan, np.nan
    return roc, ap
