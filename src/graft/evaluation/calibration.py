"""Calibration: do the predicted probabilities mean what they say?

* **ECE** (expected calibration error): test rows binned by confidence (the top probability, 15
  equal-width bins); the row-weighted mean gap between each bin's confidence and its accuracy.
* **Temperature scaling** (Guo et al. 2017): one scalar T dividing the logits, fitted by minimising
  the log loss on held-out outputs (out-of-fold outputs of the chosen recipe, never the test rows).
  It changes confidence, never the predicted class. Stored in the bundle; ``predict_proba`` applies it.

Example:
    >>> import numpy as np
    >>> proba = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8]])
    >>> round(expected_calibration_error(proba, np.array([0, 1, 1])), 3)
    0.3
"""

from __future__ import annotations

from typing import Any

import numpy as np

BINS = 15
# log T is searched in [-LOG_T_RANGE, LOG_T_RANGE]: T from 0.05 to 20
LOG_T_RANGE = 3.0


def expected_calibration_error(proba: np.ndarray, targets: np.ndarray, bins: int = BINS) -> float:
    """ECE of multiclass probabilities ``[n, k]`` against class ids."""
    table = reliability_table(proba, targets, bins)
    n = sum(row["count"] for row in table)
    return float(sum(row["count"] * abs(row["confidence"] - row["accuracy"]) for row in table) / max(n, 1))


def reliability_table(proba: np.ndarray, targets: np.ndarray, bins: int = BINS) -> list[dict[str, Any]]:
    """The reliability diagram's data: per non-empty confidence bin, its range, mean confidence,
    accuracy and row count."""
    proba, targets = np.asarray(proba, dtype=np.float64), np.asarray(targets)
    confidence, predicted = proba.max(1), proba.argmax(1)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    table = []
    for b in range(bins):
        rows = which == b
        if rows.any():
            table.append({
                "low": float(edges[b]), "high": float(edges[b + 1]), "count": int(rows.sum()),
                "confidence": float(confidence[rows].mean()),
                "accuracy": float((predicted[rows] == targets[rows]).mean()),
            })  # fmt: skip
    return table


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def fit_temperature(logits: np.ndarray, targets: np.ndarray) -> float:
    """The temperature minimising the log loss of ``softmax(logits / T)`` (1.0 when there is nothing
    to fit: fewer than 2 rows or a single class)."""
    from scipy.optimize import minimize_scalar

    logits, targets = np.asarray(logits, dtype=np.float64), np.asarray(targets)
    if len(targets) < 2 or len(np.unique(targets)) < 2:
        return 1.0

    def nll(log_t: float) -> float:
        z = logits / np.exp(log_t)
        z = z - z.max(1, keepdims=True)
        return float(np.mean(np.log(np.exp(z).sum(1)) - z[np.arange(len(z)), targets]))

    found = minimize_scalar(nll, bounds=(-LOG_T_RANGE, LOG_T_RANGE), method="bounded")
    return float(np.exp(found.x))


def fit_calibration(task: str, oof: Any, targets: np.ndarray, how: str) -> dict[str, Any] | None:
    """The temperature of a multiclass model, fitted on out-of-fold raw outputs ``oof`` = (row indices,
    outputs) of its recipe, whose true classes are ``targets[indices]``; ``None`` for other tasks or
    without out-of-fold outputs."""
    if task != "multiclass" or oof is None:
        return None
    idx, outputs = oof
    logits = np.asarray(outputs.numpy() if hasattr(outputs, "numpy") else outputs, dtype=np.float64)
    t = fit_temperature(logits, np.asarray(targets)[idx])
    return {"temperature": t, "fitted_on": f"out-of-fold outputs of {len(idx)} training examples ({how})"}


def scale(outputs: Any, calibration: dict[str, Any] | None) -> Any:
    """Raw outputs (logits) divided by the fitted temperature; unchanged without one."""
    if not calibration:
        return outputs
    return outputs / calibration["temperature"]


def calibration_report(
    calibration: dict[str, Any], before: np.ndarray, after: np.ndarray, targets: np.ndarray
) -> dict[str, Any]:
    """The fitted temperature with ECE and the reliability table on the test rows, before and after."""
    return calibration | {
        "ece_before": expected_calibration_error(before, targets),
        "ece_after": expected_calibration_error(after, targets),
        "reliability_before": reliability_table(before, targets),
        "reliability_after": reliability_table(after, targets),
    }
