"""Strategies: which layer groups train, in which phases, at which learning rates — one file each.

Every strategy is a :class:`Strategy` registered here by name; ``fit`` looks it up and never branches
on it. ``auto`` is not a strategy but a policy (:mod:`graft.strategies.auto`) that scores the
plausible ones on the training data and keeps the best. See docs/strategies.md for when each helps.

Example:
    >>> sorted(list_strategies())[:3]
    ['bitfit', 'contrastive', 'full']
    >>> get_strategy("linear_probe").frozen_backbone
    True
"""

from __future__ import annotations

from graft.errors import ConfigError
from graft.strategies.base import (
    BoundPhase,
    FineTune,
    Phase,
    Plan,
    Strategy,
    bind,
    param_groups,
    set_frozen,
    set_train_mode,
    set_trainable,
)

_REGISTRY: dict[str, Strategy] = {}
_BUILTIN = ("linear_probe", "contrastive", "bitfit", "lora", "partial", "gradual", "full")


def register_strategy(strategy: Strategy) -> Strategy:
    """Make ``strategy`` available as ``--strategy NAME`` (and to ``auto``)."""
    if not strategy.name or strategy.name == "auto":
        raise ValueError(f"a strategy needs a name other than 'auto', got {strategy.name!r}")
    _REGISTRY[strategy.name] = strategy
    return strategy


def get_strategy(name: str) -> Strategy:
    _load_builtin()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(
            f"unknown strategy {name!r}; expected auto or one of {', '.join(sorted(_REGISTRY))}"
        ) from None


def list_strategies() -> dict[str, Strategy]:
    _load_builtin()
    return dict(_REGISTRY)


def _load_builtin() -> None:
    import importlib

    for name in _BUILTIN:  # each module registers itself on import
        importlib.import_module(f"graft.strategies.{name}")


__all__ = [
    "BoundPhase",
    "FineTune",
    "Phase",
    "Plan",
    "Strategy",
    "bind",
    "get_strategy",
    "list_strategies",
    "param_groups",
    "register_strategy",
    "set_frozen",
    "set_train_mode",
    "set_trainable",
]
