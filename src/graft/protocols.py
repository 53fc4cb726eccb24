"""Protocols: which labeled examples test the model, which choose its settings, which train it.

The order is fixed so that held-out data never touches a choice:

1. **test**: the user's test file, or a stratified hold-out of the data (``--test-fraction``) that
   keeps copies of one input (and a ``--group-col`` group) on one side: see :mod:`graft.data.splits`.
   A user's own test (or validation) file is checked for copies of training inputs: the count is in
   the report, with a warning.
2. **choice**: small training sets (up to :data:`CV_MAX_EXAMPLES` examples, no ``--val``) are split
   into stratified k folds (grouped like the test split), so every label both trains and validates;
   larger sets hold out ``--val-fraction`` once; a user's ``--val`` file is used as given.
3. **final model**: after k-fold choice, the chosen recipe is refit on every training example (the
   number of epochs from the folds' best epochs). After a hold-out choice a frozen-backbone model is
   refit on every training example (seconds); a fine-tuned one keeps its hold-out early stopping.
   ``--refit all`` adds the test rows to the shipped model's training data after the evaluation.

Example:
    >>> from graft.data import build_dataset
    >>> ds = build_dataset([f"text {i}" for i in range(40)], ["a", "b"] * 20)
    >>> make_protocol(ds, folds=5, seed=0).selection
    '5-fold cross-validation over the 32 training examples'
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from graft.data import Dataset
from graft.data.splits import (
    count_units,
    held_out_units,
    holdout,
    leakage_groups,
    overlap,
    too_few_units,
)

# At or below this many training examples, settings are chosen by k-fold cross-validation. Above it a
# hold-out of --val-fraction has >= 300 examples, where the accuracy estimate's standard error is
# <= 2.9 points (sqrt(0.25/300)); below it the hold-out gets noisy fast (7 examples chose the probe's L2
# on TREC at 8 per class: validation accuracy 0.29), while k-fold costs k trainings.
CV_MAX_EXAMPLES = 2000
# Without --test, up to this many labeled examples are scored by a cross-validated estimate instead of
# a 20% hold-out: below it the hold-out has < 100 rows (a 95% Wilson interval of +-0.08 at 80%
# accuracy) and takes a fifth of few labels away from training; the estimate scores every row, at
# the cost of running the recipe once per outer fold.
CV_ESTIMATE_MAX_EXAMPLES = 500
OUTER_FOLDS = 5
REPEAT_SEED_STEP = 7919  # repeat r of a cross-validated estimate draws its folds with seed + 2 + r x this


@dataclass
class Protocol:
    """The splits of one run.

    Attributes:
        pool: every labeled example model choice may see (training data, test rows removed).
        test: held-out examples for the final evaluation only.
        val: the user's validation file, or the hold-out validation split (``None`` with k-fold).
        folds: (train, validation) index pairs into :attr:`choose_on`.
        selection: how settings are chosen, in words.
        description: the whole protocol in words (printed, and in the report).
        test_is_split: the test rows came out of the training data (so ``--refit all`` can add them).
    """

    pool: Dataset
    test: Dataset
    val: Dataset | None
    folds: list[tuple[np.ndarray, np.ndarray]]
    selection: str
    description: str
    test_is_split: bool
    user_val: bool = False
    leakage: dict[str, Any] | None = None
    # the cross-validated estimate: (training rows, scored rows) of the pool per outer fold; the
    # test split is then empty and every pool row is scored by a model that never saw it
    outer: list[tuple[np.ndarray, np.ndarray]] | None = None
    # --repeats: the outer folds of each further repeat of the cross-validated estimate
    outer_repeats: list[list[tuple[np.ndarray, np.ndarray]]] = field(default_factory=list)

    @property
    def choose_on(self) -> Dataset:
        """The examples the folds index: the pool, followed by a user's validation file."""
        return self.pool.concat(self.val, source=self.pool.source) if self.user_val else self.pool

    @property
    def kfold(self) -> bool:
        return len(self.folds) > 1

    def final_data(self, frozen_backbone: bool) -> tuple[Dataset, Dataset | None]:
        """(train, validation) of the shipped model for a strategy of this kind."""
        if self.kfold or self.user_val:
            return self.pool, self.val
        if frozen_backbone:
            return self.pool, None  # the hold-out only chose the L2; the probe refits on every example
        train_idx, _ = self.folds[0]
        return self.pool.subset(train_idx), self.val

    def summary(
        self, source: Dataset, truncated: int, val: Dataset | None, test: Dataset | None, frozen: bool
    ) -> dict[str, Any]:
        """The report's account of the data: sizes, the protocol, duplicates, skipped rows, warnings."""
        train, final_val = self.final_data(frozen)
        return {
            "source": source.source,
            "rows": len(source),
            "train": len(train),
            "validation": len(final_val) if final_val is not None else 0,
            "test": len(self.pool) if self.outer else len(self.test),
            "estimate": f"{len(self.outer)}-fold cross-validated" if self.outer else "held-out",
            "split": self.description,
            "selection": self.selection,
            "duplicates": source.report.duplicates,
            "conflicting_duplicates": source.report.conflicting_duplicates,
            "leakage": self.leakage,
            "truncated_texts": truncated,
            "skipped": [
                f"{ds.source}: {item}" if ds is not source else item
                for ds in (source, val, test)
                if ds is not None
                for item in ds.report.skipped
            ],
            "train_class_counts": {str(k): v for k, v in train.class_counts().items()},
            "warnings": [
                *source.report.warnings,
                *(f"{ds.source}: {w}" for ds in (val, test) if ds is not None for w in ds.report.warnings),
            ],
            "notes": source.report.notes,
        }


def make_protocol(
    source: Dataset,
    *,
    val: Dataset | None = None,
    test: Dataset | None = None,
    folds: int = 5,
    val_fraction: float = 0.15,
    test_fraction: float = 0.2,
    seed: int = 0,
    estimate: str = "holdout",
    repeats: int = 1,
) -> Protocol:
    """The protocol for ``source`` with optional separate validation and test data; ``estimate``
    (``holdout``, ``cv`` or ``auto``) says how the test numbers are made without a test file, and
    ``repeats`` how many times a cross-validated estimate runs, each time with other outer folds."""
    user_val, test_is_split = val is not None, test is None and not _cross_validated(estimate, len(source))
    groups = leakage_groups(source)
    pool, test, outer, leakage, said, groups = _test_part(source, test, groups, estimate, test_fraction, seed)
    parts = [said]
    outer_repeats = []
    if outer and repeats > 1:
        outer_repeats = [
            _folds(pool, OUTER_FOLDS, derived_seed(seed, 2 + REPEAT_SEED_STEP * r), groups)[0]
            for r in range(1, repeats)
        ]
        parts[0] += f"; repeated {repeats} times with other folds"
    if outer and val is None:
        _check_choice_in_folds(pool, groups, [outer, *outer_repeats], folds, val_fraction)
    if val is not None:
        leakage["validation"] = overlap(pool, val)
    _warn_leakage(leakage, source)
    if val is not None:
        n = len(pool)
        chosen = [(np.arange(n), np.arange(n, n + len(val)))]
        selection = f"validation on {val.source} ({len(val)})"
    elif len(pool) <= CV_MAX_EXAMPLES and folds > 1:
        chosen, how = _folds(pool, folds, seed, groups)
        selection = f"{len(chosen)}-fold{how} cross-validation over the {len(pool)} training examples"
    else:
        keep, out, how = holdout(pool, val_fraction, derived_seed(seed, 1), "validation", groups)
        chosen = [(keep, out)]
        selection = f"{how} {val_fraction:.0%} validation hold-out ({len(out)} of {len(pool)})"
        val = pool.subset(out, source=f"{source.source} [validation split]")
    parts.insert(0, f"training: {len(pool)}")
    parts.append(f"choice: {selection}")
    return Protocol(
        pool=pool,
        test=test,
        val=val,
        folds=chosen,
        selection=selection,
        description="; ".join(parts),
        test_is_split=test_is_split,
        user_val=user_val,
        leakage=leakage,
        outer=outer,
        outer_repeats=outer_repeats,
    )


def _test_part(
    source: Dataset,
    test: Dataset | None,
    groups: np.ndarray | None,
    estimate: str,
    test_fraction: float,
    seed: int,
) -> tuple[Dataset, Dataset, list | None, dict[str, Any], str, np.ndarray | None]:
    """(pool, test, outer folds, leakage check, the test part in words, the pool's groups)."""
    if test is not None:
        return (
            source,
            test,
            None,
            {"test": overlap(source, test)},
            f"test: {test.source} ({len(test)})",
            groups,
        )
    if _cross_validated(estimate, len(source)):
        outer, how = _folds(source, OUTER_FOLDS, derived_seed(seed, 2), groups)
        n = len(source)
        said = (
            f"test: {len(outer)}-fold{how} cross-validated estimate over all {n} examples (each fold runs "
            f"the whole recipe, choice included, on the other folds; the shipped model trains on all {n})"
        )
        empty = source.subset([], source=f"{source.source} [cross-validated]")
        return source, empty, outer, {"test": _straddling(groups, outer)}, said, groups
    keep, out, how = holdout(source, test_fraction, seed, "test", groups)
    test = source.subset(out, source=f"{source.source} [test split]")
    said = f"test: {how} {test_fraction:.0%} hold-out ({len(test)})"
    pool_groups = None if groups is None else groups[keep]
    return source.subset(keep), test, None, {"test": _straddling(groups, [(keep, out)])}, said, pool_groups


def _check_choice_in_folds(
    pool: Dataset, groups: np.ndarray | None, runs: list[list[tuple[np.ndarray, np.ndarray]]], folds: int,
    val_fraction: float,
) -> None:  # fmt: skip
    """Each outer fold's training part must hold enough groups to choose settings on (k folds, or a
    validation hold-out): checked before any training rather than when that fold comes."""
    for run in runs:
        for train_idx, _ in run:
            units = count_units(None if groups is None else groups[train_idx], len(train_idx))
            need = 2 if folds > 1 else held_out_units(units, val_fraction) + 2
            if units < need:
                part = pool.subset(train_idx)
                what = "cross-validation" if folds > 1 else "a validation hold-out"
                raise too_few_units(
                    part, units, need, f"{what} inside a fold of the cross-validated estimate"
                )


def derived_seed(seed: int, offset: int) -> int:
    """``seed + offset`` wrapped into the seeds numpy (and so scikit-learn) accepts, 0 .. 2**32 - 1: the
    run's seed may be anywhere in that range."""
    return (seed + offset) % 2**32


def _cross_validated(estimate: str, n: int) -> bool:
    if estimate not in ("auto", "holdout", "cv"):
        raise ValueError(f"estimate must be auto, holdout or cv, not {estimate!r}")
    return estimate == "cv" or (estimate == "auto" and n <= CV_ESTIMATE_MAX_EXAMPLES)


def _straddling(groups: np.ndarray | None, parts: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, Any]:
    """The leakage check of graft's own splits, each (training rows, held-out rows): held-out rows whose
    group (copies of one input, a user's group) also has training rows (0 unless a split is broken),
    and how many rows were kept together with a copy."""
    held_out = sum(len(out) for _, out in parts)
    if groups is None:
        return {"rows": 0, "of": held_out, "kept_together": 0, "examples": []}
    return {
        "rows": sum(int(np.isin(groups[out], groups[keep]).sum()) for keep, out in parts),
        "of": held_out,
        "kept_together": int(len(groups) - len(np.unique(groups))),
        "examples": [],
    }


def _warn_leakage(leakage: dict[str, dict[str, Any]], source: Dataset) -> None:
    for name, found in leakage.items():
        if found["rows"]:
            example = f" (e.g. {found['examples'][0]!r})" if found["examples"] else ""
            source.report.warnings.append(
                f"leakage: {found['rows']} of the {found['of']} {name} examples are copies of training "
                f"examples{example}: the {name} score is optimistic; remove the copies from one file"
            )


def _folds(
    pool: Dataset, k: int, seed: int, groups: np.ndarray | None
) -> tuple[list[tuple[np.ndarray, np.ndarray]], str]:
    """Stratified (and grouped) folds; plain shuffled ones (said so) when a class has a single
    training example."""
    from sklearn.model_selection import KFold

    from graft.errors import DataError
    from graft.probe import stratified_folds

    units = count_units(groups, len(pool))
    if units < 2:
        raise too_few_units(pool, units, 2, f"{k}-fold cross-validation")
    try:
        folds = stratified_folds(
            pool.task, pool.targets, k, seed, label_space=pool.label_space, groups=groups
        )
        return folds, "" if groups is None else ", duplicate-grouped"
    except DataError:
        rare = [str(c) for c, n in pool.class_counts().items() if n < 2]
        splitter = KFold(n_splits=min(k, len(pool)), shuffle=True, random_state=seed)
        folds = list(splitter.split(np.zeros(len(pool))))
        return folds, f" (not stratified: {', '.join(rare)} has a single training example)"
