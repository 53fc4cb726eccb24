"""The contract suite, run over every registered strategy, plus the auto rule and the BN policy."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from graft.backbones import create_backbone
from graft.backbones.base import Backbone, Contract, LayerGroup
from graft.config import StrategyConfig, TrainConfig
from graft.errors import ConfigError
from graft.heads import TaskModel, make_head
from graft.strategies import STRATEGIES, auto_kind, bind, plan_strategy, set_train_mode


@pytest.fixture
def model(tiny_source) -> TaskModel:
    torch.manual_seed(0)
    bb = create_backbone(tiny_source)
    return TaskModel(bb, make_head("multiclass", bb.feature_dim, 2))


def _steps(model: TaskModel, kind: str, n: int = 3, **strategy):
    groups = [g.name for g in model.backbone.layer_groups()]
    plan = plan_strategy(StrategyConfig(kind=kind, **strategy), groups, min_per_class=10)
    phase = bind(plan, TrainConfig(lr=1e-2, head_lr=1e-2, weight_decay=0.0))[0]
    phase.enter(model)
    param_groups = phase.param_groups(model)
    optimizer = torch.optim.AdamW(param_groups)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    batch = model.backbone.preprocess(["the movie was great", "awful plot", "lovely film", "dull story"])
    targets = torch.tensor([1, 0, 1, 0])
    phase.train_mode(model)
    for _ in range(n):
        optimizer.zero_grad()
        model.head.loss(model(batch), targets).backward()
        optimizer.step()
    return plan, param_groups, before


@pytest.mark.parametrize("kind", STRATEGIES)
def test_frozen_unchanged_trainable_moved_each_in_one_group(model, kind):
    plan, param_groups, before = _steps(model, kind)
    trained = set(plan.phases[0].train_groups)
    expected_trainable = {
        id(p) for g in model.backbone.layer_groups() if g.name in trained for p in g.params.values()
    } | {id(p) for p in model.head.parameters()}
    # each trainable parameter in exactly one optimizer group, matched by identity
    in_groups = [id(p) for g in param_groups for p in g["params"]]
    assert len(in_groups) == len(set(in_groups))
    assert set(in_groups) == expected_trainable
    for name, p in model.named_parameters():
        moved = not torch.equal(before[name], p.detach())
        if id(p) in expected_trainable:
            assert p.requires_grad, name
            # embeddings rows of unused tokens get no gradient; every other trainable tensor moves
            if "word_embeddings" not in name:
                assert moved, f"{kind}: trainable {name} did not move"
        else:
            assert not p.requires_grad, name
            assert not moved, f"{kind}: frozen {name} moved"


def test_group_names_recorded_for_checkpoints(model):
    _, param_groups, _ = _steps(model, "full", n=1)
    named = dict(model.named_parameters())
    for g in param_groups:
        assert [id(named[n]) for n in g["param_names"]] == [id(p) for p in g["params"]]
        assert g["weight_decay"] == 0.0 or all(p.ndim > 1 for p in g["params"])


def test_partial_trains_the_top_groups_with_decayed_rates(model):
    groups = [g.name for g in model.backbone.layer_groups()]
    plan = plan_strategy(StrategyConfig(kind="partial", unfreeze_top=2, layer_lr_decay=0.5), groups, 500)
    assert plan.phases[0].train_groups == ("layer.0", "layer.1")
    assert plan.phases[0].lr_scales == {"layer.1": 1.0, "layer.0": 0.5}
    phase = bind(plan, TrainConfig(lr=1e-3))[0]
    phase.enter(model)
    lrs = {g["group"]: g["lr"] for g in phase.param_groups(model)}
    assert lrs["layer.1/decay"] == pytest.approx(1e-3) and lrs["layer.0/decay"] == pytest.approx(5e-4)
    assert lrs["head/decay"] == pytest.approx(TrainConfig().head_lr)


def test_partial_with_too_many_groups_is_refused(model):
    groups = [g.name for g in model.backbone.layer_groups()]
    with pytest.raises(ConfigError, match="only 3 layer groups"):
        plan_strategy(StrategyConfig(kind="partial", unfreeze_top=5), groups, 500)


@pytest.mark.parametrize(
    ("per_class", "expected"),
    [(5, "linear_probe"), (499, "linear_probe"), (500, "partial"), (1499, "partial"), (1500, "full")],
)
def test_auto_rule(per_class, expected):
    kind, reason = auto_kind(per_class, per_class * 2)
    assert kind == expected and str(per_class) in reason


class _BNBackbone(Backbone):
    """A tiny backbone with BatchNorm, to check the frozen-BN policy."""

    def __init__(self) -> None:
        super().__init__()
        self.low = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8))
        self.high = nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8))
        self.contract, self.feature_dim, self.source = Contract("text"), 8, "test"

    def layer_groups(self):
        return [
            LayerGroup("low", {f"low.{n}": p for n, p in self.low.named_parameters()}),
            LayerGroup("high", {f"high.{n}": p for n, p in self.high.named_parameters()}),
        ]

    def forward(self, batch):
        return self.high(self.low(batch["x"]))


def test_frozen_batchnorm_stays_in_eval_and_keeps_its_statistics():
    model = TaskModel(_BNBackbone(), make_head("multiclass", 8, 2))
    plan = plan_strategy(StrategyConfig(kind="partial", unfreeze_top=1), ["low", "high"], 500)
    phase = bind(plan, TrainConfig())[0]
    phase.enter(model)
    set_train_mode(model)
    assert not model.backbone.low[1].training and model.backbone.high[1].training
    running = model.backbone.low[1].running_mean.clone()
    model({"x": torch.randn(16, 4) * 5 + 3})
    torch.testing.assert_close(model.backbone.low[1].running_mean, running)
    assert not torch.equal(model.backbone.high[1].running_mean, torch.zeros(8))


def test_frozen_bn_statistics_keep_running_stats_while_affine_trains():
    model = TaskModel(_BNBackbone(), make_head("multiclass", 8, 2))
    set_train_mode(model, freeze_bn_stats=True)
    bns = [m for m in model.backbone.modules() if isinstance(m, nn.BatchNorm1d)]
    assert bns and all(not m.training for m in bns)
    assert all(p.requires_grad for m in bns for p in m.parameters())
    before = [m.running_mean.clone() for m in bns]
    model({"x": torch.randn(16, 4) * 5 + 3})
    assert all(torch.equal(b, m.running_mean) for b, m in zip(before, bns, strict=True))
