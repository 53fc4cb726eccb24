"""The test estimate of a fit: the shipped model scored on its held-out rows, or, on small data
without a test file, the **cross-validated estimate** (every labeled row scored by a model that the
whole recipe, choice included, trained without it).

Both paths produce the same things: calibrated probabilities of the scored rows, the baselines'
predictions of those rows, and from them one :class:`EvaluationResult` (metrics with intervals,
baselines and paired gains, calibration, abstaining, error analysis). The temperature and the
abstain threshold that *ship* are fitted on the out-of-fold outputs of the final recipe; the scored
rows only measure them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from graft.baselines import baseline_predictions, score_baselines
from graft.evaluation.calibration import calibration_report, fit_calibration, scale
from graft.evaluation.costs import cost_report

if TYPE_CHECKING:
    from graft.data import Dataset
    from graft.evaluation import EvaluationResult
    from graft.protocols import Protocol
    from graft.recipe import Trained, Workbench
    from graft.strategies.auto import Choice


@dataclass
class Scored:
    """A model's activated outputs on scored rows: without and with its temperature."""

    before: np.ndarray
    after: np.ndarray
    calibration: dict[str, Any] | None


def temperature(bench: Workbench, protocol: Protocol, choice: Choice) -> dict[str, Any] | None:
    """The temperature of the recipe's model, fitted on its out-of-fold outputs (multiclass)."""
    sel = choice.selection
    oof = sel.oof if sel is not None else None
    return fit_calibration(bench.task, oof, protocol.choose_on.targets, sel.how if sel else "")


def score(bench: Workbench, protocol: Protocol, choice: Choice, trained: Trained, rows: Dataset) -> Scored:
    """``trained`` on ``rows``, with the temperature fitted on its recipe's out-of-fold outputs."""
    head = trained.network.head
    logits = bench.outputs(trained, rows, "scoring test set")
    calibration = temperature(bench, protocol, choice)
    before = head.activate(logits).numpy()
    return Scored(before, head.activate(scale(logits, calibration)).numpy(), calibration)


def held_out(
    bench: Workbench, protocol: Protocol, choice: Choice, trained: Trained, spent: float
) -> tuple[EvaluationResult, dict[str, Any]]:
    """The shipped model and the baselines on the protocol's test rows: (result, baselines record)."""
    scored = score(bench, protocol, choice, trained, protocol.test)
    train_targets = protocol.final_data(trained.frozen_backbone)[0].targets
    baselines, record = baseline_predictions(bench, protocol, choice, spent)
    result = evaluate(bench, protocol, choice, trained, scored, protocol.test, train_targets, baselines)
    return result, record


def cross_validated(
    bench: Workbench, protocol: Protocol, choice: Choice, trained: Trained, spent: float
) -> tuple[EvaluationResult, dict[str, Any]]:
    """The cross-validated estimate: per outer fold, the whole recipe (``choose`` included) and the
    baselines on the other folds, scoring this fold's rows; then one evaluation over every row."""
    from graft.protocols import make_protocol
    from graft.recipe import train_final
    from graft.strategies.auto import choose

    pool, cfg = protocol.pool, bench.cfg
    n, k = len(pool), len(protocol.outer)
    before = after = None
    baselines: dict[str, np.ndarray] = {}
    record: dict[str, Any] = {}
    chosen: list[str] = []
    with bench.without_checkpoints():
        for i, (train_idx, test_idx) in enumerate(protocol.outer):
            bench.say(f"cross-validated estimate: outer fold {i + 1} of {k} ({len(test_idx)} rows scored)")
            inner = make_protocol(
                pool.subset(train_idx), test=pool.subset(test_idx), folds=cfg.data.folds, seed=cfg.train.seed,
                val=protocol.val if protocol.user_val else None,  # a --val file chooses in every fold
            )  # fmt: skip
            fold_choice = choose(bench, inner, cfg.strategy.kind)
            fold_model = train_final(bench, inner, fold_choice)
            scored = score(bench, inner, fold_choice, fold_model, inner.test)
            if before is None:
                before, after = (
                    np.zeros((n, *scored.before.shape[1:])),
                    np.zeros((n, *scored.after.shape[1:])),
                )
            before[test_idx], after[test_idx] = scored.before, scored.after
            preds, record = baseline_predictions(bench, inner, fold_choice, spent / k)
            for name, pred in preds.items():
                baselines.setdefault(name, np.zeros((n, *pred.shape[1:]), dtype=pred.dtype))[test_idx] = pred
            chosen.append(fold_choice.strategy.name)
    record["strategy per outer fold"] = chosen
    pooled = Scored(before, after, temperature(bench, protocol, choice))  # the shipped model's temperature
    result = evaluate(bench, protocol, choice, trained, pooled, pool, pool.targets, baselines)
    result.split = f"{k}-fold cross-validated"
    return result, record


def evaluate(
    bench: Workbench,
    protocol: Protocol,
    choice: Choice,
    trained: Trained,
    scored: Scored,
    rows: Dataset,
    train_targets: np.ndarray,
    baselines: dict[str, np.ndarray],
) -> EvaluationResult:
    """One evaluation of scored rows: metrics, baselines and gains, calibration, abstaining, errors."""
    from graft.evaluation.abstain import abstain_report
    from graft.evaluation.errors import error_analysis
    from graft.evaluation.outputs import predicted_targets

    task, targets = bench.task, rows.targets
    result = bench.evaluate(scored.after, rows, train_targets)
    predicted = predicted_targets(task, scored.after)
    score_baselines(bench, targets, predicted, baselines, result)
    if scored.calibration:
        result.calibration = calibration_report(scored.calibration, scored.before, scored.after, targets)
    if task == "multiclass":
        head, sel = trained.network.head, choice.selection
        oof = sel.oof if sel is not None else None
        oof_proba = None if oof is None else head.activate(scale(oof[1], scored.calibration)).numpy()
        oof_targets = None if oof is None else protocol.choose_on.targets[oof[0]]
        target = bench.cfg.evaluation.target_precision
        result.abstain = abstain_report(target, oof_proba, oof_targets, scored.after, targets)
        result.errors = error_analysis(rows.examples, targets, scored.after, bench.label_space)
        if bench.costs is not None:
            prior = np.bincount(train_targets, minlength=len(bench.label_space)) / max(len(train_targets), 1)
            result.costs = cost_report(bench.costs, scored.after, targets, prior, seed=bench.cfg.train.seed)
    return result
