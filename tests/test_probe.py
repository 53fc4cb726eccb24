"""The linear probe: solutions checked against scikit-learn and against the head's own objective,
folds, L2 selection and its tie rule, and the errors a user can meet."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression, Ridge
from threadpoolctl import threadpool_limits

from graft.errors import ConfigError, DataError, GraftWarning
from graft.heads import make_head
from graft.probe import L2_GRID, ProbeSelection, fit_linear_head, select_l2, stratified_folds


@pytest.fixture(autouse=True, scope="module")
def _one_blas_thread():
    # the oracle fits are tiny: waking BLAS threads on a busy machine costs more than the work
    with threadpool_limits(limits=1, user_api="blas"):
        yield


def _blobs(n: int, dim: int, classes: int, seed: int = 0, spread: float = 1.0):
    """Features with a class-dependent mean, not separable at the default spread."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    centers = torch.randn(classes, dim, generator=g)
    x = 3.0 + 2.0 * (centers[y] + spread * torch.randn(n, dim, generator=g))  # not standardised
    return x, y


def _standardised(head, x: torch.Tensor) -> np.ndarray:
    """The features exactly as the head sees them."""
    return ((x - head.input_mean) / head.input_scale).double().numpy()


def test_multiclass_logits_match_logistic_regression():
    x, y = _blobs(60, 12, 4)
    l2 = 0.01
    head = make_head("multiclass", 12, 4)
    # both converged tightly: the same optimum, however each solver walks to it
    fit_linear_head(head, x, y, l2, tol=1e-9)
    oracle = LogisticRegression(C=1 / (l2 * len(y)), tol=1e-9, max_iter=5000).fit(_standardised(head, x), y)
    with torch.no_grad():
        logits = head(x).double().numpy()
    np.testing.assert_allclose(logits, oracle.decision_function(_standardised(head, x)), atol=1e-4)


def test_two_classes_give_logistic_regression_probabilities():
    x, y = _blobs(50, 6, 2, spread=2.0)
    l2 = 0.03
    head = make_head("multiclass", 6, 2)
    fit_linear_head(head, x, y, l2, tol=1e-9)
    # the head's two rows are -w/2, +w/2: half the penalty of sklearn's single row w, hence C doubles
    oracle = LogisticRegression(C=2 / (l2 * len(y)), tol=1e-9, max_iter=5000).fit(_standardised(head, x), y)
    with torch.no_grad():
        probs = head.activate(head(x)).double().numpy()
        w = head.linear.weight
        assert torch.equal(w[0], -w[1])
    np.testing.assert_allclose(probs, oracle.predict_proba(_standardised(head, x)), atol=1e-5)


def test_regression_matches_ridge_on_standardised_targets():
    x, _ = _blobs(40, 5, 1)
    y = 10.0 + 4.0 * x[:, 0] - x[:, 3] + torch.randn(40, generator=torch.Generator().manual_seed(1))
    l2 = 0.1
    head = make_head("regression", 5, 1)
    fit_linear_head(head, x, y, l2)
    y_std = ((y - y.mean()) / y.std(unbiased=False)).double().numpy()
    oracle = Ridge(alpha=0.5 * l2 * len(y)).fit(_standardised(head, x), y_std)
    with torch.no_grad():
        values = head.activate(head(x)).double().numpy()
    expected = oracle.predict(_standardised(head, x)) * y.std(unbiased=False).item() + y.mean().item()
    np.testing.assert_allclose(values, expected, rtol=1e-5, atol=1e-4)


def _multilabel(n: int = 48, dim: int = 6, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=g)
    y = torch.stack([(x[:, 0] > 0), (x[:, 1] + 0.5 * x[:, 2] > 0.3), (x[:, 3] < -0.5)], 1).float()
    return x, y


def _skewed(n: int = 60, dim: int = 5, seed: int = 0):
    x, y = _blobs(n, dim, 3, seed=seed, spread=1.0)
    keep = (y != 2) | (torch.arange(n) % 5 == 2)  # class 2 keeps a fifth of its rows
    return x[keep], y[keep]


def _two_skewed():
    x, y = _blobs(60, 5, 2, spread=1.0)
    keep = (y == 0) | (torch.arange(60) % 4 == 1)
    return x[keep], y[keep]


@pytest.mark.parametrize(
    ("task", "n_outputs", "data", "balanced"),
    [
        ("multiclass", 2, lambda: _blobs(40, 5, 2, spread=2.0), False),
        ("multiclass", 3, lambda: _blobs(45, 5, 3, spread=2.0), False),
        ("multilabel", 3, _multilabel, False),
        (
            "regression",
            1,
            lambda: (lambda x: (x, 2 * x[:, 1] + torch.sin(x[:, 0])))(_blobs(40, 5, 1)[0]),
            False,
        ),
        ("multiclass", 3, _skewed, True),
        ("multiclass", 2, _two_skewed, True),
        ("multilabel", 3, _multilabel, True),
    ],
)
def test_solution_minimises_the_heads_own_objective(task, n_outputs, data, balanced):
    """l2 means what the module says: head.loss + 0.5 * l2 * ||W||^2 has zero gradient at the fit; with
    --class-weight balanced, scikit-learn's balanced weights give the optimum of the head's own weighted
    loss (the weights sum to n, so l2 keeps its meaning)."""
    x, y = data()
    l2 = 0.05
    head = make_head(task, x.shape[1], n_outputs)
    if balanced:
        head.set_class_weight(y)
    fit_linear_head(head, x, y, l2)
    probe = copy.deepcopy(head).train()
    objective = probe.loss(probe(x), y) + 0.5 * l2 * probe.linear.weight.pow(2).sum()
    objective.backward()
    assert probe.linear.weight.grad.abs().max() < 1e-4
    assert probe.linear.bias.grad.abs().max() < 1e-4


def test_fit_leaves_head_in_eval_mode_without_gradients():
    x, y = _blobs(30, 4, 3)
    head = make_head("multiclass", 4, 3, dropout=0.5).train()
    head.linear.weight.requires_grad_(True)
    fit_linear_head(head, x, y, 0.1)
    assert not head.training
    assert all(p.grad is None for p in head.parameters())
    assert head.linear.weight.requires_grad  # strategies own requires_grad, the probe leaves it be
    assert torch.allclose(head.input_mean, x.mean(0))


def test_class_absent_from_training_is_never_predicted():
    x, y = _blobs(36, 5, 3)
    head = make_head("multiclass", 5, 4)  # class 3 is in the label space but has no example
    fit_linear_head(head, x, y, 0.01)
    with torch.no_grad():
        probs = head.activate(head(torch.randn(20, 5) * 5))
    assert torch.isfinite(head.linear.bias).all()
    assert probs[:, 3].max() < 1e-6


def test_constant_label_column_predicts_its_value():
    x, y = _multilabel()
    y[:, 1] = 0.0
    y[:, 2] = 1.0
    head = make_head("multilabel", x.shape[1], 3)
    fit_linear_head(head, x, y, 0.01)
    with torch.no_grad():
        probs = head.activate(head(x))
    assert probs[:, 1].max() < 1e-6 and probs[:, 2].min() > 1 - 1e-6
    assert ((probs[:, 0] > 0.5).float() == y[:, 0]).float().mean() > 0.9


def test_fit_rejects_bad_inputs():
    head = make_head("multiclass", 4, 3)
    x, y = _blobs(12, 4, 3)
    with pytest.raises(ConfigError, match="> 0"):
        fit_linear_head(head, x, y, 0.0)
    with pytest.raises(DataError, match=r"\[n, 4\]"):
        fit_linear_head(head, torch.randn(12, 5), y, 0.1)
    with pytest.raises(DataError, match="12 feature rows but 11 targets"):
        fit_linear_head(head, x, y[:11], 0.1)
    with pytest.raises(DataError, match="at least 2 classes"):
        fit_linear_head(head, x, torch.zeros(12, dtype=torch.long), 0.1)


# ------------------------------------------------------------------ folds


def _check_partition(folds, n):
    vals = np.concatenate([val for _, val in folds])
    assert sorted(vals.tolist()) == list(range(n))  # disjoint and covering
    for train, val in folds:
        assert not set(train) & set(val)
        assert len(train) + len(val) == n


def test_multiclass_folds_are_stratified_disjoint_and_cover_every_example():
    y = np.array([0] * 30 + [1] * 15 + [2] * 10)
    folds = stratified_folds("multiclass", y, k=5, seed=0)
    assert len(folds) == 5
    _check_partition(folds, len(y))
    for _, val in folds:
        np.testing.assert_array_equal(np.bincount(y[val], minlength=3), [6, 3, 2])
    again = stratified_folds("multiclass", y, k=5, seed=0)
    assert all((a[1] == b[1]).all() for a, b in zip(folds, again, strict=True))
    other = stratified_folds("multiclass", y, k=5, seed=1)
    assert any((a[1] != b[1]).any() for a, b in zip(folds, other, strict=True))


def test_k_drops_to_the_smallest_class_count():
    y = np.array([0] * 20 + [1] * 3)
    folds = stratified_folds("multiclass", y, k=10, seed=0)
    assert len(folds) == 3
    _check_partition(folds, len(y))
    assert all(set(y[train]) == {0, 1} for train, _ in folds)


def test_a_class_with_one_example_is_named():
    y = np.array([0, 0, 0, 1, 1, 2])
    with pytest.raises(DataError, match=r"'bird' \(1 example\)"):
        stratified_folds("multiclass", y, k=3, seed=0, label_space=("cat", "dog", "bird"))
    with pytest.raises(DataError, match=r"class 2 \(1 example\)"):
        stratified_folds("multiclass", y, k=3, seed=0)
    with pytest.raises(ConfigError, match="k >= 2"):
        stratified_folds("multiclass", y, k=1, seed=0)


def test_regression_folds_spread_each_quantile_bin():
    y = np.random.default_rng(0).exponential(size=100)
    folds = stratified_folds("regression", y, k=5, seed=0)
    _check_partition(folds, len(y))
    deciles = np.searchsorted(np.quantile(y, np.linspace(0.1, 0.9, 9)), y)
    for _, val in folds:
        np.testing.assert_array_equal(np.bincount(deciles[val], minlength=10), [2] * 10)


def test_multilabel_folds_cover_every_example():
    y = np.random.default_rng(0).integers(0, 2, size=(23, 4))
    folds = stratified_folds("multilabel", y, k=5, seed=0)
    assert len(folds) == 5
    _check_partition(folds, len(y))


# ------------------------------------------------------------------ selection


def test_selection_score_matches_a_scikit_learn_pipeline():
    """One fold, one L2: standardised with the fold-train statistics, scored on the fold-val part."""
    x, y = _blobs(80, 10, 4, spread=2.5)
    train, val = np.arange(60), np.arange(60, 80)
    l2 = 0.003
    sel = select_l2("multiclass", x, y, folds=[(train, val)], grid=[l2])
    xn = x.double().numpy()
    mean, scale = xn[train].mean(0), xn[train].std(0)
    oracle = LogisticRegression(C=1 / (l2 * len(train))).fit((xn[train] - mean) / scale, y[train])
    accuracy = (oracle.predict((xn[val] - mean) / scale) == y[val].numpy()).mean()
    assert sel.score == pytest.approx(accuracy)
    assert sel.how == "validation split (20)"


def test_selection_reports_every_grid_value_and_its_folds():
    x, y = _blobs(60, 8, 3, spread=2.0)
    sel = select_l2("multiclass", x, y, folds=stratified_folds("multiclass", y, k=4, seed=0))
    assert isinstance(sel, ProbeSelection)
    assert sel.how == "4-fold cross-validation over 60 examples"
    assert [row["l2"] for row in sel.table] == list(L2_GRID)
    assert all(0 <= row["score"] <= 1 and row["score_std"] >= 0 for row in sel.table)
    assert sel.score == max(row["score"] for row in sel.table)
    assert sel.to_dict()["l2"] == sel.l2


def test_ties_go_to_the_stronger_l2():
    # far-apart classes: every L2 on the grid classifies perfectly
    x, y = _blobs(40, 4, 2, spread=0.01)
    folds = stratified_folds("multiclass", y, k=4, seed=0)
    grid = (1e-3, 1.0, 1e-2)  # any order
    sel = select_l2("multiclass", x, y, folds=folds, grid=grid)
    assert [row["score"] for row in sel.table] == [1.0, 1.0, 1.0]
    assert sel.l2 == 1.0


def test_a_better_weaker_l2_wins():
    # a rare but separable class: strong L2 shrinks its weights until only the majority is predicted
    g = torch.Generator().manual_seed(0)
    y = torch.tensor([0] * 54 + [1] * 6)
    x = torch.randn(60, 20, generator=g)
    x[:, 0] += 5.0 * y
    sel = select_l2("multiclass", x, y, folds=stratified_folds("multiclass", y, k=3, seed=0))
    scores = {row["l2"]: row["score"] for row in sel.table}
    assert scores[1.0] == pytest.approx(0.9)  # majority class only
    assert sel.score == max(scores.values()) > 0.95
    assert sel.l2 == max(l2 for l2, score in scores.items() if score == sel.score) < 1.0


def test_regression_and_multilabel_selection_work():
    x, _ = _blobs(60, 6, 1)
    y = x[:, 0] * 3 - x[:, 2] + 0.1 * torch.randn(60, generator=torch.Generator().manual_seed(2))
    sel = select_l2("regression", x, y, folds=stratified_folds("regression", y, k=3, seed=0))
    assert sel.score > 0.9  # r2

    x, y = _multilabel(60)
    sel = select_l2("multilabel", x, y, folds=stratified_folds("multilabel", y, k=3, seed=0))
    assert sel.score > 0.8  # micro F1
    head = make_head("multilabel", x.shape[1], 3)
    fit_linear_head(head, x, y, sel.l2)


def test_selection_rejects_a_bad_grid_or_no_folds():
    x, y = _blobs(20, 3, 2)
    folds = stratified_folds("multiclass", y, k=2, seed=0)
    with pytest.raises(ConfigError, match="empty"):
        select_l2("multiclass", x, y, folds=folds, grid=())
    with pytest.raises(ConfigError, match="> 0"):
        select_l2("multiclass", x, y, folds=folds, grid=(1.0, -1.0))
    with pytest.raises(ConfigError, match="fold"):
        select_l2("multiclass", x, y, folds=[])
    with pytest.raises(ConfigError, match="unknown task 'ranking'"):
        stratified_folds("ranking", y, k=2, seed=0)


def test_a_capped_solver_warns_in_graft_terms():
    x, y = _blobs(30, 4, 3)
    with pytest.warns(GraftWarning, match="cap of 1 iterations"):
        fit_linear_head(make_head("multiclass", 4, 3), x, y, 1e-4, max_iter=1)


def test_the_strongest_l2_within_one_standard_error_wins():
    from graft.probe import _one_standard_error

    grid = [1.0, 0.1, 0.01]
    means, stds = np.array([0.80, 0.82, 0.83]), np.array([0.0, 0.0, 0.02])
    assert _one_standard_error(grid, means, stds, k=5) == 1  # 0.82 >= 0.83 - 0.02 / 2
    assert _one_standard_error(grid, means, np.array([0.0, 0.0, 0.08]), k=5) == 0
    assert _one_standard_error(grid, means, stds, k=1) == 2  # one fold: no spread, the arg-max
    assert _one_standard_error(grid, np.array([0.9, 0.9, 0.9]), np.zeros(3), k=5) == 0  # ties: stronger


def test_a_head_to_fine_tune_from_takes_the_best_mean_not_the_one_se_choice():
    """LP-FT starts fine-tuning from the probe: a head shrunk toward zero would pass almost no gradient
    into the backbone, so that head takes the arg-max; the predicting probe keeps the one-SE rule."""
    x, y = _blobs(40, 6, 3, seed=3, spread=1.0)
    folds = stratified_folds("multiclass", y, k=5, seed=0)
    predicting = select_l2("multiclass", x, y, folds=folds)
    starting = select_l2("multiclass", x, y, folds=folds, one_standard_error=False)
    means = [row["score"] for row in starting.table]
    assert starting.score == max(means)
    assert predicting.l2 > starting.l2 and predicting.score < starting.score  # they differ here


def test_grouped_folds_never_divide_a_group():
    y = np.array([0, 1] * 20)
    groups = np.repeat(np.arange(10), 4)  # 10 groups of 4, each with both classes
    folds = stratified_folds("multiclass", y, k=5, seed=0, groups=groups)
    assert len(folds) == 5
    for tr, va in folds:
        assert set(groups[tr]).isdisjoint(groups[va])
    assert sorted(np.concatenate([va for _, va in folds]).tolist()) == list(range(40))
    few = stratified_folds("multiclass", y, k=5, seed=0, groups=np.repeat(np.arange(3), [12, 14, 14]))
    assert len(few) == 3  # k lowered to the number of groups


def test_balanced_weights_raise_the_rare_class_recall():
    x, y = _skewed(300, 5)
    recalls = []
    for balanced in (False, True):
        head = make_head("multiclass", 5, 3)
        if balanced:
            head.set_class_weight(y)
        fit_linear_head(head, x, y, 0.05)
        with torch.no_grad():
            predicted = head(x).argmax(1)
        recalls.append(float((predicted[y == 2] == 2).float().mean()))
    assert recalls[1] > recalls[0]


def _rare_labels(n: int = 300, seed: int = 0) -> np.ndarray:
    """Labels with 50%, 20%, 5% and exactly 3 positives."""
    rng = np.random.default_rng(seed)
    y = (rng.random((n, 4)) < [0.5, 0.2, 0.05, 0.0]).astype(np.float32)
    y[rng.choice(n, 3, replace=False), 3] = 1
    return y


def test_multilabel_folds_are_iteratively_stratified():
    from sklearn.model_selection import KFold

    y = _rare_labels()
    folds = stratified_folds("multilabel", y, k=3, seed=0)
    assert sorted(np.concatenate([v for _, v in folds]).tolist()) == list(range(len(y)))
    assert [int(y[v, 3].sum()) for _, v in folds] == [1, 1, 1]  # the 3-positive label: one per fold

    def spread(splits) -> float:  # the largest gap between a fold's label rate and the overall rate
        return max(abs(y[v].mean(0) - y.mean(0)).max() for _, v in splits)

    plain = [spread(list(KFold(3, shuffle=True, random_state=s).split(y))) for s in range(10)]
    ours = [spread(stratified_folds("multilabel", y, k=3, seed=s)) for s in range(10)]
    assert max(ours) < min(plain)
    assert all(abs(len(v) - len(y) / 3) <= 2 for _, v in folds)  # fold sizes stay even


def test_multilabel_folds_keep_groups_whole():
    y = _rare_labels(120)
    groups = np.arange(120) // 3  # 40 groups of 3 rows
    folds = stratified_folds("multilabel", y, k=4, seed=0, groups=groups)
    for train, val in folds:
        assert not set(groups[train]) & set(groups[val])
    assert sorted(np.concatenate([v for _, v in folds]).tolist()) == list(range(120))
