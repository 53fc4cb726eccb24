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
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from graft.backbones import create_backbone, source_modality
from graft.backbones.base import Backbone, Contract, check_modality
from graft.bundle import load_network, make_manifest, read_bundle, read_manifest, save_bundle
from graft.config import BackboneConfig, DataConfig, RunConfig, StrategyConfig
from graft.data import Dataset, detect_modality, layout_splits, read_dataset, read_inputs
from graft.data.dataset import examples_fingerprint, leave_out_examples
from graft.data.encodings import emit_warnings
from graft.distributed import barrier, is_main_process
from graft.engine import Callback
from graft.errors import ConfigError, ContractError, DataError, format_problems
from graft.estimate import cross_validated, held_out
from graft.evaluation import EvaluationResult, RunReport, fit_majority
from graft.evaluation.calibration import scale
from graft.evaluation.costs import Costs, cost_report, read_costs
from graft.evaluation.metrics import selection_metric
from graft.evaluation.outputs import decode_outputs, head_outputs, score_outputs
from graft.evaluation.report import comparison_sentences, cost_sentence, leakage_sentences
from graft.features import FeatureCache, extract_features
from graft.heads import TaskModel
from graft.protocols import Protocol, make_protocol
from graft.recipe import Workbench, strategy_record, train_final
from graft.runs import RunFolder, check_run_flags, open_run
from graft.strategies.auto import choose


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
        examples = read_inputs(inputs, self.modality, column or default, encoding)
        unreadable = self.network_.backbone.unreadable(examples)
        if unreadable:  # answered, it would be the same answer whatever the text said
            problems = [f"input {i}: {why}" for i, why in sorted(unreadable.items())]
            raise ContractError(
                format_problems(f"{len(problems)} input(s) this model cannot read", problems)
                + "\nremove them, or give the texts in a form the backbone reads"
            )
        return examples

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
        """Probabilities (calibrated, where the bundle holds a temperature) or values for examples
        already checked by :meth:`inputs`."""
        outputs = self._outputs(examples, cache=False, progress=progress)
        return self.network_.head.activate(scale(outputs, self.manifest_.get("calibration"))).numpy()

    def predict(
        self,
        inputs: Any,
        *,
        text_col: str | None = None,
        encoding: str | None = None,
        progress: bool = False,
        abstain: bool = True,
    ) -> list[Any]:
        """Labels (multiclass), lists of labels (multilabel: at or above each label's threshold, chosen
        out of fold; above 0.5 without one) or values (regression).

        A bundle fitted with ``--target-precision`` answers ``"abstain"`` where the top calibrated
        probability is below its threshold (``abstain=False``: always the top label). A bundle fitted
        with ``--costs`` answers the class (or ``abstain``, where the matrix prices it) of lowest
        expected cost (``abstain=False``: the cheapest class)."""
        values = self.activated(self.inputs(inputs, text_col, encoding), progress=progress)
        return self.decide(values, abstain=abstain)

    def decide(self, activated: np.ndarray, *, abstain: bool = True) -> list[Any]:
        """Answers from activated outputs (see :meth:`predict`)."""
        if self.costs_ is not None and self.task == "multiclass":
            from graft.evaluation.costs import decide

            k = len(self.label_space)
            chosen = decide(activated, self.costs_, abstain=abstain)
            return [self.label_space[j] if j < k else self.costs_.answers[j] for j in chosen.tolist()]
        answers = decode_outputs(self.task, self.label_space, activated, self.manifest_.get("thresholds"))
        rule = self.manifest_.get("abstain") if abstain and self.task == "multiclass" else None
        if rule:
            from graft.evaluation.abstain import ABSTAIN

            low = activated.max(1) < rule["threshold"]
            answers = [ABSTAIN if skip else a for a, skip in zip(answers, low, strict=True)]
        return answers

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
        costs: str | Path | None = None,
    ) -> EvaluationResult:
        """Metrics, 95% intervals, the prior and majority baselines, the coverage-accuracy curve (and the
        bundle's abstain threshold measured) and the hardest examples, on labeled data the model never saw.

        ``costs``: a cost matrix file to measure the cost per prediction with (default: the bundle's own,
        if it was fitted with ``--costs``); it changes the evaluation only, not the bundle.

        ``skip_bad`` leaves out bad rows (empty text, missing or unknown label) and undecodable
        files instead of failing; they are listed in the result's ``skipped``.
        """
        if costs is not None and self.task != "multiclass":
            raise ConfigError(f"--costs applies to multiclass models; this one is {self.task}")
        matrix = read_costs(costs, list(self.label_space)) if costs is not None else self.costs_
        ds = self.labeled(data, text_col=text_col, label_col=label_col, encoding=encoding, skip_bad=skip_bad)
        outputs = scale(
            self._outputs(ds.examples, cache=True, progress=progress), self.manifest_.get("calibration")
        )
        result = score_outputs(
            self.network_.head, self.task, self.label_space, outputs, ds.targets, self.manifest_["majority"],
            thresholds=self.manifest_.get("thresholds"),
        )  # fmt: skip
        result.skipped = list(ds.report.skipped)
        if self.task == "multiclass":
            from graft.evaluation.abstain import coverage_curve, measure
            from graft.evaluation.errors import error_analysis

            proba = self.network_.head.activate(outputs).numpy()
            result.errors = error_analysis(ds.examples, ds.targets, proba, self.label_space)
            result.abstain = {"curve": coverage_curve(proba, ds.targets)}
            if self.manifest_.get("abstain"):
                chosen = self.manifest_["abstain"]
                result.abstain |= {"chosen": chosen, "test": measure(proba, ds.targets, chosen["threshold"])}
            if matrix is not None:
                k = len(self.label_space)  # bundles from before class frequencies were kept: uniform
                prior = np.asarray(self.manifest_["majority"].get("frequencies") or [1 / k] * k)
                result.costs = cost_report(matrix, proba, ds.targets, prior)
        return result

    def labeled(
        self,
        data: Any,
        *,
        text_col: str | None = None,
        label_col: str | None = None,
        encoding: str | None = None,
        skip_bad: bool = False,
    ) -> Dataset:
        """Labeled data read under this model's contract: its modality (another is refused), its
        columns by default, its label space (an unknown label is a bad row)."""
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
                f"takes {self.modality} (modality {self.modality!r}); use {self.modality} data"
            )
        ds = read_dataset(
            data, cfg, label_space=self.label_space if self.task != "regression" else None,
            task=self.task, require_min_per_class=False,
            prefer_columns=(
                self.contract.get("text_col") or self.contract.get("path_col"), self.contract.get("label_col")
            ),
        )  # fmt: skip
        ds = leave_out_examples(ds, self.network_.backbone.unreadable(ds.examples), skip_bad=skip_bad)
        emit_warnings(ds.report)  # labels merged, rows skipped: no report of the data is shown here
        return ds

    @property
    def costs_(self) -> Costs | None:
        """The cost matrix the bundle decides with (``--costs`` at fit time), or ``None``."""
        raw = self.manifest_.get("costs")
        return Costs.from_dict(raw) if raw else None

    def report(self, result: EvaluationResult, data: str) -> RunReport:
        """The report of an evaluation of this bundle (``graft evaluate --report DIR``)."""
        return RunReport(
            backbone=self.manifest_["backbone"].get("source", "?"), task=self.task,
            label_space=list(self.label_space), strategy=self.manifest_.get("strategy", {}),
            data={"source": data, "split": f"evaluation of a saved bundle on {data}", "rows": result.n},
            test=result,
        )  # fmt: skip

    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Write this model as a bundle (atomically), at a new path, an empty folder or over an intact
        bundle (``graft.load(p).save(p)`` re-saves one); anything else there is refused by name unless
        ``overwrite``.

        Raises:
            OutputError: ``path`` holds files graft did not write, or lies inside another bundle.
        """
        from graft.ownership import claim_bundle

        claim_bundle(path, overwrite=overwrite)
        manifest = {k: v for k, v in self.manifest_.items() if k not in _GENERATED_KEYS}
        if self.report_ is not None:
            metrics, html = self.report_.to_dict(), self.report_.to_html()
        else:
            metrics, html = self.artifacts_["metrics"], self.artifacts_["report_html"]
        return save_bundle(path, self.network_, manifest, metrics=metrics, report_html=html)

    def merge_adapters(self) -> Model:
        """Fold LoRA adapters into the backbone's weights: the same predictions (up to float rounding)
        from a plain backbone, with no adapter layers left; :meth:`save` then writes a plain bundle.
        A model without adapters is left as it is. Returns ``self``."""
        from graft.adapters import merge_adapters

        strategy = dict(self.manifest_["strategy"])
        record = strategy.pop("adapters", None)
        if record is not None:
            merge_adapters(self.network_.backbone)
            self.manifest_ = {**self.manifest_, "strategy": {**strategy, "merged_adapters": record}}
        return self


def shipped_strategy(manifest: dict[str, Any]) -> str:
    """The strategy whose result a bundle holds (bundles before LP-FT records name only ``kind``)."""
    strategy = manifest["strategy"]
    return strategy.get("shipped", strategy["kind"])


_GENERATED_KEYS = ("format_version", "created_at", "versions", "files", "integrity")


def load(path: str | Path, *, module: torch.nn.Module | None = None) -> Model:
    """A bundle (or a run folder holding one), with every file's sha256 verified first.

    Args:
        module: for a bundle built with ``Backbone.from_module`` on your own class: a fresh instance
            of that class (graft rebuilds its own, timm, torchvision and Hugging Face architectures).

    Every file is read once and the model is built from the bytes that were verified.

    Raises:
        BundleError: missing, modified, unsupported or unusable bundle (values, shapes, NaN weights).
    """
    bundle = read_bundle(path)
    artifacts = {"metrics": bundle.load_json("metrics.json"), "report_html": bundle.text("report.html")}
    return Model(load_network(bundle, module=module), bundle.manifest, artifacts=artifacts)


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
        "baselines": ("evaluation", "baselines"),
    }
    for key, value in given.items():
        if value is not None:
            section, name = sections[key]
            cfg = cfg.replace(section, **{name: str(value) if key in ("val", "test") else value})
    return cfg


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
    baselines: str | None = None,
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
            ``torchvision:<name>``, ``arch:<name>``, ``ge2e``, ``bundle:<path>``) or a :class:`Backbone`
            (e.g. from :meth:`Backbone.from_module`).
        path_col, label_regex, weights: see :class:`DataConfig` and :class:`BackboneConfig`.
        strategy: ``auto`` (default), ``linear_probe``, ``partial`` or ``full``.
        task: ``multiclass``, ``multilabel`` or ``regression``; inferred when omitted.
        val, test: separate validation / test data (file paths); split from ``data`` otherwise.
        baselines: ``auto`` (default), ``none``, ``cheap`` or ``all``: see :class:`EvalConfig`.
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
    progress = progress and is_main_process()  # under accelerate launch, one process reports
    given_backbone = backbone if isinstance(backbone, Backbone) else None
    cfg = _resolve_config(
        config, backbone=given_backbone.source if given_backbone else backbone, strategy=strategy, task=task,
        text_col=text_col, path_col=path_col, label_col=label_col, label_regex=label_regex, weights=weights,
        val=val if isinstance(val, str | Path) else None, test=test if isinstance(test, str | Path) else None,
        baselines=baselines,
    )  # fmt: skip
    check_run_flags(out, resume=resume, overwrite=overwrite)
    run_data = _read_run_data(data, cfg, labels, val, test, given_backbone, progress)  # 1. read, check names
    run_data.t_start = t_start
    protocol = _protocol(run_data)  # 2. a split the data cannot give fails before a folder is written
    reads = _paths_read(data, run_data.cfg)
    with open_run(
        out, run_data.cfg, run_data.fingerprint, resume=resume, overwrite=overwrite, reads=reads
    ) as run:
        if run is not None and run.complete:
            _say(progress, f"run in {out} is already complete; loading its bundle")
            return load(run.bundle)
        bench = _workbench(run_data, given_backbone, run, progress, callbacks)  # 3. backbone, contract check
        if _leave_out_unreadable(run_data, bench.backbone, progress):
            protocol = _protocol(run_data)  # the splits of the rows that are left
        _say(progress, f"protocol: {protocol.description}")
        for line in leakage_sentences(protocol.leakage):
            _say(progress, f"leakage check: {line}")
        choice = choose(bench, protocol, run_data.cfg.strategy.kind)  # 4. choose strategy and settings
        _say(progress, f"strategy: {choice.strategy.name} — {choice.reason}")
        trained = train_final(bench, protocol, choice)  # 5. the final model
        if trained.shipped_reason:
            _say(progress, f"note: {trained.shipped_reason}")
        estimate = cross_validated if protocol.outer else held_out  # 6. the honest test estimate,
        t = time.perf_counter()
        result, baselines = estimate(bench, protocol, choice, trained)
        bench.timings["evaluate"] = time.perf_counter() - t - bench.timings.get("baselines", 0.0)
        _say(progress, f"{result.split} ({result.n}): {result.headline()}")  # with baselines (7.)
        for line in [*comparison_sentences(result), *(f"note: {note}" for note in result.notes)]:
            _say(progress, line)
        if result.costs:
            _say(progress, cost_sentence(result.costs))
        if run_data.cfg.data.refit == "all" and len(protocol.test):  # 8. optionally, + the test rows
            trained = train_final(bench, protocol, choice, add=protocol.test)
        return _finish(run_data, bench, protocol, choice, trained, result, run, progress, baselines)  # 9.


def _paths_read(data: Any, cfg: RunConfig) -> list[Any]:
    """The files and folders a run reads, which its run folder's outputs must not touch."""
    source = cfg.backbone.source
    bundle = source[len("bundle:") :] if isinstance(source, str) and source.startswith("bundle:") else None
    return [data, cfg.data.val, cfg.data.test, cfg.evaluation.costs, cfg.backbone.weights, bundle]


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
    truncated: int = 0
    costs: Costs | None = None


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
    costs = _check_evaluation(cfg, source)

    def read_extra(extra: Any) -> Dataset | None:
        if extra is None:
            return None
        return read_dataset(
            extra, dataclasses.replace(cfg.data, task=source.task, group_col=None), label_space=space,
            task=source.task,
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
        cfg,
        source,
        val_ds,
        test_ds,
        {"read_data": time.perf_counter() - t},
        source.fingerprint(),
        costs=costs,
    )


def _check_evaluation(cfg: RunConfig, source: Dataset) -> Costs | None:
    """The cost matrix of ``--costs`` (read and checked now: a mistake in it fails before any work);
    ``--class-weight`` and ``--target-precision`` checked against the task."""
    from graft.evaluation.abstain import ABSTAIN

    if cfg.train.class_weight != "none" and source.task == "regression":
        raise ConfigError(f"--class-weight applies to classification; {source.source} is a regression task")
    costs = None
    if cfg.evaluation.costs is not None:
        if source.task != "multiclass":
            raise ConfigError(f"--costs applies to multiclass data; {source.source} is {source.task}")
        from graft.evaluation.costs import read_costs

        costs = read_costs(cfg.evaluation.costs, list(source.label_space))
    if cfg.evaluation.target_precision is None:
        return costs
    if source.task != "multiclass":
        raise ConfigError(f"--target-precision applies to multiclass data; {source.source} is {source.task}")
    if ABSTAIN in [str(label) for label in source.label_space]:
        raise ConfigError(
            f"--target-precision: {source.source} has a class named {ABSTAIN!r}, which predict would also "
            "answer for low-confidence inputs; rename that class"
        )


def _workbench(
    run_data: _RunData,
    given: Backbone | None,
    run: RunFolder | None,
    progress: bool,
    callbacks: Sequence[Callback],
) -> Workbench:
    """Step 2 of :func:`fit`: the backbone, checked against the data's modality before any work."""
    cfg, source = run_data.cfg, run_data.source
    t = time.perf_counter()
    torch.manual_seed(cfg.train.seed)  # architectures built from random weights start the same each run
    bb = given or create_backbone(
        cfg.backbone.source, max_length=cfg.backbone.max_length, weights=cfg.backbone.weights
    )
    check_modality(source.modality, bb.contract, cfg.backbone.source, source.source)
    bench = Workbench(
        bb, cfg, source.task, source.label_space, progress=progress, callbacks=callbacks,
        checkpoint_dir=run.checkpoints if run else None, resume=bool(run and run.resumed),
        metric=selection_metric(source.task, source.targets),
    )  # fmt: skip
    bench.timings.update(run_data.timings, load_backbone=time.perf_counter() - t)
    bench.costs = run_data.costs
    truncated = bb.count_truncated(source.examples)
    if truncated:
        _say(
            progress, f"note: {truncated} texts are longer than {bb.max_length} tokens and will be truncated"
        )
    run_data.truncated = truncated
    return bench


def _leave_out_unreadable(run_data: _RunData, bb: Backbone, progress: bool) -> bool:
    """Texts the backbone's tokenizer finds nothing in, refused (or left out with ``--skip-bad``) in
    the training, validation and test data; whether any row was left out."""
    changed = False
    for name, minimum in (("source", 2), ("val", 0), ("test", 0)):
        ds = getattr(run_data, name)
        if ds is None:
            continue
        kept = leave_out_examples(ds, bb.unreadable(ds.examples), skip_bad=run_data.cfg.data.skip_bad,
                                  min_per_class=minimum)  # fmt: skip
        if kept is not ds:
            _say(progress, f"warning: {ds.source}: {ds.report.warnings[-1]}")
            setattr(run_data, name, kept)
            changed = True
    return changed


def _protocol(run_data: _RunData) -> Protocol:
    """Step 2 of :func:`fit`: the test split, the folds or the validation hold-out, from the data alone."""
    data = run_data.cfg.data
    return make_protocol(
        run_data.source, val=run_data.val, test=run_data.test, folds=data.folds, seed=run_data.cfg.train.seed,
        val_fraction=data.val_fraction, test_fraction=data.test_fraction, estimate=data.estimate,
        repeats=data.repeats,
    )  # fmt: skip


def _finish(run_data, bench, protocol, choice, trained, result, run, progress, baselines) -> Model:
    """Step 9 of :func:`fit`: the report, the manifest, and the bundle in the run folder."""
    cfg, source = run_data.cfg, run_data.source
    strategy = strategy_record(choice, trained, cfg.strategy, refit=cfg.data.refit)
    data = protocol.summary(source, run_data.truncated, run_data.val, run_data.test, trained.frozen_backbone)
    data["baselines"] = baselines
    if cfg.data.refit == "all" and len(protocol.test):
        data["refit"] = (
            f"--refit all: after the evaluation the shipped model was trained again on the {data['train']} "
            f"training and {len(protocol.test)} test examples; the test numbers come from the held-out "
            "protocol (the same recipe trained without the test rows)"
        )
        data["train"] += len(protocol.test)
    validation = {"metric": bench.metric_name, "selection": protocol.selection, **trained.record}
    if trained.best_epoch is not None:
        validation["best_epoch"] = trained.best_epoch
    if choice.selection is not None:
        validation.update(best=choice.selection.score, score_std=choice.selection.score_std,
                          fold_scores=choice.selection.fold_scores, **choice.selection.detail)  # fmt: skip
    if bench.cache_hits:
        _say(progress, "features: " + ", ".join("from cache" if h else "computed" for h in bench.cache_hits))
    bench.timings.update(choice.timings)
    report = RunReport(
        backbone=cfg.backbone.source, task=source.task, label_space=list(source.label_space),
        strategy=strategy, data=data, test=result, validation=validation, history=trained.history,
        timings=bench.timings,
    )  # fmt: skip
    manifest = make_manifest(
        trained.network, source, cfg, strategy, result,
        majority=fit_majority(source.task, protocol.final_data(trained.frozen_backbone)[0].targets,
                              len(source.label_space)),
        pretrained_sha256=bench.weights_sha256, fingerprint=run_data.fingerprint,
        calibration={k: v for k, v in result.calibration.items() if k in ("temperature", "fitted_on")},
        abstain=result.abstain.get("chosen"), costs=run_data.costs.to_dict() if run_data.costs else None,
        thresholds=result.thresholds.get("thresholds"),
        timings={step: round(seconds, 3) for step, seconds in bench.timings.items()}
        | {"total_before_save": round(time.perf_counter() - run_data.t_start, 3)},
    )  # fmt: skip
    model = Model(trained.network, manifest, report)
    barrier()  # under accelerate launch: every process is done training before the folder is finished
    if run is not None and run.writer:
        t = time.perf_counter()
        path = model.save(run.bundle)
        model.manifest_ = read_manifest(path, verify=False)[1]
        run.finish(cfg, run_data.fingerprint)
        report.timings["save"] = time.perf_counter() - t
        _say(progress, f"bundle: {path}")
    report.timings["total"] = time.perf_counter() - run_data.t_start
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


def from_classifier(
    module: torch.nn.Module, *, labels: Sequence[Any], head: str = "fc", **backbone: Any
) -> Model:
    """A classifier trained elsewhere, as a graft model: its final ``nn.Linear`` (attribute path
    ``head``) becomes the head, the rest the backbone (:meth:`Backbone.from_module`, which takes
    ``backbone``: modality, input_size, mean, std, ...). ``predict``, ``evaluate``, ``adapt`` and ``save``
    then work on it as on a fitted model; nothing about it was measured here, and its report says so.

    Example:
        >>> source = graft.from_classifier(resnet, labels=CLASSES, head="linear", modality="image",
        ...                                input_size=(3, 32, 32), mean=MEAN, std=STD)  # doctest: +SKIP
    """
    from graft.heads import make_head

    final = module.get_submodule(head)
    if not isinstance(final, torch.nn.Linear) or final.out_features != len(labels):
        raise ConfigError(
            f"from_classifier: {head!r} must be the module's final nn.Linear with one output per label "
            f"({len(labels)}); it is {type(final).__name__}"
        )
    bb = Backbone.from_module(module, head=head, **backbone)
    task_head = make_head("multiclass", bb.feature_dim, len(labels))  # input statistics 0 / 1: identity
    task_head.linear.load_state_dict(final.state_dict())
    k = len(labels)
    why = f"a classifier trained elsewhere, imported with graft.from_classifier ({type(module).__name__})"
    manifest = {
        "task": "multiclass", "label_space": list(labels),
        "contract": {**bb.contract.to_dict(), "path_col": None, "label_col": None},
        "backbone": bb.spec(),
        "head": {"type": type(task_head).__name__, "in_dim": bb.feature_dim, "n_outputs": k},
        "strategy": {"kind": "imported", "frozen_backbone": True, "reason": why},
        "metrics": {}, "majority": {"class": 0, "frequencies": [1 / k] * k},
        "provenance": {
            "backbone_source": bb.source, "backbone_weights_sha256": bb.weights_sha256(), "data_source": None,
            "data_fingerprint": None, "seed": 0, "config": RunConfig().to_dict(),
        },
    }  # fmt: skip
    report = RunReport(
        backbone=bb.source,
        task="multiclass",
        label_space=list(labels),
        strategy=manifest["strategy"],
        data={"source": "not fitted here: nothing measured"},
    )
    return Model(TaskModel(bb, task_head).eval(), manifest, report)


# --------------------------------------------------------------------------------------------------
# adapt


def adapt(
    model: str | Path | Model,
    target: Any,
    *,
    target_val: Any = None,
    target_test: Any = None,
    source: Any = None,
    methods: list[str] | None = None,
    rule: str = "strict",
    out: str | Path | None = None,
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = True,
) -> Model:
    """Adapt a model to a target domain from unlabeled target inputs, choosing the method on evidence.

    Args:
        model: a bundle path or a :class:`Model`; never modified.
        target: unlabeled target inputs, as for :meth:`Model.predict` (checked against the contract
            first: another modality is refused before any work).
        target_val: labeled target data (even 5-10 per class) to choose with; without it the choice is
            made on an unsupervised criterion and reported as unverified.
        target_test: labeled target data to report every method on (never used to choose).
        source: the labeled source data (default: the bundle's own training file, when it is still there
            unchanged); CORAL needs it, self-training uses it.
        methods: adaptation methods to try (default: every registered one; see ``graft adapt --help``).
        rule: with ``target_val``: ``strict`` (default) adopts a method only when its paired 95% interval
            against doing nothing lies above 0; ``lead`` when it merely scores higher there.
        out: write the adapted bundle (a normal bundle, with an ``adaptation`` record) here: a new
            folder, an empty one or an earlier bundle, never the source bundle or what is read.
        overwrite: replace files graft did not write at ``out``.

    Returns:
        the chosen model (the source model itself when nothing beat it), with ``manifest_["adaptation"]``.
    """
    from graft.adaptation import Target, adapt_model
    from graft.config import SEED

    SEED.check("seed", seed)  # before any work: numpy's generators take 0 .. 2**32 - 1

    if out is not None:  # before any work
        from graft.bundle import resolve_bundle_path
        from graft.ownership import claim_bundle

        read = resolve_bundle_path(model) if isinstance(model, str | Path) else None
        claim_bundle(out, reads=[read, target, target_val, target_test, source], overwrite=overwrite)
    model = model if isinstance(model, Model) else load(model)
    examples, where = model.inputs(target), str(target) if isinstance(target, str | Path) else "<inputs>"
    if not examples:
        raise DataError(f"{where}: no target inputs to adapt to")
    val = model.labeled(target_val) if target_val is not None else None
    test = model.labeled(target_test) if target_test is not None else None
    context = Target(
        examples, _source_data(model, source, progress), seed, progress, lambda m: _say(progress, m)
    )
    adapted, record = adapt_model(model, context, methods=methods, val=val, test=test, rule=rule)
    record["target"] = where
    record["target_fingerprint"] = examples_fingerprint(model.modality, examples)
    _say(progress, f"adapt: chose {record['method']}: {record['evidence']['reason']}")
    adapted.report_ = RunReport(
        backbone=adapted.manifest_["backbone"].get("source", "?"), task=adapted.task,
        label_space=list(adapted.label_space), strategy=adapted.manifest_.get("strategy", {}),
        data={"source": record["target"], "split": "adaptation to unlabeled target inputs"},
        adaptation=record,
    )  # fmt: skip
    if out is not None:
        _say(progress, f"bundle: {adapted.save(out, overwrite=overwrite)}")
    return adapted


def _source_data(model: Model, source: Any, progress: bool) -> Dataset | None:
    """The labeled source data: ``source``, else the bundle's training file when it is still there and
    unchanged (its fingerprint matches the provenance), else ``None``."""
    if source is not None:
        return model.labeled(source)
    provenance = model.manifest_.get("provenance", {})
    path = provenance.get("data_source")
    if not path or not Path(path).exists():
        return None
    data = model.labeled(path)
    if data.fingerprint() != provenance.get("data_fingerprint"):
        _say(progress, f"adapt: {path} changed since the model was fitted: not used as source data")
        return None
    return data


__all__ = [
    "BackboneConfig",
    "Model",
    "RunConfig",
    "StrategyConfig",
    "adapt",
    "fit",
    "from_classifier",
    "load",
]
__all__ += ["pretrain"]
