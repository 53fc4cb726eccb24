"""``gradual``: ULMFiT-style gradual unfreezing, one more layer group from the top at each phase."""

from __future__ import annotations

from graft.config import StrategyConfig
from graft.strategies import register_strategy
from graft.strategies.base import FineTune, Phase, Plan, decayed_scales

# Phases beyond this many unfreeze the remaining groups together (a 12-block ViT would otherwise
# need 13 epochs before the lowest group ever trains).
MAX_PHASES = 4


class Gradual(FineTune):
    """Helps when full fine-tuning forgets: the head and the top group adapt first, lower groups join
    one phase (epoch) at a time, each new group at the schedule's current learning rate (the rate
    continues across an unfreeze instead of restarting its warm-up; Howard & Ruder 2018)."""

    name = "gradual"
    summary = "unfreezes one more layer group from the top each epoch (ULMFiT); rate continuous"

    def plan(self, cfg: StrategyConfig, groups: list[str]) -> Plan:
        phases = []
        for k in range(1, min(len(groups), MAX_PHASES) + 1):
            trained = tuple(groups[-k:]) if k < MAX_PHASES else tuple(groups)
            phases.append(
                Phase(f"gradual {k}", trained, decayed_scales(trained, cfg.layer_lr_decay), epochs=1)
            )
        reason = f"{len(phases)} phases of one epoch, from {phases[0].train_groups[0]} down to all groups"
        return Plan(self.name, tuple(phases), frozen_backbone=False, reason=reason)


register_strategy(Gradual())
