"""Contrastive body tuning: the loss against a naive oracle, label-aware batches, the step loop, tune_body,
checkpoints and resume."""

from __future__ import annotations

import copy
import csv
import itertools
import json
import math
from collections import Counter
from pathlib import Path

import pytest
import torch
from torch import nn

from graft.api import fit
from graft.backbones import create_backbone
from graft.config import DataConfig, EvalConfig, RunConfig, StrategyConfig, TrainConfig
from graft.contrastive import label_batches, supcon_loss, tune_body
from graft.data import Dataset, build_dataset
from graft.engine import Callback, train_steps
from graft.errors import ConfigError, DataError, GraftError
from graft.recipe import Workbench
from graft.serialization import load_tensors
from graft.strategies import get_strategy
from tests.conftest import killed_then_resumed, make_sentiment


def naive_supcon(embeddings: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """Khosla et al.'s eq. 2, written as loops."""
    z = [e / e.norm() for e in embeddings.double()]
    n, terms = len(z), []
    for i in range(n):
        positives = [p for p in range(n) if p != i and labels[p] == labels[i]]
        if not positives:
            continue
        denominator = sum(math.exp(float(z[i] @ z[a]) / temperature) for a in range(n) if a != i)
        terms.append(
            -sum(math.log(math.exp(float(z[i] @ z[p]) / temperature) / denominator) for p in positives)
            / len(positives)
        )
    return torch.tensor(sum(terms) / len(terms), dtype=torch.float64)


@pytest.mark.parametrize("temperature", [0.05, 0.1, 0.5])
def test_supcon_matches_a_naive_loop(temperature):
    g = torch.Generator().manual_seed(0)
    embeddings = torch.randn(10, 6, generator=g) * 3
    labels = torch.tensor([0, 0, 1, 1, 1, 2, 2, 3, 0, 4])  # classes 3 and 4 have no positive: skipped
    got = supcon_loss(embeddings, labels, temperature)
    assert torch.allclose(got.double(), naive_supcon(embeddings, labels, temperature), rtol=1e-4)


def test_supcon_is_lower_for_clustered_embeddings_and_has_gradients():
    g = torch.Generator().manual_seed(1)
    centres = torch.randn(3, 8, generator=g)
    labels = torch.arange(3).repeat_interleave(4)
    clustered = centres[labels] + 0.05 * torch.randn(12, 8, generator=g)
    mixed = centres[torch.arange(3).repeat(4)] + 0.05 * torch.randn(12, 8, generator=g)
    assert supcon_loss(clustered, labels, 0.1) < supcon_loss(mixed, labels, 0.1)

    leaf = mixed.clone().requires_grad_(True)
    supcon_loss(leaf, labels, 0.1).backward()
    assert torch.isfinite(leaf.grad).all() and leaf.grad.abs().sum() > 0


def test_supcon_without_any_positive_is_zero_and_still_differentiable():
    leaf = torch.randn(3, 4, requires_grad=True)
    loss = supcon_loss(leaf, torch.tensor([0, 1, 2]), 0.1)
    loss.backward()
    assert loss.item() == 0.0 and leaf.grad is not None


def test_small_training_sets_are_one_shuffled_batch():
    targets = ["a", "b"] * 5
    batches = list(itertools.islice(label_batches(targets, batch_size=16, seed=0), 3))
    assert all(sorted(b) == list(range(10)) for b in batches)
    assert batches[0] != batches[1]


@pytest.mark.parametrize("batch_size", [4, 5, 8, 16])
def test_label_batches_give_positives_cover_every_example_and_respect_the_size(batch_size):
    # imbalanced, with an odd class and a singleton class
    targets = ["a"] * 13 + ["b"] * 6 + ["c"] * 3 + ["d"] + ["e"] * 20
    stream = label_batches(targets, batch_size=batch_size, seed=3)
    for _ in range(3):  # three passes over the data
        one_pass: list[list[int]] = []
        while sum(map(len, one_pass)) < len(targets):
            one_pass.append(next(stream))
        assert sorted(i for b in one_pass for i in b) == list(range(len(targets)))
        for batch in one_pass:
            assert len(batch) <= batch_size
            counts = Counter(targets[i] for i in batch)
            assert all(c >= 2 for label, c in counts.items() if label != "d")


def test_label_batches_mix_classes_in_proportion():
    targets = ["a"] * 100 + ["b"] * 100 + ["c"] * 40
    for batch in itertools.islice(label_batches(targets, batch_size=32, seed=0), 40):
        counts = Counter(targets[i] for i in batch)
        assert set(counts) == {"a", "b", "c"} and abs(counts["a"] - counts["b"]) <= 3


def test_label_batches_are_seeded():
    targets = [i % 4 for i in range(50)]
    first = list(itertools.islice(label_batches(targets, 8, seed=1), 20))
    assert first == list(itertools.islice(label_batches(targets, 8, seed=1), 20))
    assert first != list(itertools.islice(label_batches(targets, 8, seed=2), 20))


def test_label_batches_refuse_a_batch_too_small_for_pairs():
    with pytest.raises(ConfigError, match="batch_size"):
        next(label_batches([0, 1, 0, 1], batch_size=3))


def test_train_steps_moves_parameters_and_reports_each_step():
    torch.manual_seed(0)
    net = nn.Linear(4, 1)
    before = [p.detach().clone() for p in net.parameters()]
    x, y = torch.randn(16, 4), torch.randn(16, 1)
    seen = []
    groups = [{"params": net.parameters(), "lr": 0.05}]
    losses = train_steps(net, groups, lambda done: itertools.repeat((x, y)), nn.functional.mse_loss, steps=10,
                         on_step=seen.append)  # fmt: skip
    assert seen == list(range(1, 11)) and len(losses) == 10
    assert losses[-1] < losses[0]
    assert all(not torch.equal(a, b) for a, b in zip(before, net.parameters(), strict=True))


def test_train_steps_stops_when_batches_run_out():
    net = nn.Linear(2, 1)
    batch = (torch.randn(4, 2), torch.randn(4, 1))
    losses = train_steps(net, [{"params": net.parameters(), "lr": 1e-2}], lambda done: [batch] * 3,
                         nn.functional.mse_loss, steps=10)  # fmt: skip
    assert len(losses) == 3


def test_train_steps_refuses_a_diverging_loss_and_groups_without_lr():
    net = nn.Linear(2, 1)
    batch = (torch.randn(4, 2), torch.randn(4, 1))
    with pytest.raises(GraftError, match="lower the learning rate"):
        train_steps(net, [{"params": net.parameters(), "lr": 1e-2}], lambda done: itertools.repeat(batch),
                    lambda out, y: out.sum() * float("nan"), steps=2)  # fmt: skip
    with pytest.raises(ConfigError, match="'lr'"):
        train_steps(net, [{"params": net.parameters()}], lambda done: itertools.repeat(batch),
                    nn.functional.mse_loss, steps=2)  # fmt: skip


@pytest.fixture(scope="module")
def tiny_backbone(tiny_bert_dir):
    return create_backbone(f"hf:{tiny_bert_dir}")


@pytest.fixture(scope="module")
def tiny_data():
    rows = make_sentiment(6, seed=0)
    return [t for t, _ in rows], [y for _, y in rows]


def _fresh(backbone, state):
    backbone.load_state_dict(state)
    return backbone


def test_tune_body_snapshots_change_weights_deterministically(tiny_backbone, tiny_data):
    texts, labels = tiny_data
    start = {k: v.clone() for k, v in tiny_backbone.state_dict().items()}
    frozen = [p.requires_grad for p in tiny_backbone.parameters()]
    tiny_backbone.requires_grad_(False)
    tiny_backbone.eval()

    snaps = tune_body(tiny_backbone, texts, labels, steps=6, lr=1e-3, batch_size=8, snapshot_at=(2, 4))
    assert sorted(snaps) == [2, 4]  # stopped after step 4: the schedule spans 6, training does not
    assert all(v.device.type == "cpu" for v in snaps[4].values())
    moved = [k for k in start if not torch.equal(start[k], snaps[2][k].to(start[k].device))]
    assert len(moved) > len(start) // 2
    assert any(not torch.equal(snaps[2][k], snaps[4][k]) for k in start)
    # flags and mode come back as they were; the backbone holds the last snapshot
    assert not any(p.requires_grad for p in tiny_backbone.parameters()) and not tiny_backbone.training
    assert all(torch.equal(v.cpu(), snaps[4][k]) for k, v in tiny_backbone.state_dict().items())

    again = tune_body(_fresh(tiny_backbone, start), texts, labels, steps=6, lr=1e-3, batch_size=8,
                      snapshot_at=(2, 4))  # fmt: skip
    assert all(torch.equal(again[4][k], snaps[4][k]) for k in start)
    other = tune_body(_fresh(tiny_backbone, start), texts, labels, steps=6, lr=1e-3, batch_size=8, seed=1,
                      snapshot_at=(4,))  # fmt: skip
    assert any(not torch.equal(other[4][k], snaps[4][k]) for k in start)
    tiny_backbone.load_state_dict(start)
    for p, flag in zip(tiny_backbone.parameters(), frozen, strict=True):
        p.requires_grad_(flag)


def test_tune_body_pulls_classes_apart(tiny_backbone, tiny_data):
    texts, labels = tiny_data
    start = {k: v.clone() for k, v in tiny_backbone.state_dict().items()}
    ids = torch.tensor([labels.index(y) > 0 for y in labels]).long()

    def loss() -> float:
        tiny_backbone.eval()
        with torch.no_grad():
            return supcon_loss(tiny_backbone(tiny_backbone.preprocess(texts)), ids, 0.1).item()

    before = loss()
    tune_body(tiny_backbone, texts, labels, steps=30, lr=3e-3, batch_size=16)
    assert loss() < before
    tiny_backbone.load_state_dict(start)


def test_tune_body_refuses_bad_settings_and_data(tiny_backbone, tiny_data):
    texts, labels = tiny_data
    with pytest.raises(ConfigError, match=r"snapshot_at steps \[9\]") as info:
        tune_body(tiny_backbone, texts, labels, steps=5, lr=-1.0, snapshot_at=(9,))
    assert "lr must be positive" in str(info.value)  # every problem in one message
    with pytest.raises(DataError, match="targets"):
        tune_body(tiny_backbone, texts, labels[:-1], steps=2, lr=1e-3)
    with pytest.raises(DataError, match="2 classes"):
        tune_body(tiny_backbone, texts[:3], ["a", "b", "c"], steps=2, lr=1e-3)


# -- checkpoints and resume ------------------------------------------------------------------------


class StopAtStep(Callback):
    """Simulates Ctrl-C after a given step of a step loop (its checkpoint, if one was due, is written)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, step: int, loss: float) -> None:
        if step == self.step:
            raise KeyboardInterrupt


def test_tune_body_resumes_bit_for_bit_from_its_last_checkpoint(tiny_backbone, tiny_data, tmp_path):
    """16 steps checkpoint every 2: stopped after step 5, the tuning resumes from step 4's checkpoint,
    trains step 5 again and ends with every snapshot equal to an uninterrupted tuning's, to the bit."""
    texts, labels = tiny_data
    start = copy.deepcopy(tiny_backbone)

    def tune(**kw):
        return tune_body(copy.deepcopy(start), texts, labels, steps=16, lr=1e-3, batch_size=8,
                         snapshot_at=(3, 10), **kw)  # fmt: skip

    straight = tune()
    folder = tmp_path / "contrastive"
    with pytest.raises(KeyboardInterrupt):
        tune(checkpoint_dir=folder, callbacks=[StopAtStep(5)])
    state = json.loads((folder / "last" / "state.json").read_text())
    assert state["step"] == 4 and len(state["losses"]) == 4
    assert (folder / "snapshot-3.safetensors").is_file()  # taken before the checkpoint it predates

    resumed = tune(checkpoint_dir=folder, resume=True)
    assert json.loads((folder / "last" / "state.json").read_text())["step"] == 10  # the last step's
    again = tune(checkpoint_dir=folder, resume=True)  # a finished tuning: nothing left to train
    for snaps in (resumed, again):
        assert sorted(snaps) == [3, 10]
        for step in (3, 10):
            for name, tensor in straight[step].items():
                assert torch.equal(tensor, snaps[step][name]), (step, name)
    assert not torch.equal(straight[10]["model.embeddings.word_embeddings.weight"],
                           start.state_dict()["model.embeddings.word_embeddings.weight"])  # fmt: skip


def _bench(source: str, checkpoints: Path, *, resume: bool, callbacks=()) -> tuple[Workbench, Dataset]:
    rows = make_sentiment(6)
    ds = build_dataset([t for t, _ in rows], [y for _, y in rows])
    cfg = RunConfig(strategy=StrategyConfig(kind="contrastive", contrastive_steps=4))
    bench = Workbench(create_backbone(source), cfg, ds.task, ds.label_space, progress=True,
                      checkpoint_dir=checkpoints, resume=resume, callbacks=callbacks)  # fmt: skip
    return bench, ds


def test_only_the_runs_own_tuning_checkpoints_and_a_resume_without_one_says_so(tiny_source, tmp_path, capsys):
    strategy = get_strategy("contrastive")
    bench, ds = _bench(tiny_source, tmp_path / "checkpoints", resume=True, callbacks=[StopAtStep(1)])
    strategy.train(bench, ds, None, {"steps": 2})  # a fold's model: no checkpoint, no callback
    assert not (tmp_path / "checkpoints").exists()
    capsys.readouterr()

    bench.callbacks = []
    with bench.checkpointing():
        tuned = strategy.train(bench, ds, None, {"steps": 2})
    folder = tmp_path / "checkpoints" / "contrastive"
    err = capsys.readouterr().err
    assert f"resume: no checkpoint in {folder}; starting contrastive body tuning from its first step" in err
    assert json.loads((folder / "last" / "state.json").read_text())["step"] == 2
    with bench.checkpointing():
        again = strategy.train(bench, ds, None, {"steps": 2})
    assert (
        f"resuming contrastive body tuning after step 2 of 4 from {folder / 'last'}"
        in capsys.readouterr().err
    )
    for name, tensor in tuned.network.backbone.state_dict().items():
        assert torch.equal(tensor, again.network.backbone.state_dict()[name]), name


def _fit_config() -> RunConfig:
    # no --val: the steps are chosen on 3 folds, where the full schedule (8) wins ties; as in KILLED_RUN
    return RunConfig(
        data=DataConfig(estimate="holdout"), evaluation=EvalConfig(baselines="none"),
        strategy=StrategyConfig(kind="contrastive", contrastive_steps=8), train=TrainConfig(seed=1),
    )  # fmt: skip


@pytest.fixture(scope="module")
def uninterrupted(tiny_source, tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    """(the training file, the bundle's weights) of a contrastive fit that ran through."""
    folder = tmp_path_factory.mktemp("contrastive-fit")
    data = folder / "sentiment.csv"
    with open(data, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([("text", "label"), *make_sentiment(40)])
    model = fit(data, backbone=tiny_source, config=_fit_config(), out=folder / "a", progress=False)
    assert model.report_.strategy["settings"]["steps"] == 8  # the shipped body was tuned
    return data, load_tensors(folder / "a" / "bundle" / "model.safetensors")


def _assert_same_weights(bundle: Path, expected: dict[str, torch.Tensor]) -> None:
    got = load_tensors(bundle / "model.safetensors")
    assert set(got) == set(expected)
    for name, tensor in expected.items():
        assert torch.equal(tensor, got[name]), name


def test_an_interrupted_contrastive_fit_resumes_to_the_same_model(
    tiny_source, uninterrupted, tmp_path, capsys
):
    data, expected = uninterrupted
    out = tmp_path / "b"
    with pytest.raises(KeyboardInterrupt):
        fit(data, backbone=tiny_source, config=_fit_config(), out=out, progress=False,
            callbacks=[StopAtStep(3)])  # fmt: skip
    checkpoints = out / "checkpoints"
    assert [p.name for p in checkpoints.iterdir()] == ["contrastive"]  # the folds' tunings wrote none
    assert sorted(p.name for p in (checkpoints / "contrastive" / "last").iterdir()) == [
        "model.safetensors", "optimizer.safetensors", "state.json",
    ]  # fmt: skip
    assert json.loads((checkpoints / "contrastive" / "last" / "state.json").read_text())["step"] == 3
    capsys.readouterr()

    fit(data, backbone=tiny_source, config=_fit_config(), out=out, resume=True, progress=True)
    assert "resuming contrastive body tuning after step 3 of 8" in capsys.readouterr().err
    _assert_same_weights(out / "bundle", expected)
    assert not checkpoints.exists()  # removed once the bundle is written


KILLED_RUN = """
import os, sys
from graft.api import fit
from graft.config import DataConfig, EvalConfig, RunConfig, StrategyConfig, TrainConfig
from graft.engine import Callback

class Kill(Callback):
    def on_step_end(self, step, loss):
        if step == 5:
            os._exit(137)  # as abrupt as kill -9: no clean-up, no exception handlers

cfg = RunConfig(data=DataConfig(estimate="holdout"), evaluation=EvalConfig(baselines="none"),
                strategy=StrategyConfig(kind="contrastive", contrastive_steps=8), train=TrainConfig(seed=1))
fit(sys.argv[1], backbone=sys.argv[2], config=cfg, out=sys.argv[3], progress=False,
    callbacks=[Kill()] if sys.argv[4] == "kill" else [], resume=sys.argv[4] == "resume")
"""


@pytest.mark.slow
def test_a_contrastive_fit_resumes_in_a_new_process_after_a_kill(tiny_source, uninterrupted, tmp_path):
    data, expected = uninterrupted
    killed_then_resumed(KILLED_RUN, str(data), tiny_source, str(tmp_path / "b"), folder=tmp_path / "b")
    _assert_same_weights(tmp_path / "b" / "bundle", expected)
