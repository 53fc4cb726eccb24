"""Metrics checked against scikit-learn, bootstrap intervals, the majority baseline, the report."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from graft.evaluation import RunReport, evaluate_predictions, fit_majority, task_metrics
from graft.evaluation.intervals import multiclass_stat, row_types
from graft.evaluation.metrics import confidence_intervals


def test_multiclass_metrics_and_baseline():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    p = np.where(rng.random(300) < 0.7, y, rng.integers(0, 3, 300))
    r = evaluate_predictions("multiclass", y, p, ("a", "b", "c"), majority=fit_majority("multiclass", y, 3))
    assert r.metrics["accuracy"] == pytest.approx(skm.accuracy_score(y, p))
    assert r.metrics["macro_f1"] == pytest.approx(skm.f1_score(y, p, average="macro"))
    assert r.metrics["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, p))
    assert r.baselines["majority"]["accuracy"] == pytest.approx(np.bincount(y).max() / 300)
    assert r.confusion["matrix"] == skm.confusion_matrix(y, p).tolist()
    assert r.per_class["b"]["support"] == int((y == 1).sum())
    lo, hi = r.intervals["accuracy"]
    assert lo < r.metrics["accuracy"] < hi and hi - lo < 0.15


def test_vectorised_macro_f1_matches_sklearn_per_resample():
    # small samples of 5 classes: some classes are missing from the truth or the predictions
    rng = np.random.default_rng(1)
    names, stat = multiclass_stat(5)
    for _ in range(20):
        y, p = rng.integers(0, 5, 8), rng.integers(0, 5, 8)
        types, counts = row_types(np.column_stack([y, p]))
        ours = stat(types, counts[None, :].astype(float))[0][names.index("macro_f1")]
        assert ours == pytest.approx(skm.f1_score(y, p, average="macro"))


def test_regression_and_multilabel_metrics():
    y = np.array([1.0, 2.0, 3.0, 4.0])
    p = np.array([1.5, 2.0, 2.5, 4.5])
    m = task_metrics("regression", y, p)
    assert m["mae"] == pytest.approx(0.375) and m["r2"] == pytest.approx(skm.r2_score(y, p))
    base = fit_majority("regression", np.array([0.0, 10.0]), 0)
    r = evaluate_predictions("regression", y, p, (), majority=base)
    assert r.baselines["majority"]["mae"] == pytest.approx(np.mean(np.abs(y - 5.0)))
    yl = np.array([[1, 0], [0, 1], [1, 1]], dtype=np.float32)
    pl = np.array([[1, 0], [0, 0], [1, 1]], dtype=np.float32)
    ml = task_metrics("multilabel", yl, pl)
    assert ml["micro_f1"] == pytest.approx(skm.f1_score(yl, pl, average="micro"))
    assert set(confidence_intervals("multilabel", yl, pl, 2)[0]) == {
        "micro_f1",
        "macro_f1",
        "subset_accuracy",
    }


def test_report_html_is_self_contained_and_escaped():
    r = evaluate_predictions("multiclass", np.array([0, 1]), np.array([0, 0]), ("<b>", "ok"),
                             majority={"class": 0})  # fmt: skip
    html = RunReport(backbone="minilm", task="multiclass", label_space=["<b>", "ok"], test=r).to_html()
    assert "&lt;b&gt;" in html and "<b>" not in html.replace("<b>Strategy", "")
    assert "http" not in html  # nothing fetched from elsewhere


def test_the_prior_baseline_is_the_expected_score_of_guessing_with_training_frequencies():
    from graft.evaluation.comparison import prior_metrics

    rng = np.random.default_rng(0)
    train = np.array([0] * 60 + [1] * 30 + [2] * 10)
    test = rng.choice(3, size=400, p=[0.5, 0.3, 0.2])
    fitted = fit_majority("multiclass", train, 3)
    exact = prior_metrics("multiclass", fitted, test, 3)
    draws = [rng.choice(3, size=400, p=fitted["frequencies"]) for _ in range(400)]
    assert exact["accuracy"] == pytest.approx(np.mean([np.mean(d == test) for d in draws]), abs=0.005)
    assert exact["balanced_accuracy"] == pytest.approx(
        np.mean([skm.balanced_accuracy_score(test, d) for d in draws]), abs=0.01
    )
    assert exact["macro_f1"] == pytest.approx(
        np.mean([skm.f1_score(test, d, average="macro") for d in draws]), abs=0.01
    )
    # at 8 labels per class every class ties: the prior is chance (1/6 on TREC), not a tie-broken class
    tied = fit_majority("multiclass", np.repeat(np.arange(6), 8), 6)
    assert prior_metrics("multiclass", tied, rng.integers(0, 6, 500), 6)["accuracy"] == pytest.approx(1 / 6)


def test_temperature_scaling_fixes_overconfident_logits_and_keeps_the_classes():
    from graft.evaluation.calibration import expected_calibration_error, fit_temperature, softmax

    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 2000)
    true_logits = rng.normal(size=(2000, 4)) + 1.5 * np.eye(4)[y]
    # labels drawn from softmax(true_logits): the model below is 3x overconfident
    y = np.array([rng.choice(4, p=p) for p in softmax(true_logits)])
    logits = 3.0 * true_logits
    t = fit_temperature(logits[:1000], y[:1000])
    assert t == pytest.approx(3.0, rel=0.15)
    before = expected_calibration_error(softmax(logits[1000:]), y[1000:])
    after = expected_calibration_error(softmax(logits[1000:] / t), y[1000:])
    assert after < before / 2
    assert np.array_equal(softmax(logits / t).argmax(1), logits.argmax(1))
    assert fit_temperature(logits[:5], np.zeros(5, dtype=int)) == 1.0  # a single class: nothing to fit


def test_probability_metrics_match_scikit_learn():
    from graft.evaluation.metrics import probability_metrics

    rng = np.random.default_rng(3)
    y = rng.integers(0, 3, 200)
    p = rng.dirichlet(np.ones(3), 200) * 0.5 + 0.5 * np.eye(3)[y]
    got = probability_metrics("multiclass", y, p)
    assert got["log_loss"] == pytest.approx(skm.log_loss(y, p))
    assert got["roc_auc"] == pytest.approx(skm.roc_auc_score(y, p, multi_class="ovr"))
    assert got["pr_auc"] == pytest.approx(
        np.mean([skm.average_precision_score(y == c, p[:, c]) for c in range(3)])
    )
    assert got["brier"] == pytest.approx(np.mean(((p - np.eye(3)[y]) ** 2).sum(1)))
    yb = rng.integers(0, 2, 100)
    pb = np.column_stack([1 - (s := np.clip(rng.random(100) * 0.6 + 0.4 * yb, 0, 1)), s])
    got = probability_metrics("multiclass", yb, pb)
    assert got["roc_auc"] == pytest.approx(skm.roc_auc_score(yb, pb[:, 1]))
    assert got["pr_auc"] == pytest.approx(skm.average_precision_score(yb, pb[:, 1]))


def test_the_abstain_threshold_reaches_the_target_on_validation_and_ties_go_together():
    from graft.evaluation.abstain import choose_threshold, coverage_curve, measure

    # confidences 0.9 (right), 0.8 (right), 0.8 (wrong), 0.7 (right), 0.6 (wrong)
    proba = np.array([[0.9, 0.1], [0.8, 0.2], [0.2, 0.8], [0.7, 0.3], [0.4, 0.6]])
    y = np.array([0, 0, 0, 0, 1 - 1])
    # answering >= 0.7: 3 of 4 right; >= 0.8: 2 of 3 (both 0.8s together, never one of them)
    chosen = choose_threshold(proba, y, 0.75)
    assert chosen["threshold"] == 0.7 and chosen["validation_coverage"] == pytest.approx(0.8)
    chosen = choose_threshold(proba, y, 0.8)
    assert chosen["threshold"] == 0.9 and chosen["validation_coverage"] == pytest.approx(0.2)
    assert choose_threshold(proba, y, 0.6)["threshold"] == pytest.approx(0.6)  # 3 of 5 right
    nothing = choose_threshold(np.array([[0.6, 0.4]]), np.array([1]), 0.9)
    assert nothing["validation_coverage"] == 0 and nothing["threshold"] > 0.6
    got = measure(proba, y, 0.75)
    assert got["answered"] == 3 and got["precision"] == pytest.approx(2 / 3) and got["coverage"] == 0.6
    curve = coverage_curve(proba, y)
    assert curve[0]["coverage"] == 0.2 and curve[0]["accuracy"] == 1.0 and curve[-1]["coverage"] == 1.0


def test_settings_are_chosen_on_macro_f1_when_classes_are_skewed():
    from graft.evaluation.metrics import selection_metric, selection_score

    assert selection_metric("multiclass", np.array([0] * 87 + [1] * 13)) == "macro_f1"  # SMS spam's skew
    assert selection_metric("multiclass", np.array([0] * 30 + [1] * 20 + [2] * 12)) == "accuracy"
    assert selection_metric("regression", np.array([0.5, 2.0])) == "r2"
    y, p = np.array([0] * 9 + [1]), np.zeros(10, dtype=int)  # always the big class
    assert selection_score("multiclass", y, p) == 0.9
    assert selection_score("multiclass", y, p, "macro_f1") == pytest.approx(
        skm.f1_score(y, p, average="macro")
    )


def test_best_f1_threshold_matches_a_brute_force_search_with_scikit_learn():
    from sklearn.metrics import f1_score

    from graft.evaluation.thresholds import best_f1_threshold

    rng = np.random.default_rng(0)
    for trial in range(20):
        truth = (rng.random(60) < 0.2).astype(int)
        truth[trial % 60] = 1
        scores = np.round(np.clip(0.3 * truth + rng.random(60) * 0.7, 0, 1), 2)  # ties included
        threshold, f1 = best_f1_threshold(scores, truth)
        best = max(f1_score(truth, scores >= t) for t in np.unique(scores))
        assert f1 == pytest.approx(best) and f1_score(truth, scores >= threshold) == pytest.approx(best)


def test_rare_labels_keep_the_default_threshold():
    from graft.evaluation.thresholds import MIN_POSITIVES, choose_thresholds

    rng = np.random.default_rng(1)
    targets = np.zeros((200, 2))
    targets[:80, 0] = 1
    targets[: MIN_POSITIVES - 1, 1] = 1
    proba = np.clip(0.35 * targets + rng.random((200, 2)) * 0.6, 0, 1)
    chosen = choose_thresholds(proba, targets, ["common", "rare"])
    assert chosen["thresholds"][1] == 0.5 and "too few" in chosen["labels"][1]["kept"]
    assert chosen["thresholds"][0] != 0.5 and chosen["labels"][0]["f1"] >= chosen["labels"][0]["f1_at_0.5"]


def test_a_scratch_baseline_that_answers_one_class_is_called_no_skill():
    from types import SimpleNamespace

    from graft.baselines import score_baselines
    from graft.config import RunConfig

    bench = SimpleNamespace(cfg=RunConfig(), task="multiclass", label_space=("a", "b"))
    targets = np.array([0, 1] * 10)
    result = evaluate_predictions("multiclass", targets, targets.copy(), ("a", "b"))
    constant = np.zeros(20, dtype=int)
    score_baselines(bench, targets, targets.copy(), {"scratch": constant, "linear_probe": constant}, result)
    assert sum("did not learn within its budget" in note for note in result.notes) == 1
    assert result.comparisons["scratch"]["accuracy"]["difference"] == pytest.approx(0.5)


def test_multilabel_macro_f1_averages_the_labels_that_occur_as_its_interval_does():
    """A label absent from both the truth and the predictions no longer scores 0 against a perfect
    model (scikit-learn's all-columns macro gave 0.667 here, beside a bootstrap interval of [1, 1])."""
    y = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 0]], dtype=np.float32)
    r = evaluate_predictions("multilabel", y, y.copy(), ("a", "b", "never"))
    assert r.metrics["macro_f1"] == 1.0 and r.intervals["macro_f1"] == [1.0, 1.0]
    assert r.intervals["subset_accuracy"][1] == 1.0
    p = np.array([[1, 0, 0], [0, 0, 0], [1, 1, 0], [0, 1, 0]], dtype=np.float32)
    occurring = skm.f1_score(y[:, :2], p[:, :2], average="macro", zero_division=0)
    assert task_metrics("multilabel", y, p)["macro_f1"] == pytest.approx(occurring)
    assert task_metrics("multilabel", y * 0, p * 0)["macro_f1"] == 0.0  # nothing to average: scikit-learn's 0


def test_an_undefined_interval_is_left_out_not_written_as_nan():
    y = np.ones(6, dtype=np.float32)  # R² of a constant truth is undefined, and so is its interval
    r = evaluate_predictions("regression", y, y + np.arange(6, dtype=np.float32) / 10, ())
    assert "r2" not in r.intervals and set(r.intervals) == {"mae", "rmse"}
    c = evaluate_predictions("multiclass", np.array([0, 0, 1, 1]), np.array([0, 0, 0, 0]), ("a", "b"))
    assert "precision" not in c.per_class["b"]["intervals_95"]  # "b" is never predicted
    assert c.per_class["b"]["intervals_95"]["recall"][0] == 0.0  # and the recall of 0/2 starts at 0
