"""torchvision classification models as backbones: ``torchvision:<model-name>``.

Weights come from ``--weights FILE`` (a ``.safetensors`` file or a ``torch.save`` state dict, read
without unpickling objects) or, when online, from torchvision's ``DEFAULT`` weights download.

The contract is read from the model's weights enum without downloading anything
(``get_model_weights(name).DEFAULT.transforms()``: crop and resize size, mean/std, interpolation).
The output layer is the last ``nn.Linear`` (``fc``, ``classifier.1``, ``heads.head``, ``head``), or
SqueezeNet's final 1x1 convolution. Layer groups are the top-level children, with the ``features``
stack of VGG, MobileNet, EfficientNet, ConvNeXt, Swin and DenseNet split into its stages and the
encoder of a ViT into its layers.

Example:
    >>> bb = create_backbone("torchvision:resnet18", weights="resnet18.pth")  # doctest: +SKIP
    >>> bb.feature_dim
    512
"""

from __future__ import annotations

import difflib
from typing import Any

from torch import nn

from graft.backbones.module import ModuleBackbone, load_weights, replace_head
from graft.backbones.preprocess import INTERPOLATIONS, ImagePreprocess
from graft.errors import ConfigError

# Constructor arguments that make a model's structure the same with and without torchvision's
# weights: GoogLeNet and Inception v3 drop their auxiliary classifiers (training-only heads) and
# take ImageNet-normalised input when built with weights.
_MODEL_KWARGS: dict[str, dict[str, Any]] = {
    "googlenet": {"aux_logits": False, "transform_input": True, "init_weights": False},
    "inception_v3": {"aux_logits": False, "transform_input": True, "init_weights": False},
}
# Keys of those auxiliary classifiers, ignored in weights files that still hold them.
_AUX_PREFIXES = ("aux1", "aux2", "AuxLogits")
_FEATURE_STACKS = ("features", "blocks", "layers", "trunk_output")


def load_torchvision(name: str, weights: str | None = None) -> ModuleBackbone:
    """A torchvision classification model, its output layer removed, as a graft backbone.

    Args:
        name: a model name from ``torchvision.models.list_models(module=torchvision.models)``
            (``resnet50``, ``efficientnet_b0``, ``vit_b_16``...).
        weights: a local weights file (``.safetensors`` or a ``.pth``/``.pt`` state dict) for that
            architecture; without it the ``DEFAULT`` weights are downloaded (needs network).

    Raises:
        ConfigError: unknown or non-classification model name, weights that do not fit the
            architecture, or no weights file while the download is impossible.
    """
    import torchvision

    _check_torchvision_name(name)
    kwargs = dict(_MODEL_KWARGS.get(name, {}))
    if weights is not None:
        model = torchvision.models.get_model(name, weights=None, **kwargs)
        head = find_output_layer(model, name)
        load_weights(model, weights, skip_prefixes=(head, *_AUX_PREFIXES))
    else:
        try:
            # With weights, torchvision sets aux_logits/init_weights itself (passing them is an error)
            hub_kwargs = {k: v for k, v in kwargs.items() if k == "transform_input"}
            model = torchvision.models.get_model(name, weights="DEFAULT", **hub_kwargs)
        except Exception as exc:
            text = str(exc).strip()
            reason = text.splitlines()[0] if text else type(exc).__name__
            raise ConfigError(
                f"could not download the pretrained weights of torchvision model {name!r} ({reason}): no "
                "network, or download.pytorch.org is unreachable. Download them elsewhere "
                "(torchvision.models.get_model(name, weights='DEFAULT') saves them under "
                "~/.cache/torch/hub/checkpoints) and pass --weights FILE"
            ) from None
        _drop_aux(model)
        head = find_output_layer(model, name)
    model.eval()
    in_features, _ = replace_head(model, head)
    spec: dict[str, Any] = {"kind": "torchvision", "name": name, "head": head}
    if kwargs:
        spec["kwargs"] = kwargs
    return ModuleBackbone(
        model,
        torchvision_preprocess(name),
        source=f"torchvision:{name}",
        spec=spec,
        groups=torchvision_groups(model),
        feature_dim=in_features,
    )


def build_torchvision_body(spec: dict[str, Any]) -> nn.Module:
    """A fresh torchvision model of the architecture a backbone spec records (random weights, output
    layer still in place: :func:`graft.backbones.module.rebuild` replaces ``spec["head"]``).

    Args:
        spec: ``{"kind": "torchvision", "name": <model name>, "head": <path>, "kwargs": {...}}`` as
            written by :func:`load_torchvision`.
    """
    import torchvision

    _check_torchvision_name(spec["name"])
    return torchvision.models.get_model(spec["name"], weights=None, **dict(spec.get("kwargs") or {}))


def _drop_aux(model: nn.Module) -> None:
    """Remove auxiliary classifiers (as ``aux_logits=False`` would have built the model)."""
    if getattr(model, "aux_logits", False):
        model.aux_logits = False
        for attr in _AUX_PREFIXES:
            if getattr(model, attr, None) is not None:
                setattr(model, attr, None)


def classification_models() -> list[str]:
    """Names of torchvision's image classification models."""
    import torchvision

    return torchvision.models.list_models(module=torchvision.models)


def _check_torchvision_name(name: str) -> None:
    """Refuse unknown names (with close matches) and models that are not image classifiers."""
    import torchvision

    if not name:
        raise ConfigError("torchvision: needs a model name, e.g. torchvision:resnet50")
    known = classification_models()
    if name in known:
        return
    if name in torchvision.models.list_models():
        raise ConfigError(
            f"torchvision model {name!r} is not an image classification model (detection, segmentation, "
            "video or optical flow); graft takes classification backbones such as "
            + ", ".join(repr(n) for n in ("resnet50", "efficientnet_b0", "convnext_tiny", "vit_b_16"))
        )
    close = difflib.get_close_matches(name, known, n=5, cutoff=0.6)
    hint = f"did you mean {', '.join(map(repr, close))}? " if close else ""
    raise ConfigError(
        f"unknown torchvision model {name!r}; {hint}the names are listed by "
        "torchvision.models.list_models(module=torchvision.models)"
    )


def find_output_layer(model: nn.Module, name: str = "") -> str:
    """Attribute path of a classifier's output layer: the last ``nn.Linear`` in registration order,
    else (SqueezeNet) the last ``nn.Conv2d`` inside ``classifier``.

    Raises:
        ConfigError: the model has neither.
    """
    linears = [path for path, m in model.named_modules() if isinstance(m, nn.Linear)]
    if linears:
        return linears[-1]
    convs = [p for p, m in model.named_modules() if isinstance(m, nn.Conv2d) and p.startswith("classifier.")]
    if convs:
        return convs[-1]
    raise ConfigError(
        f"cannot find the output layer of torchvision model {name or type(model).__name__!r} (no nn.Linear, "
        "no convolution in 'classifier'); use Backbone.from_module(model, head=<path>) instead"
    )


def torchvision_preprocess(name: str) -> ImagePreprocess:
    """The :class:`ImagePreprocess` of a model's ``DEFAULT`` weights, read from the weights enum
    without downloading (224x224 with ImageNet statistics for a model without weights)."""
    import torchvision

    try:
        transforms = torchvision.models.get_model_weights(name).DEFAULT.transforms()
    except Exception:
        return ImagePreprocess(size=(224, 224), interpolation="bilinear", crop_pct=0.875)
    crop = _first(getattr(transforms, "crop_size", 224))
    resize = _first(getattr(transforms, "resize_size", crop))
    interpolation = getattr(getattr(transforms, "interpolation", None), "value", "bilinear")
    return ImagePreprocess(
        size=(crop, crop),
        mean=tuple(getattr(transforms, "mean", (0.485, 0.456, 0.406))),
        std=tuple(getattr(transforms, "std", (0.229, 0.224, 0.225))),
        interpolation=interpolation if interpolation in INTERPOLATIONS else "bilinear",
        crop_pct=min(1.0, crop / resize),
    )


def _first(value: Any) -> int:
    return int(value[0] if isinstance(value, list | tuple) else value)


def torchvision_groups(model: nn.Module) -> list[tuple[str, list[str]]]:
    """Ordered layer groups of a torchvision model (its output layer already removed).

    One group per top-level child that has parameters, in registration order (which is the input
    side first for every torchvision classifier), except that a ``features``/``blocks`` stack is
    split into one group per element, and a ViT's encoder into its layers (the class token, patch
    projection and position embedding form ``stem``). Parameters registered on the model itself
    join the first group.
    """
    direct = [n for n, _ in model.named_parameters(recurse=False)]
    groups: list[tuple[str, list[str]]] = []
    encoder = getattr(model, "encoder", None)
    vit = hasattr(model, "conv_proj") and isinstance(getattr(encoder, "layers", None), nn.Sequential)
    if vit:
        stem = [*direct, "conv_proj", *(f"encoder.{n}" for n, _ in encoder.named_parameters(recurse=False))]
        groups.append(("stem", stem))
        direct = []
    for child_name, child in model.named_children():
        if not _has_params(child) or (vit and child_name == "conv_proj"):
            continue
        if vit and child_name == "encoder":
            for sub_name, sub in child.named_children():
                if sub_name == "layers":
                    groups += _split(f"encoder.{sub_name}", sub)
                elif _has_params(sub):
                    groups.append((f"encoder.{sub_name}", [f"encoder.{sub_name}"]))
        elif child_name in _FEATURE_STACKS and isinstance(child, nn.Sequential | nn.ModuleList):
            groups += _split(child_name, child)
        else:
            groups.append((child_name, [child_name]))
    if direct:
        if groups:
            groups[0] = (groups[0][0], [*direct, *groups[0][1]])
        else:
            groups.append(("stem", direct))
    return groups


def _split(prefix: str, stack: nn.Module) -> list[tuple[str, list[str]]]:
    """One group per element of a stack (those with parameters)."""
    return [(f"{prefix}.{n}", [f"{prefix}.{n}"]) for n, m in stack.named_children() if _has_params(m)]


def _has_params(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())
