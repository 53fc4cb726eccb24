"""The operational meaning of errors: which classes are confused, on which inputs, and the test
examples the model gets most wrong (highest log loss).

Example:
    >>> import numpy as np
    >>> proba = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3]])
    >>> r = error_analysis(["a", "b", "c"], np.array([0, 0, 1]), proba, ("x", "y"))
    >>> r["confused_pairs"][0]["true"], r["confused_pairs"][0]["predicted"], r["confused_pairs"][0]["count"]
    ('x', 'y', 1)
"""

from __future__ import annotations

from typing import Any

import numpy as np

PAIRS, EXAMPLES_PER_PAIR, HARDEST = 5, 3, 10
TEXT_CHARS = 200


def _shown(example: Any) -> str:
    text = str(example)
    return text if len(text) <= TEXT_CHARS else text[: TEXT_CHARS - 1] + "…"


def error_analysis(
    examples: list[Any], targets: np.ndarray, proba: np.ndarray, label_space: tuple[Any, ...]
) -> dict[str, Any]:
    """Most-confused (true, predicted) pairs with example inputs, and the hardest test examples."""
    targets = np.asarray(targets)
    predicted = proba.argmax(1)
    wrong = np.flatnonzero(predicted != targets)
    pairs: dict[tuple[int, int], list[int]] = {}
    for i in wrong:
        pairs.setdefault((int(targets[i]), int(predicted[i])), []).append(int(i))
    ranked = sorted(pairs.items(), key=lambda kv: (-len(kv[1]), kv[0]))[:PAIRS]
    p_true = np.clip(proba[np.arange(len(targets)), targets], 1e-15, 1.0)
    hardest = np.argsort(p_true, kind="stable")[:HARDEST]
    return {
        "confused_pairs": [
            {
                "true": str(label_space[t]),
                "predicted": str(label_space[p]),
                "count": len(rows),
                "share_of_true_class": len(rows) / max(1, int(np.sum(targets == t))),
                "examples": [_shown(examples[i]) for i in rows[:EXAMPLES_PER_PAIR]],
            }
            for (t, p), rows in ranked
        ],
        "hardest": [
            {
                "input": _shown(examples[i]),
                "true": str(label_space[targets[i]]),
                "predicted": str(label_space[predicted[i]]),
                "p_true": float(p_true[i]),
                "confidence": float(proba[i].max()),
                "loss": float(-np.log(p_true[i])),
            }
            for i in hardest
            if predicted[i] != targets[i] or p_true[i] < 0.5
        ],
    }
