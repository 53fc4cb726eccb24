"""The backbone registry: ``register_backbone``, ``create_backbone``, ``list_backbones``.

A source spec is ``name`` or ``name:argument`` (``minilm``, ``hf:/path/to/folder``, ``timm:resnet18``,
``arch:resnet20``, ``bundle:runs/r1``). Factories import their heavy dependencies lazily, so listing
backbones costs nothing, and :func:`source_modality` tells a source's input type without loading it
(the modality check runs before any work).

Example:
    >>> [s.name for s in list_backbones()]
    ['arch', 'bundle', 'ge2e', 'hf', 'minilm', 'mpnet', 'timm', 'torchvision']
    >>> create_backbone("minlm")
    Traceback (most recent call last):
    ...
    graft.errors.ConfigError: unknown backbone source 'minlm'; did you mean 'minilm'? ...
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from graft.errors import BundleError, ConfigError

if TYPE_CHECKING:
    from graft.backbones.base import Backbone


@dataclass(frozen=True)
class BackboneSource:
    """One registry entry.

    Attributes:
        name: the spec's name part.
        create: ``create(argument, options) -> Backbone``; ``argument`` is the part after ``:``,
            ``options`` holds ``max_length`` and ``weights`` (see :class:`graft.config.BackboneConfig`).
        modality: input type of the pretrained weights ("any" when it depends on the argument).
        modality_of: ``modality_of(argument) -> str``, cheap, for sources whose modality is "any".
        description: one line for ``graft backbones``.
        takes_argument: whether the spec needs ``name:argument``.
        example: a spec to show in help.
    """

    name: str
    create: Callable[[str | None, dict[str, Any]], Backbone]
    modality: str
    description: str
    takes_argument: bool = False
    example: str = ""
    modality_of: Callable[[str], str] | None = None


_REGISTRY: dict[str, BackboneSource] = {}
# Rebuilding an architecture from a bundle's backbone/ folder, by the ``kind`` in its spec.
_SAVED: dict[str, Callable[..., Backbone]] = {}


def register_backbone(
    name: str,
    create: Callable[[str | None, dict[str, Any]], Backbone],
    *,
    modality: str,
    description: str,
    takes_argument: bool = False,
    example: str = "",
    modality_of: Callable[[str], str] | None = None,
) -> None:
    """Add a backbone source. A name already registered raises (no silent replacement)."""
    if not name or ":" in name:
        raise ConfigError(f"backbone names are non-empty and contain no ':'; got {name!r}")
    if name in _REGISTRY:
        raise ConfigError(f"a backbone source named {name!r} is already registered")
    _REGISTRY[name] = BackboneSource(
        name, create, modality, description, takes_argument, example or name, modality_of
    )


def register_saved_kind(kind: str, load: Callable[..., Backbone]) -> None:
    """``load(folder, spec, module=None)`` rebuilds the architecture a bundle recorded under ``kind``."""
    if kind in _SAVED:
        raise ConfigError(f"a saved backbone kind named {kind!r} is already registered")
    _SAVED[kind] = load


def list_backbones(pattern: str = "*") -> list[BackboneSource]:
    """Registered sources whose name matches the fnmatch ``pattern``, sorted by name."""
    return [_REGISTRY[n] for n in sorted(_REGISTRY) if fnmatch.fnmatch(n, pattern)]


def parse_source(spec: str) -> tuple[BackboneSource, str | None]:
    name, _, argument = spec.partition(":")
    entry = _REGISTRY.get(name)
    if entry is None:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=3)
        hint = f"did you mean {' or '.join(map(repr, close))}? " if close else ""
        raise ConfigError(
            f"unknown backbone source {spec!r}; {hint}known sources: "
            + ", ".join(s.example for s in list_backbones())
        )
    if entry.takes_argument and not argument:
        raise ConfigError(f"backbone source {name!r} needs an argument, e.g. {entry.example}")
    if not entry.takes_argument and argument:
        raise ConfigError(f"backbone source {name!r} takes no argument; use {name!r}")
    return entry, argument or None


def create_backbone(spec: str, *, max_length: int | None = None, weights: str | None = None) -> Backbone:
    """Build the pretrained backbone a source spec names.

    Args:
        spec: ``minilm``, ``hf:<hub-id-or-folder>``, ``timm:<name>``, ``torchvision:<name>``,
            ``arch:<name>``, ``ge2e`` or ``bundle:<path>``.
        max_length: cap on tokens per text (text backbones); default is the backbone's own limit.
        weights: a local weights file (timm, torchvision, arch and ge2e sources).
    """
    entry, argument = parse_source(spec)
    if weights is not None and entry.name not in ("timm", "torchvision", "arch", "ge2e"):
        raise ConfigError(
            f"--weights applies to timm:, torchvision:, arch: and ge2e backbones, not {entry.name}: "
            "(an hf: folder or a bundle carries its own weights)"
        )
    return entry.create(argument, {"max_length": max_length, "weights": weights})


def source_modality(spec: str) -> str:
    """The input type a source spec's backbone was pretrained on, without loading its weights."""
    entry, argument = parse_source(spec)
    if entry.modality_of is not None:
        return entry.modality_of(argument or "")
    return entry.modality


def backbone_from_saved(folder: Path, spec: dict[str, Any], module: Any = None) -> Backbone:
    """The architecture recorded in a bundle (weights are loaded by the caller).

    ``module`` is a fresh instance of the user's own network, for bundles built with
    :meth:`graft.Backbone.from_module` on a class graft cannot rebuild by itself.
    """
    kind = spec.get("kind")
    load = _SAVED.get(kind)
    if load is None:
        raise BundleError(
            f"bundle backbone kind {kind!r} is unknown to this graft version (known: {sorted(_SAVED)}); "
            "upgrade graft"
        )
    return load(folder, spec, module=module)


def _minilm(argument: str | None, options: dict[str, Any]) -> Backbone:
    from graft.backbones.hf import load_hf_text, minilm_path

    return load_hf_text(str(minilm_path()), source="minilm", max_length=options.get("max_length"))


def _mpnet(argument: str | None, options: dict[str, Any]) -> Backbone:
    from graft.backbones.fetch import MPNET, fetched_path
    from graft.backbones.hf import load_hf_text

    return load_hf_text(str(fetched_path(MPNET)), source="mpnet", max_length=options.get("max_length"))


def _mpnet_modality(argument: str) -> str:
    from graft.backbones.fetch import MPNET, fetched_path

    fetched_path(MPNET)  # not fetched yet: say how, before any work
    return "text"


def _hf(argument: str | None, options: dict[str, Any]) -> Backbone:
    from graft.backbones.hf import hf_modality, load_hf_text

    modality = hf_modality(argument or "")
    if modality in ("image", "audio"):
        from graft.backbones.hf_media import load_hf_media

        return load_hf_media(argument or "", modality, source=f"hf:{argument}")
    return load_hf_text(argument or "", source=f"hf:{argument}", max_length=options.get("max_length"))


def _hf_modality(argument: str) -> str:
    from graft.backbones.hf import hf_modality

    return hf_modality(argument)


def _hf_saved(folder: Path, spec: dict[str, Any], module: Any = None) -> Backbone:
    from graft.backbones.hf import HFTextBackbone

    return HFTextBackbone.from_saved(folder, spec)


def _hf_media_saved(folder: Path, spec: dict[str, Any], module: Any = None) -> Backbone:
    from graft.backbones.hf_media import hf_media_from_saved

    return hf_media_from_saved(folder, spec)


def _timm(argument: str | None, options: dict[str, Any]) -> Backbone:
    from graft.backbones.timm_source import load_timm

    return load_timm(argument or "", weights=options.get("weights"))


def _torchvision(argument: str | None, options: dict[str, Any]) -> Backbone:
    from graft.backbones.torchvision_source import load_torchvision

    return load_torchvision(argument or "", weights=options.get("weights"))


def _arch(argument: str | None, options: dict[str, Any]) -> Backbone:
    from graft.backbones.archs import arch_backbone

    return arch_backbone(argument or "", weights=options.get("weights"))


def _arch_modality(argument: str) -> str:
    from graft.backbones.archs import get_architecture

    return get_architecture(argument).modality


def _ge2e(argument: str | None, options: dict[str, Any]) -> Backbone:
    from graft.backbones.ge2e import load_ge2e

    return load_ge2e(options.get("weights"))


def _ge2e_saved(folder: Path, spec: dict[str, Any], module: Any = None) -> Backbone:
    from graft.backbones.ge2e import GE2EBackbone

    return GE2EBackbone.from_saved(folder, spec)


def _module_saved(folder: Path, spec: dict[str, Any], module: Any = None) -> Backbone:
    from graft.backbones.module import rebuild

    return rebuild(folder, spec, module=module)


def _bundle(argument: str | None, options: dict[str, Any]) -> Backbone:
    from graft.bundle import bundle_backbone

    return bundle_backbone(argument or "")


def _bundle_modality(argument: str) -> str:
    from graft.bundle import read_manifest

    return read_manifest(argument, verify=False)[1]["contract"]["modality"]


register_backbone(
    "minilm",
    _minilm,
    modality="text",
    description="sentence-transformers/all-MiniLM-L6-v2, packaged (6 layers, 384-d sentence embeddings)",
)
register_backbone(
    "mpnet",
    _mpnet,
    modality="text",
    description="sentence-transformers/all-mpnet-base-v2 (12 layers, 768-d sentence embeddings); "
    "once: graft fetch mpnet",
    modality_of=_mpnet_modality,
)
register_backbone(
    "hf",
    _hf,
    modality="any",
    description="a Hugging Face encoder (text, vision such as ViT/ConvNeXt, or audio such as wav2vec2): "
    "local folder, or hub id when online",
    takes_argument=True,
    example="hf:<hub-id-or-folder>",
    modality_of=_hf_modality,
)
register_backbone(
    "timm",
    _timm,
    modality="image",
    description="a timm image model; weights from --weights FILE, a local folder, or the hub when online",
    takes_argument=True,
    example="timm:<model-name>",
)
register_backbone(
    "torchvision",
    _torchvision,
    modality="image",
    description="a torchvision classification model; weights from --weights FILE or the hub when online",
    takes_argument=True,
    example="torchvision:<model-name>",
)
register_backbone(
    "arch",
    _arch,
    modality="any",
    description="one of graft's own architectures (resnet20/32/44/56, small_cnn, audio_cnn): random "
    "initialisation for `graft pretrain`, or --weights FILE",
    takes_argument=True,
    example="arch:<name>",
    modality_of=_arch_modality,
)
register_backbone(
    "ge2e",
    _ge2e,
    modality="audio",
    description="GE2E speaker encoder (resemblyzer; VoxCeleb + LibriSpeech): 3-layer LSTM on 40-band mels "
    "of 16 kHz audio, 256-d speaker embeddings; weights from the resemblyzer package or --weights FILE",
)
register_backbone(
    "bundle",
    _bundle,
    modality="any",
    description="the backbone of a graft bundle (transfer from your own earlier or pre-trained model)",
    takes_argument=True,
    example="bundle:<path>",
    modality_of=_bundle_modality,
)
register_saved_kind("hf_text", _hf_saved)
register_saved_kind("hf_media", _hf_media_saved)
register_saved_kind("ge2e", _ge2e_saved)
for _kind in ("arch", "module", "timm", "torchvision"):
    register_saved_kind(_kind, _module_saved)

__all__ = [
    "BackboneSource",
    "backbone_from_saved",
    "create_backbone",
    "list_backbones",
    "parse_source",
    "register_backbone",
    "source_modality",
]
