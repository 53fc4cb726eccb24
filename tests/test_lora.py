"""LoRA through PEFT: where the adapters go, what trains, bundles that reload identically, merging."""

from __future__ import annotations

import json

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import save_file
from torch import nn

import graft
from graft.adapters import add_lora, default_targets, has_adapters, merge_adapters, restore_adapters
from graft.backbones import create_backbone
from graft.backbones.base import Backbone
from graft.bundle import bundle_backbone
from graft.config import RunConfig, StrategyConfig, TrainConfig
from graft.errors import ConfigError
from graft.heads import TaskModel, make_head
from graft.serialization import load_tensors
from graft.strategies import bind, get_strategy
from tests.conftest import make_sentiment

TEXTS = ["the movie was great", "awful plot", "lovely film and fun", "dull story"]


def _lora_names(module: nn.Module) -> list[str]:
    return [n for n, _ in module.named_parameters() if ".lora_" in n]


def _randomise_updates(module: nn.Module) -> None:
    """Adapters as after training: a non-zero ``B`` (it starts at zero)."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if ".lora_B." in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)


# -- where adapters go ----------------------------------------------------------------------------


def test_tiny_bert_gets_query_value_adapters_inside_its_layer_groups(tiny_source):
    bb = create_backbone(tiny_source).eval()
    batch = bb.preprocess(TEXTS)
    with torch.no_grad():
        before = bb(batch)
    record = add_lora(bb, rank=4, alpha=8.0)

    assert record["targets"] == [
        f"model.encoder.layer.{i}.attention.self.{p}" for i in range(2) for p in ("query", "value")
    ]
    assert record["kind"] == "lora" and (record["rank"], record["alpha"], record["dropout"]) == (4, 8.0, 0.0)
    assert json.loads(json.dumps(record)) == record and record["peft"]
    with torch.no_grad():
        assert torch.equal(bb(batch), before)  # B starts at zero: the backbone computes what it did
    groups = {g.name: [n for n in g.params if ".lora_" in n] for g in bb.layer_groups()}
    assert groups["embeddings"] == []
    for i in (0, 1):
        assert len(groups[f"layer.{i}"]) == 4  # A and B of query and value
        assert all(n.startswith(f"model.encoder.layer.{i}.attention.self.") for n in groups[f"layer.{i}"])
    with pytest.raises(ConfigError, match="already holds LoRA"):
        add_lora(bb, rank=4, alpha=8.0)


def _timm_vit(tmp_path) -> Backbone:
    torch.manual_seed(0)
    model = timm.create_model("test_vit", pretrained=False)
    path = tmp_path / "test_vit.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return create_backbone("timm:test_vit", weights=str(path))


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("arch:small_cnn", ["body.block1.0.0", "body.block2.0.0", "body.block3.0"]),  # Conv2d layers
        ("timm:test_vit", [f"body.blocks.{i}.attn.qkv" for i in range(6)]),  # fused attention projections
    ],
)
def test_vision_targets_and_merge_equivalence(source, expected, tmp_path):
    bb = (_timm_vit(tmp_path) if source.startswith("timm:") else create_backbone(source)).eval()
    plain_keys = set(bb.state_dict())
    batch = {bb.preprocessor().input_key: torch.rand(2, *bb.preprocessor().example_shape())}

    record = add_lora(bb, rank=4, alpha=8.0)
    assert record["targets"] == expected
    in_groups = {n for g in bb.layer_groups() for n in g.params if ".lora_" in n}
    assert in_groups == set(_lora_names(bb)) and len(in_groups) == 2 * len(expected)

    _randomise_updates(bb)
    with torch.no_grad():
        adapted = bb(batch)
    assert merge_adapters(bb) == len(expected)
    assert not has_adapters(bb) and not _lora_names(bb) and set(bb.state_dict()) == plain_keys
    with torch.no_grad():
        torch.testing.assert_close(bb(batch), adapted, atol=1e-5, rtol=1e-5)


def test_explicit_targets_and_unknown_ones(tiny_source):
    bb = create_backbone(tiny_source)
    record = add_lora(bb, rank=2, alpha=2.0, targets=["key"])
    assert record["targets"] == [f"model.encoder.layer.{i}.attention.self.key" for i in range(2)]
    with pytest.raises(ConfigError, match=r"\['keys'\] name no module"):
        add_lora(create_backbone(tiny_source), rank=2, alpha=2.0, targets=["keys"])
    with pytest.raises(ConfigError, match="unknown adapter record of kind 'ia3'"):
        restore_adapters(create_backbone(tiny_source), {**record, "kind": "ia3"})


def test_lora_is_unavailable_without_a_layer_to_adapt():
    body = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.LayerNorm(3))
    bb = Backbone.from_module(body, input_size=(3, 8, 8), head=None)
    assert default_targets(bb) == []
    reason = get_strategy("lora").unavailable(bb, "multiclass")
    assert reason and "no layer to adapt" in reason
    with pytest.raises(ConfigError, match="no layer to adapt"):
        add_lora(bb, rank=2, alpha=2.0)


# -- what trains ----------------------------------------------------------------------------------


def test_plan_trains_only_adapters_and_head(tiny_source):
    torch.manual_seed(0)
    bb = create_backbone(tiny_source)
    model = TaskModel(bb, make_head("multiclass", bb.feature_dim, 2))
    strategy, cfg = get_strategy("lora"), StrategyConfig(kind="lora", lora_rank=4)
    record = strategy.prepare(model, cfg)
    plan = strategy.plan(cfg, [g.name for g in bb.layer_groups()])
    (phase,) = bind(plan, TrainConfig(lr=1e-2, head_lr=1e-2, weight_decay=0.0))
    phase.enter(model)

    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    head = {f"head.{n}" for n, _ in model.head.named_parameters()}
    assert trainable == {f"backbone.{n}" for n in _lora_names(bb)} | head
    assert len(trainable - head) == 2 * len(record["targets"])  # A and B per target

    optimizer = torch.optim.AdamW(phase.param_groups(model))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    batch, targets = bb.preprocess(TEXTS), torch.tensor([1, 0, 1, 0])
    phase.train_mode(model)
    for _ in range(3):
        optimizer.zero_grad()
        model.head.loss(model(batch), targets).backward()
        optimizer.step()
    for name, p in model.named_parameters():
        moved = not torch.equal(before[name], p.detach())
        assert moved == (name in trainable), f"{name}: moved={moved}"


# -- bundles ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lora_run(tiny_source, tmp_path_factory):
    rows = make_sentiment(20)
    cfg = RunConfig(
        # a random head start: the probe start would win on this easy data and ship without adapters
        strategy=StrategyConfig(kind="lora", lora_rank=4, head_init="random"),
        train=TrainConfig(epochs=2, lr=1e-2),
    ).replace("data", folds=2)
    out = tmp_path_factory.mktemp("lora-run") / "run"
    model = graft.fit(
        [t for t, _ in rows], labels=[y for _, y in rows], backbone=tiny_source, out=out, config=cfg,
        progress=False,
    )  # fmt: skip
    return model, out


def test_fit_saves_adapters_and_reloads_identically(lora_run, tiny_bert_dir):
    from transformers import BertModel

    model, out = lora_run
    strategy = model.manifest_["strategy"]
    assert strategy["shipped"] == "lora" and not strategy["frozen_backbone"]
    assert strategy["adapters"]["targets"][0] == "model.encoder.layer.0.attention.self.query"
    assert strategy["phases"][0]["params"] == r"(^|\.)lora_"

    loaded = graft.load(out)
    assert loaded.manifest_["strategy"]["adapters"] == strategy["adapters"]
    np.testing.assert_allclose(loaded.predict_proba(TEXTS), model.predict_proba(TEXTS), rtol=0, atol=1e-6)

    bundle = out / "bundle"
    assert sorted(p.suffix for p in bundle.glob("*.*")) == [".html", ".json", ".json", ".safetensors"]
    state = load_tensors(bundle / "model.safetensors")
    assert any(k.endswith("lora_B.default.weight") and v.abs().sum() > 0 for k, v in state.items())
    # the pretrained weights stayed as they were: only the adapters (and the head) trained
    pretrained = BertModel.from_pretrained(tiny_bert_dir).state_dict()
    key = "encoder.layer.0.attention.self.query.weight"
    assert torch.equal(
        state[f"backbone.model.{key.replace('.weight', '.base_layer.weight')}"], pretrained[key]
    )
    key = "encoder.layer.1.output.dense.weight"
    assert torch.equal(state[f"backbone.model.{key}"], pretrained[key])


def test_merged_model_predicts_the_same_and_saves_plain(lora_run, tmp_path):
    _, out = lora_run
    loaded = graft.load(out)
    before = loaded.predict_proba(TEXTS)
    loaded.merge_adapters()
    assert not has_adapters(loaded.network_) and not _lora_names(loaded.network_)
    assert "adapters" not in loaded.manifest_["strategy"] and loaded.manifest_["strategy"]["merged_adapters"]
    np.testing.assert_allclose(loaded.predict_proba(TEXTS), before, rtol=0, atol=1e-5)

    again = graft.load(loaded.save(tmp_path / "merged"))
    assert not _lora_names(again.network_)
    np.testing.assert_allclose(again.predict_proba(TEXTS), before, rtol=0, atol=1e-5)


def test_a_lora_bundle_as_a_backbone_is_plain(lora_run):
    model, out = lora_run
    bb = bundle_backbone(out).eval()
    assert not _lora_names(bb)
    batch = bb.preprocess(TEXTS)
    with torch.no_grad():
        torch.testing.assert_close(bb(batch), model.network_.backbone.eval()(batch), atol=1e-5, rtol=1e-5)
