"""The from-scratch baseline is sized by counted operations, never by a timing (issue 19, must-show:
two identical fits give identical bundles; DESIGN principle 0: wall-clock decides what runs only under a
budget the user set)."""

from __future__ import annotations

import csv
import time

import numpy as np
import pytest
import torch

import graft
from graft import baselines
from graft.backbones import create_backbone
from graft.config import RunConfig, StrategyConfig
from graft.data.dataset import Dataset
from graft.recipe import Workbench
from tests.conftest import make_image_folder, make_sentiment


def _csv(path, rows):
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([("text", "label"), *rows])
    return path


@pytest.fixture
def small_task(tmp_path):
    return _csv(tmp_path / "train.csv", make_sentiment(16)), _csv(
        tmp_path / "test.csv", make_sentiment(6, seed=2)
    )


def _scratch_run(tiny_source, small_task, cfg):
    data, test = small_task
    model = graft.fit(data, backbone=tiny_source, test=test, config=cfg, progress=False)
    return model.report_.data["baselines"]["scratch"], model.report_.test.baselines.get("scratch")


@pytest.mark.parametrize("level", ["auto", "all"])
def test_a_slower_machine_trains_the_same_scratch_baseline(tiny_source, small_task, monkeypatch, level):
    """A clock that runs 10x faster is a machine 10x slower: the scratch network gets the same epochs
    and gives the same scores. Before, its epochs were ``--budget`` (or the model's own wall time)
    divided by a timed training step."""
    cfg = RunConfig(strategy=StrategyConfig(kind="linear_probe", budget="2s")).replace(
        "evaluation", baselines=level
    )
    normal = _scratch_run(tiny_source, small_task, cfg)
    real = time.perf_counter
    monkeypatch.setattr(time, "perf_counter", lambda: 10 * real())
    slow = _scratch_run(tiny_source, small_task, cfg)
    assert normal[0].startswith("trained: ") and "of up to 30 epochs" in normal[0]
    assert slow == normal


def test_a_probe_does_not_grow_a_long_scratch_baseline_and_a_fine_tune_gets_what_it_got(
    tiny_source, small_task, monkeypatch
):
    """The rule under ``--baselines auto``, at a reference speed where one scratch epoch costs ~40
    reference seconds: the probe's own training (one forward pass for its features) is under the
    minute's floor, so 3 epochs do not fit and the scratch network is not trained; a full fine-tune's
    recipe (5 folds + the refit, 4 epochs each) is many epochs' worth, so it is."""
    flops = _step_flops(create_backbone(tiny_source), _texts(32))  # the rows of small_task
    monkeypatch.setattr(baselines, "REFERENCE_FLOPS_PER_SECOND", flops.train * 32 / 40)
    probe, _ = _scratch_run(tiny_source, small_task, RunConfig(strategy=StrategyConfig(kind="linear_probe")))
    assert probe.startswith("not trained: an epoch from scratch takes ~")
    assert "on a reference 2-core CPU; 3 do not fit in 60s" in probe and "--baselines all" in probe
    full_cfg = RunConfig(strategy=StrategyConfig(kind="full")).replace("train", epochs=4)
    full, scores = _scratch_run(tiny_source, small_task, full_cfg)
    assert full.startswith("trained: ") and scores is not None


def _texts(n: int = 16) -> Dataset:
    rows = make_sentiment(n // 2)
    return Dataset("text", [t for t, _ in rows], np.arange(n) % 2, "multiclass", ("negative", "positive"))


def _step_flops(backbone, data):
    return Workbench(backbone, RunConfig(), "multiclass", data.label_space, progress=False).step_flops(data)


def test_the_flops_of_a_tiny_bert_are_counted_alike_in_either_mode(tiny_source):
    """Counted, so the same at every call; attention included whatever the module's mode (in eval
    mode torch's fused CPU attention kernel, which the counter has no formula for, would drop it: a
    fit counts after its features are extracted, in eval mode)."""
    backbone, data = create_backbone(tiny_source), _texts()
    counts = []
    for mode in ("train", "eval", "train"):
        getattr(backbone, mode)()
        counts.append(_step_flops(backbone, data))
    assert counts[0].forward > 0 and counts[0].train == 3 * counts[0].forward
    assert counts[1] == counts[0] and counts[2] == counts[0]


def test_the_flops_of_a_tiny_cnn_are_positive_and_the_same_each_time(tmp_path):
    folder = make_image_folder(tmp_path / "images", n_per_class=4)
    paths = sorted(str(p) for p in folder.rglob("*.png"))
    data = Dataset("image", paths, np.arange(len(paths)) % 3, "multiclass", ("red", "green", "blue"))
    first, second = (_step_flops(create_backbone("arch:small_cnn"), data) for _ in range(2))
    assert first.forward > 1e6 and first == second  # 0.1 M parameters over 16x16 pixels


def test_an_lstm_is_counted_by_its_matrix_products(tmp_path):
    """torch's fused CPU LSTM kernel counts nothing: GE2E (a 3-layer LSTM over 160-frame partials)
    would otherwise look 150x cheaper than it is."""
    import soundfile

    from graft.backbones.ge2e import PARTIAL_FRAMES

    rng = np.random.default_rng(0)
    paths = []
    for i in range(2):
        paths.append(str(tmp_path / f"{i}.wav"))
        soundfile.write(paths[-1], (0.1 * rng.standard_normal(16000)).astype("float32"), 16000)
    backbone = create_backbone("ge2e")
    lstm = backbone.encoder.lstm
    per_step = sum(w.numel() for name, w in lstm.named_parameters() if name.startswith("weight_"))
    data = Dataset("audio", paths, np.arange(2), "multiclass", ("a", "b"))
    assert _step_flops(backbone, data).forward >= 2 * PARTIAL_FRAMES * per_step


def test_a_network_the_counter_cannot_count_costs_its_parameters(tmp_path):
    """An operation without a FLOP formula counts nothing; a multiply-add per parameter stands in."""
    from graft.backbones.module import from_module

    class Elementwise(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = torch.nn.Parameter(torch.ones(3, 32, 32))

        def forward(self, x):
            return (x * self.scale).mean((2, 3))

    backbone = from_module(Elementwise(), input_size=(3, 32, 32), head=None)
    paths = sorted(str(p) for p in make_image_folder(tmp_path, n_per_class=2, size=32).rglob("*.png"))
    data = Dataset("image", paths, np.arange(len(paths)) % 2, "multiclass", ("a", "b"))
    flops = _step_flops(backbone, data)
    n_params = 3 * 32 * 32 + 3 * 2 + 2  # the body, the head
    assert flops.forward == 2 * n_params
