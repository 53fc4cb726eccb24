"""Evaluation: metrics, confidence intervals, baselines, and the run report. Trains nothing."""

from graft.evaluation.metrics import (
    HEADLINE,
    SELECTION,
    EvaluationResult,
    evaluate_predictions,
    fit_majority,
    majority_predictions,
    selection_score,
    task_metrics,
)
from graft.evaluation.report import RunReport, render_html

# graft.evaluation.outputs (torch) is imported where it is used, keeping this package torch-free.

__all__ = [
    "HEADLINE",
    "SELECTION",
    "EvaluationResult",
    "RunReport",
    "evaluate_predictions",
    "fit_majority",
    "majority_predictions",
    "render_html",
    "selection_score",
    "task_metrics",
]
