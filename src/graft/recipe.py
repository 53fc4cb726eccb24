"""The recipe: backbone + strategy + training settings -> a trained model, on any split.

A :class:`Workbench` holds what every model of one run shares: the pretrained backbone (each training
starts from a fresh copy; it is never trained in place), its features (computed once through the
on-disk cache and looked up per example), the task, the settings and the engine's options. A strategy
trains one model with ``strategy.train(bench, train, val, settings)``; model choice runs it on folds
(:func:`cross_validate`), the final model on every training example, and the same calls serve
baselines and learning curves.

Example:
    >>> bench = Workbench(create_backbone("minilm"), RunConfig(), "multiclass", ("a", "b"))  # doctest: +SKIP
    >>> trained = get_strategy("linear_probe").train(bench, train, None, {"l2": 0.01})    # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from graft.config import RunConfig, StrategyConfig
from graft.data import Dataset
from graft.engine import Callback, Engine
from graft.errors import DataError
from graft.evaluation import SELECTION, EvaluationResult
from graft.evaluation.outputs import head_outputs, metric_fn_for
from graft.features import FeatureCache, extract_features
from graft.heads import Head, TaskModel, make_head

if TYPE_CHECKING:
    from graft.backbones.base import Backbone, Contract
    from graft.evaluation.costs import Costs
    from graft.strategies import Strategy
    from graft.strategies.base import FineTune, Plan


# The probe's L2 when no fold can validate it (a class with one example): the middle of the grid.
FALLBACK_L2 = 1e-2


@dataclass
class Trained:
    """One model trained by a strategy on one split.

    Attributes:
        network: backbone + head (for a frozen strategy the backbone is the shared pretrained one).
        strategy: the strategy that trained it.
        frozen_backbone: the backbone kept its pretrained weights (features can come from the cache).
        val_metric: the selection metric on the validation part, when there was one.
        best_epoch: the epoch whose weights were kept (0: the starting probe; ``None``: no epochs).
        history: per-epoch records of engine training.
        record: what the strategy chose or built (L2, steps, adapters), for the report and the bundle.
        shipped / shipped_reason: set when the model holds another strategy's result (LP-FT that never
            beat its starting probe ships the probe).
    """

    network: TaskModel
    strategy: str
    frozen_backbone: bool
    val_metric: float | None = None
    best_epoch: int | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    record: dict[str, Any] = field(default_factory=dict)
    shipped: str | None = None
    shipped_reason: str | None = None


@dataclass(frozen=True)
class StepFlops:
    """Floating-point operations per example of one network: ``forward`` (predicting, extracting
    features) and ``train`` (a training step: forward + backward)."""

    forward: float
    train: float


@dataclass
class Selection:
    """A strategy's settings chosen on folds, with the evidence."""

    strategy: str
    settings: dict[str, Any]
    score: float
    score_std: float
    how: str
    seconds: float
    fold_scores: list[float] = field(default_factory=list)
    detail: dict[str, Any] = field(default_factory=dict)
    # the model of a single hold-out fold: it is the final model of a fine-tuning strategy
    trained: Trained | None = None
    # out-of-fold raw outputs of the chosen settings: (row indices into the data chosen on, outputs);
    # the temperature of the shipped model is fitted on them
    oof: tuple[np.ndarray, torch.Tensor] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The evidence as the bundle records it: ``seconds`` goes to the run's timings instead."""
        data = dataclasses.asdict(dataclasses.replace(self, trained=None, oof=None))
        for key in ("trained", "oof", "seconds"):
            data.pop(key)
        return _finite(data)


def _finite(value: Any) -> Any:
    """JSON-safe: NaN and infinities become ``None``."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


class Workbench:
    """What the models of one run share, and the two ways of training them (probe, engine)."""

    def __init__(
        self,
        backbone: Backbone,
        cfg: RunConfig,
        task: str,
        label_space: tuple[Any, ...],
        *,
        progress: bool = True,
        callbacks: Sequence[Callback] = (),
        checkpoint_dir: Path | None = None,
        resume: bool = False,
        metric: str | None = None,
    ) -> None:
        self.backbone, self.cfg, self.task, self.label_space = backbone, cfg, task, label_space
        self.progress, self.callbacks = progress, list(callbacks)
        self.checkpoint_root, self.resume = checkpoint_dir, resume
        self.pretrained = getattr(backbone, "pretrained", True)
        self.weights_sha256 = backbone.weights_sha256()  # before any training: the start point
        self.costs: Costs | None = None  # --costs: measured on the scored rows
        self.metric_name = metric or SELECTION[task]  # what settings are chosen on (higher is better)
        self.cache_hits: list[bool] = []
        self.timings: dict[str, float] = {"features": 0.0}
        self._cache = FeatureCache()
        self._rows: dict[Any, int] = {}
        self._matrix = torch.empty(0)
        self._checkpointing, self._tag, self._full_curves = False, None, False
        self._step_seconds: float | None = None
        self._step_flops: StepFlops | None = None

    # -- messages ------------------------------------------------------------------------------
    def say(self, message: str) -> None:
        if self.progress:
            from tqdm.auto import tqdm

            tqdm.write(message, file=sys.stderr)

    # -- features of the pretrained backbone ---------------------------------------------------
    def features(self, data: Dataset | list[Any], desc: str = "extracting features") -> torch.Tensor:
        """Pretrained features of ``data``'s examples, in order: extracted once (through the on-disk
        cache) and then looked up, so folds and refits never extract twice."""
        examples = data.examples if isinstance(data, Dataset) else list(data)
        missing = list(dict.fromkeys(e for e in examples if e not in self._rows))
        if missing:
            from graft.data.dataset import examples_fingerprint

            t = time.perf_counter()
            feats, hit = self._cache.get_or_extract(
                self.backbone, missing, examples_fingerprint(self.contract.modality, missing),
                progress=self.progress, desc=desc, weights_sha256=self.weights_sha256,
            )  # fmt: skip
            self.cache_hits.append(hit)
            start = len(self._rows)
            self._rows.update({e: start + i for i, e in enumerate(missing)})
            self._matrix = feats if start == 0 else torch.cat([self._matrix, feats])
            self.timings["features"] += time.perf_counter() - t
        return self._matrix[torch.as_tensor([self._rows[e] for e in examples], dtype=torch.long)]

    @property
    def contract(self) -> Contract:
        return self.backbone.contract

    def outputs(self, trained: Trained, data: Dataset, desc: str) -> torch.Tensor:
        """Raw outputs of a trained model on ``data`` (cached features when its backbone is frozen)."""
        if trained.frozen_backbone:
            feats = self.features(data, desc)
        else:
            feats = extract_features(
                trained.network.backbone, data.examples, progress=self.progress, desc=desc
            )
        return head_outputs(trained.network.head, feats)

    def score(self, trained: Trained, data: Dataset) -> float:
        return self.scored_outputs(trained, data)[0]

    def scored_outputs(self, trained: Trained, data: Dataset) -> tuple[float, torch.Tensor]:
        """The selection metric of a trained model on ``data``, and its raw outputs there."""
        outputs = self.outputs(trained, data, "scoring validation")
        metric = metric_fn_for(trained.network.head, self.task, self.metric_name)
        return metric(outputs, torch.as_tensor(data.targets)), outputs

    # -- building blocks -----------------------------------------------------------------------
    def new_head(self, train: Dataset) -> Head:
        torch.manual_seed(self.cfg.train.seed)
        n_outputs = len(self.label_space) if self.task != "regression" else 1
        head = make_head(self.task, self.backbone.feature_dim, n_outputs)
        if self.task == "regression":
            head.set_target_stats(torch.as_tensor(train.targets))
        elif self.balanced:
            head.set_class_weight(train.targets)
        return head

    @property
    def balanced(self) -> bool:
        """``--class-weight balanced``: the probe and the fine-tuning loss weigh classes equally."""
        return self.cfg.train.class_weight == "balanced" and self.task != "regression"

    def fresh_backbone(self) -> Backbone:
        """A trainable copy of the pretrained backbone."""
        return copy.deepcopy(self.backbone)

    @contextlib.contextmanager
    def checkpointing(self, tag: str | None = None) -> Iterator[None]:
        """Trainings of the run's model inside this block (the engine's, contrastive tuning's) write
        checkpoints to ``checkpoints/<tag or strategy>`` (and resume from them), and call the run's
        callbacks."""
        previous = self._checkpointing, self._tag
        self._checkpointing, self._tag = True, tag
        try:
            yield
        finally:
            self._checkpointing, self._tag = previous

    @contextlib.contextmanager
    def without_checkpoints(self) -> Iterator[None]:
        """Trainings inside this block write no checkpoints and resume from none (the models of a
        cross-validated estimate are not the run's model)."""
        previous, self.checkpoint_root = self.checkpoint_root, None
        try:
            yield
        finally:
            self.checkpoint_root = previous

    def checkpoint_dir(self, name: str) -> Path | None:
        """Where a training named ``name`` (its strategy) keeps its checkpoints: inside
        :meth:`checkpointing` in a run with a folder, ``checkpoints/<tag or name>``; elsewhere ``None``."""
        if not self._checkpointing or self.checkpoint_root is None:
            return None
        return self.checkpoint_root / (self._tag or name)

    @property
    def run_callbacks(self) -> list[Callback]:
        """The user's callbacks, called by the trainings of the run's model (inside :meth:`checkpointing`)."""
        return self.callbacks if self._checkpointing else []

    @contextlib.contextmanager
    def full_curves(self) -> Iterator[None]:
        """Engine trainings inside this block run every epoch (no early stopping): cross-validation
        needs each fold's whole validation curve."""
        previous, self._full_curves = self._full_curves, True
        try:
            yield
        finally:
            self._full_curves = previous

    def train_seconds_per_example(self, data: Dataset) -> float:
        """Seconds one example costs in a training epoch on this machine (a timed forward + backward of
        the whole network on a few examples, plus a third for validation and data loading). With
        ``--batching by_length`` texts are timed at their mean length: such batches pad little."""
        if self._step_seconds is None:
            network, batch, targets = self._step_batch(data)
            timings = []
            for _ in range(3):  # the first step pays for lazy initialisation; the fastest is the cost
                t = time.perf_counter()
                network.head.loss(network(batch), targets).backward()
                timings.append(time.perf_counter() - t)
            self._step_seconds = 1.33 * min(timings[1:]) / len(targets)
        return self._step_seconds

    def step_flops(self, data: Dataset) -> StepFlops:
        """Floating-point operations one example costs the whole network (backbone + head): the forward
        pass counted by torch's ``FlopCounterMode`` on the examples :meth:`train_seconds_per_example`
        times, a training step taken as three forwards. A count, not a timing: the same on a fast and
        on a loaded machine. Counted once per workbench.

        The count is made kernel-independent: attention through its math path (the fused CPU kernel
        counts nothing), an LSTM by its matrix products (:func:`_lstm_layer_flops`). Backward is not
        counted: torch counts a grouped convolution's backward as a dense one (35x the forward on
        MobileNetV3), and the gradients of inputs and of weights each cost about a forward."""
        if self._step_flops is None:
            from torch.nn.attention import SDPBackend, sdpa_kernel
            from torch.utils.flop_counter import FlopCounterMode

            network, batch, targets = self._step_batch(data)
            network.to("cpu")  # the bench's backbone may sit on a GPU: count the CPU kernels everywhere
            lstm = {torch.ops.aten.mkldnn_rnn_layer: _lstm_layer_flops}
            with FlopCounterMode(display=False, custom_mapping=lstm) as counter, sdpa_kernel(SDPBackend.MATH):
                network.head.loss(network(batch), targets)
            forward = counter.get_total_flops() / len(targets)
            n_params = sum(p.numel() for p in network.parameters())
            if forward < n_params:
                # an operation torch has no formula for counted nothing: take each parameter as one
                # multiply-add per example, as in a network without weight sharing
                forward = 2.0 * n_params
            self._step_flops = StepFlops(forward=forward, train=3.0 * forward)
        return self._step_flops

    def _step_batch(self, data: Dataset) -> tuple[TaskModel, dict[str, torch.Tensor], torch.Tensor]:
        """A fresh network and a batch of up to 16 of ``data``'s examples (by ``--batching by_length``:
        those nearest the mean length) with their targets: one training step to time or to count."""
        n = min(16, len(data))
        lengths = text_lengths(data) if self.cfg.train.batching == "by_length" else None
        pick = list(range(n))
        if lengths is not None:
            mean = sum(lengths) / len(lengths)
            pick = sorted(range(len(lengths)), key=lambda i: abs(lengths[i] - mean))[:n]
        network = TaskModel(self.fresh_backbone(), self.new_head(data))
        batch = network.backbone.preprocess([data.examples[i] for i in pick])
        return network, batch, torch.as_tensor(data.targets[pick])

    def activated(self, trained: Trained, data: Dataset, desc: str = "scoring test set") -> np.ndarray:
        """Activated outputs of a trained model on ``data``: class probabilities, label probabilities
        or values."""
        return trained.network.head.activate(self.outputs(trained, data, desc)).numpy()

    def predict(self, trained: Trained, data: Dataset, desc: str = "scoring test set") -> np.ndarray:
        """Predicted targets of a trained model on ``data`` (class ids, a 0/1 matrix or values)."""
        from graft.evaluation.outputs import predicted_targets

        return predicted_targets(self.task, self.activated(trained, data, desc))

    def evaluate(
        self, activated: np.ndarray, data: Dataset, train_targets: np.ndarray, thresholds: Any = None
    ) -> EvaluationResult:
        """Metrics, intervals and the no-skill baselines (fitted on ``train_targets``) of a model's
        activated outputs on held-out data (multilabel: answered at ``thresholds``)."""
        from graft.evaluation import evaluate_predictions, fit_majority
        from graft.evaluation.outputs import predicted_targets

        majority = fit_majority(self.task, train_targets, len(self.label_space))
        return evaluate_predictions(
            self.task, data.targets, predicted_targets(self.task, activated, thresholds), self.label_space,
            majority=majority, seed=self.cfg.train.seed,
            proba=None if self.task == "regression" else activated,
        )  # fmt: skip

    # -- the linear probe ------------------------------------------------------------------------
    def choose_l2(self, x: torch.Tensor, targets: np.ndarray, *, for_init: bool = False) -> float:
        """The probe's L2 by stratified k-fold cross-validation on these features: the one-standard-
        error choice for a head that predicts, the best mean score for one that fine-tuning starts from
        (``for_init``: a head shrunk toward zero passes almost no gradient into the backbone)."""
        from graft.probe import select_l2, stratified_folds

        try:
            folds = stratified_folds(self.task, targets, max(2, self.cfg.data.folds), self.cfg.train.seed)
        except DataError:  # a class with a single example: no fold can validate it
            return FALLBACK_L2
        return select_l2(
            self.task, x, targets, folds=folds, one_standard_error=not for_init, metric=self.metric_name,
            balanced=self.balanced,
        ).l2  # fmt: skip

    def fit_probe(
        self, strategy: Strategy, train: Dataset, val: Dataset | None, settings: dict[str, Any]
    ) -> Trained:
        from graft.probe import fit_linear_head

        x = self.features(train)
        l2 = settings.get("l2")
        if l2 is None:
            l2 = self.choose_l2(x, train.targets)
        head = self.new_head(train)
        fit_linear_head(head, x, train.targets, l2)
        trained = Trained(TaskModel(self.backbone, head), strategy.name, True, record={"l2": l2})
        if val is not None:
            trained.val_metric = self.score(trained, val)
        return trained

    def select_probe(self, strategy: Strategy, data: Dataset, folds: list[Any]) -> Selection:
        from graft.probe import select_l2

        t = time.perf_counter()
        x = self.features(data)
        chosen = select_l2(
            self.task, x, data.targets, folds=folds, metric=self.metric_name, balanced=self.balanced
        )
        best = next(row for row in chosen.table if row["l2"] == chosen.l2)
        return Selection(
            strategy.name, {"l2": chosen.l2}, chosen.score, best.get("score_std", 0.0), chosen.how,
            time.perf_counter() - t, fold_scores=chosen.fold_scores, detail={"grid": chosen.table},
            oof=self._probe_oof(x, data, folds, chosen.l2),
        )  # fmt: skip

    def _probe_oof(
        self, x: torch.Tensor, data: Dataset, folds: list[Any], l2: float
    ) -> tuple[np.ndarray, torch.Tensor] | None:
        """Out-of-fold outputs of the probe with the chosen L2 (one more fit per fold: milliseconds)."""
        from graft.probe import fit_linear_head

        parts = []
        for train_idx, val_idx in folds:
            if len(val_idx) == 0:
                return None
            head = self.new_head(data.subset(train_idx))
            fit_linear_head(head, x[torch.as_tensor(train_idx)], data.targets[train_idx], l2)
            parts.append((np.asarray(val_idx), head_outputs(head, x[torch.as_tensor(val_idx)])))
        return oof_from(parts)

    # -- fine-tuning through the engine --------------------------------------------------------
    def finetune(
        self, strategy: FineTune, train: Dataset, val: Dataset | None, settings: dict[str, Any]
    ) -> Trained:
        """Train a fresh copy of the backbone + head with ``strategy``'s phases (LP-FT by default)."""
        network = TaskModel(self.fresh_backbone(), self.new_head(train))
        adapters = strategy.prepare(network, self.cfg.strategy)
        plan = strategy.plan(self.cfg.strategy, [g.name for g in network.backbone.layer_groups()])
        initial = self._start_head(network.head, train, val)
        record: dict[str, Any] = {**({"adapters": adapters} if adapters else {}), **initial}
        epochs = settings.get("epochs")
        if epochs == 0:  # the folds never beat the starting probe: no epoch of fine-tuning is chosen
            return Trained(
                network, strategy.name, True, best_epoch=0, record=record, shipped="linear_probe",
                shipped_reason=f"{strategy.name} fine-tuning never beat the linear probe it started from in "
                "cross-validation, so the probe (its head on the unchanged pretrained backbone) shipped",
            )  # fmt: skip
        val_pairs = _pairs(val, longest_first=True) if val is not None else None
        hist = self._engine(strategy.name).fit(
            network, self._phases(plan), _pairs(train), val_pairs,
            collate=PairCollate(network.backbone.preprocessor(self.augment)),
            val_collate=PairCollate(network.backbone.preprocessor()), loss_fn=network.head.loss,
            metric_fn=metric_fn_for(network.head, self.task, self.metric_name),
            resume=self.resume and self._checkpointing,
            workers=self.workers, initial_metric=initial.get("probe_val_metric"), max_epochs=epochs,
            lengths=text_lengths(train) if self.cfg.train.batching == "by_length" else None,
        )  # fmt: skip
        # an epoch's wall-clock seconds go to the timings, not to the history the bundle records
        self.timings["train_epochs"] = self.timings.get("train_epochs", 0.0) + sum(
            e.seconds for e in hist.epochs
        )
        trained = Trained(
            network, strategy.name, False, best_epoch=hist.best_epoch, record=record,
            history=[_finite({k: v for k, v in dataclasses.asdict(e).items() if k != "seconds"})
                     for e in hist.epochs],
            val_metric=hist.best_metric if val is not None else None,
        )  # fmt: skip
        if val is not None and initial.get("probe_val_metric") is not None and hist.best_epoch == 0:
            trained.frozen_backbone = True  # the starting weights were kept: the pretrained backbone
            best = max((e.val_metric for e in hist.epochs), default=float("nan"))
            trained.shipped, trained.shipped_reason = (
                "linear_probe",
                (
                    f"{strategy.name} fine-tuning was tried but never beat the linear probe it started from "
                    f"on validation ({self.metric_name}: best fine-tuned epoch {best:.4f}, probe "
                    f"{initial['probe_val_metric']:.4f}), so the probe (its head on the unchanged pretrained "
                    "backbone) shipped"
                ),
            )
        return trained

    def _start_head(self, head: Head, train: Dataset, val: Dataset | None) -> dict[str, Any]:
        """LP-FT (Kumar et al. 2022): the head starts as the linear probe on frozen features, so the first
        steps refine good features instead of pushing a random head's gradients through them."""
        from graft.probe import fit_linear_head

        if not self.pretrained:  # random features change completely while training: no fixed scaling
            return {}
        x = self.features(train)
        if self.cfg.strategy.head_init == "random":
            head.set_input_stats(x)
            return {}
        l2 = self.choose_l2(x, train.targets, for_init=True)
        fit_linear_head(head, x, train.targets, l2)
        out: dict[str, Any] = {"probe_l2": l2}
        if val is not None:
            metric = metric_fn_for(head, self.task, self.metric_name)
            out["probe_val_metric"] = metric(
                head_outputs(head, self.features(val)), torch.as_tensor(val.targets)
            )
        return out

    def _engine(self, name: str) -> Engine:
        train = self.cfg.train
        if self._full_curves:
            train = dataclasses.replace(train, patience=1_000_000)
        return Engine(
            train, metric=self.metric_name, progress=self.progress, callbacks=self.run_callbacks,
            checkpoint_dir=self.checkpoint_dir(name),
        )  # fmt: skip

    def _phases(self, plan: Plan) -> list[Any]:
        from graft.strategies import bind

        bn = self.cfg.strategy.bn_stats
        return bind(
            plan, self.cfg.train, freeze_bn_stats=bn == "frozen" or (bn == "auto" and self.pretrained)
        )

    @property
    def augment(self) -> str:
        return augment_for(self.cfg.train.augment, self.contract)

    @property
    def workers(self) -> int:
        from graft.features import default_workers

        if not self.backbone.streams_files:
            return 0
        configured = self.cfg.train.workers
        return default_workers() if configured is None else configured


def cross_validate(strategy: Strategy, bench: Workbench, data: Dataset, folds: list[Any]) -> Selection:
    """Train ``strategy`` once per fold and choose its number of epochs on the folds' mean validation
    curve (epoch 0: the probe it starts from), as gradient-boosting rounds are chosen by k-fold CV.

    With k > 1 the folds train every epoch (no early stopping), so each curve is complete; the refit
    on every example then runs the chosen number of epochs. One hold-out fold trains with early
    stopping and its model is kept: it is the final model."""
    t = time.perf_counter()
    single = len(folds) == 1
    curves, kept, parts = [], None, []
    for i, (train_idx, val_idx) in enumerate(folds):
        if not single:
            bench.say(f"{strategy.name}: fold {i + 1} of {len(folds)}")
        with bench.checkpointing() if single else bench.full_curves():
            trained = strategy.train(bench, data.subset(train_idx), data.subset(val_idx), {})
        parts.append(
            (np.asarray(val_idx), bench.outputs(trained, data.subset(val_idx), "validation outputs"))
        )
        start = trained.record.get("probe_val_metric")
        curves.append([math.nan if start is None else start] + [h["val_metric"] for h in trained.history])
        if not trained.history:  # no engine epochs (a strategy with its own selection)
            curves[-1] = [float(trained.val_metric)]
        kept = trained if single else None
    width = max(len(c) for c in curves)
    table = np.array([c + [math.nan] * (width - len(c)) for c in curves], dtype=float)
    seen = ~np.isnan(table)
    mean = np.where(seen.any(0), np.nansum(table, 0) / np.maximum(seen.sum(0), 1), np.nan)
    best = int(np.nanargmax(mean))  # ties: the fewest epochs
    settings = {"epochs": best} if width > 1 else {}
    how = "hold-out validation" if single else f"{len(folds)}-fold cross-validation"
    return Selection(
        strategy.name, settings, float(mean[best]), float(np.std(table[seen[:, best], best])), how,
        time.perf_counter() - t, fold_scores=table[:, best].tolist(),
        detail={"epoch_curve": [None if math.isnan(v) else float(v) for v in mean]}, trained=kept,
        oof=oof_from(parts),
    )  # fmt: skip


def oof_from(parts: list[tuple[np.ndarray, torch.Tensor]]) -> tuple[np.ndarray, torch.Tensor] | None:
    """Per-fold (validation indices, outputs) joined into one out-of-fold set."""
    if not parts:
        return None
    return np.concatenate([idx for idx, _ in parts]), torch.cat([out for _, out in parts])


def _pairs(ds: Dataset, *, longest_first: bool = False) -> list[tuple[Any, np.ndarray]]:
    """(example, target) pairs; ``longest_first`` orders texts by length (validation batches then pad
    little; its score does not depend on the order)."""
    pairs = list(zip(ds.examples, ds.targets, strict=True))
    lengths = text_lengths(ds)
    if longest_first and lengths is not None:
        pairs = [pairs[i] for i in sorted(range(len(pairs)), key=lambda i: -lengths[i])]
    return pairs


def text_lengths(ds: Dataset) -> list[int] | None:
    """Each text's length in characters (the engine batches similar lengths together); ``None`` for
    files, whose batches are all one shape."""
    return [len(x) for x in ds.examples] if ds.modality == "text" else None


def _lstm_layer_flops(x_shape: Any, w_ih: Any, w_hh: Any, *args: Any, **kwargs: Any) -> int:
    """FLOPs of one LSTM layer in torch's fused CPU kernel (``mkldnn_rnn_layer``, which
    ``FlopCounterMode`` does not count): at every step of every sequence, the products of the input
    and of the hidden state with the four gates' weights."""
    steps = math.prod(x_shape[:-1])
    return 2 * steps * (math.prod(w_ih) + math.prod(w_hh))


class PairCollate:
    """(example, target) pairs -> (batch, targets); picklable when ``preprocess`` is (image/audio)."""

    def __init__(self, preprocess: Callable[[list[Any]], dict[str, torch.Tensor]]) -> None:
        self.preprocess = preprocess

    def __call__(self, items: list[tuple[Any, Any]]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        examples = [x for x, _ in items]
        targets = torch.as_tensor(np.stack([y for _, y in items]))
        return self.preprocess(examples), targets


# Inputs this small lose the object under random crops: on the CIFAR-10 example (32 px, 6 epochs)
# crops + flips gave 0.796-0.83 where no augmentation gave 0.845 (docs/images_audio.md).
SMALL_IMAGE_PX = 64


def augment_for(setting: str, contract: Contract) -> str:
    """The augmentation a fine-tune uses: ``auto`` = crop+flip for images above 64 px, none for
    smaller ones and for text, crop (random offset) for audio."""
    modality = contract.modality
    if setting != "auto":
        return setting if modality != "text" else "none"
    if modality == "image":
        size = contract.preprocessing.get("size") or [SMALL_IMAGE_PX + 1]
        return "none" if min(size) <= SMALL_IMAGE_PX else "crop_flip"
    return "crop" if modality == "audio" else "none"


def train_final(bench: Workbench, protocol: Any, choice: Any, *, add: Dataset | None = None) -> Trained:
    """The shipped model: the chosen strategy and settings on the protocol's final training data
    (plus ``add``, e.g. the test rows for ``--refit all``). A fine-tune chosen on one hold-out is
    the model that hold-out trained; it is not trained twice."""
    strategy, sel = choice.strategy, choice.selection
    train, val = protocol.final_data(strategy.frozen_backbone)
    if add is not None:
        train, val = train.concat(add, source=f"{train.source} + {add.source}"), None
    elif sel is not None and sel.trained is not None and not protocol.kfold:
        return sel.trained
    what = f"{len(train)} examples" + (f", early stopping on {len(val)}" if val is not None else "")
    if not strategy.frozen_backbone:
        from graft.strategies.auto import duration_text, training_seconds

        what += f"; expected ~{duration_text(training_seconds(strategy, bench, train))}"
    bench.say(f"final model: {strategy.name} on {what}")
    with bench.checkpointing("refit-all" if add is not None else None):
        return strategy.train(bench, train, val, choice.settings)


def strategy_record(
    choice: Any, trained: Trained, cfg: StrategyConfig, *, refit: str = "train"
) -> dict[str, Any]:
    """What the bundle and the report say about the strategy: requested, chosen and why, the settings,
    every candidate's evidence, and what the shipped model holds."""
    strategy = choice.strategy
    record = {
        "kind": strategy.name,
        "requested": cfg.kind,
        "reason": choice.reason,
        "frozen_backbone": trained.frozen_backbone,
        "shipped": trained.shipped or strategy.name,
        "shipped_reason": trained.shipped_reason or choice.reason,
        "settings": _finite(choice.settings),
        "candidates": _finite(choice.candidates),
        "refit": refit,
        **({"adapters": trained.record["adapters"]} if "adapters" in trained.record else {}),
    }
    from graft.strategies import FineTune

    if isinstance(strategy, FineTune):
        groups = [g.name for g in trained.network.backbone.layer_groups()]
        record["phases"] = strategy.plan(cfg, groups).to_dict()["phases"]
    return record
