"""Task heads: the new output layer for the user's task, with its loss and output activation.

Every head standardises its input features with fixed statistics (set once from training
features), so one learning rate and one weight-decay grid suit any backbone's feature scale. The
regression head also standardises its target and maps predictions back.

Example:
    >>> import torch
    >>> head = make_head("multiclass", in_dim=8, n_outputs=3)
    >>> head.activate(head(torch.zeros(2, 8))).shape
    torch.Size([2, 3])
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


class Head(nn.Module):
    """Standardise -> dropout -> linear. Subclasses define the loss and the activation.

    ``class_weight`` (set by :meth:`set_class_weight`, ``--class-weight balanced``) weighs the training
    loss; it is a training setting, not part of the saved head.
    """

    task: str = ""
    class_weight: torch.Tensor | None = None

    def __init__(self, in_dim: int, n_outputs: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.register_buffer("input_mean", torch.zeros(in_dim))
        self.register_buffer("input_scale", torch.ones(in_dim))
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(in_dim, n_outputs)

    @torch.no_grad()
    def set_input_stats(self, features: torch.Tensor) -> None:
        """Fix the standardisation from (a sample of) training features."""
        features = features.float()
        self.input_mean.copy_(features.mean(0))
        self.input_scale.copy_(features.std(0, unbiased=False).clamp(min=1e-6))

    def set_class_weight(self, targets: Any) -> None:
        """Weigh the loss so that every class (multilabel: each label's positives and negatives) counts
        as much in total as in a balanced training set: :func:`balanced_weights` of ``targets``."""
        self.class_weight = balanced_weights(self.task, targets, self.linear.out_features)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = (features.to(self.input_mean.dtype) - self.input_mean) / self.input_scale
        return self.linear(self.dropout(x))

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def activate(self, outputs: torch.Tensor) -> torch.Tensor:
        """Raw outputs -> probabilities (classification) or values (regression)."""
        raise NotImplementedError


class MulticlassHead(Head):
    task = "multiclass"

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        weight = None if self.class_weight is None else self.class_weight.to(outputs.device)
        return F.cross_entropy(outputs.float(), targets.long(), weight=weight)

    def activate(self, outputs: torch.Tensor) -> torch.Tensor:
        return outputs.float().softmax(-1)


class MultilabelHead(Head):
    task = "multilabel"

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        weight = None
        if self.class_weight is not None:  # [2, labels]: negatives' weights, then positives'
            w = self.class_weight.to(outputs.device)
            weight = torch.where(targets > 0.5, w[1], w[0])
        return F.binary_cross_entropy_with_logits(outputs.float(), targets.float(), weight=weight)

    def activate(self, outputs: torch.Tensor) -> torch.Tensor:
        return outputs.float().sigmoid()


class RegressionHead(Head):
    task = "regression"

    def __init__(self, in_dim: int, n_outputs: int = 1, dropout: float = 0.0) -> None:
        super().__init__(in_dim, n_outputs, dropout)
        self.register_buffer("target_mean", torch.zeros(()))
        self.register_buffer("target_scale", torch.ones(()))

    @torch.no_grad()
    def set_target_stats(self, targets: torch.Tensor) -> None:
        targets = targets.float()
        self.target_mean.copy_(targets.mean())
        self.target_scale.copy_(targets.std(unbiased=False).clamp(min=1e-6))

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        scaled = (targets.float() - self.target_mean) / self.target_scale
        return F.mse_loss(outputs.float().squeeze(-1), scaled)

    def activate(self, outputs: torch.Tensor) -> torch.Tensor:
        return outputs.float().squeeze(-1) * self.target_scale + self.target_mean


_HEADS: dict[str, type[Head]] = {
    "multiclass": MulticlassHead,
    "multilabel": MultilabelHead,
    "regression": RegressionHead,
}


def balanced_weights(task: str, targets: Any, n_outputs: int) -> torch.Tensor:
    """scikit-learn's ``class_weight="balanced"``: ``n / (k * n_c)`` for each of the ``k`` classes
    present (an absent class: 1), so the weights sum to ``n`` over the rows. Multilabel ``[2, labels]``:
    ``n / (2 n_neg)`` and ``n / (2 n_pos)`` per label (1 where a label is all one value).

    Example:
        >>> [round(w, 4) for w in balanced_weights("multiclass", [0, 0, 0, 1], 2).tolist()]
        [0.6667, 2.0]
    """
    y = torch.as_tensor(np.asarray(targets))
    n = len(y)
    if task == "multiclass":
        counts = torch.bincount(y.long(), minlength=n_outputs).double()
        present = int((counts > 0).sum())
        weight = torch.where(counts > 0, n / (present * counts.clamp(min=1)), torch.ones_like(counts))
        return weight.float()
    if task == "multilabel":
        pos = y.double().sum(0)
        counts = torch.stack([n - pos, pos])
        both = (counts > 0).all(0)
        weight = torch.where(both, n / (2 * counts.clamp(min=1)), torch.ones_like(counts))
        return weight.float()
    raise ValueError(f"class weights apply to multiclass and multilabel tasks, not {task!r}")


def make_head(task: str, in_dim: int, n_outputs: int, dropout: float = 0.0) -> Head:
    """The head for ``task``: ``n_outputs`` is the number of classes (1 for regression)."""
    try:
        cls = _HEADS[task]
    except KeyError:
        raise ValueError(f"unknown task {task!r}; expected one of {sorted(_HEADS)}") from None
    return cls(in_dim, n_outputs, dropout)


class TaskModel(nn.Module):
    """Backbone + head: batch -> raw outputs. The unit the strategies and the engine work on."""

    def __init__(self, backbone: nn.Module, head: Head) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.head(self.backbone(batch))
