"""Protocols: the test split never touches a choice; k-fold on small data, hold-out on large data, --val
as given."""

from __future__ import annotations

import numpy as np
import pytest

from graft.data import build_dataset
from graft.errors import DataError
from graft.protocols import CV_ESTIMATE_MAX_EXAMPLES, CV_MAX_EXAMPLES, make_protocol


def _data(n_per_class: int, classes: int = 3, offset: int = 0):
    texts = [f"text {offset + i}" for i in range(n_per_class * classes)]
    labels = [f"c{i % classes}" for i in range(n_per_class * classes)]
    return build_dataset(texts, labels)


def test_small_data_chooses_by_k_fold_over_every_training_example():
    ds = _data(10)
    p = make_protocol(ds, folds=5, seed=0)
    assert p.kfold and len(p.folds) == 5 and p.val is None
    assert set(p.pool.examples).isdisjoint(p.test.examples)
    assert len(p.pool) + len(p.test) == len(ds)
    covered = np.sort(np.concatenate([va for _, va in p.folds]))
    assert covered.tolist() == list(range(len(p.pool)))  # every label validates once
    for tr, va in p.folds:
        assert set(tr).isdisjoint(va)
        assert len(set(p.pool.targets[va])) == 3  # stratified
    for frozen in (True, False):
        train, val = p.final_data(frozen)
        assert train is p.pool and val is None  # the refit uses every training example
    assert "5-fold cross-validation over the 24 training examples" in p.description


def test_large_data_holds_out_validation_once():
    ds = _data(CV_MAX_EXAMPLES // 3 + 200)
    p = make_protocol(ds, folds=5, seed=0)
    assert not p.kfold and p.val is not None
    ((tr, va),) = p.folds
    assert len(va) == round(0.15 * len(p.pool))
    assert p.final_data(frozen_backbone=True) == (p.pool, None)  # a probe refits on everything
    train, val = p.final_data(frozen_backbone=False)
    assert len(train) == len(tr) and val is p.val  # a fine-tune keeps its early-stopping hold-out


def test_a_users_validation_file_is_used_as_given():
    ds, val = _data(10), _data(4, offset=1000)
    p = make_protocol(ds, val=val, folds=5, seed=0)
    assert p.user_val and len(p.folds) == 1
    tr, va = p.folds[0]
    assert [p.choose_on.examples[i] for i in va] == val.examples
    assert [p.choose_on.examples[i] for i in tr] == p.pool.examples
    assert p.final_data(True) == (p.pool, val)


def test_a_class_with_one_training_example_is_said_not_stratified():
    labels = ["a"] * 10 + ["b"] * 10 + ["c"]
    ds = build_dataset([f"t{i}" for i in range(21)], labels, require_min_per_class=False)
    test = build_dataset(["u", "v", "w", "x", "y", "z"], ["a", "b", "c"] * 2)
    p = make_protocol(ds, test=test, folds=5, seed=0)
    assert p.kfold and "not stratified: c has a single training example" in p.selection


def test_one_fold_means_one_hold_out_even_on_small_data():
    p = make_protocol(_data(10), folds=1, seed=0)
    assert not p.kfold and p.val is not None and "validation hold-out" in p.selection


def test_copies_never_straddle_the_test_split_or_a_fold():
    texts = [f"text {i}" for i in range(120)]
    ds = build_dataset(texts + [t.upper() + "!" for t in texts[:40]], [f"c{i % 3}" for i in range(120)] * 1
                       + [f"c{i % 3}" for i in range(40)])  # fmt: skip
    p = make_protocol(ds, folds=5, seed=0)
    norm = lambda t: t.lower().rstrip("!")  # noqa: E731
    assert {norm(t) for t in p.pool.examples}.isdisjoint(norm(t) for t in p.test.examples)
    assert p.leakage["test"]["rows"] == 0 and p.leakage["test"]["kept_together"] == 40
    for tr, va in p.folds:
        assert {norm(p.pool.examples[i]) for i in tr}.isdisjoint(norm(p.pool.examples[i]) for i in va)
    assert "duplicate-grouped" in p.description


def test_copies_across_a_users_files_are_counted_and_warned():
    ds = _data(10)
    test = build_dataset(["TEXT 3.", "new one", "text  7"], ["c0", "c1", "c2"], require_min_per_class=False)
    p = make_protocol(ds, test=test, folds=5, seed=0)
    assert p.leakage["test"]["rows"] == 2 and p.leakage["test"]["examples"] == ["TEXT 3.", "text  7"]
    assert any("leakage: 2 of the 3 test examples" in w for w in ds.report.warnings)


def test_small_data_without_a_test_file_gets_a_cross_validated_estimate():
    ds = _data(20)  # 60 examples
    p = make_protocol(ds, folds=5, seed=0, estimate="auto")
    assert p.outer is not None and len(p.outer) == 5 and len(p.test) == 0 and p.pool is ds
    scored = np.sort(np.concatenate([te for _, te in p.outer]))
    assert scored.tolist() == list(range(60))  # every row scored exactly once
    for tr, te in p.outer:
        assert set(tr).isdisjoint(te) and len(set(ds.targets[te])) == 3
    assert "5-fold cross-validated estimate over all 60 examples" in p.description
    assert p.summary(ds, 0, None, None, True)["estimate"] == "5-fold cross-validated"
    assert make_protocol(ds, folds=5, seed=0, estimate="holdout").outer is None
    big = _data(CV_ESTIMATE_MAX_EXAMPLES // 3 + 10)
    assert make_protocol(big, seed=0, estimate="auto").outer is None  # large enough for a hold-out
    assert make_protocol(big, seed=0, estimate="cv").outer is not None
    assert make_protocol(ds, test=_data(4, offset=500), estimate="cv").outer is None  # a test file wins


def test_multilabel_holdout_is_iteratively_stratified_and_keeps_copies_together():
    from graft.data.splits import holdout

    rng = np.random.default_rng(0)
    labels = [[name for name, p in (("a", 0.5), ("b", 0.2)) if rng.random() < p] or ["c"] for _ in range(200)]
    for i in (3, 50, 120, 160):
        labels[i] = [*labels[i], "rare"]
    texts = [f"text number {i}" for i in range(200)]
    texts[1] = "Text number 0!"  # a copy of row 0 after normalisation
    ds = build_dataset(texts, labels, task="multilabel")
    keep, out, how = holdout(ds, 0.25, seed=0, name="test")
    assert how == "iteratively stratified, duplicate-grouped"
    rare = ds.label_space.index("rare")
    assert ds.targets[out, rare].sum() == 1 and ds.targets[keep, rare].sum() == 3  # 4 positives: 1 : 3
    assert ({0, 1} <= set(out.tolist())) or ({0, 1} <= set(keep.tolist()))
    assert abs(len(out) - 50) <= 2


def _grouped(groups: list[str]):
    ds = _data(20, classes=2)
    ds.groups, ds.group_col = np.array([groups[i % len(groups)] for i in range(len(ds))]), "speaker"
    return ds


def test_a_grouping_that_leaves_nothing_to_split_names_the_column_and_what_is_needed():
    with pytest.raises(DataError, match=r"5-fold cross-validation needs at least 2 groups, but --group-col "
                       r"'speaker' puts these 40 examples in 1 group"):  # fmt: skip
        make_protocol(_grouped(["s0"]), estimate="cv")
    with pytest.raises(DataError, match=r"holding out a test split needs at least 3 groups.*in 2 groups"):
        make_protocol(_grouped(["s0", "s1"]), estimate="holdout")
    # two groups fill the outer folds, but leave one group to choose on inside each: refused up front
    with pytest.raises(DataError, match=r"cross-validation inside a fold of the cross-validated estimate"):
        make_protocol(_grouped(["s0", "s1"]), estimate="cv")
    assert make_protocol(_grouped(["s0", "s1", "s2"]), estimate="cv").outer


def test_the_largest_seed_makes_every_split():
    """Seeds derived from the run's (seed + 1, ...) stay within numpy's 0 .. 2**32 - 1."""
    for estimate in ("holdout", "cv"):
        p = make_protocol(_data(10), folds=1, seed=2**32 - 1, estimate=estimate, repeats=2)
        assert len(p.test) or p.outer
