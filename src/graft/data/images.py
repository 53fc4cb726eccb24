"""Decoding image files with Pillow, the same way at training and at prediction time.

Every file becomes an 8-bit RGB (or grayscale) picture: EXIF orientation applied, palette and alpha
images composited on white, CMYK converted, 16-bit and float images scaled to 8 bits. A
decompression bomb (an image whose pixel count exceeds :data:`MAX_PIXELS`) is refused, never
decoded. :func:`check_image` decodes a file once (at reduced scale where the format allows) so that
broken files are found before any training starts.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

# Larger images are refused as possible decompression bombs (Pillow's own default, 89.5 MP).
MAX_PIXELS = 89_478_485
_MODES_16BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")


class ImageDecodeError(ValueError):
    """A file that cannot be decoded as an image; the message says why."""


def _open(path: str | Path):
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = MAX_PIXELS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(path)
            if image.width * image.height > MAX_PIXELS:
                raise Image.DecompressionBombError("")
        return image
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageDecodeError(
            f"larger than {MAX_PIXELS:,} pixels: refused as a possible decompression bomb"
        ) from None
    except FileNotFoundError:
        raise ImageDecodeError("file not found") from None
    except Image.UnidentifiedImageError:
        raise ImageDecodeError("not an image Pillow can read (unknown format or corrupt header)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageDecodeError(f"cannot open: {exc}") from None


def _load(image, path: str | Path) -> None:
    try:
        image.load()
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        reason = str(exc) or type(exc).__name__
        if "truncated" in reason:
            reason = "truncated file (" + reason + ")"
        raise ImageDecodeError(f"cannot decode: {reason}") from None


def to_mode(image, channels: int = 3):
    """Any Pillow image -> 8-bit 'RGB' (channels=3) or 'L' (channels=1), as the contract says."""
    from PIL import Image, ImageOps

    image = ImageOps.exif_transpose(image)
    mode = image.mode
    if mode in _MODES_16BIT or mode == "F":
        array = np.asarray(image, dtype=np.float64)
        if mode == "F":
            top = 1.0 if array.size and np.nanmax(array) <= 1.0 else 255.0
        elif mode == "I" and array.size and array.max() <= 255:
            top = 255.0
        else:
            top = 65535.0
        array = np.clip(np.nan_to_num(array) * (255.0 / top), 0, 255).round().astype(np.uint8)
        image = Image.fromarray(array, mode="L")
        mode = "L"
    if mode == "P":
        image = image.convert("RGBA") if "transparency" in image.info else image.convert("RGB")
        mode = image.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    target = "L" if channels == 1 else "RGB"
    return image if image.mode == target else image.convert(target)


def load_image(path: str | Path, channels: int = 3):
    """Decode ``path`` into an 8-bit Pillow image of the contract's channels.

    Raises:
        ImageDecodeError: unreadable, truncated or oversized files (the message says which).
    """
    image = _open(path)
    with image:
        _load(image, path)
        return to_mode(image, channels)


def check_image(path: str | Path) -> str | None:
    """``None`` when ``path`` decodes, else the reason it does not.

    JPEGs decode at 1/8 scale here (``draft``): the whole stream is still read, so truncation shows,
    at a fraction of the cost.
    """
    try:
        image = _open(path)
        with image:
            if image.format == "JPEG":
                image.draft("RGB", (max(1, image.width // 8), max(1, image.height // 8)))
            _load(image, path)
            if image.width < 1 or image.height < 1:
                return "empty image (0 pixels)"
    except ImageDecodeError as exc:
        return str(exc)
    return None
