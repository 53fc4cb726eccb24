"""Images end to end: own modules as backbones, arch:/bundle: sources, pretrain, modality checks."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

import graft
from graft.backbones import create_backbone, source_modality
from graft.backbones.base import state_sha256
from graft.cli import main
from graft.config import RunConfig
from graft.data import read_dataset
from graft.errors import BundleError, ConfigError, ContractError
from graft.features import extract_features
from tests.conftest import shared

RESNET20 = ("models", "resnet20_cifar10.th")


class TinyNet(nn.Module):
    """A user's own network: conv features, pooled, and an output layer named ``out``."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.mix = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
        self.out = nn.Linear(8, 5)

    def forward(self, x):
        return self.out(self.mix(self.features(x)).flatten(1))


def _tiny_backbone():
    torch.manual_seed(0)
    return graft.Backbone.from_module(
        TinyNet(), modality="image", input_size=(3, 16, 16), mean=(0.5,) * 3, std=(0.25,) * 3, head="out"
    )


def test_from_module_contract_groups_and_copy():
    net = TinyNet()
    bb = graft.Backbone.from_module(net, input_size=(3, 16, 16), mean=(0.5,) * 3, std=(0.25,) * 3, head="out")
    assert isinstance(net.out, nn.Linear)  # the caller's module keeps its head
    assert bb.feature_dim == 8 and bb.contract.modality == "image"
    pre = bb.contract.preprocessing
    assert pre["size"] == [16, 16] and pre["mean"] == [0.5] * 3 and pre["std"] == [0.25] * 3
    assert [g.name for g in bb.layer_groups()] == ["features", "mix"]
    with pytest.raises(ConfigError, match="no output layer 'fc'"):
        graft.Backbone.from_module(net, input_size=(3, 16, 16), head="fc")
    with pytest.raises(ConfigError, match="dummy input"):
        graft.Backbone.from_module(net, input_size=(1, 16, 16), mean=(0.5,), std=(0.5,), head="out")


def test_resnet20_through_from_module_scores_like_its_report():
    """The real ResNet-20 checkpoint, loaded by a user through from_module: its own head reaches
    about 0.8 on the re-encoded CIFAR-10 JPEGs (0.81 per the data README), so weights, architecture
    and the contract's normalisation all agree."""
    from graft.backbones.archs import build_architecture
    from graft.backbones.module import read_state_file

    net = build_architecture("resnet20")
    net.load_state_dict(read_state_file(shared(*RESNET20)))
    bb = graft.Backbone.from_module(
        net, modality="image", input_size=(3, 32, 32), mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225), head="linear",
    )  # fmt: skip
    assert bb.feature_dim == 64
    assert sum(p.numel() for p in bb.parameters()) == 269_722 - 650  # 0.27 M minus the 64x10 head
    ds = read_dataset(shared("images", "cifar10_jpg_test"))
    idx = np.random.default_rng(0).choice(len(ds), 400, replace=False)
    feats = extract_features(bb, [ds.examples[i] for i in idx], progress=False)
    net.eval()
    with torch.no_grad():
        accuracy = (net.linear(feats).argmax(1).numpy() == ds.targets[idx]).mean()
    assert accuracy > 0.72


def test_streaming_workers_give_the_same_features(image_folder):
    bb = _tiny_backbone()
    ds = read_dataset(image_folder)
    a = extract_features(bb, ds.examples, batch_size=5, progress=False, workers=0)
    b = extract_features(bb, ds.examples, batch_size=5, progress=False, workers=2)
    assert torch.equal(a, b)


def test_augmentation_only_while_training(image_folder):
    bb = _tiny_backbone()
    paths = [str(p) for p in sorted(image_folder.rglob("*.png"))][:4]
    plain = bb.preprocessor()(paths)["pixel_values"]
    assert torch.equal(plain, bb.preprocess(paths)["pixel_values"])
    torch.manual_seed(0)
    augmented = bb.preprocessor("crop_flip")(paths)["pixel_values"]
    assert augmented.shape == plain.shape and not torch.equal(augmented, plain)
    assert "augment" not in bb.contract.preprocessing  # training setting, not part of the contract


def test_own_module_bundle_needs_the_module_to_load(tmp_path, image_folder):
    cfg = RunConfig().replace("train", epochs=2, batch_size=8, workers=0)
    model = graft.fit(image_folder, backbone=_tiny_backbone(), strategy="full", config=cfg,
                      out=tmp_path / "run", progress=False)  # fmt: skip
    assert model.manifest_["backbone"]["kind"] == "module"
    with pytest.raises(BundleError, match="module="):
        graft.load(tmp_path / "run")
    loaded = graft.load(tmp_path / "run", module=TinyNet())
    probe = str(next((image_folder / "red").glob("*.png")))
    assert np.allclose(loaded.predict_proba([probe]), model.predict_proba([probe]), atol=1e-6)


def test_arch_weights_bundle_and_bundle_backbone(tmp_path, image_folder):
    weights = shared(*RESNET20)
    bb = create_backbone("arch:resnet20", weights=str(weights))
    assert bb.pretrained and source_modality("arch:resnet20") == "image"
    assert not create_backbone("arch:resnet20").pretrained
    cfg = RunConfig().replace("train", workers=0)
    model = graft.fit(image_folder, backbone="arch:resnet20", weights=str(weights), strategy="linear_probe",
                      config=cfg, out=tmp_path / "probe", progress=False)  # fmt: skip
    assert model.metrics["test"]["accuracy"] > 0.8  # colour classes are easy for CIFAR features
    # the bundle's backbone, as a source, is the pretrained ResNet-20 unchanged (probe froze it)
    again = create_backbone(f"bundle:{tmp_path / 'probe'}")
    assert source_modality(f"bundle:{tmp_path / 'probe'}") == "image"
    assert again.weights_sha256() == bb.weights_sha256() == state_sha256(bb.state_dict())
    assert again.contract == bb.contract
    loaded = graft.load(tmp_path / "probe")
    paths = loaded.inputs(image_folder / "blue")
    assert loaded.predict(paths) == model.predict(paths)
    result = loaded.evaluate(image_folder)
    assert result.n == 36
    with pytest.raises(ConfigError, match="--weights applies to"):
        create_backbone(f"bundle:{tmp_path / 'probe'}", weights=str(weights))


def test_weights_file_errors(tmp_path):
    torch.save(nn.Linear(2, 2), tmp_path / "pickled.pth")
    with pytest.raises(
        ConfigError, match=r"pickled Python objects .*torch\.nn\.modules\.linear\.Linear"
    ) as info:
        create_backbone("arch:resnet20", weights=str(tmp_path / "pickled.pth"))
    # the safe way on (convert once, if trusted), never torch's bare "re-run with weights_only=False"
    assert "If you trust the file, convert it once to safetensors" in str(info.value)
    assert "Re-running" not in str(info.value) and "--weights weights.safetensors" in str(info.value)
    torch.save({"state_dict": nn.Linear(2, 2).state_dict()}, tmp_path / "other.pth")
    with pytest.raises(ConfigError, match="does not fit this architecture"):
        create_backbone("arch:resnet20", weights=str(tmp_path / "other.pth"))
    with pytest.raises(ConfigError, match="weights file not found"):
        create_backbone("arch:resnet20", weights=str(tmp_path / "none.pth"))
    with pytest.raises(ConfigError, match=r"unknown architecture 'resnet2'; did you mean .*'resnet20'"):
        create_backbone("arch:resnet2")


def test_modality_mismatch_fails_fast_with_exit_2(tmp_path, capsys):
    """FSDD (audio) with the ResNet-20 (image): refused from file names, before any decoding."""
    code = main(["fit", str(shared("audio", "fsdd")), "--backbone", "arch:resnet20",
                 "--weights", str(shared(*RESNET20)), "--out", str(tmp_path / "r"), "--quiet"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2
    assert "pretrained on image" in err and "holds audio" in err and "audio backbone" in err
    assert not (tmp_path / "r").exists()  # nothing was started


def test_text_model_refuses_images_and_image_model_refuses_text(tmp_path, image_folder, sentiment_csv):
    cfg = RunConfig().replace("train", workers=0)
    model = graft.fit(image_folder, backbone=_tiny_backbone(), strategy="linear_probe", config=cfg,
                      progress=False)  # fmt: skip
    with pytest.raises(ContractError, match="takes image files"):
        model.predict(["a sentence"])
    with pytest.raises(ContractError, match="holds text but this model takes image"):
        model.evaluate(sentiment_csv)
    with pytest.raises(ContractError, match="pretrained on image"):
        graft.fit(sentiment_csv, backbone=_tiny_backbone())


def test_pretrain_cli_then_transfer(tmp_path, image_folder, capsys):
    code = main(["pretrain", str(image_folder), "--arch", "small_cnn", "--out", str(tmp_path / "base"),
                 "--epochs", "2", "--workers", "0", "--json", "--quiet"])  # fmt: skip
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["backbone_source"] == f"bundle:{tmp_path / 'base'}"
    manifest = graft.load(tmp_path / "base").manifest_
    assert manifest["strategy"]["kind"] == "full" and manifest["backbone"]["arch"] == "small_cnn"
    code = main(["fit", str(image_folder), "--backbone", f"bundle:{tmp_path / 'base'}", "--strategy",
                 "linear_probe", "--out", str(tmp_path / "small"), "--quiet", "--json"])  # fmt: skip
    assert code == 0
    code = main(["predict", str(tmp_path / "small"), str(image_folder / "red"), "--json"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert code == 0 and "path" in json.loads(lines[-1])


def test_random_backbone_auto_trains_everything(tmp_path, image_folder):
    cfg = RunConfig().replace("train", epochs=1, workers=0)
    model = graft.fit(image_folder, backbone="arch:small_cnn", config=cfg, progress=False)
    assert model.manifest_["strategy"]["kind"] == "full"
    assert "random weights" in model.manifest_["strategy"]["reason"]


def test_augmented_image_run_resumes_bit_identically(tmp_path, image_folder):
    """Worker processes and random augmentation do not break resume: worker seeds come from the
    main generator, whose state each checkpoint saves."""
    from tests.conftest import make_image_folder
    from tests.test_engine import Interrupt

    val = make_image_folder(tmp_path / "val", n_per_class=4, seed=1)  # one training, early-stopped on it
    cfg = RunConfig().replace("train", epochs=3, batch_size=8, lr=1e-3, patience=3, workers=2, seed=3)
    cfg = cfg.replace("strategy", kind="full").replace("data", val=str(val), estimate="holdout")
    cfg = cfg.replace("evaluation", baselines="none")  # one recipe run: this test is about resuming
    straight = graft.fit(image_folder, backbone=_tiny_backbone(), config=cfg, out=tmp_path / "a",
                         progress=False)  # fmt: skip
    with pytest.raises(KeyboardInterrupt):
        graft.fit(image_folder, backbone=_tiny_backbone(), config=cfg, out=tmp_path / "b", progress=False,
                  callbacks=[Interrupt(after_epoch=2)])  # fmt: skip
    resumed = graft.fit(image_folder, backbone=_tiny_backbone(), config=cfg, out=tmp_path / "b",
                        resume=True, progress=False)  # fmt: skip
    a, b = straight.network_.state_dict(), resumed.network_.state_dict()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=name)


def test_image_demo_runs_end_to_end(tmp_path, capsys):
    """`graft demo image` with few epochs: every step runs and the table is printed."""
    from graft.demo_image import run_image_demo

    accuracies = run_image_demo(tmp_path / "demo", progress=False, pretrain_epochs=1, epochs=1)
    out = capsys.readouterr().out
    assert set(accuracies) == {"linear probe (pre-trained)", "full fine-tune (pre-trained)",
                               "from scratch (same network)"}  # fmt: skip
    assert "prior (chance)" in out and "10 labeled images per class" in out
    assert graft.load(tmp_path / "demo" / "full-fine-tune").modality == "image"


def test_random_initialisation_is_seeded(tmp_path, image_folder):
    cfg = RunConfig().replace("train", epochs=1, workers=0, seed=5)
    a = graft.fit(image_folder, backbone="arch:small_cnn", config=cfg, progress=False)
    b = graft.fit(image_folder, backbone="arch:small_cnn", config=cfg, progress=False)
    assert a.network_.backbone.weights_sha256() == b.network_.backbone.weights_sha256()


@pytest.mark.parametrize("depth", [32, 44, 56])
def test_deeper_cifar_resnets_load_their_real_checkpoints(depth):
    """arch:resnet32/44/56 match the third party's checkpoints key for key (load_weights is strict)."""
    from graft.backbones.archs import build_architecture
    from graft.backbones.module import read_state_file

    weights = shared("models", f"resnet{depth}_cifar10.th")
    state = read_state_file(weights)
    net = build_architecture(f"resnet{depth}")
    expected = {k for k in net.state_dict() if not k.endswith("num_batches_tracked")}
    assert expected == set(state)
    bb = create_backbone(f"arch:resnet{depth}", weights=str(weights))
    assert bb.pretrained and bb.contract == create_backbone("arch:resnet20").contract
    n_params = sum(p.numel() for p in net.parameters())
    assert round(n_params / 1e6, 2) == {32: 0.46, 44: 0.66, 56: 0.85}[depth]
