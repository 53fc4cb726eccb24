"""graft's image tensors equal timm's own eval transform on real images of odd sizes (oracle test)."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from graft.backbones.timm_source import timm_preprocess
from tests.conftest import shared


def _real_images() -> list[str]:
    folder = shared("images", "hymenoptera")
    jpegs = sorted(str(p) for p in folder.rglob("*.jpg"))
    picked = jpegs[:6] + jpegs[-6:]  # odd sizes (500x333, 375x500, ...)
    gif = next(str(p) for p in folder.rglob("*.gif"))  # a palette GIF
    cifar = sorted(str(p) for p in shared("images", "cifar10_jpg_test").rglob("*.jpg"))[:2]  # 32x32
    return [*picked, gif, *cifar]


@pytest.mark.parametrize(
    "name",
    ["resnet50.a1_in1k", "vit_small_patch16_224.augreg_in21k_ft_in1k", "efficientnet_b0.ra_in1k",
     "convnext_tiny.fb_in1k", "resnet18.tv_in1k"],
)  # fmt: skip
def test_image_tensors_equal_timms_create_transform(name):
    import timm
    from timm.data import create_transform, resolve_data_config

    model = timm.create_model(name, pretrained=False)
    config = resolve_data_config({}, model=model)
    theirs = create_transform(**config)
    ours = timm_preprocess(model.pretrained_cfg, name)
    sizes = set()
    for path in _real_images():
        image = Image.open(path)
        sizes.add(image.size)
        expected = theirs(image.convert("RGB"))
        got = ours([path])["pixel_values"][0]
        assert got.shape == expected.shape, (path, config)
        assert torch.allclose(got, expected, atol=1e-6), (path, config, float((got - expected).abs().max()))
    assert len(sizes) >= 5  # several odd sizes were compared


@pytest.mark.parametrize(
    "name", ["resnet18", "efficientnet_b0", "convnext_tiny", "regnet_y_400mf", "vit_b_16"]
)
def test_image_tensors_equal_torchvisions_weights_transforms(name):
    import torchvision

    from graft.backbones.torchvision_source import torchvision_preprocess

    theirs = torchvision.models.get_model_weights(name).DEFAULT.transforms()
    ours = torchvision_preprocess(name)
    for path in _real_images():
        expected = theirs(Image.open(path).convert("RGB"))
        got = ours([path])["pixel_values"][0]
        assert got.shape == expected.shape, (path, theirs)
        assert torch.allclose(got, expected, atol=1e-6), (path, theirs, float((got - expected).abs().max()))
