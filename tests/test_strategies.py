"""The contract suite, run over every registered strategy, plus auto's shortlist and the BN policy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from graft.backbones import create_backbone
from graft.backbones.base import Backbone, Contract, LayerGroup
from graft.config import RunConfig, StrategyConfig, TrainConfig
from graft.data import build_dataset
from graft.engine import Engine, _schedule
from graft.errors import ConfigError
from graft.heads import TaskModel, make_head
from graft.protocols import make_protocol
from graft.recipe import PairCollate, Workbench
from graft.strategies import FineTune, bind, get_strategy, list_strategies, set_train_mode
from graft.strategies.auto import choose, shortlist
from tests.conftest import make_sentiment

FINE_TUNES = sorted(n for n, s in list_strategies().items() if isinstance(s, FineTune))
FROZEN = sorted(n for n, s in list_strategies().items() if s.frozen_backbone)


@pytest.fixture
def model(tiny_source) -> TaskModel:
    torch.manual_seed(0)
    bb = create_backbone(tiny_source)
    return TaskModel(bb, make_head("multiclass", bb.feature_dim, 2))


def _plan(model: TaskModel, kind: str, **strategy):
    cfg = StrategyConfig(kind=kind, **strategy)
    s = get_strategy(kind)
    s.prepare(model, cfg)
    return s.plan(cfg, [g.name for g in model.backbone.layer_groups()])


def _steps(model: TaskModel, phase, n: int = 3):
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
    return param_groups, before


def test_registry_matches_the_config_choices():
    import typing

    from graft.config import StrategyKind

    assert set(list_strategies()) == set(typing.get_args(StrategyKind)) - {"auto"}
    for name, strategy in list_strategies().items():
        assert strategy.name == name and strategy.summary and strategy.__doc__, name
    with pytest.raises(ConfigError, match="unknown strategy 'nope'"):
        get_strategy("nope")


@pytest.mark.parametrize("kind", FINE_TUNES)
def test_every_phase_freezes_what_it_must_and_trains_the_rest(model, kind):
    plan = _plan(model, kind)
    assert not plan.frozen_backbone and plan.phases
    for bound in bind(plan, TrainConfig(lr=1e-2, head_lr=1e-2, weight_decay=0.0)):
        param_groups, before = _steps(model, bound)
        expected = {id(p) for p in model.parameters() if p.requires_grad}
        assert {id(p) for p in model.head.parameters()} <= expected
        # each trainable parameter in exactly one optimizer group, matched by identity
        in_groups = [id(p) for g in param_groups for p in g["params"]]
        assert len(in_groups) == len(set(in_groups)) and set(in_groups) == expected
        assert len(expected) < len(list(model.parameters())) or kind in ("full", "gradual")
        for name, p in model.named_parameters():
            moved = not torch.equal(before[name], p.detach())
            if id(p) in expected:
                # embeddings rows of unused tokens get no gradient; every other trainable tensor moves
                if "word_embeddings" not in name:
                    assert moved, f"{kind}/{bound.name}: trainable {name} did not move"
            else:
                assert not moved, f"{kind}/{bound.name}: frozen {name} moved"


def test_group_names_recorded_for_checkpoints(model):
    param_groups, _ = _steps(model, bind(_plan(model, "full"), TrainConfig())[0], n=1)
    named = dict(model.named_parameters())
    for g in param_groups:
        assert [id(named[n]) for n in g["param_names"]] == [id(p) for p in g["params"]]
        assert g["weight_decay"] == 0.0 or all(p.ndim > 1 for p in g["params"])


def test_partial_trains_the_top_groups_with_decayed_rates(model):
    plan = _plan(model, "partial", unfreeze_top=2, layer_lr_decay=0.5)
    assert plan.phases[0].train_groups == ("layer.0", "layer.1")
    assert plan.phases[0].lr_scales == {"layer.1": 1.0, "layer.0": 0.5}
    phase = bind(plan, TrainConfig(lr=1e-3))[0]
    phase.enter(model)
    lrs = {g["group"]: g["lr"] for g in phase.param_groups(model)}
    assert lrs["layer.1/decay"] == pytest.approx(1e-3) and lrs["layer.0/decay"] == pytest.approx(5e-4)
    assert lrs["head/decay"] == pytest.approx(TrainConfig().head_lr)


def test_partial_with_too_many_groups_is_refused(model):
    with pytest.raises(ConfigError, match="only 3 layer groups"):
        _plan(model, "partial", unfreeze_top=5)


def test_gradual_unfreezes_from_the_top_one_group_per_phase(model):
    plan = _plan(model, "gradual")
    assert [p.train_groups for p in plan.phases] == [
        ("layer.1",), ("layer.0", "layer.1"), ("embeddings", "layer.0", "layer.1")
    ]  # fmt: skip
    assert all(p.epochs == 1 for p in plan.phases)


def test_learning_rate_is_continuous_across_an_unfreeze(model):
    """The engine runs gradual's phases on one schedule: each epoch's last rate follows the curve of
    the whole run, with no restart of the warm-up when a group joins."""
    rows = make_sentiment(8)
    data = [(t, np.int64(y == "positive")) for t, y in rows]
    cfg = TrainConfig(
        batch_size=4, lr=1e-3, head_lr=1e-3, warmup_ratio=0.25, patience=5, mixed_precision="no"
    )
    phases = bind(_plan(model, "gradual"), cfg)
    hist = Engine(cfg, metric="accuracy", progress=False).fit(
        model, phases, data, data[:4], collate=PairCollate(model.backbone.preprocess),
        loss_fn=model.head.loss, metric_fn=lambda o, t: float((o.argmax(1) == t).float().mean()),
    )  # fmt: skip
    steps = len(data) // cfg.batch_size
    curve = _schedule(steps * len(phases), cfg.warmup_ratio)
    assert [e.lr for e in hist.epochs] == pytest.approx([cfg.lr * curve((i + 1) * steps) for i in range(3)])


@pytest.mark.parametrize("kind", FROZEN)
def test_frozen_strategies_leave_the_backbone_unchanged(tiny_source, kind):
    bench, protocol = _bench(tiny_source, kind)
    before = {k: v.clone() for k, v in bench.backbone.state_dict().items()}
    choice = choose(bench, protocol, kind)
    trained = choice.strategy.train(bench, protocol.pool, None, choice.settings)
    assert trained.frozen_backbone
    for k, v in trained.network.backbone.state_dict().items():
        assert torch.equal(before[k], v), k


def _bench(source: str, kind: str = "auto", n_per_class: int = 16, **strategy):
    rows = make_sentiment(n_per_class)
    ds = build_dataset([t for t, _ in rows], [y for _, y in rows])
    cfg = RunConfig(strategy=StrategyConfig(kind=kind, **strategy))
    bench = Workbench(create_backbone(source), cfg, ds.task, ds.label_space, progress=False)
    return bench, make_protocol(ds, folds=3)


def test_auto_prunes_fine_tunes_on_few_labels_and_says_why(tiny_source):
    bench, protocol = _bench(tiny_source, contrastive_steps=8)
    reasons = dict((s.name, why) for s, why in shortlist(bench, protocol))
    assert reasons["linear_probe"] is None
    assert "too few to fine-tune" in reasons["full"]
    choice = choose(bench, protocol, "auto")
    assert choice.strategy.name in {n for n, why in reasons.items() if why is None}
    assert "test split was not consulted" in choice.reason
    assert {row["strategy"] for row in choice.candidates} == set(reasons)
    assert any(row["status"] == "chosen" for row in choice.candidates)


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
    plan = get_strategy("partial").plan(StrategyConfig(kind="partial", unfreeze_top=1), ["low", "high"])
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


def test_contrastive_chooses_its_steps_on_the_folds_and_tunes_a_copy_of_the_body(tiny_source):
    bench, protocol = _bench(tiny_source, "contrastive", n_per_class=12, contrastive_steps=16)
    grid = get_strategy("contrastive").step_grid(16)
    assert grid == (0, 2, 4, 8, 16)
    pretrained = {k: v.clone() for k, v in bench.backbone.state_dict().items()}
    choice = choose(bench, protocol, "contrastive")
    assert [row["steps"] for row in choice.selection.detail["steps_grid"]] == list(grid)
    assert choice.settings["steps"] in grid
    tuned = choice.strategy.train(bench, protocol.pool, None, {"steps": 8})
    assert not tuned.frozen_backbone and tuned.record["steps"] == 8
    moved = [k for k, v in tuned.network.backbone.state_dict().items() if not torch.equal(v, pretrained[k])]
    assert moved  # the body trained ...
    for k, v in bench.backbone.state_dict().items():
        assert torch.equal(v, pretrained[k]), k  # ... on a copy: the shared pretrained backbone is intact
    probe = choice.strategy.train(bench, protocol.pool, None, {"steps": 0})
    assert probe.frozen_backbone and probe.shipped == "linear_probe"
    assert "multiclass" in get_strategy("contrastive").unavailable(bench.backbone, "regression")


def test_a_costlier_candidate_must_beat_the_cheaper_by_one_standard_error():
    from graft.recipe import Selection
    from graft.strategies import get_strategy
    from graft.strategies.auto import _best

    probe, full = get_strategy("linear_probe"), get_strategy("full")

    def sel(name: str, score: float, std: float = 0.0) -> Selection:
        return Selection(name, {}, score, std, "test", 1.0)

    def winner(probe_score: float, full_score: float, folds: list, metric: str = "accuracy", std=0.0):
        pair = [(probe, sel("linear_probe", probe_score)), (full, sel("full", full_score, std))]
        return _best(pair, folds, metric)[0].name

    hold_out = [(np.arange(4250), np.arange(750))]  # binomial SE of 0.85 on 750: 0.013
    assert winner(0.836, 0.845, hold_out) == "linear_probe"
    assert winner(0.836, 0.868, hold_out) == "full"
    assert winner(0.5, 0.51, hold_out, "r2") == "full"  # no spread from one hold-out of r2
    five = [(np.arange(8), np.arange(2))] * 5  # fold spread 0.04 over 5 folds: SE 0.02
    assert winner(0.70, 0.71, five, std=0.04) == "linear_probe"
    assert winner(0.70, 0.73, five, std=0.04) == "full"


def test_candidates_scored_on_the_same_folds_are_compared_fold_by_fold():
    from graft.recipe import Selection
    from graft.strategies import get_strategy
    from graft.strategies.auto import _best

    probe, contrastive = get_strategy("linear_probe"), get_strategy("contrastive")
    folds = [(np.arange(8), np.arange(2))] * 5
    hard_easy = [0.70, 0.90, 0.75, 0.85, 0.80]  # fold difficulty varies a lot: std 0.07
    lp = Selection("linear_probe", {}, 0.80, 0.07, "cv", 1.0, fold_scores=hard_easy)
    # +0.02 on each of the first 3 folds (contrastive uses the first MAX_FOLDS): unpaired, within
    # one standard error (0.07 / 2); paired, a gain on every fold
    better = [s + 0.02 for s in hard_easy[:3]]
    c = Selection("contrastive", {}, float(np.mean(better)), 0.07, "cv", 1.0, fold_scores=better)
    assert _best([(probe, lp), (contrastive, c)], folds, "accuracy")[0] is contrastive
    worse = [0.74, 0.86, 0.73]  # +0.04, -0.04, -0.02 on the shared folds
    c = Selection("contrastive", {}, float(np.mean(worse)), 0.06, "cv", 1.0, fold_scores=worse)
    assert _best([(probe, lp), (contrastive, c)], folds, "accuracy")[0] is probe
    same = hard_easy[:3]  # a tie goes to the cheaper
    c = Selection("contrastive", {}, float(np.mean(same)), 0.06, "cv", 1.0, fold_scores=same)
    assert _best([(probe, lp), (contrastive, c)], folds, "accuracy")[0] is probe


def test_contrastive_keeps_the_full_schedule_unless_fewer_steps_win_clearly():
    from graft.strategies.contrastive import steps_choice

    # folds x (0, 5, 10, 20, 40 steps): 10 steps ahead on average, but not on every fold -> full schedule
    noisy = np.array([[0.5, 0.6, 0.9, 0.7, 0.6], [0.4, 0.5, 0.4, 0.6, 0.6], [0.5, 0.7, 0.8, 0.7, 0.7]])
    assert int(np.argmax(noisy.mean(0))) == 2 and steps_choice(noisy) == 4
    # the pretrained body beats the tuned one on every fold by a steady margin -> 0 steps
    collapsed = np.array([[0.8, 0.6, 0.5, 0.4, 0.4], [0.9, 0.7, 0.6, 0.5, 0.5], [0.8, 0.6, 0.5, 0.5, 0.4]])
    assert steps_choice(collapsed) == 0
    assert steps_choice(np.array([[0.5, 0.9, 0.6, 0.6, 0.7]])) == 1  # one hold-out: the arg-max
