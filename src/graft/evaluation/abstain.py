"""Abstaining: answer only when confident enough to reach a target precision.

A multiclass model's confidence is its top (calibrated) probability. Sorting predictions by it gives
the **coverage-accuracy curve**: answering only the most confident x% of inputs, how often is the
answer right? ``--target-precision 0.95`` picks, on the out-of-fold outputs of the recipe (never the
test rows), the lowest confidence threshold whose answered predictions are right at least 95% of the
time; the bundle stores it and ``predict`` answers ``abstain`` below it. The report then shows the
coverage and precision that threshold reached on the test rows, with intervals.

Example:
    >>> import numpy as np
    >>> proba = np.array([[0.95, 0.05], [0.9, 0.1], [0.6, 0.4], [0.55, 0.45]])
    >>> choose_threshold(proba, np.array([0, 0, 1, 0]), 0.9)["threshold"]
    0.9
"""

from __future__ import annotations

from typing import Any

import numpy as np

from graft.evaluation.intervals import wilson

ABSTAIN = "abstain"
# Fewer answered validation rows than this make the chosen threshold a rough guess: the report says so.
THIN_EVIDENCE = 30


def coverage_curve(proba: np.ndarray, targets: np.ndarray, points: int = 50) -> list[dict[str, float]]:
    """Accuracy when answering only the most confident rows, at up to ``points`` coverages."""
    confidence, correct = _ranked(proba, targets)
    n = len(confidence)
    if n == 0:
        return []
    kept = np.unique(np.linspace(1, n, min(points, n)).round().astype(int))
    hits = np.cumsum(correct)
    return [
        {"threshold": float(confidence[k - 1]), "coverage": k / n, "accuracy": float(hits[k - 1] / k)}
        for k in kept
    ]


def choose_threshold(proba: np.ndarray, targets: np.ndarray, target_precision: float) -> dict[str, Any]:
    """The lowest confidence threshold at which the answered rows of ``proba`` are right at least
    ``target_precision`` of the time (ties in confidence are answered together). When no threshold
    reaches it, the highest confidence seen: the model then abstains on nearly everything."""
    confidence, correct = _ranked(proba, targets)
    hits = np.cumsum(correct)
    k = np.arange(1, len(confidence) + 1)
    # a threshold answers every row at or above it: only the last row of a run of equal confidences counts
    last_of_tie = np.append(confidence[1:] != confidence[:-1], True)
    ok = np.flatnonzero((hits / k >= target_precision) & last_of_tie)
    if len(ok):
        i = int(ok[-1])
        threshold, answered, precision = float(confidence[i]), i + 1, float(hits[i] / (i + 1))
    else:
        threshold, answered, precision = float(np.nextafter(confidence[0], np.inf)), 0, float("nan")
    return {
        "threshold": threshold,
        "target_precision": float(target_precision),
        "validation_rows": len(confidence),
        "validation_coverage": answered / max(len(confidence), 1),
        "validation_precision": precision,
        "thin_evidence": answered < THIN_EVIDENCE,
    }


def measure(proba: np.ndarray, targets: np.ndarray, threshold: float) -> dict[str, Any]:
    """Coverage and precision a threshold reaches on labeled rows, with Wilson intervals."""
    confidence = proba.max(1)
    answered = confidence >= threshold
    n, m = len(targets), int(answered.sum())
    right = int(np.sum(proba.argmax(1)[answered] == np.asarray(targets)[answered]))
    return {
        "coverage": m / max(n, 1),
        "coverage_95": list(wilson(m, n)),
        "precision": right / m if m else float("nan"),
        "precision_95": list(wilson(right, m)),
        "answered": m,
        "rows": n,
    }


def _ranked(proba: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Confidences from the highest down, and whether each of those predictions is right."""
    proba = np.asarray(proba, dtype=np.float64)
    confidence = proba.max(1)
    order = np.argsort(-confidence, kind="stable")
    return confidence[order], (proba.argmax(1) == np.asarray(targets))[order]


def abstain_report(
    target_precision: float | None,
    oof_proba: np.ndarray | None,
    oof_targets: np.ndarray | None,
    test_proba: np.ndarray,
    test_targets: np.ndarray,
) -> dict[str, Any]:
    """The coverage-accuracy curve on the test rows and, with a target precision, the threshold chosen
    on the out-of-fold probabilities and what it reached on the test rows."""
    report: dict[str, Any] = {"curve": coverage_curve(test_proba, test_targets)}
    if target_precision is None:
        return report
    if oof_proba is None or len(oof_proba) == 0:
        report["note"] = "no out-of-fold outputs to choose a threshold on: predict never abstains"
        return report
    chosen = choose_threshold(oof_proba, oof_targets, target_precision)
    report |= {"chosen": chosen, "test": measure(test_proba, test_targets, chosen["threshold"])}
    return report
