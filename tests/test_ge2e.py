"""The GE2E speaker encoder backbone (graft.backbones.ge2e) against the resemblyzer package itself:
the package's ``preprocess_wav`` and ``VoiceEncoder.embed_utterance`` (with librosa underneath) are the
oracle, on real FSDD clips from every speaker and on a long 44.1 kHz stereo recording made of them."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

import graft
from graft.backbones import create_backbone, ge2e, source_modality
from graft.data.audio import load_audio
from graft.errors import ConfigError
from tests.conftest import shared

SPEAKERS = ("george", "jackson", "lucas", "nicolas", "theo", "yweweler")


@pytest.fixture(scope="module")
def backbone():
    return create_backbone("ge2e")


@pytest.fixture(scope="module")
def encoder():
    from resemblyzer import VoiceEncoder

    return VoiceEncoder(device="cpu", verbose=False)


def real_clips() -> list[str]:
    folder = shared("audio", "fsdd")
    return [str(folder / f"{d}_{s}_{i}.wav") for i, s in enumerate(SPEAKERS) for d in (i, 9 - i)]


@pytest.fixture(scope="module")
def long_stereo(tmp_path_factory):
    """Six FSDD clips joined with 1 s silences, resampled to 44.1 kHz and written as stereo: several
    partials, silences for the detector to shorten, another sample rate and channel count."""
    from scipy.signal import resample_poly

    pieces = []
    for path in real_clips()[:6]:
        wave, _ = load_audio(path)
        pieces += [wave, np.zeros(8000, dtype=np.float32)]
    wave = resample_poly(np.concatenate(pieces), 441, 80)
    path = tmp_path_factory.mktemp("ge2e") / "long.wav"
    sf.write(path, np.stack([wave, 0.8 * wave], axis=1), 44100, subtype="PCM_16")
    return str(path)


def test_filterbank_equals_librosa_and_transformers():
    import librosa
    from transformers.audio_utils import mel_filter_bank

    ours = ge2e.slaney_filterbank()
    np.testing.assert_allclose(ours, librosa.filters.mel(sr=16000, n_fft=400, n_mels=40), atol=1e-6, rtol=0)
    theirs = mel_filter_bank(201, 40, 0.0, 8000.0, 16000, norm="slaney", mel_scale="slaney")
    np.testing.assert_allclose(ours, theirs.T, atol=1e-6, rtol=0)


def test_preprocessed_waves_equal_the_packages(long_stereo):
    from resemblyzer import preprocess_wav

    pre = ge2e.GE2EPreprocess()
    for path in [*real_clips(), long_stereo]:
        theirs = preprocess_wav(path)
        ours = pre.wave(*load_audio(path))
        assert ours.shape == theirs.shape, path
        np.testing.assert_allclose(ours, theirs, atol=1e-6, rtol=0, err_msg=path)
    trimmed = pre.wave(*load_audio(long_stereo))
    assert len(trimmed) < sf.info(long_stereo).frames * 16000 / 44100 - 16000  # silences shortened


def test_mel_frames_equal_librosa():
    import librosa

    wave = ge2e.GE2EPreprocess().wave(*load_audio(real_clips()[3]))
    theirs = librosa.feature.melspectrogram(y=wave, sr=16000, n_fft=400, hop_length=160, n_mels=40).T
    np.testing.assert_allclose(ge2e.mel_frames(wave), theirs, rtol=1e-5, atol=1e-6 * theirs.max())


def test_embeddings_equal_embed_utterance(backbone, encoder, long_stereo):
    from resemblyzer import preprocess_wav

    paths = [*real_clips(), long_stereo]
    batch = backbone.preprocess(paths)
    assert batch["mels"].shape[1] > 1 and batch["partial_mask"].sum(1).min() == 1  # 1 and several partials
    with torch.no_grad():
        ours = backbone(batch).numpy()
    theirs = np.stack([encoder.embed_utterance(preprocess_wav(p)) for p in paths])
    assert np.abs(ours - theirs).max() < 1e-5
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-6)


def test_a_clip_embeds_the_same_alone_and_in_a_padded_batch(backbone, long_stereo):
    clip = real_clips()[0]
    with torch.no_grad():
        alone = backbone(backbone.preprocess([clip]))
        padded = backbone(backbone.preprocess([clip, long_stereo]))[:1]
    torch.testing.assert_close(alone, padded, atol=1e-6, rtol=0)


def test_backbone_surface(backbone):
    assert source_modality("ge2e") == "audio" and backbone.contract.modality == "audio"
    assert backbone.feature_dim == 256
    groups = backbone.layer_groups()
    assert [g.name for g in groups] == ["lstm.0", "lstm.1", "lstm.2", "projection"]
    owned = [k for g in groups for k in g.params]
    assert sorted(owned) == sorted(k for k, _ in backbone.named_parameters())  # each exactly once
    assert backbone.contract.preprocessing["mel"]["scale"] == "slaney"


def test_a_silent_clip_still_gets_an_embedding(backbone, tmp_path):
    path = tmp_path / "silence.wav"
    sf.write(path, np.zeros(16000, dtype=np.float32), 16000)
    with torch.no_grad():
        out = backbone(backbone.preprocess([str(path)]))
    assert torch.isfinite(out).all()


def test_augment_shifts_the_partial_grid(backbone):
    clip = real_clips()[1]
    train = backbone.preprocessor("crop")
    torch.manual_seed(0)
    shifted = [train([clip])["mels"] for _ in range(3)]
    plain = backbone.preprocessor("none")([clip])["mels"]
    assert any(not torch.equal(s, plain) for s in shifted)
    assert torch.equal(plain, backbone.preprocess([clip])["mels"])


def test_missing_package_says_how_to_install(monkeypatch):
    monkeypatch.setattr(ge2e.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match="pip install --no-deps resemblyzer"):
        create_backbone("ge2e")


def test_weights_of_another_network_are_refused(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"fc.weight": torch.zeros(2, 2)}, path)
    with pytest.raises(ConfigError, match="does not fit this architecture"):
        create_backbone("ge2e", weights=str(path))


def test_probe_bundle_round_trip_and_onnx_export(tmp_path):
    """A probe on 4 clips of 2 speakers: saved, loaded, the same answers; exported with parity."""
    folder = shared("audio", "fsdd")
    train = {
        "path": [str(folder / f"{d}_{s}_7.wav") for s in ("george", "theo") for d in range(4)],
        "label": [s for s in ("george", "theo") for _ in range(4)],
    }
    test = [str(folder / f"{d}_{s}_0.wav") for s in ("george", "theo") for d in range(5)]
    model = graft.fit(train, backbone="ge2e", strategy="linear_probe", baselines="none", out=tmp_path / "run",
                      progress=False)  # fmt: skip
    again = graft.load(tmp_path / "run" / "bundle")
    np.testing.assert_allclose(again.predict_proba(test), model.predict_proba(test), atol=1e-6)
    assert list(again.predict(test)) == ["george"] * 5 + ["theo"] * 5

    from graft.export import export_onnx

    result = export_onnx(again, tmp_path / "m.onnx", check=test)
    assert result.inputs == ["mels", "partial_mask"] and result.max_difference < 1e-4
