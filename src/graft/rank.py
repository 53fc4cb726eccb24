"""Ranking candidate backbones for a labeled dataset before training any of them: ``graft rank``.

Each candidate's frozen features are extracted once (through the feature cache) and scored two ways:

* **LogME** (You et al., ICML 2021): the log marginal evidence of a Bayesian linear model from the
  features to the targets, maximised over its two precisions, per example, averaged over targets
  (one-vs-rest 0/1 targets per class, each label of multilabel data, the value for regression). No
  training and no folds: a number that tracks how well a fine-tuned model will do. Computed with the
  fixed-point iteration of the authors' reference implementation (thuml/LogME, ``_fit_fixed_point``),
  with its log-determinant over all D feature dimensions (their issue #23: the reference drops the
  D - k zero eigenvalues, which inflates the evidence of wide features on few examples).
* **the cross-validated linear probe** (:mod:`graft.probe`): the selection metric of an L2-tuned
  linear head, mean and std over k stratified folds. Every candidate is scored on the same folds.

Candidates are sorted by the CV score, which is the quantity a linear probe would ship with; LogME is
shown beside it as a second, training-free opinion.

Example:
    >>> result = graft.rank.rank("../shared/data/text/trec/train.jsonl", ["minilm", "mpnet"],
    ...                          limit=8)                                   # doctest: +SKIP
    >>> [row.backbone for row in result.rows]                                # doctest: +SKIP
    ['mpnet', 'minilm']
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from graft.config import SEED, DataConfig
from graft.errors import ConfigError, ContractError, format_problems

if TYPE_CHECKING:
    from graft.backbones.base import Backbone
    from graft.data import Dataset


# --------------------------------------------------------------------------------------------------
# LogME


def logme(features: Any, targets: Any, task: str) -> float:
    """LogME of ``features`` for ``targets``: mean over targets of the maximised log evidence per example.

    Higher is better; values are comparable between feature sets for the same targets only.

    Args:
        features: ``[n, d]`` array (numpy or torch).
        targets: class indices ``[n]`` (multiclass: one 0/1 target per class present), a 0/1 matrix
            ``[n, labels]`` (multilabel: labels that vary), or values ``[n]`` / ``[n, k]`` (regression).
        task: "multiclass", "multilabel" or "regression".

    Example:
        >>> rng = np.random.default_rng(0)
        >>> y = np.arange(60) % 3
        >>> x = rng.normal(size=(60, 8)); x[:, 0] += 3 * y
        >>> logme(x, y, "multiclass") > logme(x, rng.permutation(y), "multiclass")
        True
    """
    f = _as_numpy(features).astype(np.float64)
    y = _as_numpy(targets)
    if f.ndim != 2 or len(f) != len(y) or len(f) < 2:
        raise ConfigError(f"LogME needs features [n >= 2, d] and n targets; got {f.shape} and {len(y)}")
    if not np.isfinite(f).all():
        raise ConfigError("LogME: the features hold NaN or infinite values")
    columns = _target_columns(y, task)
    if not columns:
        raise ConfigError("LogME needs targets that vary: every class, label or value here is constant")
    from threadpoolctl import threadpool_limits

    # One BLAS thread: on a 2-core machine shared with other work, OpenBLAS's spinning threads made
    # LogME of 48 x 384 features take 1.1 s instead of 2 ms, and of 2000 x 768 take 6.4 s instead of 1.2 s.
    with threadpool_limits(limits=1, user_api="blas"):
        u, s = _svd(f)
        return float(np.mean([_evidence(u, s, f.shape[1], column) for column in columns]))


def _as_numpy(a: Any) -> np.ndarray:
    if hasattr(a, "detach"):  # a torch tensor; torch itself is not imported here
        a = a.detach().cpu().numpy()
    return np.asarray(a)


def _target_columns(y: np.ndarray, task: str) -> list[np.ndarray]:
    if task == "multiclass":
        # classes absent from a subsample would give an all-zero target with a degenerate optimum
        return [(y == c).astype(np.float64) for c in np.unique(y)]
    if task == "multilabel":
        columns = [y[:, j].astype(np.float64) for j in range(y.shape[1])]
    elif task == "regression":
        values = y.astype(np.float64)
        columns = [values] if values.ndim == 1 else [values[:, j] for j in range(values.shape[1])]
    else:
        raise ConfigError(f"unknown task {task!r}; expected multiclass, multilabel or regression")
    return [c for c in columns if c.max() > c.min()]


def _svd(f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``u [n, k]`` and ``s [k]`` of the features' SVD, zero singular values dropped when n > d."""
    n, d = f.shape
    if n <= d:
        u, s, _ = np.linalg.svd(f, full_matrices=False)
        return u, s
    # Many more examples than dimensions: the d x d Gram matrix is the cheap way (as the reference does).
    _, eig, vh = np.linalg.svd(f.T @ f)
    s = np.sqrt(eig)
    k = int((s > 1e-10).sum())
    s, vh = s[:k], vh[:k]
    return (f @ vh.T) / s, s


def _evidence(u: np.ndarray, s: np.ndarray, d: int, y: np.ndarray) -> float:
    """Maximised log evidence per example of ``y ~ N(F w, 1/beta)``, ``w ~ N(0, 1/alpha)``.

    The fixed point of MacKay's updates (alpha = gamma / |m|^2, beta = (n - gamma) / |y - F m|^2) in
    the eigenbasis of F^T F, as in the reference ``_fit_fixed_point``: at most 11 updates, stopped when
    alpha/beta moves by less than 0.1%.
    """
    n = len(y)
    sigma = s**2
    x = u.T @ y
    x2 = x**2
    res_x2 = float((y**2).sum() - x2.sum())  # the part of y outside the features' span
    alpha, beta = 1.0, 1.0
    for _ in range(11):
        t = alpha / beta
        gamma = (sigma / (sigma + t)).sum()
        m2 = (sigma * x2 / (t + sigma) ** 2).sum()
        res2 = (x2 / (1 + sigma / t) ** 2).sum() + res_x2
        alpha = gamma / (m2 + 1e-5)
        beta = (n - gamma) / (res2 + 1e-5)
        if abs(alpha / beta - t) / t <= 1e-3:
            break
    # log|A| with A = alpha I + beta F^T F over all d dimensions: the d - k directions outside the
    # features' span have eigenvalue alpha (thuml/LogME issue #23 leaves them out).
    log_det = np.log(alpha + beta * sigma).sum() + (d - len(sigma)) * np.log(alpha)
    evidence = (
        d / 2.0 * np.log(alpha)
        + n / 2.0 * np.log(beta)
        - 0.5 * log_det
        - beta / 2.0 * res2
        - alpha / 2.0 * m2
        - n / 2.0 * np.log(2 * np.pi)
    )
    return float(evidence / n)


# --------------------------------------------------------------------------------------------------
# candidates


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One backbone to rank: a source spec and its weights file, or a ready :class:`Backbone`."""

    spec: str
    weights: str | None = None
    backbone: Backbone | None = None

    @property
    def name(self) -> str:
        return self.spec if self.weights is None else f"{self.spec}={Path(self.weights).name}"


def parse_candidate(item: str | Backbone) -> Candidate:
    """``SPEC`` or ``SPEC=WEIGHTS`` (the CLI's ``--backbone``), or a :class:`Backbone`.

    Example:
        >>> parse_candidate("arch:resnet20=models/resnet20_cifar10.th")
        Candidate(spec='arch:resnet20', weights='models/resnet20_cifar10.th', backbone=None)
    """
    if not isinstance(item, str):
        return Candidate(spec=str(getattr(item, "source", type(item).__name__)), backbone=item)
    spec, sep, weights = item.partition("=")
    if not spec.strip() or (sep and not weights.strip()):
        raise ConfigError(
            f"backbone candidate {item!r} is not SPEC or SPEC=WEIGHTS, e.g. minilm or "
            "arch:resnet20=resnet20_cifar10.th"
        )
    return Candidate(spec=spec.strip(), weights=weights.strip() or None)


def _check_candidates(candidates: list[Candidate], data_modality: str, where: str) -> None:
    """Each candidate's source parsed and its modality checked from names only, before any work.

    A source whose modality is known only once loaded ("any": a hub id offline) is checked then.
    Every problem is collected and raised once.
    """
    from graft.backbones import source_modality
    from graft.backbones.base import Contract, check_modality

    problems, bad = [], set()
    seen: set[tuple[str, str | None]] = set()
    for i, c in enumerate(candidates):
        found = []
        if c.backbone is None and (c.spec, c.weights) in seen:
            found.append(f"{c.name}: given twice")
        seen.add((c.spec, c.weights))
        try:
            if c.backbone is not None:
                modality = c.backbone.contract.modality
            else:
                modality = source_modality(c.spec)
                if c.weights is not None and not Path(c.weights).is_file():
                    found.append(f"{c.name}: weights file not found: {c.weights}")
            if modality != "any":
                check_modality(data_modality, Contract(modality), c.spec, where)
        except (ConfigError, ContractError) as exc:
            found.append(str(exc))
        if found:
            bad.add(i)
            problems.extend(found)
    if problems:
        kind = ContractError if all("modality mismatch" in p for p in problems) else ConfigError
        if len(problems) == 1:
            raise kind(problems[0])
        header = f"{len(bad)} of {len(candidates)} backbone candidates cannot be ranked:"
        raise kind(format_problems(header, problems))


# --------------------------------------------------------------------------------------------------
# ranking


@dataclasses.dataclass
class RankRow:
    """One candidate's scores.

    Attributes:
        backbone: the candidate as given (``spec`` or ``spec=weights-file-name``).
        weights: the weights file, if any.
        feature_dim: the width of its features.
        logme: LogME of its features (higher is better).
        cv_score: mean selection metric of the L2-tuned linear probe over the folds.
        cv_std: its standard deviation over the folds.
        l2: the probe's chosen L2 strength.
        seconds: time for this candidate (loading, features, scoring).
        features_cached: whether its features came from the feature cache.
    """

    backbone: str
    weights: str | None
    feature_dim: int
    logme: float
    cv_score: float
    cv_std: float
    l2: float
    seconds: float
    features_cached: bool

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class RankResult:
    """Candidates sorted by CV score (best first), with what they were scored on."""

    rows: list[RankRow]
    data: str
    task: str
    n_examples: int
    n_classes: int
    metric: str
    how: str
    seed: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "data": self.data,
            "task": self.task,
            "n_examples": self.n_examples,
            "n_classes": self.n_classes,
            "metric": self.metric,
            "cv": self.how,
            "seed": self.seed,
            "ranking": [{"rank": i + 1, **row.to_dict()} for i, row in enumerate(self.rows)],
        }

    def table(self) -> str:
        """The ranking as a text table for a terminal."""
        width = max([len("backbone"), *(len(r.backbone) for r in self.rows)])
        score = f"CV {self.metric}"
        lines = [
            f"{self.data}: {self.n_examples} examples"
            + (f", {self.n_classes} classes" if self.n_classes else "")
            + f" ({self.task}); CV: {self.how}",
            f"{'#':>2}  {'backbone':<{width}}  {'dim':>5}  {'LogME':>8}  {score:>18}  {'seconds':>9}",
        ]
        for i, r in enumerate(self.rows, 1):
            cv = f"{r.cv_score:.4f} ± {r.cv_std:.4f}"
            secs = f"{r.seconds:.1f}" + ("*" if r.features_cached else "")
            lines.append(
                f"{i:>2}  {r.backbone:<{width}}  {r.feature_dim:>5}  {r.logme:>8.4f}  {cv:>18}  {secs:>9}"
            )
        if any(r.features_cached for r in self.rows):
            lines.append("* features from the cache")
        return "\n".join(lines)


def rank(
    data: Any,
    backbones: Sequence[str | Backbone],
    *,
    config: DataConfig | None = None,
    limit: int | None = None,
    folds: int = 5,
    seed: int = 0,
    labels: list[Any] | None = None,
    progress: bool = True,
) -> RankResult:
    """Score candidate backbones on labeled data by LogME and by a cross-validated linear probe.

    Every candidate's modality is checked against the data's, from names only, before anything is
    read or loaded; then each one's frozen features are extracted (or read from the feature cache)
    and scored on the same folds.

    Args:
        data: labeled data, as for :func:`graft.fit` (a file, a folder of class folders, a
            DataFrame, or inputs with ``labels``).
        backbones: candidates: source specs, ``spec=weights-file`` (e.g.
            ``arch:resnet20=resnet20_cifar10.th``), or :class:`Backbone` objects.
        config: how to read the data (columns, task, encoding, ...).
        limit: keep at most this many examples of each class (multiclass), or in all (multilabel,
            regression), drawn with ``seed``: a quicker ranking of a large dataset.
        folds: k of the stratified cross-validation of the probe.
        seed: seed of the subsample and the folds.
        labels: targets when ``data`` is a list of inputs.
        progress: progress bars and messages on stderr.

    Returns:
        A :class:`RankResult` whose rows are sorted by CV score, best first (ties by LogME).

    Raises:
        ConfigError: a candidate spec is unknown or malformed, a weights file is missing.
        ContractError: a candidate was pretrained on another input type than the data's (named).
        DataError: the data cannot be read, or a class has fewer than 2 examples.
    """
    from graft.data import detect_modality, layout_splits, read_dataset
    from graft.data.splits import sample_per_class

    cfg = config or DataConfig()
    candidates = [parse_candidate(b) for b in backbones]
    if not candidates:
        raise ConfigError("graft rank needs at least one backbone candidate (--backbone SPEC)")
    if limit is not None and limit < 1:
        raise ConfigError(f"limit must be >= 1, got {limit}")
    if folds < 2:
        raise ConfigError(f"folds must be >= 2, got {folds}")
    SEED.check("seed", seed)
    parts = layout_splits(data) if isinstance(data, str | Path) and labels is None else {}
    if parts:
        _say(progress, f"data: {data} is split into {', '.join(parts)} folders; ranking on its train part")
        data = parts["train"]
    where = str(data) if isinstance(data, str | Path) else "the data"
    data_modality = detect_modality(list(data) if labels is not None else data, cfg)
    _check_candidates(candidates, data_modality, where)

    ds = read_dataset(data, cfg, labels=labels)
    if limit is not None:
        ds = sample_per_class(ds, limit, seed)
    _say(progress, f"data: {ds.source}: {len(ds)} examples ({ds.task})")
    return _score_all(ds, candidates, folds=folds, seed=seed, progress=progress)


def _score_all(
    ds: Dataset, candidates: list[Candidate], *, folds: int, seed: int, progress: bool
) -> RankResult:
    from graft.evaluation import SELECTION
    from graft.probe import select_l2, stratified_folds

    splits = stratified_folds(ds.task, ds.targets, folds, seed, label_space=ds.label_space)
    rows = []
    how = ""
    for c in candidates:
        t = time.perf_counter()
        x, cached, dim = _features(c, ds, progress)
        score = logme(x, ds.targets, ds.task)
        selection = select_l2(ds.task, x, ds.targets, folds=splits)
        how = selection.how
        std = next(row["score_std"] for row in selection.table if row["l2"] == selection.l2)
        rows.append(
            RankRow(
                backbone=c.name,
                weights=c.weights,
                feature_dim=dim,
                logme=score,
                cv_score=selection.score,
                cv_std=std,
                l2=selection.l2,
                seconds=time.perf_counter() - t,
                features_cached=cached,
            )
        )
        _say(
            progress,
            f"{c.name}: LogME {score:.4f}, CV {SELECTION[ds.task]} {selection.score:.4f} ± {std:.4f}",
        )
    rows.sort(key=lambda r: (-r.cv_score, -r.logme))
    return RankResult(
        rows=rows,
        data=str(ds.source),
        task=ds.task,
        n_examples=len(ds),
        n_classes=len(ds.label_space) if ds.task != "regression" else 0,
        metric=SELECTION[ds.task],
        how=how,
        seed=seed,
    )


def _features(c: Candidate, ds: Dataset, progress: bool) -> tuple[Any, bool, int]:
    """(features, whether cached, feature dim) of one candidate; its model is released afterwards."""
    import gc

    import torch

    from graft.backbones import create_backbone
    from graft.backbones.base import check_modality
    from graft.features import FeatureCache

    torch.manual_seed(0)  # an arch: source without weights is a random network: the same one each run
    bb = c.backbone if c.backbone is not None else create_backbone(c.spec, weights=c.weights)
    check_modality(ds.modality, bb.contract, c.spec, str(ds.source))
    if not getattr(bb, "pretrained", True):
        _say(progress, f"warning: {c.name} has random weights (no weights file): it ranks random features")
    feats, cached = FeatureCache().get_or_extract(
        bb,
        ds.examples,
        ds.examples_fingerprint(),
        progress=progress,
        desc=f"features: {c.name}",
        weights_sha256=bb.weights_sha256(),
    )
    dim = int(bb.feature_dim)
    if c.backbone is None:
        large = sum(p.numel() for p in bb.parameters()) > 10_000_000
        del bb
        if large:  # free it before the next candidate loads (a full collection costs ~0.5 s)
            gc.collect()
    return feats, cached, dim


def _say(progress: bool, message: str) -> None:
    if progress:
        print(message, file=sys.stderr, flush=True)
