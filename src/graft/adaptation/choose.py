"""Running the adapters, measuring them against doing nothing, and choosing on that evidence.

With labeled target rows (``--target-val``), every candidate, ``none`` included, predicts them; a method
replaces ``none`` only when the paired 95% interval of its difference with ``none`` on the selection
metric lies above 0 (both scored on the same rows): a method that does not beat ``none`` is not applied.
Without labels, information maximisation ranks the candidates (confident predictions that still use
every class) and the report says the choice is unverified.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from graft.adaptation.base import Skipped, Target, get_adapter

if TYPE_CHECKING:
    from graft.api import Model
    from graft.data import Dataset

IM_SAMPLE = 5000  # target inputs scored for information maximisation, at most


@dataclass
class Candidate:
    name: str
    model: Model | None
    seconds: float = 0.0
    skipped: str | None = None


def run_adapters(model: Model, target: Target, methods: list[str]) -> list[Candidate]:
    """``none`` (the source model) and every method in ``methods``, adapted from the source model;
    a method that does not apply is kept with the reason."""
    candidates = [Candidate("none", model)]
    for name in methods:
        adapter = get_adapter(name)
        reason = adapter.applies(model, target)
        if reason is None:
            target.say(f"adapt: {name}")
            t = time.perf_counter()
            try:
                candidates.append(Candidate(name, adapter.adapt(model, target), time.perf_counter() - t))
                continue
            except Skipped as exc:
                reason = str(exc)
        target.say(f"adapt: {name} skipped: {reason}")
        candidates.append(Candidate(name, None, skipped=reason))
    return candidates


def score(
    candidates: list[Candidate], data: Dataset, metric: str, seed: int = 0
) -> dict[str, dict[str, Any]]:
    """Each adapted candidate on labeled ``data``: the metric with its 95% interval, and its paired
    difference with ``none`` on the same rows."""
    from graft.evaluation import evaluate_predictions
    from graft.evaluation.comparison import paired_difference
    from graft.evaluation.outputs import predicted_targets

    predictions = {}
    for c in candidates:
        if c.model is not None:
            activated = c.model.activated(data.examples)
            predictions[c.name] = predicted_targets(
                c.model.task, activated, c.model.manifest_.get("thresholds")
            )
    base = candidates[0].model
    assert base is not None
    out = {}
    for name, predicted in predictions.items():
        result = evaluate_predictions(base.task, data.targets, predicted, base.label_space, seed=seed)
        row = {"value": result.metrics[metric], "interval_95": result.intervals.get(metric)}
        if name != "none":
            diff = paired_difference(
                base.task, data.targets, predicted, predictions["none"], len(base.label_space), seed
            )
            row["vs_none"] = diff[metric]
        out[name] = row
    return out


def _reason(chosen: str, strict: bool, n: int, metric: str, scores: dict[str, Any]) -> str:
    if chosen == "none":
        what = "paired 95% interval of the difference" if strict else "difference"
        return (
            f"no method beat none on the {n} labeled target rows (every {what} in {metric} reaches 0 or "
            "below): the source model is kept"
        )
    lead = f"({metric} {scores[chosen]['value']:.3f} against {scores['none']['value']:.3f}"
    if strict:
        return f"{chosen} beat none on the {n} labeled target rows {lead}; paired 95% interval above 0)"
    return (
        f"{chosen} led none on the {n} labeled target rows {lead}; --rule lead: a lead, not a confirmed gain)"
    )


def information_maximisation(model: Model, examples: list[Any], seed: int = 0) -> float:
    """Entropy of the mean prediction minus the mean entropy of the predictions on unlabeled inputs
    (higher: confident predictions that still spread over the classes; Hu et al. 2017, SHOT)."""
    rng = np.random.default_rng(seed)
    if len(examples) > IM_SAMPLE:
        examples = [examples[i] for i in rng.choice(len(examples), IM_SAMPLE, replace=False)]
    p = np.clip(model.activated(examples), 1e-12, 1.0)
    mean = p.mean(0)
    return float(-(mean * np.log(mean)).sum() + (p * np.log(p)).sum(1).mean())


RULES = ("strict", "lead")


def choose(
    candidates: list[Candidate], target: Target, val: Dataset | None, metric: str, rule: str = "strict"
) -> tuple[str, dict[str, Any]]:
    """(the chosen candidate's name, the evidence). ``rule`` on labeled rows: ``strict`` adopts a
    method only when the paired 95% interval of its difference with none lies above 0; ``lead`` when
    its difference is above 0 (more gains kept, and sometimes a loss: see docs/adaptation.md)."""
    adapted = [c for c in candidates if c.model is not None]
    if val is not None:
        scores = score(adapted, val, metric, target.seed)
        strict = rule == "strict"

        def beats(row: dict[str, Any]) -> bool:
            diff = row["vs_none"]
            return (diff["interval_95"][0] if strict else diff["difference"]) > 0

        better = [name for name, row in scores.items() if name != "none" and beats(row)]
        # the best score; among equals, the one whose paired interval starts highest
        chosen = max(better, key=lambda n: (scores[n]["value"], scores[n]["vs_none"]["interval_95"][0]),
                     default="none")  # fmt: skip
        return chosen, {
            "chosen_on": f"{len(val)} labeled target rows", "metric": metric, "scores": scores,
            "verified": True, "rule": rule, "reason": _reason(chosen, strict, len(val), metric, scores),
        }  # fmt: skip
    if adapted[0].model is not None and adapted[0].model.task != "multiclass":
        return "none", {"verified": False, "reason": "no labeled target rows, and no unlabeled criterion for "
                        f"{adapted[0].model.task} models: the source model is kept"}  # fmt: skip
    im = {c.name: information_maximisation(c.model, target.examples, target.seed) for c in adapted}  # type: ignore[arg-type]
    best = max(im, key=im.__getitem__)
    chosen = best if im[best] > im["none"] else "none"
    scored = min(len(target.examples), IM_SAMPLE)
    return chosen, {
        "chosen_on": f"information maximisation on {scored} unlabeled target inputs",
        "scores": {name: {"information_maximisation": value} for name, value in im.items()},
        "verified": False,
        "reason": f"{chosen} scored best on an unsupervised criterion (information maximisation); no labeled "
        "target data checked it: the choice is unverified, and adaptation can hurt. Pass --target-val with a "
        "few labeled target examples per class to choose on evidence",
    }
