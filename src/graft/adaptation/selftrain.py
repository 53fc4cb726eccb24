"""Self-training on confident, class-balanced pseudo-labels."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from graft.adaptation.base import Adapter, Skipped, Target, model_features, refit_head, register_adapter

if TYPE_CHECKING:
    from graft.api import Model

THRESHOLD = 0.9  # a target input is pseudo-labeled only when its top calibrated probability reaches this
MAX_PER_CLASS = 1000


def pseudo_labels(proba: np.ndarray, threshold: float = THRESHOLD) -> tuple[np.ndarray, np.ndarray]:
    """(rows, labels) of the confident predictions, class-balanced: every predicted class that has
    confident rows contributes the same number, its most confident ``k``, where ``k`` is the smallest
    such count (at most :data:`MAX_PER_CLASS`). Balance matters: the classes a shifted model over-predicts
    would otherwise dominate and the refit head would drift further toward them.

    Example:
        >>> p = np.array([[0.95, 0.05], [0.99, 0.01], [0.97, 0.03], [0.08, 0.92], [0.6, 0.4]])
        >>> rows, labels = pseudo_labels(p)
        >>> rows.tolist(), labels.tolist()   # one confident row of class 1: one of class 0, the surest
        ([1, 3], [0, 1])
    """
    confidence, predicted = proba.max(1), proba.argmax(1)
    sure = confidence >= threshold
    classes = [c for c in np.unique(predicted[sure])]
    if not classes:
        return np.zeros(0, dtype=int), np.zeros(0, dtype=int)
    k = min(MAX_PER_CLASS, min(int(np.sum(sure & (predicted == c))) for c in classes))
    rows = []
    for c in classes:
        members = np.flatnonzero(sure & (predicted == c))
        rows.extend(members[np.argsort(-confidence[members], kind="stable")[:k]].tolist())
    rows = np.sort(np.asarray(rows, dtype=int))
    return rows, predicted[rows]


class SelfTraining(Adapter):
    """Self-training: the model labels the target inputs it is sure of (top calibrated probability
    >= 0.9), class-balanced, and its head is refit on them together with the labeled source data (when
    known) on the backbone's features.

    When it helps: the source model is already right on most of the target and its confident
    predictions are nearly always right, so the pseudo-labels teach the head where the target's classes
    lie. When it hurts: confident mistakes are common (a large shift), and they are learned as truth.
    Multiclass only.
    """

    name = "self_training"

    def applies(self, model: Model, target: Target) -> str | None:
        if model.task != "multiclass":
            return f"pseudo-labels need a multiclass model, this one is {model.task}"
        return None

    def adapt(self, model: Model, target: Target) -> Model:
        head = model.network_.head
        x_t = model_features(model, target.examples, target, "target")
        proba = head.activate(head_outputs_of(model, x_t)).numpy()
        rows, labels = pseudo_labels(proba)
        target.say(
            f"self_training: {len(rows)} confident, class-balanced pseudo-labels of {len(proba)} inputs"
        )
        if len(np.unique(labels)) < 2:
            raise Skipped(f"confident pseudo-labels of fewer than two classes ({len(rows)} rows)")
        x, y = x_t[torch.as_tensor(rows)], labels
        if target.source is not None:
            x_s = model_features(model, target.source.examples, target, "source")
            x, y = torch.cat([x_s, x]), np.concatenate([target.source.targets, y])
        return refit_head(model, x, y, target.seed)


class ContrastivePseudo(Adapter):
    """The encoder itself tuned toward the target: supervised contrastive tuning (graft's
    ``contrastive`` strategy, SetFit-style) on the labeled source data and the target's confident,
    class-balanced pseudo-labels together, then the head refit on the tuned features of both.

    When it helps: text (or any encoder) whose target inputs use other words or styles for the same
    classes, so that moving target examples next to source examples of their class reshapes the
    features. When it hurts: as self-training, when confident mistakes are common; and it costs a
    fine-tuning run (40 steps). Multiclass; uses the source data when known.
    """

    name = "contrastive"

    def applies(self, model: Model, target: Target) -> str | None:
        return SelfTraining().applies(model, target)

    def adapt(self, model: Model, target: Target) -> Model:
        from graft.adaptation.base import copy_model
        from graft.config import StrategyConfig
        from graft.contrastive import tune_body
        from graft.features import extract_features
        from graft.strategies.contrastive import BATCH_SIZE, LR, TEMPERATURE

        head = model.network_.head
        x_t = model_features(model, target.examples, target, "target")
        rows, labels = pseudo_labels(head.activate(head_outputs_of(model, x_t)).numpy())
        if len(np.unique(labels)) < 2:
            raise Skipped(f"confident pseudo-labels of fewer than two classes ({len(rows)} rows)")
        examples = [target.examples[i] for i in rows]
        targets = labels.tolist()
        if target.source is not None:  # at most twice as many source rows: the target must weigh
            rng = np.random.default_rng(target.seed)
            keep = rng.permutation(len(target.source))[: 2 * len(rows)]
            examples = [target.source.examples[i] for i in keep] + examples
            targets = target.source.targets[keep].tolist() + targets
        tuned = copy_model(model)
        steps = StrategyConfig().contrastive_steps
        tune_body(tuned.network_.backbone, examples, targets, steps=steps, lr=LR, batch_size=BATCH_SIZE,
                  temperature=TEMPERATURE, seed=target.seed, progress=target.progress)  # fmt: skip
        x = extract_features(
            tuned.network_.backbone, examples, progress=target.progress, desc="tuned features"
        )
        adapted = refit_head(tuned, x, np.asarray(targets), target.seed)
        adapted.manifest_["strategy"] = {**adapted.manifest_["strategy"], "frozen_backbone": False}
        return adapted


def head_outputs_of(model: Model, features: torch.Tensor) -> torch.Tensor:
    """The model's head on features, calibrated with its temperature where it has one."""
    from graft.evaluation.calibration import scale
    from graft.evaluation.outputs import head_outputs

    return scale(head_outputs(model.network_.head, features), model.manifest_.get("calibration"))


register_adapter(SelfTraining())
register_adapter(ContrastivePseudo())
