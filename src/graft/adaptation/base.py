"""The adapter interface and registry.

An adapter turns a source model and unlabeled target inputs (and, for some, the labeled source data)
into an adapted copy of the model; the source model is never modified. Each adapter's docstring says
when it helps; :mod:`graft.adaptation.choose` measures whether it did.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from graft.errors import ConfigError

if TYPE_CHECKING:
    import torch

    from graft.api import Model
    from graft.data import Dataset


class Skipped(Exception):
    """An adapter found, while running, that it cannot adapt this model to this data (the reason)."""


@dataclass
class Target:
    """What adapters work from: the unlabeled target inputs (checked against the model's contract),
    the labeled source data when known, and the run's settings."""

    examples: list[Any]
    source: Dataset | None = None
    seed: int = 0
    progress: bool = False
    say: Callable[[str], None] = print
    # features of the source model's backbone, computed once and shared by the adapters that need them
    cache: dict[str, Any] = field(default_factory=dict)


class Adapter:
    """One adaptation method. Subclasses set ``name`` and implement :meth:`adapt`; :meth:`applies`
    returns why the method cannot run on this model and data (``None``: it can)."""

    name: str = ""
    needs_source: bool = False

    def applies(self, model: Model, target: Target) -> str | None:
        if self.needs_source and target.source is None:
            return "needs the labeled source data (--source, or the bundle's own training file)"
        return None

    def adapt(self, model: Model, target: Target) -> Model:
        raise NotImplementedError


_REGISTRY: dict[str, Adapter] = {}
_BUILTIN = ("norm", "selftrain", "coral")


def register_adapter(adapter: Adapter) -> Adapter:
    """Make ``adapter`` available to ``graft adapt --methods NAME`` (and to the choice)."""
    if not adapter.name or adapter.name == "none":
        raise ValueError(f"an adapter needs a name other than 'none', got {adapter.name!r}")
    _REGISTRY[adapter.name] = adapter
    return adapter


def list_adapters() -> dict[str, Adapter]:
    import importlib

    for name in _BUILTIN:  # each module registers its adapters on import
        importlib.import_module(f"graft.adaptation.{name}")
    return dict(_REGISTRY)


def get_adapter(name: str) -> Adapter:
    adapters = list_adapters()
    if name not in adapters:
        raise ConfigError(f"unknown adaptation method {name!r}; expected one of {', '.join(adapters)}")
    return adapters[name]


def copy_model(model: Model, **manifest: Any) -> Model:
    """An independent copy of ``model`` (weights and manifest), with ``manifest`` entries replaced."""
    from graft.api import Model

    return Model(copy.deepcopy(model.network_), {**copy.deepcopy(model.manifest_), **manifest})


def batchnorm_layers(module: torch.nn.Module) -> list[torch.nn.Module]:
    """The BatchNorm layers of ``module`` that keep running statistics."""
    from graft.strategies.base import batch_norm_types

    return [m for m in module.modules() if isinstance(m, batch_norm_types()) and m.track_running_stats]


# Fitted for the source model's head: a head refit on other features makes them meaningless.
HEAD_FITTED = ("calibration", "abstain", "thresholds")


def model_features(model: Model, examples: list[Any], target: Target, key: str) -> torch.Tensor:
    """The source model's backbone features of ``examples``, computed once per ``key`` and kept in
    ``target.cache`` for the other adapters."""
    from graft.features import extract_features

    if key not in target.cache:
        target.cache[key] = extract_features(
            model.network_.backbone, examples, progress=target.progress, desc=f"features of the {key} inputs"
        )
    return target.cache[key]


def refit_head(model: Model, x: torch.Tensor, y: Any, seed: int) -> Model:
    """A copy of ``model`` whose head is the linear probe on features ``x`` and targets ``y``, its L2
    chosen by 5-fold cross-validation on them (the probe's recipe); the temperature, abstain threshold
    and label thresholds fitted for the old head are dropped."""
    from graft.errors import DataError
    from graft.heads import make_head
    from graft.probe import fit_linear_head, select_l2, stratified_folds
    from graft.recipe import FALLBACK_L2

    try:
        l2 = select_l2(model.task, x, y, folds=stratified_folds(model.task, y, 5, seed)).l2
    except DataError:  # a class with one example: no fold can validate it
        l2 = FALLBACK_L2
    n_outputs = model.network_.head.linear.out_features
    head = make_head(model.task, x.shape[1], n_outputs)
    fit_linear_head(head, x, y, l2)
    adapted = copy_model(model)
    for key in HEAD_FITTED:
        adapted.manifest_.pop(key, None)
    adapted.network_.head = head
    return adapted
