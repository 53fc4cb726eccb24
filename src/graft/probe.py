"""The linear probe: a head's linear layer solved exactly on cached features, its L2 chosen by k-fold CV.

A frozen backbone's features fit in memory, so the head's convex problem is solved with
scikit-learn's solvers rather than by gradient steps: multinomial logistic regression (multiclass),
one binary logistic regression per label (multilabel), ridge on standardised targets (regression).
Each L2 strength is scored by stratified k-fold cross-validation (or on one validation split), and
the fits along the grid are warm-started from the previous, stronger one, so the whole grid costs
little more than one fit.

``l2`` always means the same thing as in the head: the problem solved is
``head.loss(head(x), y) + 0.5 * l2 * ||W||^2`` on standardised features, with ``W`` the head's
weight matrix (biases are not penalised). The scikit-learn settings that give exactly that problem
are derived per task in :class:`_Solver`.

Example:
    >>> import torch
    >>> from graft.heads import make_head
    >>> _ = torch.manual_seed(0)
    >>> x, y = torch.randn(40, 8), torch.arange(40) % 2
    >>> x[:, 0] += 3 * y
    >>> selection = select_l2("multiclass", x, y, folds=stratified_folds("multiclass", y, k=5, seed=0))
    >>> head = make_head("multiclass", in_dim=8, n_outputs=2)
    >>> fit_linear_head(head, x, y, selection.l2)
    >>> float((head(x).argmax(1) == y).float().mean()) > 0.9
    True
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from graft.errors import ConfigError, DataError, GraftWarning

# Strong -> weak; the values of the earlier torch L-BFGS probe, so recorded choices stay comparable.
L2_GRID: tuple[float, ...] = (1.0, 3e-1, 1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 1e-5)
# Regression targets are cut into at most this many quantile bins to stratify the folds.
REGRESSION_BINS = 10
# The solvers stop when no gradient entry of the mean objective exceeds this. Selection and the
# final fit share it, so the scores describe the model that ships: at 1e-4 the weak end of the grid
# stopped early enough to score up to half a point differently, and a cold 10k x 77 fit lost a point
# of test accuracy; 1e-6 took 1.75x the time of 1e-5 for no accuracy (benchmarks/probe_speed.py data).
_TOL = 1e-5
# Per fit: selection fits continue from the previous grid value, so each needs few iterations.
_SELECT_MAX_ITER, _FINAL_MAX_ITER = 200, 1000
# A class (or label value) absent from the training data has an optimum at -inf (or +inf) logit;
# this finite stand-in gives it a probability of about 2e-9 and keeps every output finite.
_ABSENT_LOGIT = 20.0


@dataclass
class ProbeSelection:
    """The L2 strength chosen for a linear probe, and the evidence for it.

    Attributes:
        l2: the chosen per-example L2 strength.
        score: its mean selection metric over the folds (or on the validation split).
        how: how it was measured, in words ("5-fold cross-validation over 48 examples").
        table: one row per grid value: ``{"l2", "score", "score_std"}`` (std over folds; 0 for one).
        fold_scores: the chosen L2's score on each fold, in the order of the folds given.
    """

    l2: float
    score: float
    how: str
    table: list[dict[str, float]] = field(default_factory=list)
    fold_scores: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"l2": self.l2, "score": self.score, "how": self.how, "table": self.table}


def fit_linear_head(
    head: torch.nn.Module,
    x: torch.Tensor,
    y: Any,
    l2: float,
    *,
    tol: float = _TOL,
    max_iter: int = _FINAL_MAX_ITER,
) -> None:
    """Solve the head's linear layer on features ``x`` at L2 strength ``l2``, in place.

    Sets the head's input statistics from ``x`` (and, for regression, its target statistics from
    ``y``), solves ``head.loss + 0.5 * l2 * ||W||^2`` on the standardised features with
    scikit-learn, and copies the solution into ``head.linear``. The head is left in eval mode with no
    gradients; ``requires_grad`` is untouched.

    Args:
        head: a :class:`graft.heads.Head` (multiclass, multilabel or regression).
        x: features ``[n, in_dim]``.
        y: class indices ``[n]``, a 0/1 matrix ``[n, labels]``, or values ``[n]``.
        l2: per-example L2 strength (> 0), e.g. :attr:`ProbeSelection.l2`.
        tol: the solver's stopping tolerance.
        max_iter: the solver's iteration cap; reaching it warns with :class:`GraftWarning`.

    Raises:
        DataError: shapes disagree, a class index is out of range, or fewer than two classes occur.

    Example:
        >>> from graft.heads import make_head
        >>> head = make_head("regression", in_dim=3, n_outputs=1)
        >>> x = torch.randn(20, 3)
        >>> fit_linear_head(head, x, 5 * x[:, 0] + 1, l2=1e-4)
        >>> torch.allclose(head.activate(head(x)), 5 * x[:, 0] + 1, atol=0.01)
        True
    """
    task = head.task
    _check_l2([l2])
    x = torch.as_tensor(x).detach()
    y_np = _targets(task, y, len(x), head.linear.out_features)
    _check_features(x, head.linear.in_features)
    stats_device = head.input_mean.device
    head.set_input_stats(x.to(stats_device))
    if task == "regression":
        head.set_target_stats(torch.as_tensor(y_np, device=stats_device))
    with torch.no_grad():
        xs = ((x.to(stats_device).float() - head.input_mean) / head.input_scale).double().cpu().numpy()
    if task == "regression":
        y_np = (y_np - float(head.target_mean)) / float(head.target_scale)
    balanced = head.class_weight is not None  # --class-weight balanced: the same weights as the loss
    solver = _Solver(task, head.linear.out_features, tol=tol, max_iter=max_iter, balanced=balanced)
    with _one_blas_thread():
        solver.fit(xs, y_np, l2)
    if solver.capped:
        warnings.warn(
            f"linear probe: the solver stopped at its cap of {max_iter} iterations before converging "
            f"(l2={l2:g}); the head is usable but not the exact optimum. A larger max_iter or l2 fixes it.",
            GraftWarning,
            stacklevel=2,
        )
    weight = head.linear.weight
    with torch.no_grad():
        weight.copy_(torch.as_tensor(solver.weight, dtype=weight.dtype))
        head.linear.bias.copy_(torch.as_tensor(solver.bias, dtype=weight.dtype))
    head.zero_grad(set_to_none=True)
    head.eval()


def select_l2(
    task: str,
    x: torch.Tensor,
    y: Any,
    *,
    folds: list[tuple[np.ndarray, np.ndarray]],
    grid: Sequence[float] = L2_GRID,
    progress: bool = False,
    one_standard_error: bool = True,
    metric: str | None = None,
    balanced: bool = False,
) -> ProbeSelection:
    """Score every L2 strength on every fold; the strongest L2 within one standard error of the best
    mean score wins (the best mean itself with ``one_standard_error=False``).

    Each fold is standardised with its own training part's statistics, fitted along ``grid``
    (warm-started from the previous value, so pass the grid strong -> weak), and scored with
    :func:`graft.evaluation.selection_score` on its validation part. One fold is plain hold-out
    validation.

    Args:
        task: "multiclass", "multilabel" or "regression".
        x: features ``[n, dim]`` of every example the folds index.
        y: targets, as for :func:`fit_linear_head`.
        folds: ``(train_idx, val_idx)`` pairs, e.g. from :func:`stratified_folds`.
        grid: candidate per-example L2 strengths (> 0).
        progress: show a progress bar.
        one_standard_error: prefer the strongest L2 within one standard error of the best (the head
            that predicts); False takes the best mean, e.g. for a head that fine-tuning starts from,
            where a head shrunk toward zero would pass almost no gradient into the backbone.
        metric: the selection metric (default: the task's, see :func:`graft.evaluation.selection_score`).
        balanced: weigh classes as ``--class-weight balanced`` does (:func:`graft.heads.balanced_weights`).

    Example:
        >>> x, y = torch.randn(60, 4), torch.arange(60) % 3
        >>> x[:, 0] += 2 * y
        >>> sel = select_l2("multiclass", x, y, folds=stratified_folds("multiclass", y, k=3, seed=0))
        >>> sel.how, len(sel.table) == len(L2_GRID)
        ('3-fold cross-validation over 60 examples', True)
    """
    from tqdm.auto import tqdm

    _check_task(task)
    grid = [float(v) for v in grid]
    _check_l2(grid)
    if not folds:
        raise ConfigError("select_l2 needs at least one (train_idx, val_idx) fold")
    x_np = torch.as_tensor(x).detach().cpu().double().numpy()
    n_outputs = _n_outputs(task, y)
    y_np = _targets(task, y, len(x_np), n_outputs)
    scores = np.empty((len(folds), len(grid)))
    with (
        tqdm(total=scores.size, desc="choosing L2", disable=not progress, unit="fit") as bar,
        _one_blas_thread(),
    ):
        for f, (train_idx, val_idx) in enumerate(folds):
            scores[f] = _fold_scores(
                task, n_outputs, x_np, y_np, train_idx, val_idx, grid, bar, metric, balanced=balanced
            )
    means, stds = scores.mean(0), scores.std(0)
    margin_folds = len(folds) if one_standard_error else 1  # 1: no margin, the arg-max
    chosen = _one_standard_error(grid, means, stds, margin_folds)
    if len(folds) == 1:
        how = f"validation split ({len(folds[0][1])})"
    else:
        covered = len(np.unique(np.concatenate([np.asarray(v) for _, v in folds])))
        how = f"{len(folds)}-fold cross-validation over {covered} examples"
    table = [
        {"l2": l2, "score": float(m), "score_std": float(s)}
        for l2, m, s in zip(grid, means, stds, strict=True)
    ]
    return ProbeSelection(
        l2=grid[chosen], score=float(means[chosen]), how=how, table=table,
        fold_scores=scores[:, chosen].tolist(),
    )  # fmt: skip


def _one_standard_error(grid: list[float], means: np.ndarray, stds: np.ndarray, k: int) -> int:
    """The strongest L2 whose mean score is within one standard error of the best (the one-standard-
    error rule, Hastie et al. ESL 7.10): on a few examples per class the fold scores are noisy and the
    arg-max chases the noise toward weak L2. MiniLM, 8 and 64 per class of SST-2 and TREC, 5 seeds each,
    full test files: +0.0 to +1.1 points of test accuracy over the arg-max in all four cells
    (benchmarks/probe_selection.py). With one fold: the arg-max, ties to the stronger L2."""
    best = int(np.argmax(means))
    margin = float(stds[best]) / np.sqrt(k - 1) if k > 1 else 0.0
    close = [g for g in range(len(grid)) if means[g] >= means[best] - margin - 1e-12]
    return max(close, key=lambda g: grid[g])


def _fold_scores(
    task: str,
    n_outputs: int,
    x: np.ndarray,
    y: np.ndarray,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    grid: list[float],
    bar: Any,
    metric: str | None = None,
    *,
    balanced: bool = False,
) -> np.ndarray:
    """The selection score of each grid value on one fold, fitted along the grid with warm starts."""
    from graft.evaluation import selection_score

    train_x, val_x = x[train_idx], x[val_idx]
    mean, scale = train_x.mean(0), np.clip(train_x.std(0), 1e-6, None)
    train_x, val_x = (train_x - mean) / scale, (val_x - mean) / scale
    train_y, val_y = y[train_idx], y[val_idx]
    y_mean, y_scale = 0.0, 1.0
    if task == "regression":
        y_mean, y_scale = float(train_y.mean()), max(float(train_y.std()), 1e-6)
        train_y = (train_y - y_mean) / y_scale
    solver = _Solver(task, n_outputs, tol=_TOL, max_iter=_SELECT_MAX_ITER, warm_start=True, balanced=balanced)
    scores = np.empty(len(grid))
    previous: np.ndarray | None = None
    for g, l2 in enumerate(grid):
        # a capped fit is acceptable here: the next, weaker one carries on from it
        solver.fit(train_x, train_y, l2)
        logits = val_x @ solver.weight.T + solver.bias
        if task == "multiclass":
            predicted = logits.argmax(1)
        elif task == "multilabel":
            predicted = (logits > 0).astype(np.float32)
        else:
            predicted = logits[:, 0] * y_scale + y_mean
        if previous is not None and task != "regression" and np.array_equal(predicted, previous):
            # neighbouring L2 values often predict the same classes; the score is milliseconds each
            scores[g] = scores[g - 1]
        else:
            scores[g] = selection_score(task, val_y, predicted, metric)
        previous = predicted
        bar.update(1)
    return scores


@contextlib.contextmanager
def _one_blas_thread() -> Iterator[None]:
    """BLAS on one thread while the probe solves. On a 2-core machine shared with other work,
    OpenBLAS's spinning threads made a 10,000 x 384 x 77 fit 4.5x slower and the 100-example
    selection 3-10x slower than one thread did (benchmarks/probe_speed.py)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        yield


def stratified_folds(
    task: str,
    y: Any,
    k: int,
    seed: int,
    *,
    label_space: Sequence[Any] | None = None,
    groups: np.ndarray | None = None,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """``k`` disjoint validation folds covering every example, each with its training complement.

    With ``groups`` (a group id per example, e.g. from :func:`graft.data.leakage_groups`), no group is
    divided between a fold's two parts (scikit-learn's ``StratifiedGroupKFold`` / ``GroupKFold``), and
    ``k`` is at most the number of groups (of the rarest class, for multiclass).

    Multiclass folds keep the class proportions; regression folds keep the proportions of the
    target's quantile bins; multilabel folds are iteratively stratified (every label's positives
    divided evenly, the rarest label first: :func:`graft.data.splits.iterative_assign`). ``k`` is
    lowered to the smallest class count (never below 2) so that every class appears in every fold's
    training part.

    Args:
        task: "multiclass", "multilabel" or "regression".
        y: targets, as for :func:`fit_linear_head`.
        k: the number of folds wanted (>= 2).
        seed: the shuffling seed; the same seed gives the same folds.
        label_space: class names, used only to name a class in an error.

    Raises:
        ConfigError: ``k`` < 2.
        DataError: fewer than two examples, or a class with fewer than two examples (named).

    Example:
        >>> folds = stratified_folds("multiclass", np.array([0, 0, 0, 1, 1, 1]), k=5, seed=0)
        >>> len(folds), sorted(np.concatenate([val for _, val in folds]).tolist())
        (3, [0, 1, 2, 3, 4, 5])
    """
    from sklearn.model_selection import KFold, StratifiedKFold

    _check_task(task)
    if k < 2:
        raise ConfigError(f"cross-validation needs k >= 2 folds, got k={k}")
    y_np = _numpy(y)
    n = len(y_np)
    if n < 2:
        raise DataError(f"cross-validation needs at least 2 examples, got {n}")
    if task == "multiclass":
        classes, counts = np.unique(y_np, return_counts=True)
        rare = [(c, m) for c, m in zip(classes.tolist(), counts.tolist(), strict=True) if m < 2]
        if rare:
            names = ", ".join(
                f"{label_space[c]!r} ({m} example)" if label_space is not None else f"class {c} ({m} example)"
                for c, m in rare
            )
            raise DataError(
                f"cross-validation needs at least 2 examples of every class; too few: {names}. "
                "Add examples of these classes or remove them from the data."
            )
        if groups is not None:  # a class's examples in fewer groups than k cannot fill k folds
            counts = np.array([len(np.unique(groups[y_np == c])) for c in classes])
        k = max(2, min(k, int(counts.min())))
        strata = y_np
    elif task == "regression":
        k = min(k, n)
        bins = max(1, min(REGRESSION_BINS, n // k))
        # bins by rank, not by value: tied targets still spread evenly over the bins
        ranks = np.argsort(np.argsort(y_np.ravel(), kind="stable"), kind="stable")
        strata = ranks * bins // n
    else:
        return _multilabel_folds(y_np, k, seed, groups)
    if groups is not None:
        return _group_folds(groups, strata, k, seed)
    if strata is None:
        splitter = KFold(n_splits=k, shuffle=True, random_state=seed)
        return [(tr, va) for tr, va in splitter.split(np.zeros(n))]
    splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    return [(tr, va) for tr, va in splitter.split(np.zeros(n), strata)]


def _multilabel_folds(
    y: np.ndarray, k: int, seed: int, groups: np.ndarray | None
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Iteratively stratified folds (:func:`graft.data.splits.iterative_assign`), groups kept whole."""
    from graft.data.splits import iterative_assign, unit_label_counts

    ids = None if groups is None else np.unique(groups, return_inverse=True)[1]
    counts, sizes = unit_label_counts(ids, y)
    k = max(2, min(k, len(sizes)))
    part = iterative_assign(counts, sizes, [1 / k] * k, seed)
    row_part = part if ids is None else part[ids]
    index = np.arange(len(y))
    return [(index[row_part != f], index[row_part == f]) for f in range(k) if (row_part == f).any()]


def _group_folds(
    groups: np.ndarray, strata: np.ndarray | None, k: int, seed: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    import warnings

    from sklearn.model_selection import GroupKFold, StratifiedGroupKFold

    k = max(2, min(k, len(np.unique(groups))))
    x = np.zeros(len(groups))
    with warnings.catch_warnings():  # "the least populated class has only N members": k was lowered
        warnings.simplefilter("ignore", UserWarning)
        if strata is None:
            splitter = GroupKFold(n_splits=k, shuffle=True, random_state=seed)
            return [(tr, va) for tr, va in splitter.split(x, groups=groups)]
        splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
        return [(tr, va) for tr, va in splitter.split(x, strata, groups)]


class _Solver:
    """One task's L2-regularised linear problem on standardised features, in the head's layout.

    ``weight`` ``[n_outputs, dim]`` and ``bias`` ``[n_outputs]`` hold the last solution. The
    scikit-learn ``C`` (or ``alpha``) for a given ``l2`` reproduces ``head.loss + 0.5 * l2 * ||W||^2``:

    * multiclass, 3+ classes: multinomial logistic regression minimises
      ``mean CE + ||W||^2 / (2 C n)``, so ``C = 1 / (l2 n)``;
    * multiclass, 2 classes: scikit-learn fits one row ``w``; the head's two rows at the optimum are
      ``-w/2, +w/2`` (same logit difference, smallest norm), whose penalty is half of ``||w||^2``, so
      ``C = 2 / (l2 n)``;
    * multilabel: the head's loss averages over labels too, so each label's regression gets
      ``C = 1 / (l2 n L)``;
    * regression: the head's loss is the mean squared error (no 1/2), ridge minimises
      ``||r||^2 + alpha ||w||^2``, so ``alpha = l2 n / 2``.

    ``balanced``: scikit-learn's ``class_weight="balanced"``, the weights of
    :func:`graft.heads.balanced_weights`; they sum to ``n``, so the same ``C`` holds.
    """

    def __init__(
        self, task: str, n_outputs: int, *, tol: float, max_iter: int, warm_start: bool = False,
        balanced: bool = False,
    ) -> None:  # fmt: skip
        _check_task(task)
        self.task, self.n_outputs, self.balanced = task, n_outputs, balanced
        self.tol, self.max_iter, self.warm_start = tol, max_iter, warm_start
        self._models: dict[Any, Any] = {}
        self.capped = False
        self.weight = np.zeros((n_outputs, 0))
        self.bias = np.zeros(n_outputs)

    def fit(self, xs: np.ndarray, y: np.ndarray, l2: float) -> None:
        """Solve at ``l2``; ``capped`` tells whether a solver stopped at ``max_iter``."""
        from sklearn.exceptions import ConvergenceWarning

        self.capped = False
        with warnings.catch_warnings():
            # reported once, in graft's words, by the caller that cares (see ``capped``)
            warnings.simplefilter("ignore", ConvergenceWarning)
            self._fit(xs, y, l2)

    def _fit(self, xs: np.ndarray, y: np.ndarray, l2: float) -> None:
        n, dim = xs.shape
        self.weight = np.zeros((self.n_outputs, dim))
        self.bias = np.zeros(self.n_outputs)
        if self.task == "regression":
            from sklearn.linear_model import Ridge

            model = Ridge(alpha=0.5 * l2 * n).fit(xs, y.ravel())
            self.weight[0], self.bias[0] = model.coef_, model.intercept_
        elif self.task == "multiclass":
            self._fit_multiclass(xs, y, l2)
        else:
            for j in range(self.n_outputs):
                column = y[:, j]
                if column.min() == column.max():
                    self.bias[j] = _ABSENT_LOGIT if column[0] > 0.5 else -_ABSENT_LOGIT
                    continue
                model = self._logistic(j, xs, column.astype(int), C=1.0 / (l2 * n * self.n_outputs))
                self.weight[j], self.bias[j] = model.coef_[0], model.intercept_[0]

    def _fit_multiclass(self, xs: np.ndarray, y: np.ndarray, l2: float) -> None:
        n = len(y)
        present = np.unique(y)
        if len(present) < 2:
            raise DataError(
                f"a linear probe needs examples of at least 2 classes; the training data has only class "
                f"{present.tolist()}"
            )
        if len(present) == 2:
            model = self._logistic("binary", xs, y, C=2.0 / (l2 * n))
            w, b = model.coef_[0], model.intercept_[0]
            self.weight[present] = np.stack([-w / 2, w / 2])
            self.bias[present] = [-b / 2, b / 2]
        else:
            model = self._logistic("multinomial", xs, y, C=1.0 / (l2 * n))
            self.weight[model.classes_], self.bias[model.classes_] = model.coef_, model.intercept_
        absent = np.setdiff1d(np.arange(self.n_outputs), present)
        self.bias[absent] = self.bias[present].min() - _ABSENT_LOGIT

    def _logistic(self, key: Any, xs: np.ndarray, y: np.ndarray, *, C: float) -> Any:
        """Fit the logistic regression stored under ``key`` (warm-started when it exists)."""
        from sklearn.linear_model import LogisticRegression

        model = self._models.get(key)
        if model is None:
            model = LogisticRegression(
                tol=self.tol, max_iter=self.max_iter, warm_start=self.warm_start,
                class_weight="balanced" if self.balanced else None,
            )  # fmt: skip
            self._models[key] = model
        model.set_params(C=C).fit(xs, y)
        self.capped = self.capped or int(np.max(model.n_iter_)) >= self.max_iter
        return model


def _numpy(values: Any) -> np.ndarray:
    return np.asarray(values.detach().cpu() if isinstance(values, torch.Tensor) else values)


def _n_outputs(task: str, y: Any) -> int:
    y_np = _numpy(y)
    if task == "multiclass":
        return int(y_np.max()) + 1 if y_np.size else 0
    if task == "multilabel":
        return y_np.shape[1] if y_np.ndim == 2 else 0
    return 1


def _targets(task: str, y: Any, n: int, n_outputs: int) -> np.ndarray:
    """``y`` as numpy, checked against the number of examples and the head's outputs."""
    y_np = _numpy(y)
    if len(y_np) != n:
        raise DataError(f"{n} feature rows but {len(y_np)} targets")
    if task == "multiclass":
        if y_np.ndim != 1 or (y_np.size and (y_np.min() < 0 or y_np.max() >= n_outputs)):
            raise DataError(f"multiclass targets must be class indices in [0, {n_outputs}), one per example")
        return y_np.astype(np.int64)
    if task == "multilabel":
        if y_np.ndim != 2 or y_np.shape[1] != n_outputs:
            raise DataError(f"multilabel targets must be a 0/1 matrix [n, {n_outputs}], got {y_np.shape}")
        return y_np.astype(np.float64)
    return y_np.astype(np.float64).reshape(n)


def _check_features(x: torch.Tensor, in_dim: int) -> None:
    if x.ndim != 2 or x.shape[1] != in_dim:
        raise DataError(f"features must be [n, {in_dim}] for this head, got {tuple(x.shape)}")


def _check_task(task: str) -> None:
    if task not in ("multiclass", "multilabel", "regression"):
        raise ConfigError(f"unknown task {task!r}; expected multiclass, multilabel or regression")


def _check_l2(values: Sequence[float]) -> None:
    if not values:
        raise ConfigError("the L2 grid is empty")
    bad = [v for v in values if not v > 0]
    if bad:
        raise ConfigError(f"L2 strengths must be > 0, got {bad}")
