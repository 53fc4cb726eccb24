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


def test_the_log_mel_front_end_equals_transformers_audio_utils_on_a_real_clip():
    import numpy as np
    import soundfile
    from transformers.audio_utils import mel_filter_bank, spectrogram, window_function

    from graft.backbones.archs import LogMel, mel_filterbank

    sr, n_fft, hop, n_mels = 16000, 512, 160, 64
    theirs = mel_filter_bank(num_frequency_bins=n_fft // 2 + 1, num_mel_filters=n_mels, min_frequency=0.0,
                             max_frequency=sr / 2, sampling_rate=sr, norm=None, mel_scale="htk")  # fmt: skip
    ours = mel_filterbank(n_fft, n_mels, sr).double().numpy()
    np.testing.assert_allclose(ours, theirs, atol=1e-6)

    clip = sorted(shared("audio", "fsdd").glob("*.wav"))[0]
    wave, rate = soundfile.read(clip, dtype="float32")
    assert rate == 8000  # FSDD is 8 kHz; the front end sees whatever rate it is given, so compare at 8 kHz
    front = LogMel(sample_rate=rate, n_fft=n_fft, hop=hop, n_mels=n_mels)
    got = front(torch.from_numpy(wave)[None])[0, 0].numpy()
    power = spectrogram(wave, window_function(n_fft, "hann"), frame_length=n_fft, hop_length=hop, power=2.0,
                        center=True, pad_mode="reflect",
                        mel_filters=mel_filterbank(n_fft, n_mels, rate).double().numpy())  # fmt: skip
    np.testing.assert_allclose(got, np.log(power + 1e-6), atol=1e-3)
