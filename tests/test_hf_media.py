"""Hugging Face vision and audio encoders (hf:<folder>): tiny ViT, ConvNeXt and wav2vec2 saved to disk."""

from __future__ import annotations

import json
import pickle
import warnings

import numpy as np
import pytest
import torch

from graft.backbones import backbone_from_saved, create_backbone, source_modality
from graft.backbones.hf_media import (
    DEFAULT_AUDIO_DURATION,
    HFMediaBackbone,
    hf_media_from_saved,
    image_preprocess_from_config,
    load_hf_media,
)
from graft.backbones.preprocess import AudioPreprocess, ImagePreprocess
from graft.errors import ConfigError

MEAN, STD = [0.5, 0.4, 0.3], [0.2, 0.3, 0.4]
VIT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32,
           patch_size=8)  # fmt: skip


@pytest.fixture(scope="module")
def vit_dir(tmp_path_factory):
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    folder = tmp_path_factory.mktemp("tiny-vit")
    torch.manual_seed(0)
    ViTModel(ViTConfig(**VIT)).save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=MEAN, image_std=STD).save_pretrained(
        folder
    )
    return folder


@pytest.fixture(scope="module")
def convnext_dir(tmp_path_factory):
    from transformers import ConvNextConfig, ConvNextImageProcessor, ConvNextModel

    folder = tmp_path_factory.mktemp("tiny-convnext")
    torch.manual_seed(0)
    ConvNextModel(ConvNextConfig(hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 2, 1])).save_pretrained(folder)
    ConvNextImageProcessor(size={"shortest_edge": 32}, crop_pct=0.8).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def w2v_dir(tmp_path_factory):
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    folder = tmp_path_factory.mktemp("tiny-wav2vec2")
    torch.manual_seed(0)
    config = Wav2Vec2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, conv_dim=(32, 32),
        conv_kernel=(10, 3), conv_stride=(5, 2), num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2,
    )  # fmt: skip
    Wav2Vec2Model(config).save_pretrained(folder)
    Wav2Vec2FeatureExtractor(sampling_rate=16000, do_normalize=True).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def image_files(tmp_path_factory):
    from PIL import Image

    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    paths = []
    for i, (h, w, mode, suffix) in enumerate(
        [(40, 56, "RGB", "png"), (64, 48, "RGB", "jpg"), (32, 32, "L", "png"), (50, 50, "RGBA", "png")]
    ):
        channels = {"RGB": 3, "L": 1, "RGBA": 4}[mode]
        pixels = rng.integers(0, 256, (h, w, channels), dtype=np.uint8).squeeze()
        path = folder / f"img{i}.{suffix}"
        Image.fromarray(pixels, mode).save(path)
        paths.append(str(path))
    return paths


@pytest.fixture(scope="module")
def wav_files(tmp_path_factory):
    import soundfile as sf

    folder = tmp_path_factory.mktemp("wavs")
    rng = np.random.default_rng(0)
    paths = []
    for i, seconds in enumerate([0.5, 1.3, 3.0]):
        t = np.arange(int(8000 * seconds)) / 8000
        wave = 0.3 * np.sin(2 * np.pi * (200 + 100 * i) * t) + 0.05 * rng.standard_normal(t.size)
        path = folder / f"clip{i}.wav"
        sf.write(path, wave, 8000, subtype="PCM_16")
        paths.append(str(path))
    return paths


def _check_groups(bb, names):
    groups = bb.layer_groups()
    assert [g.name for g in groups] == names
    ids = [id(p) for g in groups for p in g.params.values()]
    assert len(ids) == len(set(ids)) == len(list(bb.parameters()))
    assert {k for g in groups for k in g.params} == {k for k, _ in bb.named_parameters()}


def _round_trip(bb, tmp_path, batch):
    bb.save_architecture(tmp_path / "backbone")
    spec = json.loads(json.dumps(bb.spec()))  # as stored in a bundle manifest
    assert spec["kind"] == "hf_media"
    rebuilt = hf_media_from_saved(tmp_path / "backbone", spec)
    assert isinstance(rebuilt, HFMediaBackbone)
    rebuilt.load_state_dict(bb.state_dict(), strict=True)
    assert rebuilt.contract == bb.contract and rebuilt.feature_dim == bb.feature_dim
    with torch.no_grad():
        assert torch.equal(bb.eval()(batch), rebuilt.eval()(batch))
    again = backbone_from_saved(tmp_path / "backbone", spec)  # through the registry
    again.load_state_dict(bb.state_dict(), strict=True)
    with torch.no_grad():
        assert torch.equal(bb(batch), again.eval()(batch))
    return rebuilt


def test_vit_folder_is_an_image_backbone(vit_dir, image_files):
    source = f"hf:{vit_dir}"
    assert source_modality(source) == "image"
    bb = create_backbone(source)
    assert isinstance(bb, HFMediaBackbone) and bb.streams_files
    assert bb.contract.modality == "image"
    expected = ImagePreprocess(
        size=(32, 32),
        mean=tuple(MEAN),
        std=tuple(STD),
        interpolation="bilinear",
        resize="squash",
        crop_offset="floor",
    )  # ViT's processor resizes both sides to 32, aspect not kept; HF crops start at (h - crop) // 2
    assert bb.contract.preprocessing == {**expected.to_dict(), "pooling": "cls"}
    # the BERT-style pooler is dropped: the class token after the final layer norm is the feature
    assert bb.pooling == "cls" and bb.model.pooler is None
    assert bb.feature_dim == 32 and not bb.training

    batch = bb.preprocess(image_files)
    assert batch["pixel_values"].shape == (4, 3, 32, 32)
    with torch.no_grad():
        feats = bb(batch)
        assert feats.shape == (4, bb.feature_dim) and torch.isfinite(feats).all()
        cls = bb.model(pixel_values=batch["pixel_values"]).last_hidden_state[:, 0]
    assert torch.equal(feats, cls)
    _check_groups(bb, ["embeddings", "layer.0", "layer.1", "final"])


def test_vit_preprocessor_is_picklable_without_the_model(vit_dir, image_files):
    bb = create_backbone(f"hf:{vit_dir}")
    pre = bb.preprocessor("crop_flip")
    assert isinstance(pre, ImagePreprocess) and pre.augment == "crop_flip"
    assert len(pickle.dumps(pre)) < 2000
    torch.manual_seed(0)
    assert pre(image_files[:2])["pixel_values"].shape == (2, 3, 32, 32)
    plain = bb.preprocessor()
    assert torch.equal(plain(image_files)["pixel_values"], bb.preprocess(image_files)["pixel_values"])


def test_vit_round_trip_reproduces_features(vit_dir, image_files, tmp_path):
    bb = create_backbone(f"hf:{vit_dir}")
    rebuilt = _round_trip(bb, tmp_path, bb.preprocess(image_files))
    assert rebuilt.model.pooler is None
    assert (tmp_path / "backbone" / "preprocessor_config.json").is_file()


def test_vit_classification_checkpoint_loads_without_warning(tmp_path):
    # checkpoints are usually saved from ...ForImageClassification: no pooler weights, a classifier
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    ViTForImageClassification(ViTConfig(**VIT, num_labels=3)).save_pretrained(tmp_path)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bb = create_backbone(f"hf:{tmp_path}")
    assert bb.pooling == "cls" and bb.model.pooler is None
    assert not any("classifier" in k for k in bb.state_dict())


def test_convnext_pools_with_its_own_pooler_and_groups_by_stage(convnext_dir, image_files, tmp_path):
    source = f"hf:{convnext_dir}"
    assert source_modality(source) == "image"
    bb = create_backbone(source)
    pre = bb.contract.preprocessing
    assert pre["size"] == [32, 32] and pre["crop_pct"] == 0.8 and pre["interpolation"] == "bicubic"
    assert bb.pooling == "pooler" and bb.feature_dim == 32
    batch = bb.preprocess(image_files)
    with torch.no_grad():
        feats = bb(batch)
        assert torch.equal(feats, bb.model(**batch).pooler_output)
    assert feats.shape == (4, 32)
    # one group per stage, not per block of the deepest stage
    _check_groups(bb, ["embeddings", "layer.0", "layer.1", "layer.2", "layer.3", "final"])
    _round_trip(bb, tmp_path, batch)


def test_image_preprocess_follows_processor_settings():
    class Config:
        num_channels = 3
        image_size = 224

    # CLIP / DINOv2 style: shorter side to 256, centre crop 224, bicubic
    pre = image_preprocess_from_config(
        {"size": {"shortest_edge": 256}, "crop_size": {"height": 224, "width": 224}, "do_center_crop": True,
         "resample": 3, "image_mean": [0.1, 0.2, 0.3], "image_std": [0.4, 0.5, 0.6]},
        Config(),
    )  # fmt: skip
    assert pre.size == (224, 224) and pre.crop_pct == 0.875 and pre.interpolation == "bicubic"
    assert pre.mean == (0.1, 0.2, 0.3) and pre.std == (0.4, 0.5, 0.6)
    # no normalisation, no processor at all, nearest / lanczos filters
    pre = image_preprocess_from_config({"size": {"height": 48, "width": 64}, "do_normalize": False,
                                        "resample": 0}, Config())  # fmt: skip
    assert pre.size == (48, 64) and pre.mean == (0.0,) * 3 and pre.std == (1.0,) * 3
    assert pre.interpolation == "nearest" and pre.crop_pct == 1.0
    pre = image_preprocess_from_config({}, Config())
    assert pre.size == (224, 224) and pre.interpolation == "bilinear"
    assert image_preprocess_from_config({"resample": 1}, Config()).interpolation == "lanczos"


def test_wav2vec2_folder_is_an_audio_backbone(w2v_dir, wav_files):
    source = f"hf:{w2v_dir}"
    assert source_modality(source) == "audio"
    bb = create_backbone(source)
    assert isinstance(bb, HFMediaBackbone)
    expected = AudioPreprocess(sample_rate=16000, duration=DEFAULT_AUDIO_DURATION, normalize=True)
    assert bb.contract.modality == "audio"
    assert bb.contract.preprocessing == {**expected.to_dict(), "pooling": "mean"}
    assert bb.feature_dim == 32 and isinstance(bb.preprocessor("crop"), AudioPreprocess)

    batch = bb.preprocess(wav_files)  # 8 kHz files, resampled to 16 kHz
    assert batch["input_values"].shape == (3, 16000 * DEFAULT_AUDIO_DURATION)
    with torch.no_grad():
        feats = bb(batch)
        hidden = bb.model(**batch).last_hidden_state
    assert feats.shape == (3, 32) and torch.isfinite(feats).all()
    assert torch.allclose(feats, hidden.mean(1))
    _check_groups(bb, ["embeddings", "layer.0", "layer.1"])


def test_audio_duration_is_part_of_the_contract_and_survives_a_round_trip(w2v_dir, wav_files, tmp_path):
    bb = load_hf_media(str(w2v_dir), "audio", source=f"hf:{w2v_dir}", duration=0.5)
    assert bb.contract.preprocessing["duration"] == 0.5
    assert bb.contract != create_backbone(f"hf:{w2v_dir}").contract  # a different feature-cache key
    batch = bb.preprocess(wav_files)
    assert batch["input_values"].shape == (3, 8000)
    rebuilt = _round_trip(bb, tmp_path, batch)
    assert rebuilt.contract.preprocessing["duration"] == 0.5


def test_stable_layer_norm_goes_to_the_final_group(tmp_path):
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    config = Wav2Vec2Config(
        hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32, conv_dim=(16, 16),
        conv_kernel=(10, 3), conv_stride=(5, 2), num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2,
        do_stable_layer_norm=True, feat_extract_norm="layer",
    )  # fmt: skip
    Wav2Vec2Model(config).save_pretrained(tmp_path)  # no preprocessor_config.json: 16 kHz default
    bb = create_backbone(f"hf:{tmp_path}")
    assert bb.contract.preprocessing["sample_rate"] == 16000
    _check_groups(bb, ["embeddings", "layer.0", "layer.1", "final"])
    assert set(bb.layer_groups()[-1].params) == {
        "model.encoder.layer_norm.weight",
        "model.encoder.layer_norm.bias",
    }


def test_not_a_media_encoder_is_a_config_error(tiny_bert_dir, tmp_path):
    with pytest.raises(ConfigError, match="not an image encoder"):
        load_hf_media(str(tiny_bert_dir), "image", source="hf:bert")
    with pytest.raises(ConfigError, match="hub is offline"):
        load_hf_media("nobody/not-a-vit", "image", source="hf:nobody/not-a-vit")
    with pytest.raises(ConfigError, match="folder not found"):
        load_hf_media(str(tmp_path / "absent" / "model"), "image", source="hf:absent")
    from transformers import WhisperConfig

    WhisperConfig(d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                  decoder_attention_heads=2).save_pretrained(tmp_path)  # fmt: skip
    assert source_modality(f"hf:{tmp_path}") == "audio"
    with pytest.raises(ConfigError, match="raw-waveform encoders"):
        create_backbone(f"hf:{tmp_path}")


@pytest.mark.parametrize("folder", ["vit_dir", "convnext_dir"])
def test_image_tensors_equal_the_hugging_face_processors_on_real_jpegs(folder, request):
    from PIL import Image
    from transformers import AutoImageProcessor

    from tests.conftest import shared

    path = request.getfixturevalue(folder)
    processor = AutoImageProcessor.from_pretrained(path)
    bb = create_backbone(f"hf:{path}")
    images = sorted(str(p) for p in shared("images", "hymenoptera").rglob("*.jpg"))[:8]
    images.append(next(str(p) for p in shared("images", "hymenoptera").rglob("*.gif")))
    # one 8-bit level after normalisation: the processors round an occasional resized pixel the other way
    level = 1 / 255 / min(processor.image_std) + 1e-6
    for image in images:
        expected = processor(images=Image.open(image).convert("RGB"), return_tensors="pt")["pixel_values"][0]
        got = bb.preprocess([image])["pixel_values"][0]
        assert got.shape == expected.shape
        diff = (got - expected).abs()
        assert float(diff.max()) <= level and float(diff.mean()) < 1e-4, (
            image,
            float(diff.max()),
            float(diff.mean()),
        )
