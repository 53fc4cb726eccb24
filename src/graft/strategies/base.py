"""What every strategy is: a :class:`Strategy` plug-in, the :class:`Plan` of phases it trains, and the
binding of a phase to a model (the only place ``requires_grad`` is written).

A strategy is one file in this package, registered with :func:`graft.strategies.register_strategy`. It
declares whether it trains on cached features (the backbone stays frozen) or through the engine, which
tasks and backbones it applies to, how to choose its settings on folds of the training data
(:meth:`Strategy.select`) and how to train one model with chosen settings (:meth:`Strategy.train`).
Both run through a :class:`graft.recipe.Workbench`, which owns the pretrained backbone, the feature
cache and the engine; strategies never run a loop or touch a file themselves.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from graft.config import StrategyConfig, TrainConfig
from graft.errors import ConfigError

if TYPE_CHECKING:
    from torch import nn

    from graft.data import Dataset
    from graft.recipe import Selection, Trained, Workbench


@dataclass(frozen=True)
class Phase:
    """One stretch of training: these backbone groups (and always the head) train.

    Attributes:
        name: shown in progress and logs.
        train_groups: names of the backbone's trainable layer groups.
        lr_scales: multiplier of the backbone learning rate per trainable group.
        epochs: epochs of this phase; ``None`` uses the run's ``epochs``.
        params: a regex on parameter names within the trainable groups (e.g. only biases for BitFit,
            only adapter weights for LoRA); ``None`` trains every parameter of those groups.
    """

    name: str
    train_groups: tuple[str, ...]
    lr_scales: dict[str, float] = field(default_factory=dict)
    epochs: int | None = None
    params: str | None = None


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
                {
                    "name": p.name,
                    "train_groups": list(p.train_groups),
                    "lr_scales": dict(p.lr_scales),
                    **({"epochs": p.epochs} if p.epochs else {}),
                    **({"params": p.params} if p.params else {}),
                }
                for p in self.phases
            ],
        }


class Strategy:
    """A way of adapting a pretrained backbone; subclasses are registered by ``name``.

    Class attributes:
        name: the ``--strategy`` value.
        frozen_backbone: ``True`` when the backbone never trains (the strategy works on cached
            features); ``False`` when it trains through the engine.
        tasks: the tasks it supports.
        summary: one line for ``--help`` and ``docs/strategies.md``: what trains.
    The class docstring says when the strategy helps.
    """

    name: ClassVar[str] = ""
    frozen_backbone: ClassVar[bool] = False
    tasks: ClassVar[tuple[str, ...]] = ("multiclass", "multilabel", "regression")
    summary: ClassVar[str] = ""

    def unavailable(self, backbone: Any, task: str) -> str | None:
        """Why this strategy cannot train ``backbone`` for ``task`` (``None``: it can)."""
        if task not in self.tasks:
            return f"{self.name} supports {', '.join(self.tasks)} tasks, not {task}"
        return None

    def plan(self, cfg: StrategyConfig, groups: list[str]) -> Plan:
        """The phases of training for a backbone with these layer groups (input side first)."""
        return Plan(self.name, (Phase("head", ()),), frozen_backbone=True, reason=self.summary)

    def select(self, bench: Workbench, train: Dataset, folds: list[Any]) -> Selection:
        """Choose this strategy's settings on ``folds`` of ``train`` (k-fold or one hold-out).

        The default trains one model per fold and keeps the folds' mean best epoch."""
        from graft.recipe import cross_validate

        return cross_validate(self, bench, train, folds)

    def train(
        self, bench: Workbench, train: Dataset, val: Dataset | None, settings: dict[str, Any]
    ) -> Trained:
        """One model trained on ``train`` with ``settings`` (from :meth:`select`); ``val`` (may be
        ``None``) is for early stopping and is never trained on."""
        raise NotImplementedError


# --------------------------------------------------------------------------------------------------
# binding a plan to a model (the only place requires_grad is written)


def _groups(model: nn.Module) -> dict[str, dict[str, Any]]:
    return {g.name: g.params for g in model.backbone.layer_groups()}


def set_trainable(model: nn.Module, phase: Phase) -> None:
    """Freeze every backbone group not in the phase (and, with ``phase.params``, every parameter whose
    name does not match it); the head always trains."""
    groups = _groups(model)
    unknown = set(phase.train_groups) - set(groups)
    if unknown:
        raise ConfigError(f"phase {phase.name!r} names unknown layer groups {sorted(unknown)}")
    pattern = re.compile(phase.params) if phase.params else None
    for name, params in groups.items():
        for param_name, p in params.items():
            wanted = name in phase.train_groups and (pattern is None or bool(pattern.search(param_name)))
            p.requires_grad_(wanted)
    for p in model.head.parameters():
        p.requires_grad_(True)


def set_frozen(module: nn.Module, frozen: bool = True) -> None:
    """Freeze (or unfreeze) every parameter of ``module``: for strategies that train a whole backbone
    outside the phase machinery (contrastive body tuning) or keep it fixed."""
    for p in module.parameters():
        p.requires_grad_(not frozen)


def batch_norm_types() -> tuple[type, ...]:
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
    batch_norms = batch_norm_types()
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


class FineTune(Strategy):
    """Base of the strategies whose backbone trains through the engine: :meth:`plan` names the phases,
    the workbench runs them (starting from the linear probe's head, LP-FT, unless ``--head-init random``)."""

    frozen_backbone = False

    def prepare(self, network: nn.Module, cfg: StrategyConfig) -> dict[str, Any] | None:
        """Change the network before training (e.g. insert adapters); returns what a bundle must
        record to rebuild the change, or ``None``."""
        return None

    def train(
        self, bench: Workbench, train: Dataset, val: Dataset | None, settings: dict[str, Any]
    ) -> Trained:
        return bench.finetune(self, train, val, settings)


def decayed_scales(trained: tuple[str, ...], decay: float) -> dict[str, float]:
    """Discriminative learning rates: the top trained group gets the full rate, each lower one x decay."""
    return {g: decay**depth for depth, g in enumerate(reversed(trained))}
