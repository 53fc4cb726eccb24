"""LoRA adapters inside a backbone, through PEFT: insert, record, re-insert from a bundle, merge.

LoRA (Hu et al. 2022) adds a trainable low-rank update ``B @ A`` (scaled by ``alpha / rank``) beside
chosen weight matrices and keeps the pretrained weights fixed. PEFT does the layer surgery
(:func:`peft.inject_adapter_in_model`, its public API for models that are not ``PeftModel``); this
module decides *where* the adapters go, writes the JSON record a bundle keeps, and folds the adapters
back into plain layers.

The adapters live inside the backbone's own modules (``...query`` becomes a LoRA layer whose
``base_layer`` is the old ``Linear``), so parameter names keep their prefixes and every LoRA parameter
falls in the layer group of the module it adapts; :func:`add_lora` checks that it does.

Example:
    >>> bb = create_backbone("minilm")                                      # doctest: +SKIP
    >>> record = add_lora(bb, rank=8, alpha=16.0)                           # doctest: +SKIP
    >>> record["targets"][:2]                                               # doctest: +SKIP
    ['model.encoder.layer.0.attention.self.query', 'model.encoder.layer.0.attention.self.value']
    >>> fresh = create_backbone("minilm"); restore_adapters(fresh, record)  # doctest: +SKIP
    >>> merge_adapters(bb)                                                  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from graft.errors import ConfigError

KIND = "lora"
# Parameter names of the adapter weights PEFT inserts (``lora_A`` / ``lora_B``, and ``lora_embedding_*``).
LORA_PARAMS = r"(^|\.)lora_"

# Attention projections adapted by default, as in the LoRA paper (query and value): Hugging Face
# BERT-likes (query/value), BART/Llama/CLIP/wav2vec2 (q_proj/v_proj), DistilBERT (q_lin/v_lin), T5
# (q/v), fused projections of timm ViTs (qkv), ModernBERT (Wqkv), GPT-NeoX/Bloom (query_key_value)
# and GPT-2 (c_attn).
ATTENTION_LEAVES = frozenset(
    {
        "query",
        "value",
        "q_proj",
        "v_proj",
        "q_lin",
        "v_lin",
        "q",
        "v",
        "qkv",
        "Wqkv",
        "query_key_value",
        "c_attn",
    }
)


def _linear_types() -> tuple[type, ...]:
    try:  # GPT-2's fused projections are transformers' Conv1D (a transposed Linear)
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # pragma: no cover - transformers is a core dependency
        return (nn.Linear,)
    return (nn.Linear, Conv1D)


def default_targets(backbone: nn.Module) -> list[str]:
    """Full names of the modules LoRA adapts by default, first rule that finds any:

    1. attention query/value projections (``Linear`` layers named as in :data:`ATTENTION_LEAVES`):
       Hugging Face text and vision transformers, timm ViTs;
    2. ``nn.MultiheadAttention`` layers (torchvision ViTs);
    3. every convolution without groups and every ``Linear`` layer: CNNs (timm/torchvision ResNets,
       graft's ``arch:`` nets; a ConvNeXt's block MLPs), a user's MLP. PEFT cannot merge grouped
       (depthwise) convolutions, so those stay frozen.

    An empty list means LoRA has nothing to adapt in this backbone.
    """
    modules = [(name, module) for name, module in backbone.named_modules() if name]
    linear = _linear_types()
    rules = (
        lambda n, m: isinstance(m, linear) and n.rpartition(".")[2] in ATTENTION_LEAVES,
        lambda n, m: isinstance(m, nn.MultiheadAttention),
        lambda n, m: (
            isinstance(m, linear) or (isinstance(m, nn.Conv1d | nn.Conv2d | nn.Conv3d) and m.groups == 1)
        ),
    )
    for rule in rules:
        found = [name for name, module in modules if rule(name, module)]
        if found:
            return found
    return []


def _resolve(backbone: nn.Module, targets: Sequence[str]) -> list[str]:
    """Module names or name suffixes (``"query"``, ``"layer1.0.conv1"``) -> full module names."""
    names = [n for n, _ in backbone.named_modules() if n]
    out, unknown = [], []
    for target in targets:
        hits = [n for n in names if n == target or n.endswith("." + target)]
        if not hits:
            unknown.append(target)
        out += [n for n in hits if n not in out]
    if unknown:
        raise ConfigError(
            f"LoRA targets {unknown} name no module of the backbone; give module names such as "
            f"{names[-1]!r} or their last part"
        )
    return out


def _peft_version() -> str:
    from importlib import metadata

    return metadata.version("peft")


def _inject(backbone: nn.Module, record: dict[str, Any]) -> None:
    from peft import LoraConfig, inject_adapter_in_model

    targets = list(record["targets"])
    # PEFT marks every non-adapter parameter frozen while injecting; which parameters train is the
    # strategy's decision (graft.strategies.set_trainable), so the flags are put back afterwards.
    flags = {id(p): p.requires_grad for p in backbone.parameters()}
    config = LoraConfig(
        r=int(record["rank"]),
        lora_alpha=float(record["alpha"]),
        lora_dropout=float(record["dropout"]),
        target_modules=targets,
        bias="none",
    )
    inject_adapter_in_model(config, backbone)
    for p in backbone.parameters():
        p.requires_grad_(flags.get(id(p), True))
    wrapped = set(_top_adapter_layers(backbone))
    missing = [t for t in targets if t not in wrapped]
    if missing:
        raise ConfigError(f"PEFT inserted no LoRA layer at {missing[:3]} (of {len(targets)} targets)")
    _check_groups(backbone)


def add_lora(
    backbone: nn.Module,
    rank: int,
    alpha: float,
    dropout: float = 0.0,
    targets: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Insert LoRA adapters into ``backbone`` (in place) and return the record that rebuilds them.

    The adapters start as a zero update (``B = 0``), so the backbone computes exactly what it did.

    Args:
        rank: rank ``r`` of each update.
        alpha: the update is scaled by ``alpha / rank``.
        dropout: dropout on the adapters' input while training.
        targets: module names (or their last parts) to adapt; default :func:`default_targets`.

    Returns:
        ``{"kind": "lora", "rank", "alpha", "dropout", "targets": [full module names], "peft": version}``
        (JSON-able; a bundle stores it and :func:`restore_adapters` reads it).

    Raises:
        ConfigError: no module to adapt, an unknown target, or adapters already present.
    """
    if rank < 1:
        raise ConfigError(f"LoRA rank must be >= 1, got {rank}")
    if has_adapters(backbone):
        raise ConfigError("this backbone already holds LoRA adapters; merge them first (merge_adapters)")
    names = _resolve(backbone, targets) if targets is not None else default_targets(backbone)
    if not names:
        raise ConfigError(unavailable_reason(backbone))
    record = {
        "kind": KIND,
        "rank": int(rank),
        "alpha": float(alpha),
        "dropout": float(dropout),
        "targets": names,
        "peft": _peft_version(),
    }
    _inject(backbone, record)
    return record


def restore_adapters(backbone: nn.Module, record: dict[str, Any]) -> None:
    """Re-insert the adapters described by ``record`` (from :func:`add_lora`) into a freshly built
    ``backbone``, so that a saved state dict (base + adapter weights) loads into it exactly.

    Raises:
        ConfigError: a record of another kind, or targets this backbone does not have.
    """
    if not isinstance(record, dict) or record.get("kind") != KIND:
        kind = record.get("kind") if isinstance(record, dict) else record
        raise ConfigError(f"unknown adapter record of kind {kind!r}; this graft rebuilds {KIND!r} adapters")
    names = {n for n, _ in backbone.named_modules()}
    unknown = [t for t in record["targets"] if t not in names]
    if unknown:
        raise ConfigError(f"the recorded LoRA targets {unknown[:3]} are not modules of the rebuilt backbone")
    _inject(backbone, record)


def has_adapters(backbone: nn.Module) -> bool:
    return bool(_top_adapter_layers(backbone))


def merge_adapters(backbone: nn.Module) -> int:
    """Fold every LoRA update into its base weight and put the plain base layer back (in place).

    The backbone is then an ordinary one, with the state-dict layout of the pretrained architecture
    and the same outputs (up to float rounding). Returns the number of layers merged.
    """
    merged = 0
    for name in _top_adapter_layers(backbone):
        layer = backbone.get_submodule(name)
        if hasattr(layer, "unload_and_optionally_merge_module"):  # MultiheadAttention unloads itself
            plain = layer.unload_and_optionally_merge_module(merge=True, safe_merge=False, adapter_names=None)
        else:
            layer.merge()
            plain = layer.get_base_layer()
        parent, _, leaf = name.rpartition(".")
        setattr(backbone.get_submodule(parent) if parent else backbone, leaf, plain)
        merged += 1
    if "peft_config" in vars(backbone):  # left on the model by inject_adapter_in_model
        del backbone.peft_config
    return merged


def unavailable_reason(backbone: nn.Module) -> str:
    return (
        f"LoRA found no layer to adapt in this {type(backbone).__name__} (no attention projections, "
        "Linear layers or convolutions without groups); use bitfit or partial instead"
    )


def _top_adapter_layers(backbone: nn.Module) -> list[str]:
    """Names of the LoRA layers that are not inside another one (a LoRA MultiheadAttention wraps
    its ``out_proj`` in a LoRA layer of its own)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    names = [n for n, m in backbone.named_modules() if isinstance(m, BaseTunerLayer)]
    return [n for n in names if not any(n.startswith(o + ".") for o in names if o != n)]


def _check_groups(backbone: nn.Module) -> None:
    """Every adapter parameter must belong to exactly one layer group, or no strategy could train it."""
    layer_groups = getattr(backbone, "layer_groups", None)
    if layer_groups is None:
        return
    counts: dict[int, int] = {}
    for group in layer_groups():
        for p in group.params.values():
            counts[id(p)] = counts.get(id(p), 0) + 1
    bad = [n for n, p in backbone.named_parameters() if ".lora_" in n and counts.get(id(p)) != 1]
    if bad:
        raise ConfigError(
            f"{len(bad)} LoRA parameters fall in no layer group or in several (e.g. {bad[:2]}); "
            "give explicit targets"
        )
