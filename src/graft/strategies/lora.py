"""``lora``: low-rank adapters beside the backbone's attention (or convolution) weights, and the head,
train; the pretrained weights stay fixed (Hu et al. 2022, through PEFT)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from graft.adapters import LORA_PARAMS, add_lora, default_targets, unavailable_reason
from graft.config import StrategyConfig
from graft.strategies import register_strategy
from graft.strategies.base import FineTune, Phase, Plan

if TYPE_CHECKING:
    from torch import nn


# Adapters start at a zero update and are few: they need a larger step than pretrained weights do.
# The LoRA paper used 4e-4 to 5e-4 on RoBERTa-base where full fine-tuning uses 1e-5 to 5e-5, so the
# adapters train at 10x the backbone learning rate (--lr, default 5e-5 -> 5e-4).
LR_SCALE = 10.0


class LoRA(FineTune):
    """Helps where the probe underfits and full fine-tuning overfits or is too large to keep per task:
    every layer's features can move, but only along a low-rank update (``--lora-rank``, default 8) of a
    few projections, typically well under 1% of the parameters. The per-step cost is close to a full
    fine-tune (the backward pass still runs through every layer); the adapters can be merged into the
    weights afterwards (``Model.merge_adapters()``) so prediction costs nothing extra."""

    name = "lora"
    summary = (
        "low-rank adapters on attention (or conv) weights + head train; the pretrained weights stay fixed"
    )
    relative_cost = 0.8

    def unavailable(self, backbone: Any, task: str) -> str | None:
        reason = super().unavailable(backbone, task)
        if reason is None and not default_targets(backbone):
            reason = unavailable_reason(backbone)
        return reason

    def prepare(self, network: nn.Module, cfg: StrategyConfig) -> dict[str, Any] | None:
        return add_lora(network.backbone, rank=cfg.lora_rank, alpha=cfg.lora_alpha)

    def plan(self, cfg: StrategyConfig, groups: list[str]) -> Plan:
        phase = Phase(self.name, tuple(groups), dict.fromkeys(groups, LR_SCALE), params=LORA_PARAMS)
        reason = (
            f"training rank-{cfg.lora_rank} LoRA adapters (alpha {cfg.lora_alpha:g}, at {LR_SCALE:g}x the "
            "backbone learning rate) + head"
        )
        return Plan(self.name, (phase,), frozen_backbone=False, reason=reason)


register_strategy(LoRA())
