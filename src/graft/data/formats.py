"""Which file names are images and which are audio: the formats Pillow and soundfile actually read.

The lists come from the libraries, so a format that Pillow or libsndfile learns to read is picked
up without a change here. They are built on first use and cached: importing Pillow and soundfile
costs about 0.1 s, which ``graft --help`` and text-only work must not pay at import time.

Example:
    >>> media_modality("faces/s1/1.pgm"), media_modality("clip.flac"), media_modality("notes.txt")
    ('image', 'audio', None)
"""

from __future__ import annotations

import functools
import os
import re

# Formats Pillow lists in Image.OPEN that are left out, and why.
_PILLOW_LEFT_OUT = {
    # Stubs: Pillow identifies the file, but decoding needs a handler the user must register.
    "BUFR", "GRIB", "HDF5",
    # WMF/EMF render only on Windows; elsewhere they are stubs as well.
    "WMF",
    # EPS/PS need Ghostscript installed, which graft does not require.
    "EPS",
    # .mpg/.mpeg are videos: Pillow reads the header only, never a frame.
    "MPEG",
    # IPTC/NAA news metadata records (.iim), not pictures.
    "IPTC",
}  # fmt: skip
# .fit is far more often a Garmin/ANT activity file than a FITS image (.fits is unambiguous).
_SUFFIXES_LEFT_OUT = {".fit"}
# MPO (multi-picture JPEG, e.g. stereo cameras) is absent from Image.OPEN, yet such files open
# through the JPEG plugin.
_PILLOW_OPENED_VIA_OTHERS = {"MPO"}

# libsndfile format names (soundfile.available_formats()) -> the suffixes their files carry. Left
# out: RAW (header-less: needs the rate, channels and sample type given), MAT4/MAT5 (.mat files are
# MATLAB data, not audio), MPC2K (its .mpc is far more often Musepack, which libsndfile cannot read).
# SVX leaves out .iff, which also holds ILBM pictures.
_SOUNDFILE_SUFFIXES = {
    "WAV": (".wav", ".wave"), "WAVEX": (".wav",), "RF64": (".rf64",), "W64": (".w64",),
    "FLAC": (".flac",), "OGG": (".ogg", ".oga", ".opus"), "MP3": (".mp3",),
    "AIFF": (".aif", ".aiff", ".aifc"), "AU": (".au", ".snd"), "CAF": (".caf",),
    "AVR": (".avr",), "HTK": (".htk",), "SVX": (".svx", ".8svx", ".16svx"), "PAF": (".paf",),
    "PVF": (".pvf",), "SD2": (".sd2",), "SDS": (".sds",), "IRCAM": (".sf",), "VOC": (".voc",),
    "NIST": (".nist", ".sph"), "WVE": (".wve",), "XI": (".xi",),
}  # fmt: skip
# Recognised although libsndfile cannot decode it: an .m4a file then gets a decode error naming
# it, rather than a folder of them being "no audio files found".
_AUDIO_ALWAYS = (".m4a",)

# A few familiar suffixes and the library, for messages that must stay short.
_EXAMPLES = {
    "image": ".jpg, .png, .webp, .tif, .pgm or any format Pillow reads",
    "audio": ".wav, .flac, .ogg, .mp3 or any format soundfile reads",
}


@functools.cache
def image_suffixes() -> tuple[str, ...]:
    """Lower-case suffixes (``.jpg``, ``.pgm``, ...) of every image format Pillow can open."""
    from PIL import Image

    Image.init()  # registers every plugin, not only the few imported by default
    readable = (set(Image.OPEN) | _PILLOW_OPENED_VIA_OTHERS) - _PILLOW_LEFT_OUT
    suffixes = {ext.lower() for ext, fmt in Image.registered_extensions().items() if fmt in readable}
    return tuple(sorted(suffixes - _SUFFIXES_LEFT_OUT))


@functools.cache
def audio_suffixes() -> tuple[str, ...]:
    """Lower-case suffixes (``.wav``, ``.flac``, ...) of every audio format soundfile reads."""
    import soundfile

    found = {ext for fmt in soundfile.available_formats() for ext in _SOUNDFILE_SUFFIXES.get(fmt, ())}
    return tuple(sorted(found.union(_AUDIO_ALWAYS)))


@functools.cache
def _modality_of_suffix() -> dict[str, str]:
    by_suffix = dict.fromkeys(audio_suffixes(), "audio")
    by_suffix.update(dict.fromkeys(image_suffixes(), "image"))
    return by_suffix


def media_modality(name: str) -> str | None:
    """``"image"`` or ``"audio"`` when ``name`` ends in the suffix of a format read, else ``None``."""
    suffix = os.path.splitext(name)[1].lower()
    return _modality_of_suffix().get(suffix) if suffix else None


def describe_formats(modality: str) -> str:
    """A short phrase naming the files of ``modality``, e.g. for "no ... files found"."""
    return f"{modality} files ({_EXAMPLES[modality]})"


@functools.cache
def media_name_pattern() -> re.Pattern[str]:
    """Finds a media file name in raw text: a known suffix ending a field, in any case."""
    suffixes = sorted((re.escape(s[1:]) for s in _modality_of_suffix()), key=len, reverse=True)
    return re.compile(rf"\.(?:{'|'.join(suffixes)})(?=[\s\"',;\]}}]|$)", re.IGNORECASE)
