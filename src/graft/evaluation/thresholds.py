"""Per-label decision thresholds for multilabel models, chosen on out-of-fold outputs.

A multilabel head scores each label on its own. Answering a label when its probability exceeds 0.5
maximises that label's accuracy, not its F1: for a rare label the F1-optimal threshold is lower
(with calibrated scores it sits at half the best attainable F1; Lipton, Elkan & Naryanaswamy 2014).
graft chooses each label's threshold on the recipe's out-of-fold probabilities (never the test
rows): the cut between two consecutive scores that maximises the label's F1 there. A label with
fewer than :data:`MIN_POSITIVES` out-of-fold positives keeps 0.5: its best cut would follow noise.
The bundle stores the thresholds; ``predict`` and ``evaluate`` apply them.

Example:
    >>> import numpy as np
    >>> p = np.array([0.875, 0.5, 0.375, 0.25, 0.125, 0.0625])
    >>> best_f1_threshold(p, np.array([1, 1, 1, 0, 0, 0]))   # midway between 0.375 and 0.25
    (0.3125, 1.0)
"""

from __future__ import annotations

from typing import Any

import numpy as np

# A label needs this many positives among the out-of-fold predictions for its threshold to move.
MIN_POSITIVES = 10
DEFAULT = 0.5


def best_f1_threshold(scores: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """(threshold, F1) of the cut that maximises F1 when answering ``scores >= threshold``: midway
    between two consecutive distinct scores (ties decide together); the higher cut on equal F1."""
    scores, truth = np.asarray(scores, dtype=np.float64), np.asarray(truth) > 0.5
    order = np.argsort(-scores, kind="stable")
    s, hits = scores[order], np.cumsum(truth[order])
    positives = int(truth.sum())
    if positives == 0:
        return DEFAULT, float("nan")
    k = np.arange(1, len(s) + 1)
    ends = np.flatnonzero(np.append(s[1:] != s[:-1], True))  # the last row of each run of ties
    f1 = 2 * hits[ends] / (k[ends] + positives)
    best = int(ends[int(np.argmax(f1))])
    threshold = (s[best] + s[best + 1]) / 2 if best + 1 < len(s) else s[best]
    return float(threshold), float(f1.max())


def f1_at(scores: np.ndarray, truth: np.ndarray, threshold: float) -> float:
    predicted, truth = np.asarray(scores) >= threshold, np.asarray(truth) > 0.5
    denominator = predicted.sum() + truth.sum()
    return float(2 * (predicted & truth).sum() / denominator) if denominator else float("nan")


def choose_thresholds(proba: np.ndarray, targets: np.ndarray, label_space: list[Any]) -> dict[str, Any]:
    """Each label's threshold from out-of-fold ``proba`` ``[n, labels]`` and 0/1 ``targets``, with the
    out-of-fold F1 at 0.5 and at the chosen threshold."""
    thresholds, detail = [], []
    for j, label in enumerate(label_space):
        scores, truth = proba[:, j], targets[:, j]
        positives = int((truth > 0.5).sum())
        row: dict[str, Any] = {
            "label": str(label),
            "positives": positives,
            "f1_at_0.5": f1_at(scores, truth, DEFAULT),
        }
        if positives < MIN_POSITIVES or positives == len(truth):
            threshold, row["kept"] = DEFAULT, f"{positives} positives out of fold: too few to move it"
        else:
            threshold, _ = best_f1_threshold(scores, truth)
        thresholds.append(threshold)
        detail.append(row | {"threshold": threshold, "f1": f1_at(scores, truth, threshold)})
    return {"thresholds": thresholds, "fitted_on": f"{len(proba)} out-of-fold predictions", "labels": detail}
