"""The Python API: :func:`fit`, :func:`load`, and the :class:`Model` they return.

This module composes the others (data -> contract check -> backbone -> head -> strategy -> engine or
cached features -> evaluation -> bundle); the logic of each step lives in its own module.

Example:
    >>> import graft
    >>> model = graft.fit("../shared/data/text/trec/train.jsonl", backbone="minilm",
    ...                   strategy="linear_probe", out="runs/trec")          # doctest: +SKIP
    >>> model.predict(["Who wrote Hamlet ?"])                                 # doctest: +SKIP
    ['HUM']
    >>> result = graft.load("runs/trec").evaluate("../shared/data/text/trec/test.jsonl")  # doctest: +SKIP
    >>> result.metrics["accuracy"]                                                    # doctest: +SKIP
    0.898
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from graft.backbones import create_backbone, source_modality
from graft.backbones.base import Backbone, Contract, check_modality
from graft.bundle import load_network, read_manifest, save_bundle
from graft.config import BackboneConfig, DataConfig, RunConfig, StrategyConfig
from graft.data import (
    Dataset,
    Split,
    detect_modality,
    layout_splits,
    make_split,
    read_dataset,
    read_inputs,
)
from graft.data.dataset import examples_fingerprint
from graft.engine import Callback, Engine, fit_probe
from graft.errors import ContractError
from graft.evaluation import SELECTION, EvaluationResult, RunReport, evaluate_predictions, fit_majority
from graft.features import FeatureCache, extract_features
from graft.heads import TaskModel, make_head
from graft.runs import RunFolder, check_run_flags, claim_run_folder
from graft.strategies import bind, plan_strategy

# Training examples whose features fix a fine-tuned head's input standardisation.
HEAD_STATS_SAMPLE = 256


def _say(progress: bool, message: str) -> None:
    if progress:
        print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------------
# the trained model


class Model:
    """A trained task model with its contract: what :func:`fit` returns and :func:`load` reads.

    Attributes:
        network_: the backbone + head ``nn.Module``.
        manifest_: the bundle manifest (task, label space, contract, strategy, metrics, provenance).
        report_: the run report when the model was fitted in this process, else ``None``.
    """

    def __init__(
        self,
        network: TaskModel,
        manifest: dict[str, Any],
        report: RunReport | None = None,
        artifacts: dict[str, Any] | None = None,
    ) -> None:
        self.network_ = network
        self.manifest_ = manifest
        self.report_ = report
        # metrics.json and report.html of a loaded bundle, kept so that save() loses nothing
        self.artifacts_ = artifacts or {}

    @property
    def task(self) -> str:
        return self.manifest_["task"]

    @property
    def label_space(self) -> tuple[Any, ...]:
        return tuple(self.manifest_["label_space"])

    @property
    def contract(self) -> dict[str, Any]:
        return self.manifest_["contract"]

    @property
    def metrics(self) -> dict[str, Any]:
        return self.manifest_.get("metrics", {})

    def __repr__(self) -> str:
        return (
            f"Model(task={self.task!r}, backbone={self.manifest_['backbone']['source']!r}, "
            f"strategy={shipped_strategy(self.manifest_)!r}, labels={len(self.label_space)})"
        )

    # -- predictions ---------------------------------------------------------------------------
    def _outputs(self, examples: list[Any], *, cache: bool, progress: bool) -> torch.Tensor:
        backbone, head = self.network_.backbone, self.network_.head
        if cache and self.manifest_["strategy"].get("frozen_backbone"):
            features, _ = FeatureCache().get_or_extract(
                backbone, examples, examples_fingerprint(self.contract["modality"], examples),
                progress=progress,
            )  # fmt: skip
        else:
            features = extract_features(backbone, examples, progress=progress)
        return head_outputs(head, features)

    @property
    def modality(self) -> str:
        return self.contract["modality"]

    def inputs(self, inputs: Any, column: str | None = None, encoding: str | None = None) -> list[str]:
        """Unlabeled inputs checked against this model's contract: texts, or image/audio file paths.

        ``encoding``: of a text file of inputs (default: UTF-8, or what its byte-order mark says).

        Raises:
            ContractError: inputs of another modality (e.g. image files for a text model).
        """
        default = self.contract.get("text_col") or self.contract.get("path_col")
        return read_inputs(inputs, self.modality, column or default, encoding)

    def predict_proba(
        self, inputs: Any, *, text_col: str | None = None, encoding: str | None = None, progress: bool = False
    ) -> np.ndarray:
        """Class probabilities ``[n, n_classes]`` (columns in ``label_space`` order).

        Args:
            inputs: text models: a list of texts, a DataFrame, or a CSV/TSV/JSONL/.txt file;
                image/audio models: a folder, a file, a list of paths, or a table with a path column.
            text_col: the text (or path) column of a table (default: the column the model was
                trained on).
            encoding: of a file of inputs (default: UTF-8, or what its byte-order mark says).
        """
        if self.task == "regression":
            raise ContractError("a regression model has no class probabilities; use predict()")
        return self.activated(self.inputs(inputs, text_col, encoding), progress=progress)

    def activated(self, examples: list[str], *, progress: bool = False) -> np.ndarray:
        """Probabilities (or values) for examples already checked by :meth:`inputs`."""
        return self.network_.head.activate(self._outputs(examples, cache=False, progress=progress)).numpy()

    def predict(
        self, inputs: Any, *, text_col: str | None = None, encoding: str | None = None, progress: bool = False
    ) -> list[Any]:
        """Labels (multiclass), lists of labels (multilabel, threshold 0.5) or values (regression)."""
        values = self.activated(self.inputs(inputs, text_col, encoding), progress=progress)
        return decode_outputs(self.task, self.label_space, values)

    # -- evaluation ----------------------------------------------------------------------------
    def evaluate(
        self,
        data: Any,
        *,
        text_col: str | None = None,
        label_col: str | None = None,
        encoding: str | None = None,
        skip_bad: bool = False,
        progress: bool = False,
    ) -> EvaluationResult:
        """Metrics, 95% intervals and the majority baseline on labeled data the model never saw.

        ``skip_bad`` leaves out bad rows (empty text, missing or unknown label) and undecodable
        files instead of failing; they are listed in the result's ``skipped``.
        """
        media = self.modality != "text"
        cfg = DataConfig(
            text_col=None if media else text_col, path_col=text_col if media else None,
            label_col=label_col, encoding=encoding, label_regex=self.contract.get("label_regex"),
            skip_bad=skip_bad,
        )  # fmt: skip
        modality = detect_modality(data, cfg)
        if modality != self.modality:
            raise ContractError(
                f"{data if isinstance(data, str | Path) else '<data>'} holds {modality} but this model "
                f"takes {self.modality} (modality {self.modality!r}); evaluate it on {self.modality} data"
            )
        ds = read_dataset(
            data, cfg, label_space=self.label_space if self.task != "regression" else None,
            task=self.task, require_min_per_class=False,
            prefer_columns=(
                self.contract.get("text_col") or self.contract.get("path_col"), self.contract.get("label_col")
            ),
        )  # fmt: skip
        outputs = self._outputs(ds.examples, cache=True, progress=progress)
        result = score(
            self.network_.head, self.task, self.label_space, outputs, ds, self.manifest_["majority"]
        )
        result.skipped = list(ds.report.skipped)
        return result

    def save(self, path: str | Path) -> Path:
        """Write this model as a bundle (atomically)."""
        manifest = {k: v for k, v in self.manifest_.items() if k not in _GENERATED_KEYS}
        if self.report_ is not None:
            metrics, html = self.report_.to_dict(), self.report_.to_html()
        else:
            metrics, html = self.artifacts_["metrics"], self.artifacts_["report_html"]
        return save_bundle(path, self.network_, manifest, metrics=metrics, report_html=html)


def shipped_strategy(manifest: dict[str, Any]) -> str:
    """The strategy whose result a bundle holds (bundles before LP-FT records name only ``kind``)."""
    strategy = manifest["strategy"]
    return strategy.get("shipped", strategy["kind"])


_GENERATED_KEYS = ("format_version", "created_at", "versions", "files", "integrity")


def head_outputs(head: torch.nn.Module, features: torch.Tensor) -> torch.Tensor:
    head.to("cpu").eval()
    with torch.no_grad():
        return head(features.float())


def decode_outputs(task: str, label_space: tuple[Any, ...], values: np.ndarray) -> list[Any]:
    """Activated outputs -> labels, lists of labels, or values."""
    predicted = _predicted_targets(task, values)
    if task == "multiclass":
        return [label_space[i] for i in predicted]
    if task == "multilabel":
        return [[label_space[j] for j in np.flatnonzero(row)] for row in predicted]
    return [float(v) for v in predicted]


def _predicted_targets(task: str, activated: np.ndarray) -> np.ndarray:
    if task == "multiclass":
        return activated.argmax(1)
    if task == "multilabel":
        return (activated > 0.5).astype(np.float32)
    return activated


def score(
    head, task, label_space, outputs: torch.Tensor, ds: Dataset, majority, split: str = "test"
) -> EvaluationResult:
    activated = head.activate(outputs).numpy()
    return evaluate_predictions(
        task, ds.targets, _predicted_targets(task, activated), label_space, majority=majority, split=split
    )


def metric_fn_for(head: torch.nn.Module, task: str) -> Callable[[torch.Tensor, torch.Tensor], float]:
    """The selection metric (higher is better) on raw outputs, for early stopping and probe choice."""
    from graft.evaluation import selection_score

    def metric(outputs: torch.Tensor, targets: torch.Tensor) -> float:
        predicted = _predicted_targets(task, head.activate(outputs.cpu()).numpy())
        return selection_score(task, targets.cpu().numpy(), predicted)

    return metric


def load(path: str | Path, *, module: torch.nn.Module | None = None) -> Model:
    """A bundle (or a run folder holding one), with every file's sha256 verified first.

    Args:
        module: for a bundle built with ``Backbone.from_module`` on your own class: a fresh instance
            of that class (graft rebuilds its own, timm, torchvision and Hugging Face architectures).

    Raises:
        BundleError: missing, modified or unsupported bundle.
    """
    folder, manifest = read_manifest(path)
    artifacts = {
        "metrics": json.loads((folder / "metrics.json").read_text(encoding="utf-8")),
        "report_html": (folder / "report.html").read_text(encoding="utf-8"),
    }
    return Model(load_network(folder, manifest, module=module), manifest, artifacts=artifacts)


# --------------------------------------------------------------------------------------------------
# fit


def _resolve_config(config: RunConfig | None, **given: Any) -> RunConfig:
    cfg = config or RunConfig()
    sections = {
        "backbone": ("backbone", "source"),
        "weights": ("backbone", "weights"),
        "strategy": ("strategy", "kind"),
        "task": ("data", "task"),
        "text_col": ("data", "text_col"),
        "path_col": ("data", "path_col"),
        "label_col": ("data", "label_col"),
        "label_regex": ("data", "label_regex"),
        "val": ("data", "val"),
        "test": ("data", "test"),
    }
    for key, value in given.items():
        if value is not None:
            section, name = sections[key]
            cfg = cfg.replace(section, **{name: str(value) if key in ("val", "test") else value})
    return cfg


def _min_per_class(ds: Dataset) -> int | None:
    counts = ds.class_counts()
    return min(counts.values()) if counts else None


class _Features:
    """Cached features of the data sources of one run, sliced per split."""

    def __init__(self, backbone, weights_sha256: str, cache: FeatureCache, progress: bool) -> None:
        self.backbone, self.cache, self.progress = backbone, cache, progress
        self.weights_sha256 = weights_sha256
        self.hits: list[bool] = []
        self._by_source: dict[int, torch.Tensor] = {}

    def of(self, ds: Dataset, desc: str) -> torch.Tensor:
        key = id(ds)
        if key not in self._by_source:
            feats, hit = self.cache.get_or_extract(
                self.backbone,
                ds.examples,
                ds.examples_fingerprint(),
                progress=self.progress,
                desc=desc,
                weights_sha256=self.weights_sha256,
            )
            self.hits.append(hit)
            self._by_source[key] = feats
        return self._by_source[key]


def fit(
    data: Any,
    backbone: str | Backbone | None = None,
    strategy: str | None = None,
    *,
    labels: list[Any] | None = None,
    task: str | None = None,
    text_col: str | None = None,
    path_col: str | None = None,
    label_col: str | None = None,
    label_regex: str | None = None,
    weights: str | None = None,
    val: Any = None,
    test: Any = None,
    out: str | Path | None = None,
    config: RunConfig | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    callbacks: Sequence[Callback] = (),
) -> Model:
    """Fit a pretrained backbone + new head to labeled data, evaluate it on held-out data, save it.

    Args:
        data: text: a CSV/TSV/JSONL file, a DataFrame, a dict of columns, a list of (text, label)
            pairs, or a list of texts with ``labels``. Images/audio: a folder of class folders (or
            of ``train/ val/ test/`` trees), a table with a path column, or a list of paths with
            ``labels``.
        backbone: a source spec (default ``minilm``; ``hf:<folder>``, ``timm:<name>``,
            ``torchvision:<name>``, ``arch:<name>``, ``bundle:<path>``) or a :class:`Backbone`
            (e.g. from :meth:`Backbone.from_module`).
        path_col, label_regex, weights: see :class:`DataConfig` and :class:`BackboneConfig`.
        strategy: ``auto`` (default), ``linear_probe``, ``partial`` or ``full``.
        task: ``multiclass``, ``multilabel`` or ``regression``; inferred when omitted.
        val, test: separate validation / test data (file paths); split from ``data`` otherwise.
        out: run folder: ``config.yaml``, ``run.json``, ``checkpoints/`` and the ``bundle/``.
        config: a full :class:`RunConfig`; the arguments above override its fields.
        resume: continue the interrupted run in ``out``.
        overwrite: replace an earlier run in ``out``.
        progress: progress bars and messages on stderr.
        callbacks: engine callbacks (``on_epoch_end``).

    Returns:
        The trained :class:`Model`; its ``report_`` holds the evaluation.
    """
    t_start = time.perf_counter()
    given_backbone = backbone if isinstance(backbone, Backbone) else None
    cfg = _resolve_config(
        config, backbone=given_backbone.source if given_backbone else backbone, strategy=strategy, task=task,
        text_col=text_col, path_col=path_col, label_col=label_col, label_regex=label_regex, weights=weights,
        val=val if isinstance(val, str | Path) else None, test=test if isinstance(test, str | Path) else None,
    )  # fmt: skip
    check_run_flags(out, resume=resume, overwrite=overwrite)
    run_data = _read_run_data(data, cfg, labels, val, test, given_backbone, progress)
    run_data.t_start = t_start
    if out is None:
        return _train_and_evaluate(run_data, given_backbone, None, progress=progress, callbacks=callbacks)
    with claim_run_folder(out, run_data.cfg, run_data.fingerprint, resume=resume, overwrite=overwrite) as run:
        if run.complete:
            _say(progress, f"run in {out} is already complete; loading its bundle")
            return load(run.bundle)
        return _train_and_evaluate(run_data, given_backbone, run, progress=progress, callbacks=callbacks)


@dataclasses.dataclass
class _RunData:
    """The validated data of one run, read before any model is loaded or any folder is written."""

    cfg: RunConfig
    source: Dataset
    val: Dataset | None
    test: Dataset | None
    timings: dict[str, float]
    fingerprint: str
    t_start: float = 0.0


def _read_run_data(
    data: Any,
    cfg: RunConfig,
    labels: Any,
    val: Any,
    test: Any,
    given_backbone: Backbone | None,
    progress: bool,
) -> _RunData:
    """Steps 0 and 1 of :func:`fit`: the modality check from names only, then the data, validated."""
    parts = layout_splits(data) if isinstance(data, str | Path) else {}
    if parts:
        _say(progress, f"data: {data} is split into {', '.join(parts)} folders; using them as the protocol")
        data = parts["train"]
        if val is None and cfg.data.val is None and "val" in parts:
            cfg = cfg.replace("data", val=str(parts["val"]))
        if test is None and cfg.data.test is None and "test" in parts:
            cfg = cfg.replace("data", test=str(parts["test"]))
    data_modality = detect_modality(list(data) if labels is not None else data, cfg.data)
    backbone_modality = (
        given_backbone.contract.modality if given_backbone else source_modality(cfg.backbone.source)
    )
    where = str(data) if isinstance(data, str | Path) else "the data"
    if backbone_modality != "any":
        check_modality(data_modality, Contract(backbone_modality), cfg.backbone.source, where)

    t = time.perf_counter()
    source = read_dataset(data, cfg.data, labels=labels)
    space = source.label_space if source.task != "regression" else None

    def read_extra(extra: Any) -> Dataset | None:
        if extra is None:
            return None
        return read_dataset(
            extra, dataclasses.replace(cfg.data, task=source.task), label_space=space, task=source.task,
            require_min_per_class=False, prefer_columns=(source.text_col, source.label_col),
        )  # fmt: skip

    val_ds = read_extra(cfg.data.val if val is None or isinstance(val, str | Path) else val)
    test_ds = read_extra(cfg.data.test if test is None or isinstance(test, str | Path) else test)
    for ds in (source, val_ds, test_ds):
        if ds is None:
            continue
        _say(progress, f"data: {ds.source}: {ds.report.summary()}; " + "; ".join(ds.report.notes))
        for warning in ds.report.warnings:
            _say(progress, f"warning: {warning}")
    return _RunData(
        cfg, source, val_ds, test_ds, {"read_data": time.perf_counter() - t}, source.fingerprint()
    )


def _train_and_evaluate(
    run_data: _RunData,
    given_backbone: Backbone | None,
    run: RunFolder | None,
    *,
    progress: bool,
    callbacks: Sequence[Callback],
) -> Model:
    """Steps 2 to 6 of :func:`fit`: backbone, protocol, strategy, adaptation, evaluation, bundle."""
    cfg, source, val_ds, test_ds = run_data.cfg, run_data.source, run_data.val, run_data.test
    timings, t_start, fingerprint = run_data.timings, run_data.t_start, run_data.fingerprint
    out_dir = run.path if run is not None else None
    resume = run is not None and run.resumed

    # 2. backbone, and the contract check before any work
    t = time.perf_counter()
    torch.manual_seed(cfg.train.seed)  # architectures built from random weights start the same each run
    bb = given_backbone or create_backbone(
        cfg.backbone.source, max_length=cfg.backbone.max_length, weights=cfg.backbone.weights
    )
    check_modality(source.modality, bb.contract, cfg.backbone.source, source.source)
    pretrained_sha = bb.weights_sha256()  # before any training: the provenance of the start point
    timings["load_backbone"] = time.perf_counter() - t

    # 3. protocol
    split = make_split(
        source, val=val_ds, test=test_ds, val_fraction=cfg.data.val_fraction,
        test_fraction=cfg.data.test_fraction, seed=cfg.train.seed,
    )  # fmt: skip
    _say(progress, f"split: {split.description}")
    truncated = bb.count_truncated(source.examples)
    if truncated:
        _say(
            progress, f"note: {truncated} texts are longer than {bb.max_length} tokens and will be truncated"
        )

    # 4. strategy and head
    groups = [g.name for g in bb.layer_groups()]
    pretrained = getattr(bb, "pretrained", True)
    strategy_cfg = cfg.strategy
    if not pretrained and strategy_cfg.kind == "auto":
        strategy_cfg = dataclasses.replace(strategy_cfg, kind="full")
    plan = plan_strategy(strategy_cfg, groups, _min_per_class(split.train), len(split.train))
    if not pretrained:
        if plan.frozen_backbone:
            _say(progress, "warning: the backbone has random weights (no --weights): a linear probe on it "
                           "measures a random-features baseline")  # fmt: skip
        elif cfg.strategy.kind == "auto":
            plan = dataclasses.replace(
                plan, reason="the backbone starts from random weights (no pretrained weights given): every "
                "layer trains from scratch"
            )  # fmt: skip
    _say(progress, f"strategy: {plan.kind} — {plan.reason}")
    torch.manual_seed(cfg.train.seed)
    n_outputs = len(source.label_space) if source.task != "regression" else 1
    head = make_head(source.task, bb.feature_dim, n_outputs)
    if source.task == "regression":
        head.set_target_stats(torch.as_tensor(split.train.targets))
    network = TaskModel(bb, head)
    metric_name = SELECTION[source.task]
    metric_fn = metric_fn_for(head, source.task)
    validation: dict[str, Any] = {"metric": metric_name}
    history: list[dict[str, Any]] = []
    strategy_record = {**plan.to_dict(), "shipped": plan.kind, "shipped_reason": plan.reason}

    # 5. adaptation
    t = time.perf_counter()
    feats = _Features(bb, pretrained_sha, FeatureCache(), progress)

    def split_features(part: str) -> torch.Tensor:
        ds = {"train": split.train, "val": split.val, "test": split.test}[part]
        idx = split.indices.get(part)
        if idx is not None:
            return feats.of(source, "extracting features")[torch.as_tensor(idx)]
        return feats.of(ds, f"extracting {part} features")

    def probe_head() -> Any:
        train_x, val_x = split_features("train"), split_features("val")
        timings["features"] = time.perf_counter() - t
        head.set_input_stats(train_x)
        train_y, val_y = _targets(split.train), _targets(split.val)
        return fit_probe(head, train_x, train_y, val_x, val_y, loss_fn=head.loss, metric_fn=metric_fn)

    if plan.frozen_backbone:
        probe = probe_head()
        validation.update(best=probe.val_metric, val_loss=probe.val_loss, l2=probe.l2, grid=probe.grid)
        _say(progress, f"head: L2 {probe.l2:g} chosen on validation ({metric_name} {probe.val_metric:.4f})")
        timings["train_head"] = time.perf_counter() - t - timings["features"]
        test_outputs = head_outputs(head, split_features("test"))
    else:
        if pretrained and cfg.strategy.head_init == "probe":
            # LP-FT (Kumar et al. 2022): start fine-tuning from the linear probe's head, so the first
            # steps refine good features instead of pushing a random head's gradients through them.
            probe = probe_head()
            validation.update(probe_val_metric=probe.val_metric, probe_l2=probe.l2)
            _say(progress, f"head: starts from the linear probe ({metric_name} {probe.val_metric:.4f} on "
                           "validation), then the backbone trains")  # fmt: skip
        elif pretrained:  # random features change completely while training: no fixed standardisation
            rng = np.random.default_rng(cfg.train.seed)
            sample = rng.choice(len(split.train), min(HEAD_STATS_SAMPLE, len(split.train)), replace=False)
            sample_x = extract_features(bb, [split.train.examples[i] for i in sample], progress=False,
                                        workers=_workers(bb, cfg.train.workers))  # fmt: skip
            head.set_input_stats(sample_x)
        engine = Engine(
            cfg.train, metric=metric_name, progress=progress, callbacks=callbacks,
            checkpoint_dir=out_dir / "checkpoints" if out_dir else None,
        )  # fmt: skip
        augment = _augment_for(cfg.train.augment, bb.contract)
        bn = cfg.strategy.bn_stats
        freeze_bn = bn == "frozen" or (bn == "auto" and pretrained)
        if augment != "none":
            _say(progress, f"augmentation while fine-tuning: {augment}")
        hist = engine.fit(
            network, bind(plan, cfg.train, freeze_bn_stats=freeze_bn), _pairs(split.train), _pairs(split.val),
            collate=PairCollate(bb.preprocessor(augment)), val_collate=PairCollate(bb.preprocessor()),
            loss_fn=head.loss, metric_fn=metric_fn, resume=resume, workers=_workers(bb, cfg.train.workers),
            initial_metric=validation.get("probe_val_metric"),
        )  # fmt: skip
        history = [dataclasses.asdict(e) for e in hist.epochs]
        validation.update(best=hist.best_metric, best_epoch=hist.best_epoch, stopped_early=hist.stopped_early)
        strategy_record.update(_probe_kept(plan.kind, hist, validation.get("probe_val_metric"), metric_name))
        if strategy_record["shipped"] != plan.kind:
            _say(progress, f"note: {strategy_record['shipped_reason']}")
        timings["fine_tune"] = time.perf_counter() - t
        test_outputs = head_outputs(
            head, extract_features(bb, split.test.examples, progress=progress, desc="scoring test set")
        )

    # 6. honest evaluation on the held-out test split
    t = time.perf_counter()
    majority = fit_majority(source.task, split.train.targets, len(source.label_space))
    result = score(head, source.task, source.label_space, test_outputs, split.test, majority)
    timings["evaluate"] = time.perf_counter() - t
    _say(progress, f"test ({len(split.test)}): {result.headline()}")
    if feats.hits:
        _say(progress, "features: " + ", ".join("from cache" if h else "computed" for h in feats.hits))

    report = RunReport(
        backbone=cfg.backbone.source,
        task=source.task,
        label_space=list(source.label_space),
        strategy=strategy_record,
        data=_data_summary(source, split, truncated, val_ds, test_ds),
        test=result,
        validation=validation,
        history=history,
        timings=timings,
    )
    manifest = {
        "task": source.task,
        "label_space": list(source.label_space),
        "contract": {
            **bb.contract.to_dict(),
            ("text_col" if source.modality == "text" else "path_col"): source.text_col,
            "label_col": source.label_col,
            **({"label_regex": cfg.data.label_regex} if cfg.data.label_regex else {}),
        },
        "backbone": bb.spec(),
        "head": {"type": type(head).__name__, "in_dim": bb.feature_dim, "n_outputs": n_outputs},
        "strategy": strategy_record,
        "metrics": {
            "test": result.metrics,
            "intervals_95": result.intervals,
            "baselines": result.baselines,
            "n_test": result.n,
        },
        "majority": majority,
        "provenance": {
            "backbone_source": cfg.backbone.source,
            "backbone_weights_sha256": pretrained_sha,
            "data_source": source.source,
            "data_fingerprint": fingerprint,
            "seed": cfg.train.seed,
            "config": cfg.to_dict(),
        },
    }
    model = Model(network, manifest, report)
    if run is not None:
        t = time.perf_counter()
        path = model.save(run.bundle)
        model.manifest_ = read_manifest(path, verify=False)[1]
        run.finish(cfg, fingerprint)
        report.timings["save"] = time.perf_counter() - t
        _say(progress, f"bundle: {path}")
    report.timings["total"] = time.perf_counter() - t_start
    return model


def pretrain(
    data: Any,
    arch: str,
    *,
    out: str | Path | None = None,
    labels: list[Any] | None = None,
    label_regex: str | None = None,
    config: RunConfig | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    callbacks: Sequence[Callback] = (),
) -> Model:
    """Supervised pre-training: train graft architecture ``arch`` from random weights on a large
    labeled dataset of your input type, and save it as a bundle.

    The result is a foundation model of your own: ``fit(small_data, backbone=f"bundle:{out}")``
    transfers it (its head is dropped, its contract kept).

    Args:
        arch: a registered architecture (``resnet20``, ``small_cnn``, ``audio_cnn``; see
            ``graft backbones``).
        config: defaults to :func:`graft.config.pretrain_defaults` (30 epochs, lr 2e-3, patience 6).
        Others as in :func:`fit`.
    """
    from graft.config import pretrain_defaults

    cfg = (config or pretrain_defaults()).replace("backbone", source=f"arch:{arch}", weights=None)
    cfg = cfg.replace("strategy", kind="full", unfreeze_top=None)
    return fit(data, config=cfg, labels=labels, label_regex=label_regex, out=out, resume=resume,
               overwrite=overwrite, progress=progress, callbacks=callbacks)  # fmt: skip


def _probe_kept(kind: str, hist: Any, probe_metric: float | None, metric: str) -> dict[str, Any]:
    """The strategy record's correction when fine-tuning never beat the probe it started from (LP-FT):
    then the bundle holds the probe's head on the unchanged pretrained backbone, and says so."""
    if probe_metric is None or hist.best_epoch != 0:
        return {}
    tried = max((e.val_metric for e in hist.epochs), default=float("nan"))
    return {
        "shipped": "linear_probe",
        "frozen_backbone": True,
        "shipped_reason": (
            f"{kind} fine-tuning was tried but never beat the linear probe it started from on validation "
            f"({metric}: best fine-tuned epoch {tried:.4f}, probe {probe_metric:.4f}), so the probe (best "
            "epoch 0: its head on the unchanged pretrained backbone) shipped"
        ),
    }


def _data_summary(
    source: Dataset, split: Split, truncated: int, val: Dataset | None, test: Dataset | None
) -> dict[str, Any]:
    return {
        "source": source.source,
        "rows": len(source),
        "train": len(split.train),
        "validation": len(split.val),
        "test": len(split.test),
        "split": split.description,
        "duplicates": source.report.duplicates,
        "conflicting_duplicates": source.report.conflicting_duplicates,
        "truncated_texts": truncated,
        "skipped": [
            f"{ds.source}: {item}" if ds is not source else item
            for ds in (source, val, test)
            if ds is not None
            for item in ds.report.skipped
        ],
        "train_class_counts": {str(k): v for k, v in split.train.class_counts().items()},
        "warnings": source.report.warnings,
        "notes": source.report.notes,
    }


def _targets(ds: Dataset) -> torch.Tensor:
    return torch.as_tensor(ds.targets)


def _pairs(ds: Dataset) -> list[tuple[Any, np.ndarray]]:
    return list(zip(ds.examples, ds.targets, strict=True))


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


def _augment_for(setting: str, contract: Contract) -> str:
    modality = contract.modality
    if setting != "auto":
        return setting if modality != "text" else "none"
    if modality == "image":
        size = contract.preprocessing.get("size") or [SMALL_IMAGE_PX + 1]
        return "none" if min(size) <= SMALL_IMAGE_PX else "crop_flip"
    return "crop" if modality == "audio" else "none"


def _workers(backbone: Backbone, configured: int | None) -> int:
    from graft.features import default_workers

    if not backbone.streams_files:
        return 0
    return default_workers() if configured is None else configured


__all__ = ["BackboneConfig", "Model", "RunConfig", "StrategyConfig", "fit", "load", "pretrain"]
