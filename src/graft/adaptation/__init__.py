"""Domain adaptation with unlabeled target data, chosen on evidence (``graft adapt``).

See ``docs/adaptation.md``: the methods (:mod:`norm`, :mod:`selftrain`, :mod:`coral`), when each
helps, and how the choice is made (:mod:`choose`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from graft.adaptation.base import (
    Adapter,
    Skipped,
    Target,
    copy_model,
    get_adapter,
    list_adapters,
    register_adapter,
)

if TYPE_CHECKING:
    from graft.api import Model
    from graft.data import Dataset


def adapt_model(
    model: Model,
    target: Target,
    *,
    methods: list[str] | None = None,
    val: Dataset | None = None,
    test: Dataset | None = None,
    rule: str = "strict",
) -> tuple[Model, dict[str, Any]]:
    """Every method (default: all registered) adapted from ``model``, the choice made on ``val`` (or
    without labels, unverified), every candidate scored on ``test``: (the chosen model, a copy carrying
    the ``adaptation`` record; the record)."""
    from graft.adaptation.choose import RULES, choose, run_adapters, score
    from graft.errors import ConfigError
    from graft.evaluation.metrics import selection_metric

    names = methods or list(list_adapters())
    for name in names:
        get_adapter(name)  # an unknown name fails before any work
    if rule not in RULES:
        raise ConfigError(f"--rule must be one of {', '.join(RULES)}, got {rule!r}")
    candidates = run_adapters(model, target, names)
    labeled = val if val is not None else test
    metric = selection_metric(model.task, labeled.targets) if labeled is not None else "accuracy"
    chosen, evidence = choose(candidates, target, val, metric, rule)
    adapted = [c for c in candidates if c.model is not None]
    record = {
        "method": chosen,
        "target_inputs": len(target.examples),
        "source_data": target.source.source if target.source is not None else None,
        "evidence": evidence,
        "test": {"rows": len(test), "metric": metric, "scores": score(adapted, test, metric, target.seed)}
        if test is not None else None,
        "skipped": {c.name: c.skipped for c in candidates if c.skipped},
        "seconds": {c.name: round(c.seconds, 2) for c in adapted},
    }  # fmt: skip
    result = next(c.model for c in adapted if c.name == chosen)
    return copy_model(result, adaptation=record), record


__all__ = ["Adapter", "Skipped", "Target", "adapt_model", "get_adapter", "list_adapters", "register_adapter"]
