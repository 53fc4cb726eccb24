"""Preprocessing of image and audio files into tensors, as a backbone's contract says.

Each preprocessor is a small frozen dataclass: picklable (it runs inside DataLoader worker
processes, without the model), hashable, and fully described by :meth:`to_dict`, which is part of
the contract saved in bundles and of the feature-cache key.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

AUGMENTS = ("none", "crop", "crop_flip")
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos", "box", "hamming")


@dataclass(frozen=True)
class ImagePreprocess:
    """Decode -> resize (shorter side to ``size / crop_pct``) -> centre crop -> [0, 1] -> normalise.

    With ``augment`` (training only): random resized crop (area ``scale``) and, for ``crop_flip``, a
    horizontal flip, in place of the resize and centre crop.

    Attributes:
        size: (height, width) of the network input.
        mean, std: per-channel normalisation after scaling to [0, 1].
        interpolation: resize filter.
        crop_pct: fraction of the resized image kept by the centre crop (timm's convention).
        channels: 3 (RGB) or 1 (grayscale).
    """

    size: tuple[int, int]
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    interpolation: str = "bilinear"
    crop_pct: float = 1.0
    channels: int = 3
    augment: str = "none"
    # "cover": the shorter side to size / crop_pct, aspect kept, then a centre crop (timm, torchvision);
    # "squash": straight to size / crop_pct on both sides, aspect not kept, then the crop (the Hugging
    # Face processors whose size is {"height", "width"}, e.g. ViT)
    resize: str = "cover"
    # where the centre crop starts: "round" ((h - crop) / 2 rounded, torchvision and timm) or "floor"
    # ((h - crop) // 2, the Hugging Face image processors): a one-pixel shift on some sizes
    crop_offset: str = "round"
    # random-resized-crop area range; None: (0.35, 1) for inputs above 64 px, (0.7, 1) for small
    # ones (a 32x32 crop of a third of a 32x32 image loses the object: measured on CIFAR-10, 0.80
    # vs 0.85 with no augmentation at all)
    scale: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        size = tuple(int(s) for s in self.size)
        object.__setattr__(self, "size", size)
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        if self.scale is None:
            object.__setattr__(self, "scale", (0.35, 1.0) if min(size) > 64 else (0.7, 1.0))
        object.__setattr__(self, "scale", tuple(float(s) for s in self.scale))
        if len(size) != 2 or min(size) < 1:
            raise ValueError(f"size must be (height, width) of positive ints, got {self.size}")
        if self.channels not in (1, 3) or len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError(
                f"channels={self.channels} needs that many mean/std values; got {self.mean}, {self.std}"
            )
        if self.augment not in AUGMENTS:
            raise ValueError(f"augment must be one of {AUGMENTS}, got {self.augment!r}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {self.interpolation!r}")
        if not (0.05 <= self.crop_pct <= 1.0):
            raise ValueError(f"crop_pct must be in [0.05, 1], got {self.crop_pct}")
        if self.resize not in ("cover", "squash"):
            raise ValueError(f"resize must be cover or squash, got {self.resize!r}")
        if self.crop_offset not in ("round", "floor"):
            raise ValueError(f"crop_offset must be round or floor, got {self.crop_offset!r}")

    modality = "image"
    input_key = "pixel_values"

    def with_augment(self, augment: str) -> ImagePreprocess:
        return dataclasses.replace(self, augment=augment)

    def to_dict(self) -> dict[str, Any]:
        """The contract's preprocessing (augmentation is a training setting, not part of it)."""
        return {
            "kind": "image",
            "size": list(self.size),
            "mean": list(self.mean),
            "std": list(self.std),
            "interpolation": self.interpolation,
            "crop_pct": self.crop_pct,
            "channels": self.channels,
            **({"resize": self.resize} if self.resize != "cover" else {}),  # older contracts: cover
            **({"crop_offset": self.crop_offset} if self.crop_offset != "round" else {}),
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ImagePreprocess:
        return cls(
            size=tuple(raw["size"]),
            mean=tuple(raw["mean"]),
            std=tuple(raw["std"]),
            interpolation=raw.get("interpolation", "bilinear"),
            crop_pct=raw.get("crop_pct", 1.0),
            channels=raw.get("channels", 3),
            resize=raw.get("resize", "cover"),
            crop_offset=raw.get("crop_offset", "round"),
        )

    def example_shape(self) -> tuple[int, ...]:
        return (self.channels, *self.size)

    def one(self, path: str) -> torch.Tensor:
        from graft.data.images import load_image

        return _image_transform(self)(load_image(path, self.channels))

    def __call__(self, examples: list[str]) -> dict[str, torch.Tensor]:
        return {self.input_key: torch.stack([self.one(p) for p in examples])}


class _CoverResize:
    """Resize (PIL) so the image covers ``size / crop_pct`` on both sides, keeping its aspect ratio;
    the centre crop that follows then never pads.

    For a square input this is exactly timm's eval transform (``Resize(floor(size / crop_pct))`` in
    torchvision: the shorter side to that many pixels, the longer side truncated, not rounded), so timm
    and torchvision backbones see the pixels their authors fed them (tested against
    ``timm.data.create_transform`` on real JPEGs to 1e-6). A non-square input covers both sides."""

    def __init__(self, size: tuple[int, int], crop_pct: float, resample: int, squash: bool = False) -> None:
        self.size, self.crop_pct, self.resample, self.squash = size, crop_pct, resample, squash

    def __call__(self, image):
        width, height = image.size
        if self.squash:  # both sides straight to size / crop_pct, as a Hugging Face processor resizes
            target = tuple(math.floor(s / self.crop_pct + 1e-6) for s in (self.size[1], self.size[0]))
        elif self.size[0] == self.size[1]:
            short = math.floor(self.size[0] / self.crop_pct + 1e-6)  # 224 / (224 / 232) is 231.99999...
            if width <= height:
                target = (short, max(1, int(short * height / width)))
            else:
                target = (max(1, int(short * width / height)), short)
        else:
            scale = max(self.size[0] / height, self.size[1] / width) / self.crop_pct
            target = (max(1, round(width * scale)), max(1, round(height * scale)))
        return image if target == image.size else image.resize(target, self.resample)


class _FloorCenterCrop:
    """A centre crop of a PIL image starting at ``(h - crop) // 2`` (the Hugging Face processors)."""

    def __init__(self, size: tuple[int, int]) -> None:
        self.size = size

    def __call__(self, image):
        width, height = image.size
        top, left = (height - self.size[0]) // 2, (width - self.size[1]) // 2
        return image.crop((left, top, left + self.size[1], top + self.size[0]))


@functools.lru_cache(maxsize=16)
def _image_transform(p: ImagePreprocess):
    from PIL import Image
    from torchvision.transforms import InterpolationMode, v2

    mode = InterpolationMode(p.interpolation)
    if p.augment == "none":
        resample = getattr(Image.Resampling, p.interpolation.upper())
        crop = v2.CenterCrop(p.size) if p.crop_offset == "round" else _FloorCenterCrop(p.size)
        resize = [_CoverResize(p.size, p.crop_pct, resample, squash=p.resize == "squash"), crop]
    else:
        resize = [v2.RandomResizedCrop(p.size, scale=p.scale, interpolation=mode, antialias=True)]
        if p.augment == "crop_flip":
            resize.append(v2.RandomHorizontalFlip())
    # Geometry on the PIL image (every Pillow filter, antialiased), then to a float tensor.
    return v2.Compose(
        [*resize, v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(p.mean, p.std)]
    )


@dataclass(frozen=True)
class AudioPreprocess:
    """Decode -> mono -> resample to ``sample_rate`` -> pad/crop to ``duration`` seconds.

    Gives ``input_values`` ``[batch, samples]`` (float32). With ``normalize`` each clip is scaled to
    zero mean and unit variance (what wav2vec2's feature extractor does). With ``augment`` != none
    (training), the crop of a long clip starts at a random offset instead of the centre, and short
    clips are placed at a random offset inside the window.
    """

    sample_rate: int = 16000
    duration: float = 1.0
    normalize: bool = False
    augment: str = "none"

    modality = "audio"
    input_key = "input_values"

    def __post_init__(self) -> None:
        if self.sample_rate < 1000:
            raise ValueError(f"sample_rate must be >= 1000 Hz, got {self.sample_rate}")
        if self.duration <= 0:
            raise ValueError(f"duration must be > 0 seconds, got {self.duration}")
        if self.augment not in AUGMENTS:
            raise ValueError(f"augment must be one of {AUGMENTS}, got {self.augment!r}")

    @property
    def num_samples(self) -> int:
        return round(self.sample_rate * self.duration)

    def with_augment(self, augment: str) -> AudioPreprocess:
        return dataclasses.replace(self, augment=augment)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "audio",
            "sample_rate": self.sample_rate,
            "duration": self.duration,
            "normalize": self.normalize,
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> AudioPreprocess:
        return cls(
            sample_rate=int(raw["sample_rate"]),
            duration=float(raw["duration"]),
            normalize=bool(raw.get("normalize", False)),
        )

    def example_shape(self) -> tuple[int, ...]:
        return (self.num_samples,)

    def one(self, path: str) -> np.ndarray:
        from graft.data.audio import fit_length, load_audio

        wave, _ = load_audio(path, self.sample_rate)
        n = self.num_samples
        if self.augment != "none":
            if wave.shape[0] > n:
                wave = fit_length(wave, n, int(torch.randint(0, wave.shape[0] - n + 1, ()).item()))
            else:
                start = int(torch.randint(0, n - wave.shape[0] + 1, ()).item())
                wave = np.pad(wave, (start, n - wave.shape[0] - start))
        else:
            wave = fit_length(wave, n)
        if self.normalize:
            wave = (wave - wave.mean()) / np.sqrt(wave.var() + 1e-7)
        return wave.astype(np.float32, copy=False)

    def __call__(self, examples: list[str]) -> dict[str, torch.Tensor]:
        return {self.input_key: torch.from_numpy(np.stack([self.one(p) for p in examples]))}


def preprocess_from_dict(raw: dict[str, Any]) -> ImagePreprocess | AudioPreprocess:
    kind = raw.get("kind")
    if kind == "image":
        return ImagePreprocess.from_dict(raw)
    if kind == "audio":
        return AudioPreprocess.from_dict(raw)
    raise ValueError(f"unknown preprocessing kind {kind!r}")
