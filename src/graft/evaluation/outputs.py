"""From a head's raw outputs to predictions, labels, scores and the model-choice metric."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from graft.evaluation.metrics import EvaluationResult, evaluate_predictions, selection_score


def head_outputs(head: torch.nn.Module, features: torch.Tensor) -> torch.Tensor:
    """Raw outputs of ``head`` on features, on the CPU, without gradients."""
    head.to("cpu").eval()
    with torch.no_grad():
        return head(features.float())


def predicted_targets(task: str, activated: np.ndarray, thresholds: Any = None) -> np.ndarray:
    """Activated outputs -> class ids (multiclass), a 0/1 matrix (multilabel: above 0.5, or at or
    above each label's ``thresholds``, see :mod:`graft.evaluation.thresholds`) or values."""
    if task == "multiclass":
        return activated.argmax(1)
    if task == "multilabel":
        if thresholds is None:
            return (activated > 0.5).astype(np.float32)
        cut = np.asarray(thresholds, dtype=np.float64)
        return (activated >= (cut if cut.ndim == 2 else cut[None, :])).astype(np.float32)
    return activated


def decode_outputs(
    task: str, label_space: tuple[Any, ...], values: np.ndarray, thresholds: Any = None
) -> list[Any]:
    """Activated outputs -> labels, lists of labels, or values."""
    predicted = predicted_targets(task, values, thresholds)
    if task == "multiclass":
        return [label_space[i] for i in predicted]
    if task == "multilabel":
        return [[label_space[j] for j in np.flatnonzero(row)] for row in predicted]
    return [float(v) for v in predicted]


def score_outputs(
    head: Any,
    task: str,
    label_space: tuple[Any, ...],
    outputs: torch.Tensor,
    targets: np.ndarray,
    majority: dict[str, Any],
    split: str = "test",
    thresholds: Any = None,
) -> EvaluationResult:
    """Metrics, intervals and baselines of raw ``outputs`` against ``targets``."""
    activated = head.activate(outputs).numpy()
    return evaluate_predictions(
        task, targets, predicted_targets(task, activated, thresholds), label_space, majority=majority,
        split=split,
        proba=None if task == "regression" else activated,
    )  # fmt: skip


def metric_fn_for(
    head: torch.nn.Module, task: str, name: str | None = None
) -> Callable[[torch.Tensor, torch.Tensor], float]:
    """The selection metric ``name`` (default: the task's; higher is better) on raw outputs, for early
    stopping and model choice."""

    def metric(outputs: torch.Tensor, targets: torch.Tensor) -> float:
        predicted = predicted_targets(task, head.activate(outputs.cpu()).numpy())
        return selection_score(task, targets.cpu().numpy(), predicted, name)

    return metric
