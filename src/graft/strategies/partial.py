"""``partial``: the top layer groups (``--unfreeze-top``, default 2) and the head train."""

from __future__ import annotations

from graft.config import StrategyConfig
from graft.errors import ConfigError
from graft.strategies import register_strategy
from graft.strategies.base import FineTune, Phase, Plan, decayed_scales

DEFAULT_UNFREEZE_TOP = 2


class Partial(FineTune):
    """Helps with a few hundred labels per class and more: the most task-specific (top) layers adapt
    while the general lower layers keep their pretrained weights. Cheaper than ``full`` per step."""

    name = "partial"
    summary = "the top layer groups (--unfreeze-top, default 2) + head fine-tune; the rest stays frozen"

    def plan(self, cfg: StrategyConfig, groups: list[str]) -> Plan:
        top = cfg.unfreeze_top or DEFAULT_UNFREEZE_TOP
        if top > len(groups):
            raise ConfigError(
                f"unfreeze_top={top} but the backbone has only {len(groups)} layer groups "
                f"({', '.join(groups)}); use --strategy full to train all of them"
            )
        trained = tuple(groups[-top:])
        phase = Phase(self.name, trained, decayed_scales(trained, cfg.layer_lr_decay))
        return Plan(
            self.name, (phase,), frozen_backbone=False, reason=f"training {', '.join(trained)} + head"
        )


register_strategy(Partial())
