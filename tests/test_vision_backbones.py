"""timm and torchvision backbones, offline: tiny models built with random weights, saved to files, and
loaded back through ``create_backbone`` as a user with downloaded weights would."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

import graft.backbones as backbones
from graft.backbones import create_backbone
from graft.backbones.module import rebuild
from graft.errors import ConfigError

timm = pytest.importorskip("timm")
torchvision = pytest.importorskip("torchvision")
from safetensors.torch import save_file  # noqa: E402


def _images(folder: Path, n: int = 3) -> list[str]:
    """A few real image files (PNG and JPEG, odd sizes, one grayscale)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        pixels = rng.integers(0, 255, (40 + 7 * i, 52, 3), dtype=np.uint8)
        image = Image.fromarray(pixels).convert("L" if i == 2 else "RGB")
        path = folder / f"img{i}.{'png' if i % 2 == 0 else 'jpg'}"
        image.save(path)
        paths.append(str(path))
    return paths


def _check_groups(bb) -> None:
    groups = bb.layer_groups()
    names = [g.name for g in groups]
    assert len(names) == len(set(names)) >= 2
    owned = [k for g in groups for k in g.params]
    assert sorted(owned) == sorted(k for k, _ in bb.named_parameters())  # each parameter exactly once
    order = {k: i for i, (k, _) in enumerate(bb.named_parameters())}
    firsts = [min(order[k] for k in g.params) for g in groups]
    assert firsts == sorted(firsts)  # input side first


def _same_weights(bb, state: dict[str, torch.Tensor], heads: tuple[str, ...]) -> None:
    own = bb.body.state_dict()
    kept = {k: v for k, v in state.items() if not any(k == h or k.startswith(h + ".") for h in heads)}
    assert set(own) == set(kept)
    for k, v in kept.items():
        assert torch.equal(own[k], v), k


def _round_trip(bb, tmp_path: Path, batch: dict[str, torch.Tensor]) -> None:
    """Rebuild from the JSON spec (as a bundle stores it), load the state dict strictly, same outputs."""
    spec = json.loads(json.dumps(bb.spec()))
    again = rebuild(tmp_path, spec)
    again.load_state_dict(bb.state_dict(), strict=True)
    bb.eval()
    again.eval()
    with torch.no_grad():
        assert torch.equal(bb(batch), again(batch))
    assert again.contract == bb.contract and again.feature_dim == bb.feature_dim


@pytest.fixture(scope="module")
def tiny_timm():
    """test_resnet and test_vit (timm's own test models, < 0.5 M parameters), random weights."""
    torch.manual_seed(0)
    return {name: timm.create_model(name, pretrained=False).eval() for name in ("test_resnet", "test_vit")}


# -- timm ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["test_resnet", "test_vit"])
def test_timm_weights_file(name, tiny_timm, tmp_path):
    model = tiny_timm[name]
    path = tmp_path / f"{name}.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))

    bb = create_backbone(f"timm:{name}", weights=str(path))
    head = model.pretrained_cfg["classifier"]
    _same_weights(bb, model.state_dict(), (head,))
    assert bb.source == f"timm:{name}"
    assert bb.feature_dim == model.num_features

    cfg = model.pretrained_cfg
    pre = bb.contract.preprocessing
    assert bb.contract.modality == "image"
    assert pre["size"] == list(cfg["input_size"][1:]) and pre["channels"] == cfg["input_size"][0]
    assert pre["mean"] == list(cfg["mean"]) and pre["std"] == list(cfg["std"])
    assert pre["interpolation"] == cfg["interpolation"] and pre["crop_pct"] == cfg["crop_pct"]

    _check_groups(bb)
    names = [g.name for g in bb.layer_groups()]
    assert names[0] == "stem"
    assert names[1:] == (["layer1", "layer2", "layer3", "layer4"] if name == "test_resnet" else
                         [f"blocks.{i}" for i in range(len(model.blocks))])  # fmt: skip

    batch = bb.preprocess(_images(tmp_path))
    assert batch["pixel_values"].shape == (3, *cfg["input_size"])
    bb.eval()
    with torch.no_grad():
        features = bb(batch)
        expected = model.forward_head(model.forward_features(batch["pixel_values"]), pre_logits=True)
    assert features.shape == (3, model.num_features)
    assert torch.allclose(features, expected, atol=1e-5)
    assert not hasattr(bb.body.get_submodule(head), "weight")  # classifier removed

    _round_trip(bb, tmp_path, batch)


def test_timm_modality_and_spec(tiny_timm, tmp_path):
    assert backbones.source_modality("timm:test_resnet") == "image"
    assert backbones.source_modality("torchvision:resnet18") == "image"
    path = tmp_path / "w.safetensors"
    save_file(tiny_timm["test_resnet"].state_dict(), str(path))
    spec = create_backbone("timm:test_resnet", weights=str(path)).spec()
    assert spec["kind"] == "timm" and spec["name"] == "test_resnet" and spec["head"] == "fc"
    assert "kwargs" not in spec and "extra_heads" not in spec


def test_timm_pth_with_dataparallel_prefix(tiny_timm, tmp_path):
    model = tiny_timm["test_resnet"]
    path = tmp_path / "dp.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}, "epoch": 3}, path)
    bb = create_backbone("timm:test_resnet", weights=str(path))
    _same_weights(bb, model.state_dict(), ("fc",))


def test_timm_refuses_pickled_module(tiny_timm, tmp_path):
    path = tmp_path / "full.pt"
    torch.save(tiny_timm["test_resnet"], path)
    with pytest.raises(ConfigError, match="pickled Python objects besides tensors"):
        create_backbone("timm:test_resnet", weights=str(path))


def test_timm_refuses_other_architecture(tiny_timm, tmp_path):
    path = tmp_path / "vit.safetensors"
    save_file(tiny_timm["test_vit"].state_dict(), str(path))
    with pytest.raises(ConfigError, match=r"does not fit this architecture: .*missing \(e\.g\. \['bn1"):
        create_backbone("timm:test_resnet", weights=str(path))


def test_timm_offline_without_weights(monkeypatch, tmp_path):
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))  # nothing cached
    with pytest.raises(ConfigError, match=r"unreachable.*--weights FILE"):
        create_backbone("timm:test_resnet")
    # test_coatnet has no published weights at all
    with pytest.raises(ConfigError, match=r"no pretrained weights.*--weights"):
        create_backbone("timm:test_coatnet")


def test_timm_unknown_name():
    with pytest.raises(ConfigError, match=r"unknown timm model 'resnet5O'; did you mean 'resnet50'"):
        create_backbone("timm:resnet5O")
    with pytest.raises(ConfigError, match="needs an argument"):
        create_backbone("timm:")


def test_timm_folder(tiny_timm, tmp_path):
    model = tiny_timm["test_vit"]
    folder = tmp_path / "my-vit"
    folder.mkdir()
    config = {
        "architecture": "test_vit",
        "num_classes": model.num_classes,
        "pretrained_cfg": model.pretrained_cfg,
    }
    (folder / "config.json").write_text(json.dumps(config))
    save_file(model.state_dict(), str(folder / "model.safetensors"))

    bb = create_backbone(f"timm:{folder}")
    _same_weights(bb, model.state_dict(), ("head",))
    assert bb.spec()["name"] == "test_vit" and bb.spec()["head"] == "head"
    assert bb.contract.preprocessing["size"] == list(model.pretrained_cfg["input_size"][1:])
    batch = bb.preprocess(_images(tmp_path, 2))
    _round_trip(bb, tmp_path, batch)

    (folder / "model.safetensors").unlink()
    with pytest.raises(ConfigError, match="holds no weights file"):
        create_backbone(f"timm:{folder}")


def test_timm_folder_distilled_with_model_args(tmp_path):
    """A distilled ViT (two heads) in timm's export format, with model_args shrinking it."""
    from timm.models._hub import save_config_for_hf

    args = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2, "num_classes": 5}
    model = timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False, **args).eval()
    folder = tmp_path / "deit"
    folder.mkdir()
    save_config_for_hf(model, str(folder / "config.json"))
    torch.save(model.state_dict(), folder / "pytorch_model.bin")

    bb = create_backbone(f"timm:{folder}")
    spec = bb.spec()
    assert (spec["head"], spec["extra_heads"]) == ("head", ["head_dist"])
    assert spec["kwargs"]["embed_dim"] == 32 and "num_classes" not in spec["kwargs"]
    _same_weights(bb, model.state_dict(), ("head", "head_dist"))
    assert bb.feature_dim == 32 and bb.contract.preprocessing["size"] == [32, 32]
    _check_groups(bb)
    _round_trip(bb, tmp_path, {"pixel_values": torch.randn(2, 3, 32, 32)})


# -- torchvision ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mobilenet():
    torch.manual_seed(0)
    return torchvision.models.get_model("mobilenet_v3_small", weights=None).eval()


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_torchvision_weights_file(suffix, mobilenet, tmp_path):
    path = tmp_path / f"mnv3{suffix}"
    if suffix == ".safetensors":
        save_file(mobilenet.state_dict(), str(path))
    else:
        torch.save(mobilenet.state_dict(), path)

    bb = create_backbone("torchvision:mobilenet_v3_small", weights=str(path))
    assert bb.spec()["head"] == "classifier.3"
    _same_weights(bb, mobilenet.state_dict(), ("classifier.3",))
    assert bb.feature_dim == mobilenet.classifier[3].in_features == 1024

    t = torchvision.models.get_model_weights("mobilenet_v3_small").DEFAULT.transforms()
    pre = bb.contract.preprocessing
    assert pre["size"] == [t.crop_size[0]] * 2
    assert pre["crop_pct"] == pytest.approx(t.crop_size[0] / t.resize_size[0])
    assert pre["mean"] == pytest.approx(list(t.mean)) and pre["std"] == pytest.approx(list(t.std))
    assert pre["interpolation"] == t.interpolation.value

    _check_groups(bb)
    names = [g.name for g in bb.layer_groups()]
    assert names[:2] == ["features.0", "features.1"] and names[-1] == "classifier"
    if suffix != ".safetensors":
        return  # the same backbone: the forward checks below run once (depthwise convs are slow on CPU)

    batch = bb.preprocess(_images(tmp_path, 2))
    bb.eval()
    reference = torchvision.models.get_model("mobilenet_v3_small", weights=None).eval()
    reference.load_state_dict(mobilenet.state_dict())
    reference.classifier[3] = nn.Identity()
    with torch.no_grad():
        assert torch.allclose(bb(batch), reference(batch["pixel_values"]), atol=1e-5)
    _round_trip(bb, tmp_path, batch)


def test_torchvision_squeezenet_conv_head(tmp_path):
    model = torchvision.models.get_model("squeezenet1_1", weights=None)
    path = tmp_path / "sq.safetensors"
    save_file(model.state_dict(), str(path))
    bb = create_backbone("torchvision:squeezenet1_1", weights=str(path))
    assert bb.spec()["head"] == "classifier.1" and bb.feature_dim == 512
    _check_groups(bb)
    with torch.no_grad():
        assert bb.eval()(bb.preprocess(_images(tmp_path, 2))).shape == (2, 512)


def test_torchvision_errors(mobilenet, monkeypatch, tmp_path):
    with pytest.raises(ConfigError, match=r"did you mean 'resnet18'"):
        create_backbone("torchvision:resnet81")
    with pytest.raises(ConfigError, match="not an image classification model"):
        create_backbone("torchvision:fasterrcnn_resnet50_fpn")

    import urllib.error

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr("torchvision.models._api.load_state_dict_from_url", offline)
    with pytest.raises(ConfigError, match="--weights FILE"):
        create_backbone("torchvision:mobilenet_v3_small")

    path = tmp_path / "other.safetensors"
    save_file(torchvision.models.get_model("squeezenet1_1", weights=None).state_dict(), str(path))
    with pytest.raises(ConfigError, match=r"does not fit this architecture: .*features\."):
        create_backbone("torchvision:mobilenet_v3_small", weights=str(path))
