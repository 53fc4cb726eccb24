"""Metrics per task, the majority-class baseline, and confidence intervals.

Scores come from scikit-learn; intervals from :mod:`graft.evaluation.intervals` (Wilson for
proportions, BCa bootstrap otherwise).

Example:
    >>> import numpy as np
    >>> r = evaluate_predictions("multiclass", np.array([0, 1, 1, 0]), np.array([0, 1, 0, 0]),
    ...                          ("a", "b"), majority=fit_majority("multiclass", np.array([0, 0, 1]), 2))
    >>> r.metrics["accuracy"], r.baselines["majority"]["accuracy"]
    (0.75, 0.5)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

HEADLINE = {
    "multiclass": ("accuracy", "macro_f1"),
    "multilabel": ("micro_f1", "macro_f1"),
    "regression": ("r2", "mae", "rmse"),
}
# The validation metric that drives early stopping and probe selection (higher is better).
SELECTION = {"multiclass": "accuracy", "multilabel": "micro_f1", "regression": "r2"}
# Below this many test examples of a class, BCa intervals of F1 scores under-cover (simulated: 56% at
# 20 rows with a 13% class).
RARE_SUPPORT = 5
# Classes count as skewed when the largest has more than this many times the smallest's examples.
SKEWED = 3.0


@dataclass
class EvaluationResult:
    """Everything measured on one held-out set."""

    task: str
    n: int
    metrics: dict[str, float]
    intervals: dict[str, list[float]] = field(default_factory=dict)
    baselines: dict[str, dict[str, float]] = field(default_factory=dict)
    per_class: dict[str, dict[str, float]] = field(default_factory=dict)
    confusion: dict[str, Any] = field(default_factory=dict)
    split: str = "test"
    # rows or files of the evaluated data left out with skip_bad, each "where: why"
    skipped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # paired differences with other models on the same rows: {name: {metric: {difference, interval_95}}}
    comparisons: dict[str, dict[str, Any]] = field(default_factory=dict)
    baseline_intervals: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    # temperature scaling: the temperature, what it was fitted on, ECE and reliability before/after
    calibration: dict[str, Any] = field(default_factory=dict)
    # the coverage-accuracy curve; with --target-precision, the threshold and what it reached
    abstain: dict[str, Any] = field(default_factory=dict)
    # the most-confused class pairs with example inputs, and the hardest test examples
    errors: dict[str, Any] = field(default_factory=dict)
    # --costs: mean cost per prediction of the top-label rule, the cost rule and the best single answer
    costs: dict[str, Any] = field(default_factory=dict)
    # multilabel: each label's decision threshold, chosen on out-of-fold outputs
    thresholds: dict[str, Any] = field(default_factory=dict)
    # --repeats: each metric's mean, sd and values over repeats of a cross-validated estimate
    repeats: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "split": self.split,
            "task": self.task,
            "n": self.n,
            "metrics": self.metrics,
            "intervals_95": self.intervals,
            "baselines": self.baselines,
            "per_class": self.per_class,
            "confusion_matrix": self.confusion,
            "skipped": self.skipped,
            "notes": self.notes,
            "baseline_intervals_95": self.baseline_intervals,
            "comparisons": self.comparisons,
            "calibration": self.calibration,
            "abstain": self.abstain,
            "errors": self.errors,
            **({"costs": self.costs} if self.costs else {}),
            **({"thresholds": self.thresholds} if self.thresholds else {}),
            **({"repeats": self.repeats} if self.repeats else {}),
        }

    def headline(self) -> str:
        parts = []
        base = self.baselines.get("prior", {})
        for name in HEADLINE[self.task]:
            text = f"{name} {self.metrics[name]:.3f}"
            if name in self.intervals:
                lo, hi = self.intervals[name]
                text += f" [{lo:.3f}, {hi:.3f}]"
            if name in base:
                text += f" (prior baseline {base[name]:.3f})"
            parts.append(text)
        return "; ".join(parts)


def task_metrics(task: str, y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """Scalar metrics for ``task`` (class ids, 0/1 matrices or values)."""
    from sklearn import metrics as skm

    if task == "multiclass":
        return {
            "accuracy": float(skm.accuracy_score(y_true, y_pred)),
            "macro_f1": float(skm.f1_score(y_true, y_pred, average="macro", zero_division=0)),
            "weighted_f1": float(skm.f1_score(y_true, y_pred, average="weighted", zero_division=0)),
            "balanced_accuracy": float(_balanced_accuracy(y_true, y_pred)),
        }
    if task == "multilabel":
        # macro-F1 over the labels that occur in the truth or the predictions, as scikit-learn's default
        # for multiclass (and the prior baseline): a label absent from both would score 0 for a perfect model
        present = np.flatnonzero(np.any(y_true, 0) | np.any(y_pred, 0))
        macro = (
            skm.f1_score(y_true, y_pred, labels=present, average="macro", zero_division=0)
            if len(present)
            else 0
        )
        return {
            "micro_f1": float(skm.f1_score(y_true, y_pred, average="micro", zero_division=0)),
            "macro_f1": float(macro),
            "subset_accuracy": float(skm.accuracy_score(y_true, y_pred)),
            "hamming_loss": float(skm.hamming_loss(y_true, y_pred)),
        }
    # in float64, as the intervals are: float32 targets made R² -93304.2890625 beside -93304.28841576564
    y_true, y_pred = np.asarray(y_true, dtype=np.float64), np.asarray(y_pred, dtype=np.float64)
    return {
        "mae": float(skm.mean_absolute_error(y_true, y_pred)),
        "rmse": float(np.sqrt(skm.mean_squared_error(y_true, y_pred))),
        "r2": float(skm.r2_score(y_true, y_pred)) if len(y_true) > 1 else float("nan"),
    }


def _balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    # Mean recall over the classes present in y_true (sklearn's definition, without its warning).
    recalls = [np.mean(y_pred[y_true == c] == c) for c in np.unique(y_true)]
    return float(np.mean(recalls))


def fit_majority(task: str, train_targets: np.ndarray, n_classes: int) -> dict[str, Any]:
    """The no-skill baselines, fitted on training targets (JSON-able, so bundles carry it): the
    majority class (labels; the mean for regression) and the class ``frequencies`` that the prior
    baseline draws from (see :mod:`graft.evaluation.comparison`)."""
    train_targets = np.asarray(train_targets)
    if task == "multiclass":
        counts = np.bincount(train_targets, minlength=n_classes)
        return {"class": int(counts.argmax()), "frequencies": (counts / max(1, counts.sum())).tolist()}
    if task == "multilabel":
        freq = train_targets.mean(0)
        return {"labels": (freq > 0.5).astype(int).tolist(), "frequencies": freq.tolist()}
    return {"mean": float(np.mean(train_targets))}


def majority_predictions(task: str, majority: dict[str, Any], n: int) -> np.ndarray:
    """What the majority baseline predicts for ``n`` examples."""
    if task == "multiclass":
        return np.full(n, majority["class"], dtype=np.int64)
    if task == "multilabel":
        return np.tile(np.asarray(majority["labels"], dtype=np.float32), (n, 1))
    return np.full(n, majority["mean"], dtype=np.float32)


# Ranking metrics' BCa jackknife costs tasks x rows x rows (~5 s at 20M here): above, the percentile
# bootstrap (at that size BCa's correction is negligible).
RANKING_BCA_MAX = 20_000_000


def probability_metrics(task: str, y_true: np.ndarray, proba: np.ndarray) -> dict[str, float]:
    """Log loss, Brier score, ROC-AUC and PR-AUC (average precision; macro over one-vs-rest classes or
    labels) and ECE (multiclass) of predicted probabilities."""
    if task == "regression":
        return {}
    per_row, scores, positives = _probability_rows(task, y_true, proba)
    from graft.evaluation.calibration import expected_calibration_error
    from graft.evaluation.intervals import ranking_stat

    n_tasks = scores.shape[1]
    ranking = ranking_stat(n_tasks)(np.column_stack([scores, positives]), np.ones((1, len(y_true))))[0]
    out = {"log_loss": float(per_row[:, 0].mean()), "brier": float(per_row[:, 1].mean())}
    if np.isfinite(ranking[0]):
        out |= {"roc_auc": float(ranking[0]), "pr_auc": float(ranking[1])}
    if task == "multiclass":
        out["ece"] = expected_calibration_error(proba, y_true)
    return out


def _probability_rows(
    task: str, y_true: np.ndarray, proba: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-row (log loss, Brier) and the one-vs-rest (scores, 0/1 outcomes) the ranking metrics use
    (binary multiclass: the second class's score only, as scikit-learn does)."""
    proba = np.clip(np.asarray(proba, dtype=np.float64), 1e-15, 1 - 1e-15)
    if task == "multiclass":
        onehot = np.eye(proba.shape[1])[np.asarray(y_true, dtype=np.int64)]
        loss = -np.log(proba[np.arange(len(proba)), np.asarray(y_true, dtype=np.int64)])
        brier = ((proba - onehot) ** 2).sum(1)
        if proba.shape[1] == 2:
            return np.column_stack([loss, brier]), proba[:, 1:], onehot[:, 1:]
        return np.column_stack([loss, brier]), proba, onehot
    truth = np.asarray(y_true, dtype=np.float64)
    loss = -(truth * np.log(proba) + (1 - truth) * np.log(1 - proba)).mean(1)
    brier = ((proba - truth) ** 2).mean(1)
    return np.column_stack([loss, brier]), proba, truth


def probability_intervals(
    task: str, y_true: np.ndarray, proba: np.ndarray, seed: int
) -> dict[str, list[float]]:
    """BCa intervals of the log loss, Brier score, ROC-AUC and PR-AUC."""
    from graft.evaluation import intervals as ci

    if task == "regression" or len(y_true) < 2:
        return {}
    per_row, scores, positives = _probability_rows(task, y_true, proba)
    out = {}
    for j, name in enumerate(("log_loss", "brier")):
        ((lo, hi),) = ci.bca(ci.mean_stat, *ci.row_types(per_row[:, j : j + 1]), seed=seed)
        out[name] = [float(lo), float(hi)]
    rows = np.column_stack([scores, positives])
    method = ci.bca if scores.shape[1] * len(y_true) ** 2 <= RANKING_BCA_MAX else ci.percentile
    bounds = method(ci.ranking_stat(scores.shape[1]), *ci.row_types(rows), seed=seed)
    for j, name in enumerate(("roc_auc", "pr_auc")):
        if np.all(np.isfinite(bounds[j])):
            out[name] = [float(bounds[j, 0]), float(bounds[j, 1])]
    return out


def confidence_intervals(
    task: str, y_true: np.ndarray, y_pred: np.ndarray, n_classes: int, seed: int = 0
) -> tuple[dict[str, list[float]], dict[str, dict[str, list[float]]]]:
    """95% intervals of the task's metrics (Wilson for accuracy and multilabel subset accuracy, BCa
    bootstrap otherwise; see :mod:`graft.evaluation.intervals`), and of each class's precision, recall
    and F1."""
    from graft.evaluation import intervals as ci

    n = len(y_true)
    if n < 2:
        return {}, {}
    if task == "multiclass":
        y_true, y_pred = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
        names, stat = ci.multiclass_stat(n_classes)
    elif task == "multilabel":
        names, stat = ci.multilabel_stat(y_true.shape[1])
    else:
        names, stat = ci.REGRESSION_NAMES, ci.regression_stat
    rows = (
        np.column_stack([y_true, y_pred])
        if task != "regression"
        else np.column_stack(
            [np.asarray(y_true, dtype=np.float64).ravel(), np.asarray(y_pred, dtype=np.float64).ravel()]
        )
    )
    bounds = ci.bca(stat, *ci.row_types(rows), seed=seed)
    out = {name: [float(lo), float(hi)] for name, (lo, hi) in zip(names, bounds, strict=True)}
    per_class: dict[str, dict[str, list[float]]] = {}
    if task == "multilabel":
        out["subset_accuracy"] = list(ci.wilson(float(np.sum(np.all(y_true == y_pred, axis=1))), n))
    if task == "multiclass":
        out["accuracy"] = list(ci.wilson(float(np.sum(y_true == y_pred)), n))
        out["balanced_accuracy"] = list(ci.balanced_accuracy_interval(y_true, y_pred))
        for c in range(n_classes):
            tp = float(np.sum((y_true == c) & (y_pred == c)))
            per_class[str(c)] = {
                "precision": list(ci.wilson(tp, float(np.sum(y_pred == c)))),
                "recall": list(ci.wilson(tp, float(np.sum(y_true == c)))),
                "f1": out.pop(f"f1:{c}"),
            }
    return out, per_class


def _holding(points: dict[str, Any], intervals: dict[str, list[float]]) -> dict[str, list[float]]:
    """The ``intervals`` that are defined (finite), each made to hold its reported point in ``points``:
    scores come from scikit-learn, intervals from the bootstrap's own arithmetic, and the two can
    differ in the last bit (a degenerate bootstrap gives ``[x, x]`` for the estimate it computed)."""
    from graft.evaluation.intervals import enclose

    out = {}
    for name, (lo, hi) in intervals.items():
        if np.isfinite(lo) and np.isfinite(hi):
            point = points.get(name)
            out[name] = list(enclose(point, lo, hi)) if point is not None else [float(lo), float(hi)]
    return out


def per_class_report(
    task: str, y_true: np.ndarray, y_pred: np.ndarray, label_space: tuple[Any, ...]
) -> dict[str, dict[str, float]]:
    from sklearn.metrics import precision_recall_fscore_support

    if task == "regression":
        return {}
    labels = list(range(len(label_space)))
    if task == "multilabel":
        p, r, f, s = precision_recall_fscore_support(y_true, y_pred, zero_division=0)
    else:
        p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    return {
        str(name): {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
        for i, name in enumerate(label_space)
    }


def confusion(
    task: str, y_true: np.ndarray, y_pred: np.ndarray, label_space: tuple[Any, ...]
) -> dict[str, Any]:
    """Rows are true classes, columns predicted classes (multiclass only)."""
    from sklearn.metrics import confusion_matrix

    if task != "multiclass":
        return {}
    matrix = confusion_matrix(y_true, y_pred, labels=list(range(len(label_space))))
    return {"labels": [str(x) for x in label_space], "matrix": matrix.tolist()}


def evaluate_predictions(
    task: str,
    y_true: np.ndarray,
    y_pred: np.ndarray,
    label_space: tuple[Any, ...],
    *,
    majority: dict[str, Any] | None = None,
    split: str = "test",
    seed: int = 0,
    proba: np.ndarray | None = None,
) -> EvaluationResult:
    """Metrics, intervals, per-class scores, confusion matrix and the no-skill baselines; with the
    predicted probabilities ``proba``, also log loss, Brier score, ROC-AUC, PR-AUC and ECE."""
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    n_classes = len(label_space)
    intervals, class_intervals = confidence_intervals(task, y_true, y_pred, n_classes, seed)
    per_class = per_class_report(task, y_true, y_pred, label_space)
    for c, name in enumerate(label_space):
        if str(c) in class_intervals and str(name) in per_class:
            per_class[str(name)]["intervals_95"] = _holding(per_class[str(name)], class_intervals[str(c)])
    metrics = task_metrics(task, y_true, y_pred)
    if proba is not None:
        metrics |= probability_metrics(task, y_true, proba)
        intervals |= probability_intervals(task, y_true, proba, seed)
    result = EvaluationResult(
        task=task,
        n=len(y_true),
        metrics=metrics,
        intervals=_holding(metrics, intervals),
        per_class=per_class,
        confusion=confusion(task, y_true, y_pred, label_space),
        split=split,
    )
    rare = [
        f"{name!r} ({v['support']})" for name, v in result.per_class.items() if v["support"] < RARE_SUPPORT
    ]
    if rare and task == "multiclass":
        result.notes.append(
            f"Few test examples of {', '.join(rare)}: F1 intervals involving these classes (macro-F1 "
            "included) are unreliable; trust accuracy's and balanced accuracy's."
        )
    if majority is not None:
        from graft.evaluation.comparison import prior_metrics

        base = majority_predictions(task, majority, len(y_true))
        result.baselines["majority"] = task_metrics(task, y_true, base)
        if "frequencies" in majority or task == "regression":  # bundles before 2026-12 lack them
            result.baselines["prior"] = prior_metrics(task, majority, y_true, n_classes)
    return result


def selection_score(task: str, y_true: np.ndarray, y_pred: np.ndarray, metric: str | None = None) -> float:
    """The early-stopping / model-choice metric (higher is better): ``metric``, or the task's default."""
    return task_metrics(task, y_true, y_pred)[metric or SELECTION[task]]


def selection_metric(task: str, targets: np.ndarray) -> str:
    """The metric settings are chosen on: macro-F1 when the classes are skewed (the largest class has
    more than :data:`SKEWED` times the examples of the smallest), where accuracy rewards ignoring the
    small classes; else the task's default (:data:`SELECTION`)."""
    if task == "multiclass" and len(targets):
        counts = np.bincount(np.asarray(targets, dtype=np.int64))
        counts = counts[counts > 0]
        if len(counts) > 1 and counts.max() > SKEWED * counts.min():
            return "macro_f1"
    return SELECTION[task]
