"""What every backbone exposes: a contract, a feature size, ordered layer groups, preprocessing.

A backbone is a pretrained network minus its output layer. Whatever its source (packaged MiniLM, a
Hugging Face folder, later timm/torchvision or a user's module), the rest of graft sees only this
surface, the way timm gives every model ``forward_features`` and ``group_matcher``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from graft.errors import ContractError

MODALITIES = ("text", "image", "audio")


@dataclass(frozen=True)
class Contract:
    """What inputs a backbone (and any model built on it) accepts.

    Attributes:
        modality: the input type the backbone was pretrained on.
        preprocessing: everything that turns a raw input into tensors (tokenizer identity,
            max_length, pooling, normalisation); part of the feature-cache key.
    """

    modality: str
    preprocessing: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"modality": self.modality, "preprocessing": dict(self.preprocessing)}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Contract:
        return cls(modality=raw["modality"], preprocessing=dict(raw.get("preprocessing", {})))


def check_modality(data_modality: str, contract: Contract, backbone_name: str, data_source: str) -> None:
    """Refuse data of another input type before any work is done."""
    if data_modality != contract.modality:
        article = "an" if data_modality[:1] in "aeiou" else "a"
        raise ContractError(
            f"modality mismatch: backbone {backbone_name!r} was pretrained on {contract.modality} but "
            f"{data_source} holds {data_modality}; choose {article} {data_modality} backbone "
            "(see `graft backbones`)"
        )


@dataclass(frozen=True)
class LayerGroup:
    """A named slice of the backbone's parameters: the unit of freezing and of per-group learning rates."""

    name: str
    params: dict[str, nn.Parameter]

    def __len__(self) -> int:
        return len(self.params)


class Backbone(nn.Module):
    """Base class of every backbone.

    Subclasses set ``source`` (the registry spec it was created from), ``contract`` and
    ``feature_dim`` and implement :meth:`layer_groups`, :meth:`preprocess`, :meth:`forward`,
    :meth:`save_architecture` and :meth:`spec`.
    """

    source: str
    contract: Contract
    feature_dim: int
    # False for an architecture built with random weights (``arch:NAME`` without --weights)
    pretrained: bool = True

    def layer_groups(self) -> list[LayerGroup]:
        """Parameters in ordered groups, input side first; every parameter in exactly one group."""
        raise NotImplementedError

    def preprocess(self, examples: list[Any]) -> dict[str, torch.Tensor]:
        """Raw examples -> a batch of tensors for :meth:`forward`."""
        raise NotImplementedError

    def preprocessor(self, augment: str = "none") -> Any:
        """A picklable ``examples -> batch`` callable for DataLoader workers.

        Image and audio backbones return a small preprocessing object without the model (``augment``
        applies while fine-tuning); text backbones tokenise in the main process and return
        :meth:`preprocess` itself.
        """
        return self.preprocess

    @property
    def streams_files(self) -> bool:
        """Whether examples are files decoded batch by batch (images, audio) rather than texts."""
        return self.contract.modality != "text"

    @staticmethod
    def from_module(module: nn.Module, **kwargs: Any) -> Backbone:
        """Any PyTorch network as a backbone; see :func:`graft.backbones.module.from_module`.

        Example:
            >>> bb = graft.Backbone.from_module(resnet, modality="image", input_size=(3, 32, 32),
            ...                                 mean=MEAN, std=STD, head="linear")  # doctest: +SKIP
        """
        from graft.backbones.module import from_module

        return from_module(module, **kwargs)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def onnx_axes(self, batch: dict[str, torch.Tensor]) -> dict[str, dict[int, str]]:
        """The dynamic axes of each input tensor in an exported graph: the batch, and the sequence of
        text tensors."""
        text = self.contract.modality == "text"
        return {
            k: ({0: "batch", 1: "sequence"} if text and v.dim() > 1 else {0: "batch"})
            for k, v in batch.items()
        }

    def count_truncated(self, examples: list[Any]) -> int:
        """How many examples preprocessing would cut short (0 where nothing is truncated)."""
        return 0

    def unreadable(self, examples: list[Any]) -> dict[int, str]:
        """The examples in which preprocessing finds nothing to read (index -> why), e.g. a text whose
        every token is unknown to the tokenizer: the network would see the same input for each of them,
        whatever it said. Empty where every example can be read."""
        return {}

    def spec(self) -> dict[str, Any]:
        """JSON-able description from which the registry rebuilds this backbone out of a bundle."""
        raise NotImplementedError

    def save_architecture(self, folder: Path) -> None:
        """Write what rebuilding the architecture needs (configs, tokenizer files), not the weights."""
        raise NotImplementedError

    def weights_sha256(self) -> str:
        """sha256 over the backbone's weights as they are now (names, dtypes, shapes and bytes)."""
        return state_sha256(self.state_dict())

    def random_copy(self, seed: int = 0) -> Backbone:
        """The same architecture with fresh random weights (the from-scratch baseline): every layer's
        own initialisation (``reset_parameters``), then a Hugging Face model's ``_init_weights`` where
        there is one, so a transformer starts as its authors initialise it. The copy is marked
        ``pretrained = False``; this backbone is untouched."""
        import copy

        clone = copy.deepcopy(self)
        torch.manual_seed(seed)
        for module in clone.modules():
            reset = getattr(module, "reset_parameters", None)
            if callable(reset) and module is not clone:
                reset()
        for module in clone.modules():
            init = getattr(module, "_init_weights", None)
            if callable(init) and hasattr(module, "config") and module is not clone:
                module.apply(init)  # transformers.PreTrainedModel: normal(0, initializer_range), ...
                break
        clone.pretrained = False
        return clone


def state_sha256(state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().to("cpu").contiguous()
        h.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        h.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return h.hexdigest()


def groups_from_blocks(module: nn.Module, blocks_prefix: str, n_blocks: int) -> list[LayerGroup]:
    """Layer groups for a network built as embeddings -> N blocks -> final layers.

    Parameters registered before the blocks go to ``embeddings``, those inside block i to
    ``layer.i`` and those after to ``final`` (groups without parameters are left out).
    """
    before: dict[str, nn.Parameter] = {}
    blocks: list[dict[str, nn.Parameter]] = [{} for _ in range(n_blocks)]
    after: dict[str, nn.Parameter] = {}
    seen_blocks = False
    for name, param in module.named_parameters():
        if name.startswith(blocks_prefix + "."):
            index = int(name[len(blocks_prefix) + 1 :].split(".", 1)[0])
            blocks[index][name] = param
            seen_blocks = True
        elif seen_blocks:
            after[name] = param
        else:
            before[name] = param
    groups = [LayerGroup("embeddings", before)] if before else []
    groups += [LayerGroup(f"layer.{i}", p) for i, p in enumerate(blocks) if p]
    if after:
        groups.append(LayerGroup("final", after))
    return groups


def find_block_list(module: nn.Module) -> tuple[str, int]:
    """The largest ``nn.ModuleList`` of same-typed blocks: a transformer's layer stack."""
    best: tuple[str, int] = ("", 0)
    for name, child in module.named_modules():
        if isinstance(child, nn.ModuleList) and len(child) > best[1]:
            kinds = {type(c) for c in child}
            if len(kinds) == 1:
                best = (name, len(child))
    return best
