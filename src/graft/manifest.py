"""The values of a bundle's manifest (``graft.json``), checked before any of them is used.

The integrity record (:mod:`graft.bundle`) proves that a manifest is the one that was saved; it does
not prove that what was saved makes sense: someone who recomputes the digests ("reseals" the bundle)
can write anything. Every value that loading, ``predict``, ``evaluate``, ``serve`` or ``export`` reads
is checked here, and every problem is named at once, e.g.
``graft.json: head.in_dim must be a positive integer, got 'abc'``.

Example:
    >>> manifest_problems({"task": "multiclass", "label_space": []})[:2]
    ['graft.json: label_space must be a non-empty list of labels, got []', 'graft.json: contract is missing']
"""

from __future__ import annotations

import math
import re
from typing import Any

TASKS = ("multiclass", "multilabel", "regression")
MODALITIES = ("text", "image", "audio")
_WHERE = "graft.json"


def manifest_problems(manifest: dict[str, Any]) -> list[str]:
    """Every value of ``manifest`` that graft would misuse or crash on, as one sentence each."""
    problems: list[str] = []

    def need(key: str, ok: bool, what: str, value: Any) -> None:
        if not ok:
            problems.append(f"{_WHERE}: {key} must be {what}, got {_show(value)}")

    task = manifest.get("task")
    need("task", task in TASKS, f"one of {', '.join(TASKS)}", task)
    k = _label_space(manifest.get("label_space"), task, need)
    for key in ("contract", "backbone", "head", "strategy", "majority"):
        if not isinstance(manifest.get(key), dict):
            problems.append(
                f"{_WHERE}: {key} is missing" if key not in manifest else f"{_WHERE}: {key} must be an object"
            )
    if isinstance(manifest.get("contract"), dict):
        _contract(manifest["contract"], need)
    if isinstance(manifest.get("backbone"), dict):
        spec = manifest["backbone"]
        need("backbone.kind", isinstance(spec.get("kind"), str), "a text", spec.get("kind"))
        need("backbone.source", isinstance(spec.get("source"), str), "a text", spec.get("source"))
    if isinstance(manifest.get("head"), dict):
        _head(manifest["head"], task, k, need)
    if isinstance(manifest.get("strategy"), dict):
        strategy = manifest["strategy"]
        need("strategy.kind", isinstance(strategy.get("kind"), str), "a text", strategy.get("kind"))
        frozen = strategy.get("frozen_backbone", False)
        need("strategy.frozen_backbone", isinstance(frozen, bool), "true or false", frozen)
    if isinstance(manifest.get("majority"), dict) and k is not None:
        _majority(manifest["majority"], task, k, need)
    _decisions(manifest, task, k, need)
    for key in ("metrics", "provenance"):
        need(key, isinstance(manifest.get(key, {}), dict), "an object", manifest.get(key))
    return problems


def _label_space(labels: Any, task: Any, need: Any) -> int | None:
    """The number of classes (0 for regression), or ``None`` when the label space is unusable."""
    if task == "regression":
        need("label_space", labels == [], "an empty list for a regression model", labels)
        return 0 if labels == [] else None
    ok = isinstance(labels, list) and bool(labels)
    need("label_space", ok, "a non-empty list of labels", labels)
    if not ok:
        return None
    odd = [x for x in labels if not _scalar(x)]
    need("label_space", not odd, "a list of texts, numbers or booleans", odd[:3])
    duplicates = sorted({repr(x) for i, x in enumerate(labels) if x in labels[:i]})
    need(
        "label_space",
        not duplicates,
        f"a list of distinct labels (repeated: {', '.join(duplicates)})",
        labels,
    )
    return len(labels) if not odd and not duplicates else None


def _contract(contract: dict[str, Any], need: Any) -> None:
    modality = contract.get("modality")
    need("contract.modality", modality in MODALITIES, f"one of {', '.join(MODALITIES)}", modality)
    pre = contract.get("preprocessing", {})
    need("contract.preprocessing", isinstance(pre, dict), "an object", pre)
    for key in ("text_col", "path_col", "label_col"):
        value = contract.get(key)
        need(f"contract.{key}", value is None or isinstance(value, str), "a column name or null", value)
    if "label_regex" in contract:
        regex = contract["label_regex"]
        ok = isinstance(regex, str) and _compiles(regex)
        need("contract.label_regex", ok, "a regular expression", regex)


def _head(head: dict[str, Any], task: Any, k: int | None, need: Any) -> None:
    for key in ("in_dim", "n_outputs"):
        need(f"head.{key}", _positive_int(head.get(key)), "a positive integer", head.get(key))
    n = head.get("n_outputs")
    if k is not None and _positive_int(n):
        expected = 1 if task == "regression" else k
        need("head.n_outputs", n == expected, f"{expected} (one per label of label_space)"
             if task != "regression" else "1 for a regression model", n)  # fmt: skip


def _majority(majority: dict[str, Any], task: Any, k: int, need: Any) -> None:
    if task == "multiclass":
        need("majority.class", _int_in(majority.get("class"), 0, k - 1), f"a class index in 0..{k - 1}",
             majority.get("class"))  # fmt: skip
    elif task == "multilabel":
        labels = majority.get("labels")
        ok = isinstance(labels, list) and len(labels) == k and all(v in (0, 1) for v in labels)
        need("majority.labels", ok, f"a list of {k} zeros and ones", labels)
    elif task == "regression":
        need("majority.mean", _finite(majority.get("mean")), "a finite number", majority.get("mean"))
    if "frequencies" in majority and task != "regression":
        freq = majority["frequencies"]
        ok = isinstance(freq, list) and len(freq) == k and all(_finite(f) and 0 <= f <= 1 for f in freq)
        need("majority.frequencies", ok, f"a list of {k} numbers between 0 and 1", freq)


def _decisions(manifest: dict[str, Any], task: Any, k: int | None, need: Any) -> None:
    """The calibration, abstain threshold, label thresholds and cost matrix ``predict`` applies."""
    # predict applies each of these when it is truthy (as it reads them), so an empty one is absent
    if manifest.get("calibration"):
        t = manifest["calibration"].get("temperature") if isinstance(manifest["calibration"], dict) else None
        need("calibration.temperature", _finite(t) and t > 0, "a positive finite number", t)
    if manifest.get("abstain"):
        rule = manifest["abstain"]
        t = rule.get("threshold") if isinstance(rule, dict) else None
        need("abstain.threshold", _finite(t) and 0 <= t <= 1, "a number between 0 and 1", t)
    if manifest.get("thresholds") is not None:
        cut = manifest["thresholds"]
        ok = isinstance(cut, list) and all(_finite(v) and 0 <= v <= 1 for v in cut)
        need("thresholds", ok and (k is None or len(cut) == k), f"a list of {k} numbers between 0 and 1", cut)
    if manifest.get("costs") and k is not None:
        _costs(manifest["costs"], manifest.get("label_space"), k, need)


def _costs(costs: Any, label_space: Any, k: int, need: Any) -> None:
    if not isinstance(costs, dict):
        need("costs", False, "an object (labels, answers, matrix)", costs)
        return
    labels, answers, matrix = costs.get("labels"), costs.get("answers"), costs.get("matrix")
    ok = labels == [str(x) for x in label_space]
    need("costs.labels", ok, "the labels of label_space, in order", labels)
    ok = isinstance(answers, list) and all(isinstance(a, str) for a in answers) and len(answers) in (k, k + 1)
    need("costs.answers", ok, f"a list of {k} or {k + 1} answers", answers)
    width = len(answers) if ok else None
    rows_ok = (
        isinstance(matrix, list) and len(matrix) == k
        and all(isinstance(r, list) and len(r) == width and all(_finite(c) for c in r) for r in matrix)
    )  # fmt: skip
    need("costs.matrix", rows_ok, f"{k} rows of {width or 'one per answer'} finite numbers", matrix)


def _scalar(value: Any) -> bool:
    return isinstance(value, str | bool) or _finite(value)


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _int_in(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _compiles(pattern: str) -> bool:
    try:
        re.compile(pattern)
    except re.error:
        return False
    return True


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
