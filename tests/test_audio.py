"""Audio decoding (graft.data.audio), AudioPreprocess, audio datasets and arch:audio_cnn, on files
written here with soundfile and on real FSDD clips."""

from __future__ import annotations

import os

import numpy as np
import pytest
import soundfile as sf
import torch

from graft.backbones import create_backbone, source_modality
from graft.backbones.preprocess import AudioPreprocess
from graft.config import DataConfig
from graft.data import read_dataset
from graft.data.audio import AudioDecodeError, check_audio, fit_length, load_audio, resample
from graft.errors import DataError
from tests.conftest import shared

RATE = 8000


def sine(freq: float, seconds: float, rate: int = RATE, amp: float = 0.5) -> np.ndarray:
    return amp * np.sin(2 * np.pi * freq * np.arange(int(rate * seconds)) / rate)


def peak_hz(wave: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(wave.size)))
    return float(np.fft.rfftfreq(wave.size, 1 / rate)[spectrum.argmax()])


def write_wav(path, wave, rate=RATE, subtype="PCM_16"):
    sf.write(path, wave, rate, subtype=subtype)
    return str(path)


def fsdd_clips(n: int) -> list[str]:
    folder = shared("audio", "fsdd")
    return [str(folder / f"{d}_george_0.wav") for d in range(n)]


# -- decoding --------------------------------------------------------------------------------------


def test_stereo_pcm_wav_is_mixed_to_mono_float32(tmp_path):
    left, right = sine(440, 0.25), -0.5 * sine(440, 0.25) + 0.2
    path = write_wav(tmp_path / "stereo.wav", np.stack([left, right], axis=1))
    assert sf.info(path).channels == 2 and sf.info(path).subtype == "PCM_16"
    wave, rate = load_audio(path)
    assert rate == RATE and wave.dtype == np.float32 and wave.ndim == 1 and wave.size == left.size
    assert np.abs(wave).max() <= 1.0
    np.testing.assert_allclose(wave, (left + right) / 2, atol=2 / 32768)


def test_flac_decodes(tmp_path):
    path = tmp_path / "tone.flac"
    sf.write(path, sine(300, 0.5, rate=16000), 16000, subtype="PCM_16")
    wave, rate = load_audio(path)
    assert rate == 16000 and wave.shape == (8000,) and wave.dtype == np.float32
    assert abs(peak_hz(wave, rate) - 300) < 4
    assert check_audio(path) is None


def test_resampling_keeps_the_frequency(tmp_path):
    tone = sine(440, 1.0)
    up = resample(tone, RATE, 16000)
    assert up.shape == (16000,) and up.dtype == np.float32
    assert abs(peak_hz(up, 16000) - 440) <= 1.0
    assert resample(tone, RATE, RATE).shape == tone.shape  # identity
    # the same through load_audio
    wave, rate = load_audio(write_wav(tmp_path / "a440.wav", tone), sample_rate=16000)
    assert rate == 16000 and wave.size == 2 * tone.size
    assert abs(peak_hz(wave, rate) - 440) <= 1.0


def test_fit_length_pads_and_crops():
    wave = np.arange(10, dtype=np.float32)
    padded = fit_length(wave, 14)
    assert padded.shape == (14,) and (padded[:10] == wave).all() and (padded[10:] == 0).all()
    assert fit_length(wave, 10) is wave
    np.testing.assert_array_equal(fit_length(wave, 4), [3, 4, 5, 6])  # centred
    np.testing.assert_array_equal(fit_length(wave, 4, offset=1), [1, 2, 3, 4])
    np.testing.assert_array_equal(fit_length(wave, 4, offset=0), [0, 1, 2, 3])
    np.testing.assert_array_equal(fit_length(wave, 4, offset=99), [6, 7, 8, 9])  # clipped to the end


# -- AudioPreprocess -------------------------------------------------------------------------------


@pytest.fixture
def clips(tmp_path):
    rng = np.random.default_rng(0)
    return [
        write_wav(tmp_path / f"c{i}.wav", sine(200 * (i + 1), s) + 0.05 * rng.standard_normal(int(RATE * s)))
        for i, s in enumerate([0.2, 0.5, 1.5])
    ]


def test_audio_preprocess_gives_fixed_length_batches(clips):
    pre = AudioPreprocess(sample_rate=16000, duration=0.5)
    batch = pre(clips)["input_values"]
    assert batch.shape == (3, pre.num_samples) == (3, 8000) and batch.dtype == torch.float32
    # the short clip (0.2 s -> 3200 samples) is zero-padded at the end
    assert batch[0, :3200].abs().sum() > 0 and (batch[0, 3200:] == 0).all()
    # normalisation: zero mean, unit variance per clip
    normed = AudioPreprocess(sample_rate=16000, duration=0.5, normalize=True)(clips)["input_values"]
    assert normed.shape == (3, 8000)
    assert torch.allclose(normed.mean(1), torch.zeros(3), atol=1e-4)
    assert torch.allclose(normed.std(1, correction=0), torch.ones(3), atol=1e-3)
    assert pre.to_dict() == {"kind": "audio", "sample_rate": 16000, "duration": 0.5, "normalize": False}


def test_crop_augment_takes_random_windows(clips):
    long_clip = clips[2]
    full, _ = load_audio(long_clip, 16000)
    pre = AudioPreprocess(sample_rate=16000, duration=0.5).with_augment("crop")
    assert pre.augment == "crop" and pre.to_dict() == AudioPreprocess(16000, 0.5).to_dict()
    torch.manual_seed(0)
    crops = [pre([long_clip])["input_values"][0].numpy() for _ in range(6)]
    starts = set()
    for crop in crops:
        assert crop.shape == (8000,)
        # each crop is a contiguous window of the resampled clip
        matches = [s for s in range(full.size - 8000 + 1) if np.array_equal(full[s : s + 8000], crop)]
        assert matches
        starts.add(matches[0])
    assert len(starts) > 1
    # a short clip lands whole somewhere inside the window
    short = pre([clips[0]])["input_values"][0]
    nonzero = torch.nonzero(short).flatten()
    assert short.shape == (8000,) and 0 < nonzero.numel() <= 3200


# -- broken files ----------------------------------------------------------------------------------


def test_broken_files_raise_audio_decode_error(tmp_path):
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(np.random.default_rng(0).integers(0, 256, 2000, dtype=np.uint8).tobytes())
    empty = write_wav(tmp_path / "empty.wav", np.zeros(0))
    missing = tmp_path / "missing.wav"
    with pytest.raises(AudioDecodeError, match="cannot decode audio"):
        load_audio(corrupt)
    with pytest.raises(AudioDecodeError, match="no audio samples"):
        load_audio(empty)
    with pytest.raises(AudioDecodeError):
        load_audio(missing)
    assert "cannot decode audio" in check_audio(corrupt)
    assert check_audio(empty) == "no audio samples (empty file)"
    assert check_audio(missing)
    assert isinstance(AudioDecodeError("x"), ValueError)
    with pytest.raises(AudioDecodeError):
        AudioPreprocess()([str(corrupt)])


def test_missing_file_says_not_found(tmp_path):
    assert "not found" in check_audio(tmp_path / "missing.wav")


# -- real data -------------------------------------------------------------------------------------


def test_real_fsdd_clip_decodes_at_8khz():
    path = shared("audio", "fsdd") / "0_george_0.wav"
    wave, rate = load_audio(path)
    assert rate == 8000 and wave.dtype == np.float32 and wave.ndim == 1
    assert 0.14 * 8000 <= wave.size <= 2.3 * 8000
    assert np.abs(wave).max() <= 1.0 and wave.std() > 1e-3
    assert check_audio(path) is None


def test_audio_cnn_runs_on_real_fsdd_clips():
    assert source_modality("arch:audio_cnn") == "audio"
    bb = create_backbone("arch:audio_cnn").eval()
    assert bb.feature_dim == 128 and bb.contract.modality == "audio"
    assert bb.contract.preprocessing["sample_rate"] == 16000
    batch = bb.preprocess(fsdd_clips(4))
    assert batch["input_values"].shape == (4, 16000)
    with torch.no_grad():
        feats = bb(batch)
    assert feats.shape == (4, 128) and torch.isfinite(feats).all()
    assert not torch.allclose(feats[0], feats[1])


# -- datasets --------------------------------------------------------------------------------------


@pytest.fixture
def digit_folder(tmp_path):
    folder = tmp_path / "digits"
    folder.mkdir()
    for digit in range(3):
        for i in range(3):
            write_wav(folder / f"{digit}_spk_{i}.wav", sine(300 + 100 * digit, 0.1 + 0.05 * i))
    return folder


def test_read_dataset_labels_wavs_from_file_names(digit_folder):
    ds = read_dataset(digit_folder, DataConfig(label_regex=r"^(\d+)_"))
    assert ds.modality == "audio" and len(ds) == 9
    assert sorted(str(x) for x in ds.label_space) == ["0", "1", "2"]
    for path, target in zip(ds.examples, ds.targets, strict=True):
        assert os.path.isabs(path)
        assert str(ds.label_space[target]) == os.path.basename(path).split("_")[0]


def test_read_dataset_reports_or_skips_a_corrupt_wav(digit_folder):
    bad = digit_folder / "1_spk_9.wav"
    bad.write_bytes(os.urandom(300))
    with pytest.raises(DataError) as err:
        read_dataset(digit_folder, DataConfig(label_regex=r"^(\d+)_"))
    message = str(err.value)
    assert "1 of 10 audio files cannot be decoded" in message and "1_spk_9.wav" in message
    assert "skip-bad" in message
    ds = read_dataset(digit_folder, DataConfig(label_regex=r"^(\d+)_", skip_bad=True))
    assert len(ds) == 9 and str(bad.resolve()) not in ds.examples
    assert len(ds.report.skipped) == 1 and "1_spk_9.wav" in ds.report.skipped[0]


def test_every_soundfile_format_is_audio(tmp_path):
    from graft.data.formats import audio_suffixes

    suffixes = set(audio_suffixes())
    assert {
        ".wav",
        ".flac",
        ".ogg",
        ".opus",
        ".mp3",
        ".aiff",
        ".aif",
        ".au",
        ".caf",
        ".w64",
        ".m4a",
    } <= suffixes
    assert not suffixes & {".raw", ".mat", ".mpc", ".iff"}
    folder = tmp_path / "tones"
    folder.mkdir()
    for digit, suffix in enumerate((".aiff", ".au", ".caf")):
        for i in range(2):
            write_wav(folder / f"{digit}_{i}{suffix}", sine(300 + 100 * digit, 0.1))
    ds = read_dataset(folder, DataConfig(label_regex=r"^(\d+)_"))
    assert ds.modality == "audio" and len(ds) == 6


def test_m4a_is_audio_that_soundfile_names_when_it_cannot_decode(tmp_path):
    folder = tmp_path / "clips"
    folder.mkdir()
    for i in range(4):
        (folder / f"{i % 2}_{i}.m4a").write_bytes(b"\0\0\0\x20ftypM4A " + os.urandom(200))
    with pytest.raises(
        DataError, match=r"4 of 4 audio files cannot be decoded[\s\S]*0_0\.m4a: cannot decode audio"
    ):
        read_dataset(folder, DataConfig(label_regex=r"^(\d+)_"))
