"""Decoding audio files with soundfile: mono float32 at the contract's sample rate.

WAV, FLAC, OGG, MP3, AIFF, ... (whatever libsndfile reads; see :mod:`graft.data.formats`) are
decoded, channels averaged to mono, and resampled with a polyphase filter
(``scipy.signal.resample_poly``) to the rate the backbone was trained at.
Padding and cropping to a fixed duration belong to the backbone's preprocessing.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np


class AudioDecodeError(ValueError):
    """A file that cannot be decoded as audio; the message says why."""


def resample(wave: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Polyphase resampling of a 1-d signal (anti-aliased); identity when the rates agree."""
    if from_rate == to_rate or wave.size == 0:
        return wave.astype(np.float32, copy=False)
    from scipy.signal import resample_poly

    ratio = Fraction(to_rate, from_rate).limit_denominator(1000)
    out = resample_poly(wave, ratio.numerator, ratio.denominator)
    return np.clip(out, -1.0, 1.0).astype(np.float32)  # the filter's ringing may overshoot full scale


def load_audio(path: str | Path, sample_rate: int | None = None) -> tuple[np.ndarray, int]:
    """``(mono float32 wave in [-1, 1], rate)``; resampled to ``sample_rate`` when given.

    Raises:
        AudioDecodeError: unreadable, empty or corrupt files.
    """
    import soundfile as sf

    if not Path(path).is_file():
        raise AudioDecodeError("file not found")
    try:
        wave, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except FileNotFoundError:
        raise AudioDecodeError("file not found") from None
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError, OSError) as exc:
        raise AudioDecodeError(f"cannot decode audio: {exc}") from None
    if wave.shape[0] == 0:
        raise AudioDecodeError("no audio samples (empty file)")
    mono = wave.mean(axis=1) if wave.shape[1] > 1 else wave[:, 0]
    if not np.isfinite(mono).all():
        raise AudioDecodeError("samples are not finite numbers (NaN or infinity)")
    if sample_rate is not None and rate != sample_rate:
        return resample(mono, rate, sample_rate), sample_rate
    return np.ascontiguousarray(mono, dtype=np.float32), rate


def check_audio(path: str | Path) -> str | None:
    """``None`` when ``path`` decodes, else the reason it does not."""
    try:
        load_audio(path)
    except AudioDecodeError as exc:
        return str(exc)
    return None


def fit_length(wave: np.ndarray, num_samples: int, offset: int | None = None) -> np.ndarray:
    """Pad with zeros (at the end) or crop to ``num_samples``; ``offset`` picks the crop start
    (default: centred)."""
    n = wave.shape[0]
    if n == num_samples:
        return wave
    if n < num_samples:
        return np.pad(wave, (0, num_samples - n))
    start = (n - num_samples) // 2 if offset is None else min(max(0, offset), n - num_samples)
    return wave[start : start + num_samples]
