"""timm image models as backbones: ``timm:<model-name>`` or ``timm:<folder>``.

Weights come from, in this order: ``--weights FILE`` (a ``.safetensors`` file or a ``torch.save``
state dict, read without unpickling objects), the weights file of a local folder in timm's hub format
(``config.json`` with ``architecture`` and ``pretrained_cfg``, plus ``model.safetensors`` or
``pytorch_model.bin``), or the Hugging Face hub when online.

The contract is the model's ``pretrained_cfg`` (input size, mean/std, interpolation, crop_pct); the
output layer is ``pretrained_cfg["classifier"]`` (both heads of distilled models); the layer groups
are timm's own coarse ``group_matcher`` (stem, one group per stage or block, final norm).

Example:
    >>> bb = create_backbone("timm:resnet18", weights="resnet18.safetensors")  # doctest: +SKIP
    >>> bb.feature_dim, bb.contract.preprocessing["size"]  # doctest: +SKIP
    (512, [224, 224])
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from graft.backbones.module import ModuleBackbone, load_weights, replace_head, top_level_groups
from graft.backbones.preprocess import INTERPOLATIONS, ImagePreprocess
from graft.errors import ConfigError

# Weights files of a timm hub folder, in order of preference.
FOLDER_WEIGHTS = ("model.safetensors", "pytorch_model.bin", "pytorch_model.pth")


def load_timm(name: str, weights: str | None = None) -> ModuleBackbone:
    """A timm model, its classifier removed, as a graft backbone.

    Args:
        name: a timm model name (``resnet50``, ``vit_small_patch16_224.augreg_in21k``), or a local folder
            in timm's hub format (``config.json`` + ``model.safetensors``/``pytorch_model.bin``).
        weights: a local weights file (``.safetensors`` or a ``.pth``/``.pt`` state dict) for that
            architecture; it takes precedence over a folder's own weights and over the hub.

    Raises:
        ConfigError: unknown model name, a folder without config or weights, weights that do not fit
            the architecture, or no weights file while the hub is unreachable.
    """
    if not name:
        raise ConfigError("timm: needs a model name or a folder, e.g. timm:resnet50 or timm:/path/to/folder")
    folder_name = name[len("local-dir:") :] if name.startswith("local-dir:") else name
    if Path(folder_name).is_dir():
        return _load_timm_folder(Path(folder_name), weights)
    if name.startswith("local-dir:"):
        raise ConfigError(f"timm folder not found: {folder_name}")

    _check_timm_name(name)
    if weights is not None:
        model = _create(name, pretrained=False)
        heads = _classifier_paths(model)
        load_weights(model, weights, skip_prefixes=heads)
    else:
        model = _from_hub(name)
        heads = _classifier_paths(model)
    arch = name
    if name.startswith("hf-hub:"):  # rebuild from the architecture and its arguments, without the hub
        arch = model.pretrained_cfg.get("architecture") or name
    return _backbone(model, arch, heads, _model_args(model), source=f"timm:{name}")


def build_timm_body(spec: dict[str, Any]) -> nn.Module:
    """A fresh timm model of the architecture a backbone spec records, for loading saved weights.

    The primary head (``spec["head"]``) is replaced by the caller (:func:`graft.backbones.module.rebuild`);
    the extra heads of distilled models (``spec["extra_heads"]``) are replaced here, so that the state
    dict of the original backbone loads back strictly.

    Args:
        spec: ``{"kind": "timm", "name": <architecture>, "head": <path>, "extra_heads": [...],
            "kwargs": {...}}`` as written by :func:`load_timm`.
    """
    import timm

    name = spec["name"]
    _check_timm_name(name)
    model = timm.create_model(name, pretrained=False, **dict(spec.get("kwargs") or {}))
    for path in spec.get("extra_heads") or ():
        replace_head(model, path)
    return model


# -- helpers -------------------------------------------------------------------------------------------


def _create(name: str, **kwargs: Any) -> nn.Module:
    import timm

    try:
        return timm.create_model(name, **kwargs)
    except Exception as exc:
        raise ConfigError(f"timm could not build model {name!r}: {_first_line(exc)}") from None


def _from_hub(name: str) -> nn.Module:
    """``timm.create_model(name, pretrained=True)``, with errors that say what to do offline."""
    import timm
    from timm.models import get_pretrained_cfg

    cfg = None if name.startswith("hf-hub:") else get_pretrained_cfg(name)
    if cfg is not None and not (cfg.hf_hub_id or cfg.url or cfg.file or cfg.state_dict):
        raise ConfigError(
            f"timm has no pretrained weights for {name!r} (its pretrained_cfg names no hub id or URL). "
            "Pass --weights FILE with weights for this architecture, or choose a pretrained model "
            "(timm.list_models(pretrained=True))"
        )
    try:
        return timm.create_model(name, pretrained=True)
    except Exception as exc:
        raise ConfigError(
            f"could not fetch the pretrained weights of timm model {name!r} from the hub "
            f"({_first_line(exc)}): the hub is unreachable (offline, HF_HUB_OFFLINE=1, or no network). "
            "Download the weights elsewhere and pass --weights FILE (.safetensors or a .pth state dict), "
            "or give a local timm folder: timm:/path/to/folder with config.json and model.safetensors"
        ) from None


def _check_timm_name(name: str) -> None:
    """Refuse an unknown architecture with close matches from ``timm.list_models()``."""
    import timm
    from timm.models import split_model_name_tag

    if name.startswith("hf-hub:"):
        return
    arch, _ = split_model_name_tag(name)
    if timm.is_model(arch):
        return
    close = difflib.get_close_matches(arch, timm.list_models(), n=5, cutoff=0.6)
    hint = f"did you mean {', '.join(map(repr, close))}? " if close else ""
    raise ConfigError(
        f"unknown timm model {name!r}; {hint}see timm.list_models('*pattern*') for the names, "
        "or pass a folder holding config.json and model.safetensors"
    )


def _load_timm_folder(folder: Path, weights: str | None) -> ModuleBackbone:
    """A timm hub-format folder: build from its config.json, load its (or the given) weights file."""
    import timm

    config_path = folder / "config.json"
    if not config_path.is_file():
        raise ConfigError(
            f"{folder} is not a timm model folder: it has no config.json (timm's hub format: config.json "
            "with 'architecture' and 'pretrained_cfg', plus model.safetensors)"
        )
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{config_path}: not readable JSON ({exc})") from None
    arch = config.get("architecture") if isinstance(config, dict) else None
    if not isinstance(arch, str) or not arch:
        raise ConfigError(
            f"{config_path} names no 'architecture' (a timm model name); is this a timm folder? "
            "Hugging Face transformers folders load with hf:<folder>"
        )
    _check_timm_name(arch)
    if weights is None:
        found = next((folder / f for f in FOLDER_WEIGHTS if (folder / f).is_file()), None)
        if found is None:
            raise ConfigError(
                f"{folder} holds no weights file (looked for {', '.join(FOLDER_WEIGHTS)}); "
                "add one or pass --weights FILE"
            )
        weights = str(found)
    try:
        model = timm.create_model(f"local-dir:{folder}", pretrained=False)
    except Exception as exc:
        raise ConfigError(f"timm could not build {arch!r} from {config_path}: {_first_line(exc)}") from None
    heads = _classifier_paths(model)
    load_weights(model, weights, skip_prefixes=heads)
    return _backbone(model, arch, heads, _model_args(model), source=f"timm:{folder}")


def _model_args(model: nn.Module) -> dict[str, Any]:
    """The constructor arguments timm recorded (a folder's or hub config's ``model_args``), which the
    rebuild needs; ``num_classes`` only shapes the classifier, which is removed anyway."""
    recorded = getattr(model, "_model_args", None) or {}
    out = {}
    for key, value in recorded.items():
        if key in ("num_classes", "pretrained_model_args"):
            continue
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            raise ConfigError(
                f"timm model argument {key}={value!r} cannot be saved in a bundle; use a folder whose "
                "config.json model_args are plain values"
            ) from None
        out[key] = value
    return out


def _classifier_paths(model: nn.Module) -> tuple[str, ...]:
    """Attribute paths of the output layer(s): ``pretrained_cfg["classifier"]``, else ``get_classifier()``."""
    raw = (getattr(model, "pretrained_cfg", None) or {}).get("classifier")
    paths = (raw,) if isinstance(raw, str) else tuple(raw or ())
    paths = tuple(p for p in paths if p and _has_path(model, p))
    if paths:
        return paths
    get = getattr(model, "get_classifier", None)
    head = get() if callable(get) else None
    for path, module in model.named_modules():
        if path and isinstance(head, nn.Module) and not isinstance(head, nn.Identity) and module is head:
            return (path,)
    raise ConfigError(
        f"timm model {type(model).__name__} has no classifier to replace (its pretrained_cfg names "
        f"{raw!r}): it is an encoder, not a classification model, and graft cannot tell which output is "
        "the feature vector. Choose a timm classification model, or wrap it with "
        "Backbone.from_module(model, head=None) and a module that returns [batch, features]"
    )


def _has_path(model: nn.Module, path: str) -> bool:
    try:
        model.get_submodule(path)
    except AttributeError:
        return False
    return True


def _backbone(
    model: nn.Module, name: str, heads: Sequence[str], kwargs: dict[str, Any], *, source: str
) -> ModuleBackbone:
    """Remove the heads, read the contract and the layer groups, wrap in a ModuleBackbone."""
    model.eval()
    in_features = [replace_head(model, path)[0] for path in heads]
    preprocess = timm_preprocess(model.pretrained_cfg, name)
    spec: dict[str, Any] = {"kind": "timm", "name": name, "head": heads[0]}
    if len(heads) > 1:
        spec["extra_heads"] = list(heads[1:])
    if kwargs:
        spec["kwargs"] = kwargs
    # A single Linear head: its input is the feature vector. Otherwise (conv heads, two heads) measure.
    feature_dim = in_features[0] if len(heads) == 1 and in_features[0] else None
    return ModuleBackbone(
        model, preprocess, source=source, spec=spec, groups=timm_groups(model), feature_dim=feature_dim
    )


def timm_preprocess(cfg: dict[str, Any], name: str = "") -> ImagePreprocess:
    """The :class:`ImagePreprocess` that a timm ``pretrained_cfg`` describes.

    Args:
        cfg: ``model.pretrained_cfg`` (``input_size`` (C, H, W), ``mean``, ``std``, ``interpolation``,
            ``crop_pct``); missing values fall back to 3x224x224, ImageNet statistics, bilinear, 0.875.
        name: the model, for error messages.
    """
    channels, height, width = (int(v) for v in (cfg.get("input_size") or (3, 224, 224)))
    mean = tuple(float(v) for v in _per_channel(cfg.get("mean", (0.485, 0.456, 0.406)), channels))
    std = tuple(float(v) for v in _per_channel(cfg.get("std", (0.229, 0.224, 0.225)), channels))
    if channels not in (1, 3):
        raise ConfigError(
            f"timm model {name!r} takes {channels}-channel input; graft reads images as RGB (3) or "
            "grayscale (1) only"
        )
    interpolation = str(cfg.get("interpolation") or "bilinear")
    if interpolation not in INTERPOLATIONS:
        interpolation = "bilinear"  # e.g. "random" (a training-time setting)
    crop_pct = float(cfg.get("crop_pct") or 1.0)
    return ImagePreprocess(
        size=(height, width),
        mean=mean,
        std=std,
        interpolation=interpolation,
        crop_pct=min(1.0, max(0.05, crop_pct)),
        channels=channels,
    )


def _per_channel(values: Any, channels: int) -> Sequence[float]:
    values = tuple(values) if isinstance(values, Iterable) else (values,)
    return values * channels if len(values) == 1 and channels > 1 else values


def timm_groups(model: nn.Module) -> list[tuple[str, list[str]]]:
    """Ordered layer groups from timm's coarse ``group_matcher``: ``[(name, [prefixes]), ...]``.

    timm's public :func:`timm.models.group_parameters` orders the parameters (stem, then each
    stage or block, final norms merged into the last one, anything unmatched last). Each group is named
    after the one module it is (``layer1``, ``blocks.3``, ``stages.0``), else after the
    matcher entry (``stem``, ``blocks.11`` with the final norm), and ``final`` for what the matcher
    leaves out (a head norm); its parameters are listed as the fewest module prefixes that hold
    parameters of that group only. Models without a ``group_matcher`` fall
    back to one group per top-level child.
    """
    from timm.models import group_parameters

    matcher_fn = getattr(model, "group_matcher", None)
    matcher = None
    for coarse in (True, False):  # a few models implement only the fine-grained grouping
        try:
            matcher = matcher_fn(coarse=coarse) if callable(matcher_fn) else None
        except Exception:
            continue
        break
    if not matcher:
        return top_level_groups(model)
    names = [n for n, _ in model.named_parameters()]
    grouped = group_parameters(model, matcher)
    ordered = [list(grouped[k]) for k in sorted(grouped) if grouped[k]]
    owner = {n: i for i, members in enumerate(ordered) for n in members}
    if len(owner) != len(names):  # pragma: no cover - group_parameters places every name
        return top_level_groups(model)

    groups_under: dict[str, set[int]] = {}
    for name, g in owner.items():
        parts = name.split(".")
        for depth in range(1, len(parts) + 1):
            groups_under.setdefault(".".join(parts[:depth]), set()).add(g)
    groups: list[tuple[str, list[str]]] = []
    used: set[str] = set()
    for i, members in enumerate(ordered):
        prefixes = _compact(members, i, groups_under)
        name = _group_name(members, prefixes, matcher, i)
        base, k = name, 2
        while name in used:
            name, k = f"{base}_{k}", k + 1
        used.add(name)
        groups.append((name, prefixes))
    return groups


def _group_name(members: list[str], prefixes: list[str], matcher: Any, index: int) -> str:
    """``final`` for parameters the matcher leaves out, else the one module the group is, else the
    matcher entry and its indices (``stem``, ``blocks.11``)."""
    if not isinstance(matcher, dict):  # a function: no entry names to borrow
        if len(prefixes) == 1:
            return prefixes[0]
        return "stem" if index == 0 else f"group.{index}"
    import re

    for key, mspec in matcher.items():
        if mspec is None:
            continue
        patterns = [s[0] for s in mspec] if isinstance(mspec, list | tuple) else [mspec]
        for pattern in patterns:
            match = re.match(pattern, members[0])
            if match:
                if len(prefixes) == 1:
                    return prefixes[0]
                return ".".join([key, *(g for g in match.groups() if g is not None)])
    return "final"


def _compact(members: list[str], group: int, groups_under: dict[str, set[int]]) -> list[str]:
    """The fewest prefixes that cover ``members`` and no parameter of another group
    (``groups_under[prefix]``: the groups of the parameters under each dotted prefix)."""
    out: list[str] = []
    for name in members:
        parts = name.split(".")
        prefix = next(
            ".".join(parts[:depth])
            for depth in range(1, len(parts) + 1)
            if groups_under[".".join(parts[:depth])] == {group}
        )
        if prefix not in out:
            out.append(prefix)
    return out


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
