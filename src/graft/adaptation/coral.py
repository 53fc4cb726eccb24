"""CORAL: source features re-coloured with the target's covariance, the head refit on them."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from graft.adaptation.base import Adapter, Target, model_features, refit_head, register_adapter

if TYPE_CHECKING:
    from graft.api import Model


def coral_transform(source: torch.Tensor, target: torch.Tensor, ridge: float = 1.0) -> torch.Tensor:
    """Source features whitened with their own covariance and re-coloured with the target's (Sun,
    Feng & Saenko 2016: ``Cs^-1/2 Ct^1/2``, each covariance + ``ridge`` * I), and moved to the target's
    mean: a linear map after which the source features have the target's first and second moments.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> s, t = torch.randn(500, 3, generator=g), 3 * torch.randn(800, 3, generator=g) + 1
        >>> moved = coral_transform(s, t, ridge=0.0)
        >>> torch.allclose(torch.cov(moved.T), torch.cov(t.T), atol=1e-3)
        True
    """
    s, t = source.double(), target.double()
    eye = torch.eye(s.shape[1], dtype=torch.float64)
    cs, ct = torch.cov(s.T) + ridge * eye, torch.cov(t.T) + ridge * eye
    moved = (s - s.mean(0)) @ _matrix_power(cs, -0.5) @ _matrix_power(ct, 0.5) + t.mean(0)
    return moved.to(source.dtype)


def _matrix_power(matrix: torch.Tensor, power: float) -> torch.Tensor:
    values, vectors = torch.linalg.eigh(matrix)
    return vectors @ torch.diag(values.clamp(min=1e-12) ** power) @ vectors.T


class Coral(Adapter):
    """CORAL (correlation alignment; Sun et al. 2016): the labeled source data's features are given the
    target features' mean and covariance, and the head is refit on them with the source labels; the
    backbone does not change.

    When it helps: the shift moves and stretches the feature cloud as a whole (another sensor, another
    writing style) while the classes keep their arrangement. When it hurts: few target inputs (the
    covariance of hundreds of dimensions needs many more than that), or class proportions that differ
    between the domains (the covariance then mixes both). Needs the labeled source data.
    """

    name = "coral"
    needs_source = True

    def adapt(self, model: Model, target: Target) -> Model:
        assert target.source is not None
        x_s = model_features(model, target.source.examples, target, "source")
        x_t = model_features(model, target.examples, target, "target")
        return refit_head(model, coral_transform(x_s, x_t), target.source.targets, target.seed)


register_adapter(Coral())
