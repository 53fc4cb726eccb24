"""Baselines trained beside the shipped model on the same protocol, so the report can say what
transfer bought.

* **prior** (always): chance for the training class distribution; no training (see
  :mod:`graft.evaluation.comparison`).
* **linear_probe** (``--baselines cheap`` and up): the frozen pretrained backbone with a linear head,
  its L2 chosen on the same folds and refit on the same training rows — the recipe of
  ``--strategy linear_probe``. When the shipped model *is* the probe, its predictions serve.
* **scratch** (``--baselines all``; ``auto`` within :func:`scratch_budget`): the same network from
  random weights, trained with settings fit for training from scratch (see :func:`scratch_config`).
  How long it trains, and under ``auto`` whether it trains at all, is decided from counted operations
  (:meth:`Workbench.step_flops`), never from a timing: two identical runs train it alike on a fast and
  on a loaded machine.

Each trained baseline is scored on the test rows with intervals, and compared with the shipped model
on the same rows (a paired interval of the difference). A skipped baseline is recorded with the
reason.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np

from graft.evaluation import evaluate_predictions
from graft.evaluation.comparison import paired_difference

if TYPE_CHECKING:
    from graft.config import RunConfig
    from graft.evaluation import EvaluationResult
    from graft.protocols import Protocol
    from graft.recipe import Trained, Workbench
    from graft.strategies.auto import Choice


def baseline_predictions(
    bench: Workbench, protocol: Protocol, choice: Choice
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Train the requested baselines on ``protocol`` and predict its test rows: (predictions by
    baseline, what was run or skipped and why). ``choice``: the recipe of the model they are compared
    with (the scratch network's budget under ``auto`` is that recipe's cost)."""
    level = bench.cfg.evaluation.baselines
    record: dict[str, Any] = {"level": level}
    predictions: dict[str, np.ndarray] = {}
    if level == "none":
        return predictions, record
    t = time.perf_counter()
    if choice.strategy.name == "linear_probe":
        record["linear_probe"] = "not trained again: the shipped model is the linear probe"
    else:
        predictions["linear_probe"] = _train_and_predict(bench, protocol, "linear_probe")
        record["linear_probe"] = "trained"
        bench.timings["baseline linear_probe"] = time.perf_counter() - t
    if level in ("auto", "all"):
        t_scratch = time.perf_counter()
        scratch, record["scratch"] = _scratch(bench, protocol, choice, level)
        if scratch is not None:
            predictions["scratch"] = scratch
            bench.timings["baseline scratch"] = time.perf_counter() - t_scratch
    elif level == "cheap":
        record["scratch"] = "not trained (--baselines cheap)"
    bench.timings["baselines"] = bench.timings.get("baselines", 0.0) + time.perf_counter() - t
    return predictions, record


def score_baselines(
    bench: Workbench,
    targets: np.ndarray,
    predicted: np.ndarray,
    baselines: dict[str, np.ndarray],
    result: EvaluationResult,
) -> None:
    """Each baseline's scores with intervals, and its paired comparison with the model's
    ``predicted`` on the same rows, into ``result``."""
    seed = bench.cfg.train.seed
    for name, baseline in baselines.items():
        scored = evaluate_predictions(bench.task, targets, baseline, bench.label_space, seed=seed)
        result.baselines[name] = scored.metrics
        result.baseline_intervals[name] = scored.intervals
        result.comparisons[name] = paired_difference(
            bench.task, targets, predicted, baseline, len(bench.label_space), seed=seed
        )
        if name == "scratch" and bench.task != "regression" and len(np.unique(baseline, axis=0)) == 1:
            result.notes.append(
                "the network trained from scratch answers the same for every test row: it did not learn "
                "within its budget, so the transfer gain is a gain over a no-skill model here, not over a "
                "trained one"
            )


def _train_and_predict(bench: Workbench, protocol: Protocol, strategy: str) -> np.ndarray:
    from graft.recipe import train_final
    from graft.strategies.auto import choose

    bench.say(f"baseline: {strategy}")
    choice = choose(bench, protocol, strategy)
    trained: Trained = train_final(bench, protocol, choice)
    return bench.predict(trained, protocol.test, f"baseline {strategy}: scoring test set")


# The from-scratch network gets at least this many epochs, or (under auto) is not trained at all.
MIN_SCRATCH_EPOCHS = 3
SCRATCH_MAX_EPOCHS = 30  # graft pretrain's default
SCRATCH_MIN_SECONDS = 60.0
# Floating-point operations per second of a reference machine, which turns counted operations into
# "reference seconds": the 2-core CPU graft is developed on, where a training step (forward, backward,
# AdamW) reached 16-24 GFLOP/s for MiniLM on SST-2 sentences, 12-14 for ResNet-20 on 32 px images and
# 1 for the tests' 2-layer, 32-wide BERT (batches of 16 and 64, under load). 10 GFLOP/s keeps the
# scratch rule's outcome on typical tasks where the timed rule it replaced put it (that rule added a
# third to a timed step for validation and data loading), on the cautious side: a MiniLM epoch reads
# ~1.5x, a ResNet-20 epoch ~1.2x what that rule measured here; tiny networks, dominated by per-step
# overhead rather than arithmetic, read faster than they run.
REFERENCE_FLOPS_PER_SECOND = 1e10
REFERENCE = "on a reference 2-core CPU"


def scratch_config(cfg: RunConfig, epochs: int) -> RunConfig:
    """Settings fit for training from scratch: those of ``graft pretrain`` (every layer at lr 2e-3,
    batch 64, patience 6, light weight decay; measured for training graft's architectures from random
    weights), a random head, BatchNorm statistics trained; ``epochs`` at most its 30."""
    import dataclasses

    from graft.config import pretrain_defaults

    train = dataclasses.replace(
        pretrain_defaults().train, epochs=min(epochs, SCRATCH_MAX_EPOCHS), seed=cfg.train.seed,
        augment=cfg.train.augment, mixed_precision=cfg.train.mixed_precision, workers=cfg.train.workers,
        class_weight=cfg.train.class_weight, batching=cfg.train.batching,
    )  # fmt: skip
    strategy = dataclasses.replace(
        cfg.strategy, kind="full", head_init="random", bn_stats="train", unfreeze_top=None, layer_lr_decay=1.0
    )
    return dataclasses.replace(cfg, train=train, strategy=strategy)


def recipe_seconds(bench: Workbench, protocol: Protocol, choice: Choice) -> float:
    """Reference seconds of the model's own recipe, from counted operations: a frozen backbone's one
    forward pass over the rows it chooses on (the features; the probe fits on them in seconds); a
    trained one's trainings as configured (one per fold, and the refit after k folds), each ``--epochs``
    passes over the rows forward and backward (or the strategy's own amount of work, e.g. contrastive
    steps). The same estimate on every machine, as :func:`graft.strategies.auto.expected_seconds`
    makes it in measured seconds."""
    strategy, data = choice.strategy, protocol.choose_on
    flops = bench.step_flops(data)
    if strategy.frozen_backbone:
        return len(data) * flops.forward / REFERENCE_FLOPS_PER_SECOND
    folds = min(len(protocol.folds), getattr(strategy, "max_folds", len(protocol.folds)))
    trainings = folds + (1 if protocol.kfold else 0)
    work = getattr(strategy, "examples_per_training", None)
    examples = work(bench, len(data)) if work else bench.cfg.train.epochs * len(data)
    cost = trainings * examples * flops.train * getattr(strategy, "relative_cost", 1.0)
    return cost / REFERENCE_FLOPS_PER_SECOND


def scratch_budget(bench: Workbench, protocol: Protocol, choice: Choice) -> float:
    """Reference seconds the from-scratch network may train under ``--baselines auto``: what the
    model's own recipe costs (:func:`recipe_seconds`; at least a minute), within ``--budget``. A
    20-second probe fit does not grow into a 10-minute one by default; a fine-tune's baseline gets what
    the fine-tune got. Both sides are counted operations, not timings: a loaded machine that makes the
    model slower would otherwise change the baseline, and with it the report."""
    return min(
        bench.cfg.strategy.budget_seconds, max(SCRATCH_MIN_SECONDS, recipe_seconds(bench, protocol, choice))
    )


def _scratch(
    bench: Workbench, protocol: Protocol, choice: Choice, level: str
) -> tuple[np.ndarray | None, str]:
    """The same network from random weights, trained on the first fold's training part with early
    stopping on its validation part, for as many epochs (<= 30) as fit :func:`scratch_budget` (under
    ``all``: ``--budget``, at least 3), an epoch costing its counted operations."""
    from graft.recipe import Workbench
    from graft.strategies import get_strategy
    from graft.strategies.auto import duration_text

    if not bench.pretrained:
        return None, "not trained: the model itself starts from random weights"
    data = protocol.choose_on
    train_idx, val_idx = protocol.folds[0]
    train, val = data.subset(train_idx), data.subset(val_idx)
    flops = bench.step_flops(data)
    per_epoch = (len(train) * flops.train + len(val) * flops.forward) / REFERENCE_FLOPS_PER_SECOND
    budget = scratch_budget(bench, protocol, choice) if level == "auto" else bench.cfg.strategy.budget_seconds
    epochs = min(SCRATCH_MAX_EPOCHS, int(budget // max(per_epoch, 1e-9)))
    if epochs < MIN_SCRATCH_EPOCHS:
        if level == "auto":
            return None, (
                f"not trained: an epoch from scratch takes ~{duration_text(per_epoch)} {REFERENCE}; "
                f"{MIN_SCRATCH_EPOCHS} do not fit in {duration_text(budget)} (what the model's own training "
                "takes there, at least a minute, within --budget); --baselines all trains it anyway"
            )
        epochs = MIN_SCRATCH_EPOCHS
    bench.say(
        f"baseline: the same network from scratch, up to {epochs} epochs on {len(train)} examples (early "
        f"stopping on {len(val)}; expected <= {duration_text(max(1.0, epochs * per_epoch))} {REFERENCE})"
    )
    scratch = Workbench(
        bench.backbone.random_copy(bench.cfg.train.seed), scratch_config(bench.cfg, epochs), bench.task,
        bench.label_space, progress=bench.progress, metric=bench.metric_name,
    )  # fmt: skip
    trained = get_strategy("full").train(scratch, train, val, {})
    predicted = scratch.predict(trained, protocol.test, "baseline scratch: scoring test set")
    best = trained.best_epoch
    return predicted, f"trained: {len(trained.history)} of up to {epochs} epochs, best epoch {best}"
