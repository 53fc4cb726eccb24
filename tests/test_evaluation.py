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
    assert set(confidence_intervals("multilabel", yl, pl, 2)[0]) == {"micro_f1", "macro_f1"}


def test_report_html_is_self_contained_and_escaped():
    r = evaluate_predictions("multiclass", np.array([0, 1]), np.array([0, 0]), ("<b>", "ok"),
                             majority={"class": 0})  # fmt: skip
    html = RunReport(backbone="minilm", task="multiclass", label_space=["<b>", "ok"], test=r).to_html()
    assert "&lt;b&gt;" in html and "<b>" not in html.replace("<b>Strategy", "")
    assert "http" not in html  # nothing fetched from elsewhere
