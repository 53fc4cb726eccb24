"""``linear_probe``: the backbone stays frozen; only a linear head is fitted, on cached features."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from graft.strategies import register_strategy
from graft.strategies.base import Strategy

if TYPE_CHECKING:
    from graft.data import Dataset
    from graft.recipe import Selection, Trained, Workbench


class LinearProbe(Strategy):
    """Helps with few labels, and is the baseline every other strategy must beat: the pretrained
    features are what transfer buys, and a linear head on them cannot overfit much. Features are
    computed once and cached; the head is solved exactly (scikit-learn's solvers), with its L2 strength
    chosen by cross-validation on the training examples. Seconds, even on a CPU."""

    name = "linear_probe"
    frozen_backbone = True
    summary = "frozen backbone; a linear head fitted on cached features, L2 chosen by cross-validation"

    def select(self, bench: Workbench, train: Dataset, folds: list[Any]) -> Selection:
        return bench.select_probe(self, train, folds)

    def train(
        self, bench: Workbench, train: Dataset, val: Dataset | None, settings: dict[str, Any]
    ) -> Trained:
        return bench.fit_probe(self, train, val, settings)


register_strategy(LinearProbe())
