"""graft's own architectures: what ``graft pretrain --arch NAME`` trains and ``arch:NAME`` builds.

Each architecture is a plain ``nn.Module`` with an output layer named ``fc`` and a contract (input
size and normalisation, or sample rate and duration). Built by name, so a bundle can rebuild it.

* ``resnet20`` (and ``resnet32/44/56``): the CIFAR ResNets of He et al. (2016), option-A shortcuts,
  0.27 M (0.46/0.66/0.85 M) parameters, 32x32 RGB; matches the state-dict layout of the widely used
  akamaster/pytorch_resnet_cifar10 checkpoints (``conv1, bn1, layer1-3, linear``: its head is ``linear``).
* ``small_cnn``: three conv blocks for small images (16x16 by default), quick on a CPU.
* ``audio_cnn``: a log-mel front end (no parameters) and four conv blocks over the spectrogram.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from graft.errors import ConfigError


@dataclass(frozen=True)
class Architecture:
    name: str
    build: Callable[..., nn.Module]
    modality: str
    head: str
    contract: dict[str, Any]
    description: str
    defaults: dict[str, Any] = field(default_factory=dict)


_ARCHS: dict[str, Architecture] = {}


def register_architecture(arch: Architecture) -> None:
    if arch.name in _ARCHS:
        raise ConfigError(f"an architecture named {arch.name!r} is already registered")
    _ARCHS[arch.name] = arch


def get_architecture(name: str) -> Architecture:
    if name not in _ARCHS:
        import difflib

        close = difflib.get_close_matches(name, list(_ARCHS), n=2)
        hint = f"did you mean {' or '.join(map(repr, close))}? " if close else ""
        raise ConfigError(f"unknown architecture {name!r}; {hint}known: {', '.join(sorted(_ARCHS))}")
    return _ARCHS[name]


def list_architectures() -> list[Architecture]:
    return [_ARCHS[n] for n in sorted(_ARCHS)]


def build_architecture(name: str, **kwargs: Any) -> nn.Module:
    """A freshly initialised network of architecture ``name`` (tagged so bundles can rebuild it)."""
    arch = get_architecture(name)
    module = arch.build(**{**arch.defaults, **kwargs})
    module._graft_arch = {"name": name, "kwargs": dict(kwargs)}
    return module


# --------------------------------------------------------------------------------------------------
# ResNet-20 for CIFAR (option A shortcuts)


class _ShortcutA(nn.Module):
    """Parameter-free shortcut: every second pixel, channels zero-padded by planes // 4 each side."""

    def __init__(self, planes: int) -> None:
        super().__init__()
        self.pad = planes // 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = _ShortcutA(planes) if stride != 1 or in_planes != planes else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(
        self, num_blocks: tuple[int, int, int] = (3, 3, 3), num_classes: int = 10, in_channels: int = 3
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        planes, layers = 16, []
        for width, n, stride in zip((16, 32, 64), num_blocks, (1, 2, 2), strict=True):
            blocks = []
            for s in [stride] + [1] * (n - 1):
                blocks.append(BasicBlock(planes, width, s))
                planes = width
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = layers
        self.linear = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Linear | nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


# --------------------------------------------------------------------------------------------------
# a small CNN for small images


def _conv_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


class SmallCNN(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: int = 32) -> None:
        super().__init__()
        self.block1 = nn.Sequential(_conv_block(in_channels, width), nn.MaxPool2d(2))
        self.block2 = nn.Sequential(_conv_block(width, 2 * width), nn.MaxPool2d(2))
        self.block3 = _conv_block(2 * width, 4 * width)
        self.fc = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block3(self.block2(self.block1(x)))
        return self.fc(out.mean((2, 3)))


# --------------------------------------------------------------------------------------------------
# audio: log-mel front end + CNN


def mel_filterbank(
    n_fft: int, n_mels: int, sample_rate: int, f_min: float = 0.0, f_max: float | None = None
) -> torch.Tensor:
    """Triangular mel filters (HTK mel scale), ``[n_fft // 2 + 1, n_mels]``, computed in float64: equal
    to ``transformers.audio_utils.mel_filter_bank(..., norm=None, mel_scale="htk")`` (tested)."""
    f_max = f_max or sample_rate / 2

    def to_mel(f: torch.Tensor) -> torch.Tensor:
        return 2595.0 * torch.log10(1.0 + f / 700.0)

    def to_hz(m: torch.Tensor) -> torch.Tensor:
        return 700.0 * (10 ** (m / 2595.0) - 1.0)

    freqs = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)
    edges = to_hz(
        torch.linspace(
            to_mel(torch.tensor(f_min, dtype=torch.float64)),
            to_mel(torch.tensor(f_max, dtype=torch.float64)),
            n_mels + 2,
            dtype=torch.float64,
        )
    )
    lower, center, upper = edges[:-2], edges[1:-1], edges[2:]
    up = (freqs[:, None] - lower) / (center - lower)
    down = (upper - freqs[:, None]) / (upper - center)
    return torch.clamp(torch.minimum(up, down), min=0).float()


class LogMel(nn.Module):
    """Waveform ``[batch, samples]`` -> log-mel spectrogram ``[batch, 1, n_mels, frames]`` (no params)."""

    def __init__(self, sample_rate: int = 16000, n_fft: int = 512, hop: int = 160, n_mels: int = 64) -> None:
        super().__init__()
        self.n_fft, self.hop = n_fft, hop
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        self.register_buffer("mel", mel_filterbank(n_fft, n_mels, sample_rate), persistent=False)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        with torch.autocast(wave.device.type, enabled=False):
            spec = torch.stft(wave.float(), self.n_fft, self.hop, window=self.window, return_complex=True)
            power = spec.abs().pow(2).transpose(1, 2) @ self.mel  # [batch, frames, mels]
            return torch.log(power + 1e-6).transpose(1, 2).unsqueeze(1)


class AudioCNN(nn.Module):
    def __init__(
        self, num_classes: int = 10, sample_rate: int = 16000, n_mels: int = 64, width: int = 32
    ) -> None:
        super().__init__()
        self.frontend = LogMel(
            sample_rate,
            n_fft=int(2 ** math.ceil(math.log2(sample_rate * 0.025))),
            hop=sample_rate // 100,
            n_mels=n_mels,
        )
        self.norm = nn.BatchNorm2d(1)
        self.block1 = nn.Sequential(_conv_block(1, width), nn.MaxPool2d(2))
        self.block2 = nn.Sequential(_conv_block(width, 2 * width), nn.MaxPool2d(2))
        self.block3 = nn.Sequential(_conv_block(2 * width, 4 * width), nn.MaxPool2d(2))
        self.block4 = _conv_block(4 * width, 4 * width)
        self.fc = nn.Linear(4 * width, num_classes)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.frontend(wave))
        x = self.block4(self.block3(self.block2(self.block1(x))))
        return self.fc(x.mean((2, 3)))


IMAGENET = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}

# depth -> (blocks per stage, parameters in millions): the akamaster/pytorch_resnet_cifar10 family
CIFAR_RESNETS = {20: (3, 0.27), 32: (5, 0.46), 44: (7, 0.66), 56: (9, 0.85)}
for _depth, (_blocks, _millions) in CIFAR_RESNETS.items():
    register_architecture(
        Architecture(
            f"resnet{_depth}",
            CifarResNet,
            "image",
            "linear",
            {"input_size": (3, 32, 32), **IMAGENET},
            f"CIFAR ResNet-{_depth} (He et al. 2016, option-A shortcuts), 32x32 RGB, "
            f"{_millions} M parameters",
            defaults={"num_blocks": (_blocks,) * 3},
        )
    )
register_architecture(
    Architecture(
        "small_cnn",
        SmallCNN,
        "image",
        "fc",
        {"input_size": (3, 16, 16), "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)},
        "three conv blocks for small images (16x16 RGB), 0.1 M parameters",
    )
)
register_architecture(
    Architecture(
        "audio_cnn",
        AudioCNN,
        "audio",
        "fc",
        {"sample_rate": 16000, "duration": 1.0},
        "log-mel (64 bands) + four conv blocks, 16 kHz clips of 1 s, 0.24 M parameters",
    )
)


def arch_backbone(name: str, weights: str | None = None, source: str | None = None):
    """``arch:<name>`` as a backbone: random initialisation, or the weights file given."""
    from graft.backbones.module import from_module, load_weights

    arch = get_architecture(name)
    module = build_architecture(name)
    if weights:
        load_weights(module, weights, skip_prefixes=(arch.head,))
    c = arch.contract
    kwargs: dict[str, Any] = (
        {"input_size": c["input_size"], "mean": c["mean"], "std": c["std"]}
        if arch.modality == "image"
        else {"sample_rate": c["sample_rate"], "duration": c["duration"]}
    )
    backbone = from_module(
        module,
        modality=arch.modality,
        head=arch.head,
        copy_module=False,
        source=source or f"arch:{name}",
        **kwargs,
    )
    backbone.pretrained = weights is not None
    return backbone
