"""A real pretrained speaker encoder: GE2E (Wan et al. 2018) as shipped by the PyPI package
``resemblyzer`` (trained on VoxCeleb 1+2 and LibriSpeech), rebuilt here from its definition.

The network is a 3-layer LSTM (256 units) over 40-band mel frames of 16 kHz audio, whose last hidden
state goes through a 256-d linear projection and a ReLU and is L2-normalised. An utterance is cut
into *partials* of 160 frames (1.6 s) every 77 frames (1.3 per second); its embedding is the
L2-normalised mean of the partials' embeddings (``VoiceEncoder.embed_utterance``).

Preprocessing is the package's, step for step (``resemblyzer.preprocess_wav`` then
``embed_utterance``), without its librosa dependency:

1. decode, mono, resample to 16 kHz with soxr "HQ" (what ``librosa.resample`` does by default);
2. raise (never lower) the volume to -30 dBFS;
3. shorten silences with WebRTC's voice activity detector (30 ms windows, moving average over 8,
   dilation by 7), which needs the ``webrtcvad`` module (package ``webrtcvad-wheels``);
4. cut into partials (the last one kept when it covers >= 75% of its window), zero-pad;
5. power mel spectrogram per partial: Hann window of 400 samples, hop 160, centred frames with zero
   padding, Slaney mel scale with Slaney area normalisation (``librosa.feature.melspectrogram``).

A batch is ``mels`` ``[batch, partials, 160, 40]`` with a ``partial_mask`` ``[batch, partials]``
(clips have different numbers of partials). Tests compare embeddings with the package's own
``embed_utterance`` on real clips (1e-5).

Weights: ``resemblyzer/pretrained.pt`` from the installed package (graft reads only this file; it never
imports the package), or ``--weights FILE`` with the same layout (e.g. Real-Time-Voice-Cloning's
``encoder.pt``).

Example:
    >>> bb = create_backbone("ge2e")                                   # doctest: +SKIP
    >>> bb(bb.preprocess(["0_george_0.wav"])).shape                     # doctest: +SKIP
    torch.Size([1, 256])
"""

from __future__ import annotations

import dataclasses
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.signal import get_window
from torch import nn

from graft.backbones.base import Backbone, Contract, LayerGroup
from graft.errors import ConfigError

SAMPLE_RATE = 16000
N_FFT = 400  # 25 ms
HOP = 160  # 10 ms
N_MELS = 40
PARTIAL_FRAMES = 160  # 1.6 s
HIDDEN = 256
LAYERS = 3
INT16_MAX = 2**15 - 1
VAD_WINDOW = 480  # 30 ms at 16 kHz
VAD_AVERAGE = 8
VAD_MAX_SILENCE = 6
INSTALL_HINT = (
    "install the package that ships the weights: pip install --no-deps resemblyzer==0.1.4 (graft reads "
    "only its pretrained.pt), or pass --weights FILE"
)


def weights_file(weights: str | Path | None = None) -> Path:
    """``weights`` when given, else ``pretrained.pt`` of the installed resemblyzer package (found
    without importing it: the package imports librosa)."""
    if weights is not None:
        return Path(weights)
    spec = importlib.util.find_spec("resemblyzer")
    folder = next(iter(spec.submodule_search_locations or []), None) if spec else None
    path = Path(folder) / "pretrained.pt" if folder else None
    if path is None or not path.is_file():
        raise ConfigError(f"the ge2e backbone's weights were not found: {INSTALL_HINT}")
    return path


# -- preprocessing ---------------------------------------------------------------------------------
def resample_hq(wave: np.ndarray, rate: int) -> np.ndarray:
    """``librosa.resample(wave, orig_sr=rate, target_sr=16000)``: soxr HQ, length ceil(n * ratio)."""
    if rate == SAMPLE_RATE:
        return wave
    import soxr

    out = soxr.resample(wave, rate, SAMPLE_RATE, quality="soxr_hq")
    n = int(np.ceil(wave.shape[0] * float(SAMPLE_RATE) / rate))
    out = out[:n] if out.shape[0] >= n else np.pad(out, (0, n - out.shape[0]))
    return np.asarray(out, dtype=wave.dtype)


def raise_volume(wave: np.ndarray, target_dbfs: float = -30) -> np.ndarray:
    """Scale up to ``target_dbfs`` (RMS, full scale = int16 max); louder clips are left as they are."""
    rms = np.sqrt(np.mean((wave * INT16_MAX) ** 2))
    if not rms > 0:  # digital silence (the package would return NaNs)
        return wave
    change = target_dbfs - 20 * np.log10(rms / INT16_MAX)
    return wave if change < 0 else wave * (10 ** (change / 20))


def trim_long_silences(wave: np.ndarray) -> np.ndarray:
    """Drop silences longer than about 6 windows of 30 ms, by WebRTC voice activity detection."""
    try:
        import webrtcvad
    except ImportError:
        raise ConfigError(
            "the ge2e backbone's preprocessing needs WebRTC's voice activity detector: "
            "pip install webrtcvad-wheels"
        ) from None
    from scipy.ndimage import binary_dilation

    wave = wave[: len(wave) - len(wave) % VAD_WINDOW]
    pcm = np.round(wave * INT16_MAX).astype(np.int16).tobytes()
    vad = webrtcvad.Vad(mode=3)
    flags = np.array(
        [
            vad.is_speech(pcm[s * 2 : (s + VAD_WINDOW) * 2], sample_rate=SAMPLE_RATE)
            for s in range(0, len(wave), VAD_WINDOW)
        ]
    )
    padded = np.concatenate((np.zeros((VAD_AVERAGE - 1) // 2), flags, np.zeros(VAD_AVERAGE // 2)))
    total = np.cumsum(padded, dtype=float)
    total[VAD_AVERAGE:] = total[VAD_AVERAGE:] - total[:-VAD_AVERAGE]
    mask = np.round(total[VAD_AVERAGE - 1 :] / VAD_AVERAGE).astype(bool)
    mask = binary_dilation(mask, np.ones(VAD_MAX_SILENCE + 1))
    return wave[np.repeat(mask, VAD_WINDOW)]


def partial_starts(n_samples: int, rate: float, min_coverage: float) -> list[int]:
    """First frame of each partial (``VoiceEncoder.compute_partial_slices``)."""
    n_frames = int(np.ceil((n_samples + 1) / HOP))
    step = int(np.round((SAMPLE_RATE / rate) / HOP))
    starts = list(range(0, max(1, n_frames - PARTIAL_FRAMES + step + 1), step))
    coverage = (n_samples - starts[-1] * HOP) / (PARTIAL_FRAMES * HOP)
    if coverage < min_coverage and len(starts) > 1:
        starts.pop()
    return starts


def _hz_to_mel(f: np.ndarray) -> np.ndarray:
    """Slaney's mel scale: linear below 1 kHz, logarithmic above (librosa's ``htk=False``)."""
    f = np.asanyarray(f, dtype=np.float64)
    mels = f / (200.0 / 3)
    log = f >= 1000.0
    return np.where(log, 15.0 + np.log(np.maximum(f, 1e-10) / 1000.0) / (np.log(6.4) / 27.0), mels)


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    freqs = (200.0 / 3) * m
    return np.where(m >= 15.0, 1000.0 * np.exp((np.log(6.4) / 27.0) * (m - 15.0)), freqs)


def slaney_filterbank(n_fft: int = N_FFT, n_mels: int = N_MELS, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """``[n_mels, n_fft // 2 + 1]`` float32 triangles on the Slaney mel scale, each scaled to unit area
    (``librosa.filters.mel(sr, n_fft, n_mels=n_mels)``; tested against it)."""
    fft_freqs = np.fft.rfftfreq(n=n_fft, d=1.0 / sample_rate)
    mel_f = _mel_to_hz(np.linspace(_hz_to_mel(0.0), _hz_to_mel(sample_rate / 2.0), n_mels + 2))
    fdiff = np.diff(mel_f)
    ramps = np.subtract.outer(mel_f, fft_freqs)
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_f[2 : n_mels + 2] - mel_f[:n_mels]))[:, None]
    return weights.astype(np.float32)


_FILTERS = slaney_filterbank()
_WINDOW = get_window("hann", N_FFT, fftbins=True)  # periodic Hann, float64, as librosa's


def mel_frames(wave: np.ndarray) -> np.ndarray:
    """Power mel spectrogram ``[frames, 40]`` float32 of a 16 kHz float32 wave (centred frames)."""
    padded = np.pad(wave, N_FFT // 2)
    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP]
    power = np.abs(np.fft.rfft(_WINDOW * frames, axis=-1).astype(np.complex64)) ** 2
    return (power @ _FILTERS.T).astype(np.float32)


@dataclass(frozen=True)
class GE2EPreprocess:
    """File -> the partials' mel spectrograms (see the module docstring). Picklable, no model.

    ``augment`` != none (fine-tuning) shifts the partial grid by a random 0-0.77 s of leading zeros,
    so partial boundaries fall elsewhere each epoch (the audio counterpart of a random crop).
    """

    rate: float = 1.3
    min_coverage: float = 0.75
    vad: bool = True
    augment: str = "none"

    modality = "audio"

    def __post_init__(self) -> None:
        if not 0.625 <= self.rate <= SAMPLE_RATE / HOP:
            raise ValueError(f"rate must be between 0.625 and 100 partials per second, got {self.rate}")
        if not 0 < self.min_coverage <= 1:
            raise ValueError(f"min_coverage must be in (0, 1], got {self.min_coverage}")

    def with_augment(self, augment: str) -> GE2EPreprocess:
        return dataclasses.replace(self, augment=augment)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "ge2e",
            "sample_rate": SAMPLE_RATE,
            "resample": "soxr_hq",
            "volume_dbfs": -30,
            "vad": self.vad,
            "mel": {"n_fft": N_FFT, "hop": HOP, "n_mels": N_MELS, "scale": "slaney", "power": 2.0},
            "partial_frames": PARTIAL_FRAMES,
            "rate": self.rate,
            "min_coverage": self.min_coverage,
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> GE2EPreprocess:
        return cls(rate=float(raw["rate"]), min_coverage=float(raw["min_coverage"]), vad=bool(raw["vad"]))

    def wave(self, wave: np.ndarray, rate: int) -> np.ndarray:
        """``resemblyzer.preprocess_wav``: resample, raise the volume, shorten silences."""
        wave = raise_volume(resample_hq(wave, rate))
        return trim_long_silences(wave) if self.vad else wave

    def partials(self, wave: np.ndarray) -> np.ndarray:
        """``[partials, 160, 40]`` mel spectrograms of a preprocessed 16 kHz wave."""
        if self.augment != "none":
            shift = int(torch.randint(0, int(np.round(SAMPLE_RATE / self.rate)), ()).item())
            wave = np.pad(wave, (shift, 0))
        starts = partial_starts(len(wave), self.rate, self.min_coverage)
        end = (starts[-1] + PARTIAL_FRAMES) * HOP
        if end >= len(wave):
            wave = np.pad(wave, (0, end - len(wave)))
        mel = mel_frames(wave)
        return np.stack([mel[s : s + PARTIAL_FRAMES] for s in starts])

    def one(self, path: str) -> np.ndarray:
        from graft.data.audio import load_audio

        wave, rate = load_audio(path)
        # A clip without speech loses everything to the detector; like the package, it is then one
        # partial of zeros (it still gets an embedding).
        return self.partials(self.wave(wave, rate))

    def __call__(self, examples: list[Any]) -> dict[str, torch.Tensor]:
        return collate_partials([self.one(p) for p in examples])


def collate_partials(items: list[np.ndarray]) -> dict[str, torch.Tensor]:
    """Clips' partials padded to the batch's largest count, with a mask of the real ones."""
    most = max(x.shape[0] for x in items)
    mels = np.zeros((len(items), most, PARTIAL_FRAMES, N_MELS), dtype=np.float32)
    mask = np.zeros((len(items), most), dtype=np.float32)
    for i, x in enumerate(items):
        mels[i, : x.shape[0]] = x
        mask[i, : x.shape[0]] = 1.0
    return {"mels": torch.from_numpy(mels), "partial_mask": torch.from_numpy(mask)}


# -- the network -----------------------------------------------------------------------------------
class SpeakerEncoder(nn.Module):
    """resemblyzer's ``VoiceEncoder`` network: LSTM -> last hidden state -> linear -> ReLU -> L2 norm,
    applied to every partial; an utterance is the L2-normalised mean of its partials."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(N_MELS, HIDDEN, LAYERS, batch_first=True)
        self.linear = nn.Linear(HIDDEN, HIDDEN)
        self.relu = nn.ReLU()

    def forward(self, mels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        batch, partials = mels.shape[0], mels.shape[1]
        _, (hidden, _) = self.lstm(mels.reshape(batch * partials, PARTIAL_FRAMES, N_MELS))
        embeds = self.relu(self.linear(hidden[-1]))
        embeds = embeds / torch.norm(embeds, dim=1, keepdim=True).clamp_min(1e-12)
        embeds = embeds.reshape(batch, partials, HIDDEN) * mask.unsqueeze(-1)
        mean = embeds.sum(1) / mask.sum(1, keepdim=True).clamp_min(1.0)
        return mean / torch.norm(mean, dim=1, keepdim=True).clamp_min(1e-12)


class GE2EBackbone(Backbone):
    """The speaker encoder as a graft backbone: 256-d utterance embeddings; layer groups are the three
    LSTM layers (input side first) and the projection."""

    feature_dim = HIDDEN

    def __init__(self, preprocess: GE2EPreprocess | None = None, *, source: str = "ge2e") -> None:
        super().__init__()
        self.encoder = SpeakerEncoder()
        self._preprocess = preprocess or GE2EPreprocess()
        self.source = source
        self.contract = Contract(self._preprocess.modality, self._preprocess.to_dict())

    def preprocess(self, examples: list[Any]) -> dict[str, torch.Tensor]:
        return self._preprocess(examples)

    def preprocessor(self, augment: str = "none") -> GE2EPreprocess:
        return self._preprocess.with_augment(augment)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.encoder(batch["mels"], batch["partial_mask"])

    def layer_groups(self) -> list[LayerGroup]:
        named = dict(self.named_parameters())
        groups = [
            LayerGroup(
                f"lstm.{i}",
                {k: v for k, v in named.items() if k.startswith("encoder.lstm.") and k.endswith(f"_l{i}")},
            )
            for i in range(LAYERS)
        ]
        return [
            *groups,
            LayerGroup("projection", {k: v for k, v in named.items() if k.startswith("encoder.linear.")}),
        ]

    def onnx_axes(self, batch: dict[str, torch.Tensor]) -> dict[str, dict[int, str]]:
        return {k: {0: "batch", 1: "partials"} for k in batch}

    def spec(self) -> dict[str, Any]:
        return {"kind": "ge2e", "source": self.source, "preprocess": self._preprocess.to_dict()}

    def save_architecture(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)  # rebuilt from spec() alone

    @classmethod
    def from_saved(cls, folder: Path, spec: dict[str, Any], module: Any = None) -> GE2EBackbone:
        return cls(GE2EPreprocess.from_dict(spec["preprocess"]), source=spec.get("source", "ge2e"))


def load_ge2e(weights: str | None = None) -> GE2EBackbone:
    """The pretrained encoder (see :func:`weights_file`)."""
    from graft.backbones.module import load_weights

    backbone = GE2EBackbone()  # the weights themselves are recorded by their sha256 in a bundle
    load_weights(
        backbone.encoder, weights_file(weights), skip_prefixes=("similarity_weight", "similarity_bias")
    )
    return backbone.eval()
