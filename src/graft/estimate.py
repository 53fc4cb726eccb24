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
from graft.evaluation.thresholds import choose_thresholds

if TYPE_CHECKING:
    from graft.data import Dataset
    from graft.evaluation import EvaluationResult
    from graft.protocols import Protocol
    from graft.recipe import Trained, Workbench
    from graft.strategies.auto import Choice


@dataclass
class Scored:
    """A model's activated outputs on scored rows: without and with its temperature; multilabel: the
    label thresholds its recipe chose (``cut``: ``[labels]``, or ``[rows, labels]`` when the rows were
    scored by several models, each with its own)."""

    before: np.ndarray
    after: np.ndarray
    calibration: dict[str, Any] | None
    thresholds: dict[str, Any] | None = None
    cut: np.ndarray | None = None


def temperature(bench: Workbench, protocol: Protocol, choice: Choice) -> dict[str, Any] | None:
    """The temperature of the recipe's model, fitted on its out-of-fold outputs (multiclass)."""
    sel = choice.selection
    oof = sel.oof if sel is not None else None
    return fit_calibration(bench.task, oof, protocol.choose_on.targets, sel.how if sel else "")


def out_of_fold(
    trained: Trained, protocol: Protocol, choice: Choice, calibration: dict[str, Any] | None
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(activated, targets) of the recipe's out-of-fold outputs, calibrated; ``None`` s without them."""
    sel = choice.selection
    oof = sel.oof if sel is not None else None
    if oof is None:
        return None, None
    proba = trained.network.head.activate(scale(oof[1], calibration)).numpy()
    return proba, protocol.choose_on.targets[oof[0]]


def score(bench: Workbench, protocol: Protocol, choice: Choice, trained: Trained, rows: Dataset) -> Scored:
    """``trained`` on ``rows``, with the temperature (multiclass) or the label thresholds (multilabel)
    fitted on its recipe's out-of-fold outputs."""
    head = trained.network.head
    logits = bench.outputs(trained, rows, "scoring test set")
    calibration = temperature(bench, protocol, choice)
    before = head.activate(logits).numpy()
    scored = Scored(before, head.activate(scale(logits, calibration)).numpy(), calibration)
    scored.thresholds = label_thresholds(bench, protocol, choice, trained)
    if scored.thresholds:
        scored.cut = np.asarray(scored.thresholds["thresholds"])
    return scored


def label_thresholds(
    bench: Workbench, protocol: Protocol, choice: Choice, trained: Trained
) -> dict[str, Any] | None:
    """Multilabel: each label's threshold, chosen on the recipe's out-of-fold outputs."""
    if bench.task != "multilabel":
        return None
    proba, targets = out_of_fold(trained, protocol, choice, None)
    return None if proba is None else choose_thresholds(proba, targets, list(bench.label_space))


def held_out(
    bench: Workbench, protocol: Protocol, choice: Choice, trained: Trained
) -> tuple[EvaluationResult, dict[str, Any]]:
    """The shipped model and the baselines on the protocol's test rows: (result, baselines record)."""
    scored = score(bench, protocol, choice, trained, protocol.test)
    train_targets = protocol.final_data(trained.frozen_backbone)[0].targets
    baselines, record = baseline_predictions(bench, protocol, choice)
    result = evaluate(bench, protocol, choice, trained, scored, protocol.test, train_targets, baselines)
    return result, record


def cross_validated(
    bench: Workbench, protocol: Protocol, choice: Choice, trained: Trained
) -> tuple[EvaluationResult, dict[str, Any]]:
    """The cross-validated estimate: per outer fold, the whole recipe (``choose`` included) and the
    baselines on the other folds, scoring this fold's rows; then one evaluation over every row. With
    ``--repeats`` the whole estimate runs again on other folds: the metrics are then the mean over
    repeats (their spread reported), the intervals, plots and tables those of the first repeat."""
    pool, k = protocol.pool, len(protocol.outer)
    results, record, runs = [], {}, [protocol.outer, *protocol.outer_repeats]
    # reported: the shipped model's temperature and thresholds; the rows were scored with their fold's
    shipped = temperature(bench, protocol, choice), label_thresholds(bench, protocol, choice, trained)
    for repeat, outer in enumerate(runs):
        label = f"repeat {repeat + 1} of {len(runs)}, " if len(runs) > 1 else ""
        pooled, baselines, record = _one_pass(bench, protocol, outer, label)
        pooled.calibration, pooled.thresholds = shipped
        results.append(evaluate(bench, protocol, choice, trained, pooled, pool, pool.targets, baselines))
    result = results[0]
    result.split = f"{k}-fold cross-validated"
    if len(results) > 1:
        result.repeats = repeat_summary([run.metrics for run in results])
        result.metrics = {**result.metrics, **result.repeats["mean"]}
        result.notes.append(repeat_note(result.repeats, bench.metric_name))
    return result, record


def repeat_note(repeats: dict[str, Any], metric: str) -> str:
    values = ", ".join(f"{v:.3f}" for v in repeats["values"].get(metric, []))
    return (
        f"metrics are means over {repeats['n']} repeats of the cross-validated estimate ({metric}: {values}; "
        f"sd {repeats['std'].get(metric, float('nan')):.3f}); the intervals are those of the first repeat: "
        "repeats re-split the same rows, which narrows the noise of the fold assignment, not of the rows"
    )


def _one_pass(
    bench: Workbench, protocol: Protocol, outer: list[Any], label: str
) -> tuple[Scored, dict[str, np.ndarray], dict[str, Any]]:
    """Every pool row scored once, by the recipe trained on the other outer folds: (the pooled scores,
    the baselines' pooled predictions, what the baselines ran)."""
    from graft.protocols import make_protocol
    from graft.recipe import train_final
    from graft.strategies.auto import choose

    pool, cfg = protocol.pool, bench.cfg
    n, k = len(pool), len(outer)
    before = after = cut = None
    baselines: dict[str, np.ndarray] = {}
    record: dict[str, Any] = {}
    chosen: list[str] = []
    with bench.without_checkpoints():
        for i, (train_idx, test_idx) in enumerate(outer):
            bench.say(
                f"cross-validated estimate: {label}outer fold {i + 1} of {k} ({len(test_idx)} rows scored)"
            )
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
            if scored.cut is not None:  # each fold's rows are answered at that fold's thresholds
                cut = np.full(after.shape, 0.5) if cut is None else cut
                cut[test_idx] = scored.cut
            preds, record = baseline_predictions(bench, inner, fold_choice)
            for name, pred in preds.items():
                baselines.setdefault(name, np.zeros((n, *pred.shape[1:]), dtype=pred.dtype))[test_idx] = pred
            chosen.append(fold_choice.strategy.name)
    record["strategy per outer fold"] = chosen
    return Scored(before, after, None, cut=cut), baselines, record


def repeat_summary(runs: list[dict[str, float]]) -> dict[str, Any]:
    """Each metric's mean, standard deviation and values over repeats of an estimate."""
    names = [
        name for name in runs[0]
        if all(isinstance(run.get(name), int | float) and np.isfinite(run[name]) for run in runs)
    ]  # fmt: skip
    values = {name: [float(run[name]) for run in runs] for name in names}
    return {
        "n": len(runs),
        "mean": {name: float(np.mean(v)) for name, v in values.items()},
        "std": {name: float(np.std(v, ddof=1)) for name, v in values.items()},
        "values": values,
    }


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
    result = bench.evaluate(scored.after, rows, train_targets, scored.cut)
    predicted = predicted_targets(task, scored.after, scored.cut)
    score_baselines(bench, targets, predicted, baselines, result)
    if scored.calibration:
        result.calibration = calibration_report(scored.calibration, scored.before, scored.after, targets)
    if scored.thresholds:
        result.thresholds = scored.thresholds
    if task == "multiclass":
        oof_proba, oof_targets = out_of_fold(trained, protocol, choice, scored.calibration)
        target = bench.cfg.evaluation.target_precision
        result.abstain = abstain_report(target, oof_proba, oof_targets, scored.after, targets)
        result.errors = error_analysis(rows.examples, targets, scored.after, bench.label_space)
        if bench.costs is not None:
            prior = np.bincount(train_targets, minlength=len(bench.label_space)) / max(len(train_targets), 1)
            result.costs = cost_report(bench.costs, scored.after, targets, prior, seed=bench.cfg.train.seed)
    return result
