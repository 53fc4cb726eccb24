"""Strategies: which layer groups train, in which phases, at which learning rates.

A strategy is data: a :class:`Plan` of :class:`Phase` s naming trainable layer groups. Binding a
plan to a model gives the engine phases it can run without knowing what they mean. This is the only
module that writes ``requires_grad`` (and puts frozen BatchNorm layers in eval mode).

The ``auto`` rule (documented in docs/strategies.md) reads the smallest class's count of training
examples: the fewer labels, the less of the backbone trains.

Example:
    >>> from graft.config import StrategyConfig
    >>> plan = plan_strategy(StrategyConfig(kind="auto"), ["embeddings", "layer.0", "layer.1"], 40)
    >>> plan.kind, plan.frozen_backbone
    ('linear_probe', True)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from graft.config import StrategyConfig, TrainConfig
from graft.errors import ConfigError

if TYPE_CHECKING:
    from torch import nn

STRATEGIES = ("linear_probe", "partial", "full")
# The auto rule's thresholds on the smallest class's training examples. Measured on SST-2 with
# MiniLM (docs/strategies.md): at ~300 per class the probe beat partial and full fine-tuning; at
# ~2300 per class full fine-tuning beat both.
AUTO_PROBE_BELOW = 500
AUTO_PARTIAL_BELOW = 1500
DEFAULT_UNFREEZE_TOP = 2


@dataclass(frozen=True)
class Phase:
    """One stretch of training: these backbone groups (and always the head) train.

    Attributes:
        name: shown in progress and logs.
        train_groups: names of the backbone's trainable layer groups.
        lr_scales: multiplier of the backbone learning rate per trainable group.
        epochs: epochs of this phase; ``None`` uses the run's ``epochs``.
    """

    name: str
    train_groups: tuple[str, ...]
    lr_scales: dict[str, float] = field(default_factory=dict)
    epochs: int | None = None


@dataclass(frozen=True)
class Plan:
    """A resolved strategy: what trains, and why this was chosen."""

    kind: str
    phases: tuple[Phase, ...]
    frozen_backbone: bool
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "frozen_backbone": self.frozen_backbone,
            "reason": self.reason,
            "phases": [
                {"name": p.name, "train_groups": list(p.train_groups), "lr_scales": dict(p.lr_scales)}
                for p in self.phases
            ],
        }


def auto_kind(min_per_class: int | None, n_train: int) -> tuple[str, str]:
    """The auto rule: a strategy from the smallest class's count of training examples."""
    if min_per_class is None:  # regression: count examples, scaled to a comparable size
        n, what = (
            n_train // 10,
            f"{n_train} training examples (regression, counted as {n_train // 10} per class)",
        )
    else:
        n, what = min_per_class, f"{min_per_class} training examples in the smallest class"
    if n < AUTO_PROBE_BELOW:
        return "linear_probe", (
            f"auto: {what} (< {AUTO_PROBE_BELOW}): frozen backbone + linear head on cached features; "
            "too few labels to move the backbone safely"
        )
    if n < AUTO_PARTIAL_BELOW:
        return "partial", (
            f"auto: {what} ({AUTO_PROBE_BELOW}-{AUTO_PARTIAL_BELOW - 1}): fine-tune the top "
            f"{DEFAULT_UNFREEZE_TOP} layer groups + head"
        )
    return "full", f"auto: {what} (>= {AUTO_PARTIAL_BELOW}): fine-tune the whole backbone + head"


def plan_strategy(
    cfg: StrategyConfig, group_names: list[str], min_per_class: int | None, n_train: int | None = None
) -> Plan:
    """Resolve a strategy config against a backbone's layer groups (input side first)."""
    kind, reason = cfg.kind, f"strategy {cfg.kind!r} as requested"
    if kind == "auto":
        kind, reason = auto_kind(min_per_class, n_train or 0)
    if kind == "linear_probe":
        return Plan(kind, (Phase("head", ()),), frozen_backbone=True, reason=reason)
    if kind == "partial":
        top = cfg.unfreeze_top or DEFAULT_UNFREEZE_TOP
        if top > len(group_names):
            raise ConfigError(
                f"unfreeze_top={top} but the backbone has only {len(group_names)} layer groups "
                f"({', '.join(group_names)}); use --strategy full to train all of them"
            )
        trained = tuple(group_names[-top:])
        reason += f"; training {', '.join(trained)} + head"
    elif kind == "full":
        trained = tuple(group_names)
    else:
        raise ConfigError(f"unknown strategy {kind!r}; expected auto or one of {', '.join(STRATEGIES)}")
    # Discriminative learning rates: the top trained group gets the full rate, each lower one x decay.
    scales = {g: cfg.layer_lr_decay**depth for depth, g in enumerate(reversed(trained))}
    return Plan(kind, (Phase(kind, trained, scales),), frozen_backbone=False, reason=reason)


# --------------------------------------------------------------------------------------------------
# binding a plan to a model (the only place requires_grad is written)


def _groups(model: nn.Module) -> dict[str, dict[str, Any]]:
    return {g.name: g.params for g in model.backbone.layer_groups()}


def set_trainable(model: nn.Module, phase: Phase) -> None:
    """Freeze every backbone group not in the phase; the head always trains."""
    groups = _groups(model)
    unknown = set(phase.train_groups) - set(groups)
    if unknown:
        raise ConfigError(f"phase {phase.name!r} names unknown layer groups {sorted(unknown)}")
    for name, params in groups.items():
        for p in params.values():
            p.requires_grad_(name in phase.train_groups)
    for p in model.head.parameters():
        p.requires_grad_(True)


def _batch_norm_types() -> tuple[type, ...]:
    from torch import nn

    return (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def set_train_mode(model: nn.Module, freeze_bn_stats: bool = False) -> None:
    """Training mode, except BatchNorm layers with frozen parameters stay in eval mode.

    Frozen BN layers in train mode would keep updating their running statistics (Keras #9965).
    With ``freeze_bn_stats`` every BN layer of the backbone stays in eval mode: its affine
    parameters still train, but it normalises with the pretrained running statistics instead of
    those of small, noisy batches (the usual choice when fine-tuning on little data).
    """
    model.train()
    batch_norms = _batch_norm_types()
    for module in model.backbone.modules():
        if isinstance(module, batch_norms) and (
            freeze_bn_stats or not any(p.requires_grad for p in module.parameters(recurse=False))
        ):
            module.eval()


def param_groups(model: nn.Module, phase: Phase, train: TrainConfig) -> list[dict[str, Any]]:
    """Optimizer parameter groups, each parameter in exactly one, named for checkpoints.

    Biases and normalisation weights (1-d parameters) get no weight decay.
    """
    out: list[dict[str, Any]] = []
    groups = _groups(model)

    def add(name: str, named: list[tuple[str, Any]], lr: float) -> None:
        decay = [(n, p) for n, p in named if p.ndim > 1]
        no_decay = [(n, p) for n, p in named if p.ndim <= 1]
        for suffix, members, wd in (("decay", decay, train.weight_decay), ("no_decay", no_decay, 0.0)):
            if members:
                out.append(
                    {
                        "params": [p for _, p in members],
                        "param_names": [n for n, _ in members],
                        "lr": lr,
                        "weight_decay": wd,
                        "group": f"{name}/{suffix}",
                    }
                )

    for name in phase.train_groups:
        named = [(f"backbone.{n}", p) for n, p in groups[name].items() if p.requires_grad]
        add(name, named, train.lr * phase.lr_scales.get(name, 1.0))
    add("head", [(f"head.{n}", p) for n, p in model.head.named_parameters()], train.head_lr)
    return out


@dataclass
class BoundPhase:
    """A phase bound to a run's settings: the hooks the engine calls."""

    phase: Phase
    train: TrainConfig
    freeze_bn_stats: bool = False

    @property
    def name(self) -> str:
        return self.phase.name

    @property
    def epochs(self) -> int:
        return self.phase.epochs or self.train.epochs

    def enter(self, model: nn.Module) -> None:
        set_trainable(model, self.phase)

    def train_mode(self, model: nn.Module) -> None:
        set_train_mode(model, self.freeze_bn_stats)

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        return param_groups(model, self.phase, self.train)


def bind(plan: Plan, train: TrainConfig, freeze_bn_stats: bool = False) -> list[BoundPhase]:
    return [BoundPhase(phase, train, freeze_bn_stats) for phase in plan.phases]


__all__ = [
    "STRATEGIES",
    "BoundPhase",
    "Phase",
    "Plan",
    "auto_kind",
    "bind",
    "param_groups",
    "plan_strategy",
    "set_train_mode",
    "set_trainable",
]
