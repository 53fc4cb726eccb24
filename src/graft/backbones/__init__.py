"""The backbone registry: ``register_backbone``, ``create_backbone``, ``list_backbones``.

A source spec is ``name`` or ``name:argument`` (``minilm``, ``hf:/path/to/folder``). Factories import
their heavy dependencies lazily, so listing backbones costs nothing.

Example:
    >>> [s.name for s in list_backbones()]
    ['hf', 'minilm']
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
        create: ``create(argument, max_length) -> Backbone``; ``argument`` is the part after ``:``.
        modality: input type of the pretrained weights.
        description: one line for ``graft backbones``.
        takes_argument: whether the spec needs ``name:argument``.
        example: a spec to show in help.
    """

    name: str
    create: Callable[[str | None, int | None], Backbone]
    modality: str
    description: str
    takes_argument: bool = False
    example: str = ""


_REGISTRY: dict[str, BackboneSource] = {}
# Rebuilding an architecture from a bundle's backbone/ folder, by the ``kind`` in its spec.
_SAVED: dict[str, Callable[[Path, dict[str, Any]], Backbone]] = {}


def register_backbone(
    name: str,
    create: Callable[[str | None, int | None], Backbone],
    *,
    modality: str,
    description: str,
    takes_argument: bool = False,
    example: str = "",
) -> None:
    """Add a backbone source. A name already registered raises (no silent replacement)."""
    if not name or ":" in name:
        raise ConfigError(f"backbone names are non-empty and contain no ':'; got {name!r}")
    if name in _REGISTRY:
        raise ConfigError(f"a backbone source named {name!r} is already registered")
    _REGISTRY[name] = BackboneSource(name, create, modality, description, takes_argument, example or name)


def register_saved_kind(kind: str, load: Callable[[Path, dict[str, Any]], Backbone]) -> None:
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


def create_backbone(spec: str, *, max_length: int | None = None) -> Backbone:
    """Build the pretrained backbone a source spec names.

    Args:
        spec: ``minilm`` or ``hf:<hub-id-or-local-folder>``.
        max_length: cap on tokens per text (text backbones); default is the backbone's own limit.
    """
    entry, argument = parse_source(spec)
    return entry.create(argument, max_length)


def backbone_from_saved(folder: Path, spec: dict[str, Any]) -> Backbone:
    """The architecture recorded in a bundle (weights are loaded by the caller)."""
    kind = spec.get("kind")
    load = _SAVED.get(kind)
    if load is None:
        raise BundleError(
            f"bundle backbone kind {kind!r} is unknown to this graft version (known: {sorted(_SAVED)}); "
            "upgrade graft"
        )
    return load(folder, spec)


def _minilm(argument: str | None, max_length: int | None) -> Backbone:
    from graft.backbones.hf import load_hf_text, minilm_path

    return load_hf_text(str(minilm_path()), source="minilm", max_length=max_length)


def _hf(argument: str | None, max_length: int | None) -> Backbone:
    from graft.backbones.hf import load_hf_text

    return load_hf_text(argument or "", source=f"hf:{argument}", max_length=max_length)


def _hf_saved(folder: Path, spec: dict[str, Any]) -> Backbone:
    from graft.backbones.hf import HFTextBackbone

    return HFTextBackbone.from_saved(folder, spec)


register_backbone(
    "minilm",
    _minilm,
    modality="text",
    description="sentence-transformers/all-MiniLM-L6-v2, packaged (6 layers, 384-d sentence embeddings)",
)
register_backbone(
    "hf",
    _hf,
    modality="text",
    description="a Hugging Face text encoder: local folder, or hub id when online (AutoModel)",
    takes_argument=True,
    example="hf:<hub-id-or-folder>",
)
register_saved_kind("hf_text", _hf_saved)

__all__ = [
    "BackboneSource",
    "backbone_from_saved",
    "create_backbone",
    "list_backbones",
    "parse_source",
    "register_backbone",
]
