"""Any ``nn.Module`` as a backbone: the way a user brings their own network, and the base of the
timm, torchvision and graft-architecture sources.

The module's output layer (``head``, an attribute path such as ``"fc"`` or ``"classifier.1"``) is
replaced by ``nn.Identity``; whatever the rest returns is the feature vector (spatial maps are
average-pooled). Layer groups are the module's top-level children in registration order, unless
given. Weights files are read without pickle: ``.safetensors``, or ``torch.load(weights_only=True)``.

Example:
    >>> import torch.nn as nn, graft
    >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
    ...                     nn.Linear(8, 10))
    >>> bb = graft.Backbone.from_module(net, modality="image", input_size=(3, 32, 32),
    ...                                 mean=(0.5,) * 3, std=(0.5,) * 3, head="4")
    >>> bb.feature_dim
    8
"""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from graft.backbones.base import Backbone, Contract, LayerGroup
from graft.backbones.preprocess import AudioPreprocess, ImagePreprocess, preprocess_from_dict
from graft.errors import ConfigError

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".th", ".bin", ".ckpt")
# Keys under which training scripts commonly nest the state dict.
_NESTED = (
    "state_dict", "model_state_dict", "model_state", "model", "module", "net", "network", "ema", "params"
)  # fmt: skip


def _unreadable_weights(path: Path, exc: Exception) -> str:
    """Why a weights file was refused, and the safe way on. torch's own message suggests
    ``weights_only=False``, which would run whatever code the file carries: it is not repeated."""
    text = str(exc)
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if found is None and "Weights only load failed" not in text:
        first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
        return f"{path}: not a readable PyTorch weights file ({first})"
    what = f" (it references {found.group(1)})" if found else ""
    return (
        f"{path}: holds pickled Python objects besides tensors{what}; graft never unpickles them, since "
        "unpickling can run any code. If you trust the file, convert it once to safetensors in Python: "
        f"sd = torch.load({str(path)!r}, weights_only=False); sd = sd.get('state_dict', sd); "
        "safetensors.torch.save_file({k: v.contiguous() for k, v in sd.items() if torch.is_tensor(v)}, "
        "'weights.safetensors') — then pass --weights weights.safetensors"
    )


def read_state_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a weights file, unwrapped and with a ``module.`` (DataParallel) prefix stripped.

    ``.safetensors`` files are read directly; every other file with ``torch.load(weights_only=True)``,
    which refuses arbitrary pickled objects.

    Raises:
        ConfigError: missing file, or a file that holds no tensors / needs unsafe unpickling.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            state: Any = load_file(str(path))
        except Exception as exc:
            raise ConfigError(f"{path}: not a readable safetensors file ({exc})") from None
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ConfigError(_unreadable_weights(path, exc)) from None
    for _ in range(3):
        if isinstance(state, dict) and not any(torch.is_tensor(v) for v in state.values()):
            inner = next((state[k] for k in _NESTED if isinstance(state.get(k), dict)), None)
            if inner is None:
                break
            state = inner
    if not isinstance(state, dict) or not any(torch.is_tensor(v) for v in state.values()):
        raise ConfigError(
            f"{path}: holds no state dict of tensors (found {type(state).__name__}"
            + (f" with keys {sorted(state)[:6]}" if isinstance(state, dict) else "")
            + ")"
        )
    tensors = {str(k): v for k, v in state.items() if torch.is_tensor(v)}
    for prefix in ("module.", "_orig_mod.", "model."):
        if all(k.startswith(prefix) for k in tensors):
            tensors = {k[len(prefix) :]: v for k, v in tensors.items()}
    return tensors


def load_weights(module: nn.Module, path: str | Path, *, skip_prefixes: Sequence[str] = ()) -> dict[str, Any]:
    """Load a weights file into ``module``; keys of the replaced head (``skip_prefixes``) are ignored.

    Every other mismatch is an error naming the keys, since silently random layers would ruin a
    transfer run. Returns ``{"loaded": n, "skipped": [...]}``.
    """
    state = read_state_file(path)
    skipped = sorted(k for k in state if any(k == p or k.startswith(p + ".") for p in skip_prefixes))
    state = {k: v for k, v in state.items() if k not in skipped}
    own = module.state_dict()
    expected = {k for k in own if not any(k == p or k.startswith(p + ".") for p in skip_prefixes)}
    missing = sorted(k for k in expected - set(state) if not k.endswith("num_batches_tracked"))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in set(state) & set(own)
        if state[k].shape != own[k].shape
    )
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[:3]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})")
        if shapes:
            parts.append(f"{len(shapes)} with another shape (e.g. {shapes[:2]})")
        raise ConfigError(
            f"{path} does not fit this architecture: "
            + "; ".join(parts)
            + ". Check that the weights belong to this model name/variant"
        )
    module.load_state_dict(state, strict=False)
    return {"loaded": len(state), "skipped": skipped}


def replace_head(module: nn.Module, head: str | None) -> tuple[int | None, str | None]:
    """Replace the output layer at attribute path ``head`` by ``nn.Identity``.

    Returns ``(in_features of the removed layer or None, its path)``.
    """
    if not head:
        return None, None
    parent_name, _, leaf = head.rpartition(".")
    try:
        parent = module.get_submodule(parent_name) if parent_name else module
        old = getattr(parent, leaf) if not leaf.isdigit() else parent[int(leaf)]
    except (AttributeError, IndexError, TypeError):
        names = [n for n, _ in module.named_children()]
        raise ConfigError(
            f"the module has no output layer {head!r} to replace; its top-level children are {names}. "
            "Pass head=<attribute path of the last layer> (e.g. 'fc', 'classifier.1'), or head=None"
        ) from None
    if leaf.isdigit():
        parent[int(leaf)] = nn.Identity()
    else:
        setattr(parent, leaf, nn.Identity())
    return getattr(old, "in_features", None), head


def top_level_groups(module: nn.Module) -> list[tuple[str, list[str]]]:
    """One group per top-level child that has parameters (input side first, registration order);
    parameters registered directly on the module form a ``stem`` group."""
    direct = [n for n, _ in module.named_parameters(recurse=False)]
    groups = [("stem", direct)] if direct else []
    for name, child in module.named_children():
        if any(True for _ in child.parameters()):
            groups.append((name, [name]))
    return groups


class ModuleBackbone(Backbone):
    """A backbone made of a plain ``nn.Module`` (its head removed) and an image/audio preprocessor.

    Args:
        body: the network without its output layer; ``body(x)`` gives features (or maps, pooled here).
        preprocess: an :class:`ImagePreprocess` or :class:`AudioPreprocess`.
        source: the source spec, for messages and provenance.
        spec: what :func:`graft.backbones.backbone_from_saved` needs to rebuild ``body``.
        groups: ``[(name, [parameter-name prefixes]), ...]`` input side first; default: top-level
            children.
        feature_dim: size of the feature vector; measured with one dummy forward when omitted.
    """

    def __init__(
        self,
        body: nn.Module,
        preprocess: ImagePreprocess | AudioPreprocess,
        *,
        source: str,
        spec: dict[str, Any],
        groups: Sequence[tuple[str, Sequence[str]]] | None = None,
        feature_dim: int | None = None,
    ) -> None:
        super().__init__()
        self.body = body
        self._preprocess = preprocess
        self.source = source
        self._spec = dict(spec)
        self.contract = Contract(preprocess.modality, preprocess.to_dict())
        self._groups = [(n, list(p)) for n, p in (groups or top_level_groups(body))]
        self._check_groups()
        self.feature_dim = feature_dim or self._measure_dim()

    # -- the Backbone surface ------------------------------------------------------------------
    def preprocess(self, examples: list[Any]) -> dict[str, torch.Tensor]:
        return self._preprocess(examples)

    def preprocessor(self, augment: str = "none"):
        return self._preprocess.with_augment(augment)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        out = self.body(batch[self._preprocess.input_key])
        if isinstance(out, tuple | list):
            out = out[0]
        if out.ndim > 2:  # feature maps [batch, channels, ...]: global average pooling
            out = out.flatten(2).mean(2)
        return out

    def layer_groups(self) -> list[LayerGroup]:
        named = dict(self.named_parameters())
        out = []
        for name, prefixes in self._groups:
            params = {k: v for k, v in named.items() if _under(k, prefixes)}
            if params:
                out.append(LayerGroup(name, params))
        return out

    def spec(self) -> dict[str, Any]:
        return {
            **self._spec,
            "source": self.source,
            "preprocess": self._preprocess.to_dict(),
            "groups": self._groups,
            "feature_dim": self.feature_dim,
        }

    def save_architecture(self, folder: Path) -> None:
        # Rebuilt from spec() alone (arch / timm / torchvision names, or the user's module): the
        # folder stays empty.
        folder.mkdir(parents=True, exist_ok=True)

    # -- helpers -------------------------------------------------------------------------------
    def _check_groups(self) -> None:
        names = [k for k, _ in self.named_parameters()]
        prefixes = [(g, [p if p.startswith("body.") else "body." + p for p in ps]) for g, ps in self._groups]
        self._groups = prefixes
        homeless = [k for k in names if not any(_under(k, ps) for _, ps in prefixes)]
        if homeless:
            raise ConfigError(
                f"layer groups leave {len(homeless)} parameters out (e.g. {homeless[:3]}); every parameter "
                "must be in exactly one group"
            )
        for k in names:
            owners = [g for g, ps in prefixes if _under(k, ps)]
            if len(owners) > 1:
                raise ConfigError(
                    f"parameter {k!r} is in several layer groups {owners}; give disjoint groups"
                )

    @torch.no_grad()
    def _measure_dim(self) -> int:
        was_training = self.training
        self.eval()
        try:
            probe = torch.zeros(2, *self._preprocess.example_shape())
            out = self.forward({self._preprocess.input_key: probe})
        except Exception as exc:
            raise ConfigError(
                f"the backbone failed on a dummy input of shape {tuple(probe.shape)}: {exc}. Check "
                "input_size / the contract against what the module expects"
            ) from None
        finally:
            self.train(was_training)
        if out.ndim != 2:
            raise ConfigError(
                f"the backbone gives outputs of shape {tuple(out.shape)}; expected [batch, features]"
            )
        return int(out.shape[1])


def _under(name: str, prefixes: Sequence[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def from_module(
    module: nn.Module,
    *,
    modality: str = "image",
    input_size: Sequence[int] = (3, 224, 224),
    mean: Sequence[float] = (0.485, 0.456, 0.406),
    std: Sequence[float] = (0.229, 0.224, 0.225),
    head: str | None = "fc",
    groups: Sequence[tuple[str, Sequence[str]]] | None = None,
    interpolation: str = "bilinear",
    crop_pct: float = 1.0,
    sample_rate: int = 16000,
    duration: float = 1.0,
    copy_module: bool = True,
    source: str | None = None,
) -> ModuleBackbone:
    """A user's ``nn.Module`` (with its pretrained weights) as a graft backbone.

    Args:
        module: the network, weights already loaded.
        modality: "image" or "audio" (the input type it was trained on).
        input_size: (channels, height, width) for images.
        mean, std: per-channel normalisation of [0, 1] pixels the network was trained with.
        head: attribute path of the output layer to replace (``None``: the module has none).
        groups: layer groups as ``[(name, [attribute prefixes])]``; default: top-level children.
        sample_rate, duration: the audio contract (audio modules take ``[batch, samples]``).
        copy_module: work on a deep copy (default) so the caller's module keeps its head.
    """
    if modality not in ("image", "audio"):
        raise ConfigError(f"from_module takes modality 'image' or 'audio', got {modality!r}")
    body = copy.deepcopy(module) if copy_module else module
    replace_head(body, head)
    if modality == "image":
        if len(input_size) != 3:
            raise ConfigError(f"input_size is (channels, height, width), got {tuple(input_size)}")
        channels = int(input_size[0])
        pre: ImagePreprocess | AudioPreprocess = ImagePreprocess(
            size=(int(input_size[1]), int(input_size[2])),
            mean=tuple(mean),
            std=tuple(std),
            interpolation=interpolation,
            crop_pct=crop_pct,
            channels=channels,
        )
    else:
        pre = AudioPreprocess(sample_rate=sample_rate, duration=duration)
    arch = getattr(module, "_graft_arch", None)
    cls = type(module)
    spec: dict[str, Any] = (
        {"kind": "arch", "arch": arch["name"], "kwargs": arch.get("kwargs", {}), "head": head}
        if arch
        else {"kind": "module", "class": f"{cls.__module__}.{cls.__qualname__}", "head": head}
    )
    name = source or (f"arch:{arch['name']}" if arch else f"module:{cls.__qualname__}")
    return ModuleBackbone(body, pre, source=name, spec=spec, groups=groups)


def rebuild(folder: Path, spec: dict[str, Any], module: nn.Module | None = None) -> ModuleBackbone:
    """The architecture of a saved arch/module backbone (weights are loaded by the caller)."""
    from graft.errors import BundleError

    if spec["kind"] == "arch":
        from graft.backbones.archs import build_architecture

        body = build_architecture(spec["arch"], **spec.get("kwargs", {}))
    elif spec["kind"] == "timm":
        from graft.backbones.timm_source import build_timm_body

        body = build_timm_body(spec)
    elif spec["kind"] == "torchvision":
        from graft.backbones.torchvision_source import build_torchvision_body

        body = build_torchvision_body(spec)
    elif module is not None:
        body = copy.deepcopy(module)
    else:
        raise BundleError(
            f"this bundle was built on your own module {spec.get('class')!r}, which graft cannot rebuild "
            "by itself: pass graft.load(path, module=<a fresh instance of that class>)"
        )
    replace_head(body, spec.get("head"))
    groups = [(n, list(ps)) for n, ps in spec["groups"]]
    return ModuleBackbone(
        body,
        preprocess_from_dict(spec["preprocess"]),
        source=spec.get("source", spec["kind"]),
        spec={k: v for k, v in spec.items() if k not in ("preprocess", "groups", "feature_dim", "source")},
        groups=groups,
        feature_dim=spec.get("feature_dim"),
    )
