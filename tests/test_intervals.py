"""Confidence intervals: checked against scipy and a hand-computed case, and their coverage simulated."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from graft.evaluation import intervals as ci
from graft.evaluation.metrics import confidence_intervals


def test_wilson_matches_scipy_and_a_hand_computed_case():
    # 15 of 20: centre (0.75 + 1.96²/40) / (1 + 1.96²/20) = 0.7097, half-width 0.1784
    lo, hi = ci.wilson(15, 20)
    assert lo == pytest.approx(0.7097 - 0.1784, abs=1e-3) and hi == pytest.approx(0.7097 + 0.1784, abs=1e-3)
    for k, n in [(0, 10), (3, 7), (20, 20), (512, 1000)]:
        ref = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
        assert ci.wilson(k, n) == pytest.approx((ref.low, ref.high), abs=1e-9)


def test_bca_of_a_mean_agrees_with_scipy():
    x = np.random.default_rng(0).exponential(size=40)  # skewed: BCa differs from the percentile
    mine = ci.bca(lambda types, w: (w @ types[:, 0]) / w.sum(1), x[:, None], np.ones(40), resamples=4000)
    ref = stats.bootstrap((x,), np.mean, method="BCa", n_resamples=4000, random_state=0).confidence_interval
    assert mine[0] == pytest.approx((ref.low, ref.high), abs=0.03)
    pct = stats.bootstrap((x,), np.mean, method="percentile", n_resamples=4000, random_state=0)
    assert abs(mine[0][1] - ref.high) < abs(pct.confidence_interval.high - ref.high) + 0.03


def test_bca_on_row_types_equals_bca_on_rows():
    rng = np.random.default_rng(1)
    y, p = rng.integers(0, 3, 60), rng.integers(0, 3, 60)
    names, stat = ci.multiclass_stat(3)
    by_type = ci.bca(stat, *ci.row_types(np.column_stack([y, p])))
    one_each = ci.bca(stat, np.column_stack([y, p]), np.ones(60, dtype=int))
    assert np.allclose(by_type[names.index("macro_f1")], one_each[names.index("macro_f1")], atol=0.03)


def test_metrics_from_weighted_types_match_scikit_learn():
    from sklearn import metrics as skm

    rng = np.random.default_rng(2)
    y, p = rng.integers(0, 4, 80), rng.integers(0, 4, 80)
    names, stat = ci.multiclass_stat(4)
    types, counts = ci.row_types(np.column_stack([y, p]))
    got = dict(zip(names, stat(types, counts[None, :].astype(float))[0], strict=True))
    assert got["macro_f1"] == pytest.approx(skm.f1_score(y, p, average="macro"))
    assert got["weighted_f1"] == pytest.approx(skm.f1_score(y, p, average="weighted"))
    assert got["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, p))
    assert got["f1:2"] == pytest.approx(skm.f1_score(y, p, average=None)[2])
    t, q = rng.normal(size=50), rng.normal(size=50)
    types, counts = ci.row_types(np.column_stack([t, q]))
    mae, rmse, r2 = ci.regression_stat(types, counts[None, :].astype(float))[0]
    assert (mae, rmse, r2) == pytest.approx(
        (skm.mean_absolute_error(t, q), skm.root_mean_squared_error(t, q), skm.r2_score(t, q))
    )


def test_a_perfect_score_gets_a_point_interval_for_bca_and_wilson_below_one():
    y = np.array([0, 1, 2] * 10)
    intervals, per_class = confidence_intervals("multiclass", y, y, 3)
    assert intervals["macro_f1"] == [1.0, 1.0]
    assert 0.88 < intervals["accuracy"][0] < 1.0 and intervals["accuracy"][1] == 1.0
    assert per_class["0"]["recall"][0] < 1.0 and per_class["0"]["recall"][1] == 1.0


def test_wilson_ends_exactly_at_a_perfect_or_zero_proportion():
    """Issue 19, item 0: rounding put the upper end of 80/80 at 0.9999999999999999, below the
    estimate (and the lower end of 0/3 at 5.6e-17, above it), and the report's error bar failed."""
    for n in range(1, 1001):
        assert ci.wilson(n, n)[1] == 1.0 and ci.wilson(0, n)[0] == 0.0, n
        k = n // 3
        lo, hi = ci.wilson(k, n)
        assert lo <= k / n <= hi
    y = np.array([0, 1] * 40)
    assert ci.balanced_accuracy_interval(y, y)[1] == 1.0 and ci.balanced_accuracy_interval(y, 1 - y)[0] == 0.0
    assert ci.paired_proportions(np.ones(80), np.zeros(80))[1] == 1.0


def test_bca_holds_its_estimate_when_degenerate_or_bias_corrected_beside_it():
    from graft.evaluation.metrics import probability_intervals, probability_metrics

    # every resample equal: the interval is the point
    x = np.full((5, 1), 0.1)
    assert ci.bca(ci.mean_stat, x, np.array([3, 1, 1, 2, 4]))[0].tolist() == [0.1, 0.1]
    # a model confidently wrong on every row: resamples repeat rows, ties lower the average precision,
    # so the whole bootstrap distribution lies below the estimate (e.g. [0.2393, 0.2419] for 0.2436);
    # found by the property test in test_report.py; BCa excluded its estimate in 42 of 60 such sets
    extended = 0
    for seed in range(5):
        rng = np.random.default_rng(seed)
        y = rng.integers(0, 3, 50)
        logits = rng.normal(size=(50, 3))
        logits[np.arange(50), (y + rng.integers(1, 3, 50)) % 3] += 6
        proba = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        point = probability_metrics("multiclass", y, proba)["pr_auc"]
        lo, hi = probability_intervals("multiclass", y, proba, seed=0)["pr_auc"]
        assert lo <= point <= hi, seed
        extended += point == hi
        rows = np.column_stack([proba, np.eye(3)[y]])
        ((lo, hi), _) = ci.percentile(ci.ranking_stat(3), *ci.row_types(rows), seed=0)
        assert lo <= point <= hi, seed
    assert extended >= 2  # the case this guards is common, not contrived


def test_enclose_widens_never_narrows_and_leaves_undefined_intervals_alone():
    assert ci.enclose(1.0, 0.9, 0.9999999999999999) == (0.9, 1.0)
    assert ci.enclose(0.0, 5.551115123125783e-17, 0.4) == (0.0, 0.4)
    assert ci.enclose(0.5, 0.2, 0.8) == (0.2, 0.8)
    lo, hi = ci.enclose(float("nan"), 0.2, 0.8)
    assert (lo, hi) == (0.2, 0.8)
    assert all(np.isnan(ci.enclose(0.5, float("nan"), float("nan"))))


# a 3-class problem with unequal classes and errors: the population's metrics are known exactly
PRIOR = np.array([0.5, 0.3, 0.2])
CONFUSION = np.array([[0.85, 0.10, 0.05], [0.15, 0.75, 0.10], [0.10, 0.20, 0.70]])


@pytest.mark.parametrize("n", [20, 50, 500])
def test_intervals_cover_the_true_value_at_least_93_percent_of_the_time(n):
    joint = (PRIOR[:, None] * CONFUSION).ravel()
    names, stat = ci.multiclass_stat(3)
    every_type = np.array([[i, j] for i in range(3) for j in range(3)])
    truth = dict(zip(names, stat(every_type, joint[None, :])[0], strict=True))
    truth["accuracy"] = float(np.trace(PRIOR[:, None] * CONFUSION))
    rng = np.random.default_rng(n)
    repeats = 400
    covered = dict.fromkeys(("accuracy", "balanced_accuracy", "macro_f1"), 0)
    for r in range(repeats):
        cells = rng.choice(9, size=n, p=joint)
        intervals, _ = confidence_intervals("multiclass", cells // 3, cells % 3, 3, seed=r)
        for name in covered:
            lo, hi = intervals[name]
            covered[name] += lo <= truth[name] <= hi
    coverage = {name: hits / repeats for name, hits in covered.items()}
    assert min(coverage.values()) >= 0.93, coverage


def test_the_percentile_bootstrap_undercovers_where_wilson_does_not():
    # why accuracy uses Wilson: at 20 rows of a 0.9-accurate model the percentile bootstrap covers
    # ~87% (measured: 0.6 -> 96%, 0.8 -> 92%, 0.9 -> 87%, 0.95 -> 63%); Wilson 93-98% throughout
    rng = np.random.default_rng(0)
    hits_pct = hits_wilson = 0
    for _ in range(1000):
        correct = rng.random(20) < 0.9
        boot = correct[rng.integers(0, 20, (500, 20))].mean(1)
        hits_pct += np.percentile(boot, 2.5) <= 0.9 <= np.percentile(boot, 97.5)
        lo, hi = ci.wilson(correct.sum(), 20)
        hits_wilson += lo <= 0.9 <= hi
    assert hits_pct / 1000 < 0.90 and hits_wilson / 1000 >= 0.93
