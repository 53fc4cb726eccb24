"""``bitfit``: only the backbone's bias terms (and the head) train (Ben Zaken et al. 2022)."""

from __future__ import annotations

from graft.config import StrategyConfig
from graft.strategies import register_strategy
from graft.strategies.base import FineTune, Phase, Plan

# Parameter names of bias terms (torch: ``.bias``; some timm/HF layers: ``bias_*``).
BIASES = r"(^|\.)bias(_\w+)?$"


class BitFit(FineTune):
    """Helps when full fine-tuning overfits but the probe underfits: moving only the biases (~0.1% of
    the parameters) shifts every layer's features a little, with few enough parameters for a few
    hundred labels. As cheap per step as a fine-tune of the whole network (the backward pass still
    runs through every layer), but small to store and hard to overfit."""

    name = "bitfit"
    summary = "only the backbone's bias terms + head train (~0.1% of the parameters)"
    relative_cost = 0.8

    def plan(self, cfg: StrategyConfig, groups: list[str]) -> Plan:
        phase = Phase(self.name, tuple(groups), params=BIASES)
        return Plan(self.name, (phase,), frozen_backbone=False, reason="training every bias term + head")


register_strategy(BitFit())
