"""Run configuration: one frozen dataclass per component, composed into :class:`RunConfig`.

Field metadata feeds the CLI: ``help`` is the option's help text and ``flag`` its name when it is not
``--field-name``, so the CLI never offers an option the config lacks. Validation happens in
``__post_init__``, at the boundary. This module must not import torch (``graft --help`` stays fast).

Example:
    >>> cfg = RunConfig(strategy=StrategyConfig(kind="partial", unfreeze_top=2))
    >>> RunConfig.from_dict(cfg.to_dict()) == cfg
    True
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from graft.errors import ConfigError

TaskKind = Literal["auto", "multiclass", "multilabel", "regression"]
StrategyKind = Literal[
    "auto", "linear_probe", "contrastive", "bitfit", "lora", "partial", "gradual", "full"
]  # fmt: skip
Refit = Literal["train", "all"]
Estimate = Literal["auto", "holdout", "cv"]
Precision = Literal["auto", "no", "fp16", "bf16"]
Batching = Literal["by_length", "random"]
ClassWeight = Literal["none", "balanced"]
Augment = Literal["auto", "none", "crop", "crop_flip"]
Baselines = Literal["auto", "none", "cheap", "all"]


def _help(text: str, flag: str | None = None, bounds: Bounds | None = None, **extra: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"help": text}
    if flag:
        meta["flag"] = flag
    if bounds:
        meta["bounds"] = bounds
    meta.update(extra)
    return meta


@dataclass(frozen=True)
class Bounds:
    """The values a numeric option accepts: a finite number (or an integer) within ``low`` .. ``high``,
    either end open or absent. Kept in a field's metadata, it is checked by the config (for the CLI,
    the Python API and YAML alike) and shown in the CLI's help.

    Example:
        >>> Bounds(0, 1, low_open=True).problem(0.0)
        'must be a number in (0, 1], got 0.0'
    """

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    integer: bool = False

    def describe(self) -> str:
        """The accepted values in words: ``an integer >= 1``, ``a number in (0, 1]``."""
        bounded = self.low is not None and self.high is not None
        kind = "an integer" if self.integer else "a number" if bounded else "a finite number"
        low, high = _number_text(self.low), _number_text(self.high)
        if bounded:
            if not (self.low_open or self.high_open):
                return f"{kind} from {low} to {high}"
            return f"{kind} in {'(' if self.low_open else '['}{low}, {high}{')' if self.high_open else ']'}"
        if self.low is not None:
            return f"{kind} {'>' if self.low_open else '>='} {low}"
        if self.high is not None:
            return f"{kind} {'<' if self.high_open else '<='} {high}"
        return kind

    def problem(self, value: Any) -> str | None:
        """Why ``value`` is refused (``must be ..., got ...``), or ``None`` when it is accepted."""
        refused = f"must be {self.describe()}, got {value!r}"
        if isinstance(value, bool) or not isinstance(
            value, numbers.Integral if self.integer else numbers.Real
        ):
            return refused
        if not math.isfinite(value):
            return refused
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return refused
        if self.high is not None and (value >= self.high if self.high_open else value > self.high):
            return refused
        return None

    def check(self, name: str, value: Any) -> None:
        """Raise a :class:`ConfigError` naming ``name`` when ``value`` is refused."""
        problem = self.problem(value)
        if problem:
            raise ConfigError(f"{name} {problem}")


def _number_text(value: float | None) -> str:
    return str(int(value)) if value is not None and float(value).is_integer() else str(value)


AT_LEAST_1 = Bounds(1, integer=True)
POSITIVE = Bounds(0, low_open=True)
# numpy's RandomState (behind scikit-learn's random_state) takes 0 .. 2**32 - 1; seeds derived from
# this one (seed + 1, ...) wrap around within that range (see graft.protocols)
SEED = Bounds(0, 2**32 - 1, integer=True)
FRACTION = Bounds(0.01, 0.9)


def check_bounds(config: Any) -> None:
    """Check every field of a config dataclass that declares :class:`Bounds` (``None`` is unset)."""
    for f in dataclasses.fields(config):
        bounds = f.metadata.get("bounds")
        value = getattr(config, f.name)
        if bounds is not None and value is not None:
            bounds.check(f.name, value)


def parse_duration(text: str) -> float:
    """Seconds in ``90s``, ``10m``, ``1.5h`` or a bare number of seconds."""
    import re

    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", str(text))
    seconds = float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[match.group(2)] if match else 0.0
    if not (0 < seconds < math.inf):
        raise ConfigError(f"budget {text!r} is not a duration; write e.g. 90s, 10m or 2h")
    return seconds


@dataclass(frozen=True)
class DataConfig:
    """How to read labeled data and how to split it."""

    text_col: str | None = field(
        default=None, metadata=_help("column holding the text (name, or 0-based index without a header)")
    )
    label_col: str | None = field(
        default=None, metadata=_help("column holding the label (name, or 0-based index without a header)")
    )
    path_col: str | None = field(
        default=None,
        metadata=_help("column of image/audio file paths in a CSV/JSONL (relative to that file)"),
    )
    label_regex: str | None = field(
        default=None,
        metadata=_help(
            "take each file's label from its name with this regex's first group, e.g. '^(\\d+)_' "
            "for FSDD digits (folders of files without class sub-folders)"
        ),
    )
    group_col: str | None = field(
        default=None,
        metadata=_help(
            "column of group ids (a speaker, a user, a patient): a group is never divided between the "
            "test split, validation and training, nor between folds"
        ),
    )
    skip_bad: bool = field(
        default=False,
        metadata=_help(
            "leave out unreadable image/audio files and bad rows (empty text, missing or unknown label, "
            "unparsable lines) instead of failing; each is listed in the report"
        ),
    )
    task: TaskKind = field(
        default="auto", metadata=_help("multiclass, multilabel or regression; auto infers it from the labels")
    )
    label_sep: str | None = field(
        default=None, metadata=_help("delimiter between labels of one row, for multilabel data (e.g. '|')")
    )
    header: Literal["auto", "yes", "no"] = field(
        default="auto", metadata=_help("whether a CSV/TSV file starts with a header row")
    )
    encoding: str | None = field(
        default=None,
        metadata=_help(
            "text encoding of the file; default UTF-8 (UTF-16/32 when the file starts with a byte-order "
            "mark), with a cp1252 fallback for lines that are not UTF-8 (with a warning)"
        ),
    )
    val: str | None = field(
        default=None, metadata=_help("separate validation file (otherwise split from the training data)")
    )
    test: str | None = field(
        default=None, metadata=_help("separate test file (otherwise a stratified split is held out)")
    )
    val_fraction: float = field(
        default=0.15, metadata=_help("fraction of the training data held out for validation", bounds=FRACTION)
    )
    test_fraction: float = field(
        default=0.2, metadata=_help("fraction of the data held out for testing", bounds=FRACTION)
    )
    folds: int = field(
        default=5,
        metadata=_help(
            "k of the stratified k-fold cross-validation that chooses settings on small training sets "
            "(up to 2,000 examples without --val); larger sets, and --folds 1, hold out --val-fraction "
            "instead",
            bounds=AT_LEAST_1,
        ),
    )
    estimate: Estimate = field(
        default="auto",
        metadata=_help(
            "how the test numbers are made without --test: holdout = a --test-fraction split; cv = a "
            "5-fold cross-validated estimate over every example, each fold running the whole recipe "
            "(choice included); auto = cv up to 500 labeled examples, holdout above"
        ),
    )
    repeats: int = field(
        default=1,
        metadata=_help(
            "cross-validated estimate only: run it this many times with different outer folds (each run "
            "trains the recipe k times more); the report gives the mean over repeats and their spread",
            bounds=AT_LEAST_1,
        ),
    )
    refit: Refit = field(
        default="train",
        metadata=_help(
            "what the shipped model trains on once settings are chosen: train = every training example "
            "(never the held-out test split); all = the test split too (the report's test numbers then "
            "describe the same recipe trained without those rows)"
        ),
    )

    def __post_init__(self) -> None:
        check_bounds(self)
        if self.val_fraction + self.test_fraction >= 0.9:
            raise ConfigError(
                f"val_fraction + test_fraction must leave data to train on; got "
                f"{self.val_fraction} + {self.test_fraction}"
            )
        for name in ("text_col", "label_col", "path_col", "group_col", "val", "test"):
            if getattr(self, name) is not None and not str(getattr(self, name)).strip():
                raise ConfigError(f"{name} must not be empty; leave it unset instead")
        if self.encoding is not None:
            import codecs

            try:
                codecs.lookup(self.encoding)
            except LookupError:
                raise ConfigError(
                    f"encoding {self.encoding!r} is not a text encoding Python knows; try utf-8, cp1252 or "
                    "utf-16"
                ) from None
        if self.label_sep == "":
            raise ConfigError("label_sep must not be empty; leave it unset for single-label data")
        if self.label_sep is not None and self.task not in ("auto", "multilabel"):
            raise ConfigError(f"label_sep splits multilabel targets but task is {self.task!r}")
        if self.label_regex is not None:
            import re

            try:
                pattern = re.compile(self.label_regex)
            except re.error as exc:
                raise ConfigError(f"label_regex {self.label_regex!r} is not a valid regex: {exc}") from None
            if pattern.groups < 1:
                raise ConfigError(
                    f"label_regex {self.label_regex!r} needs one capture group around the label, "
                    "e.g. '^(\\d+)_'"
                )


@dataclass(frozen=True)
class BackboneConfig:
    """Which pretrained network to start from."""

    source: str = field(
        default="minilm",
        metadata=_help(
            "pretrained backbone: minilm (packaged all-MiniLM-L6-v2), hf:<hub-id-or-folder>, "
            "timm:<name>, torchvision:<name>, arch:<name> (graft's own architectures), ge2e (a pretrained "
            "speaker encoder), bundle:<path> (see `graft backbones`)",
            flag="--backbone",
        ),
    )
    weights: str | None = field(
        default=None,
        metadata=_help(
            "local weights for timm:/torchvision:/arch:/ge2e backbones (.safetensors, or .pth/.pt/.th read "
            "with weights_only); without it timm/torchvision try the hub, arch: starts from random weights"
        ),
    )
    max_length: int | None = field(
        default=None,
        metadata=_help(
            "maximum tokens per text (default: the backbone's own limit, which is also the largest allowed)",
            bounds=Bounds(2, integer=True),
        ),
    )

    def __post_init__(self) -> None:
        check_bounds(self)
        if not self.source:
            raise ConfigError("backbone source must not be empty; try 'minilm'")
        if self.weights is not None and not self.weights:
            raise ConfigError("weights must be a file path; leave it unset for the source's own weights")


@dataclass(frozen=True)
class StrategyConfig:
    """Which layer groups train, and how (see docs/strategies.md)."""

    kind: StrategyKind = field(
        default="auto",
        metadata=_help(
            "auto (the plausible strategies scored by cross-validation within --budget; the best is "
            "kept), linear_probe (frozen backbone, cached features), contrastive (embedding body tuned "
            "with a supervised contrastive loss, then a probe), bitfit (biases only), lora (low-rank "
            "adapters), partial (top layer groups), gradual (unfreezes one more group per epoch), full; "
            "see docs/strategies.md",
            flag="--strategy",
        ),
    )
    unfreeze_top: int | None = field(
        default=None,
        metadata=_help(
            "for partial: layer groups to train, counted from the top (default 2)", bounds=AT_LEAST_1
        ),
    )
    layer_lr_decay: float = field(
        default=1.0,
        metadata=_help(
            "per-group learning-rate multiplier going down the network (e.g. 0.8)",
            bounds=Bounds(0, 1, low_open=True),
        ),
    )
    bn_stats: Literal["auto", "frozen", "train"] = field(
        default="auto",
        metadata=_help(
            "BatchNorm running statistics while the backbone trains: frozen (the pretrained ones), "
            "train (re-estimated from each batch), auto = frozen for a pretrained backbone, train from "
            "random weights"
        ),
    )
    head_init: Literal["probe", "random"] = field(
        default="probe",
        metadata=_help(
            "how the head starts when the backbone trains: probe = the linear probe fitted on frozen "
            "features first (LP-FT), random = a fresh head"
        ),
    )

    budget: str = field(
        default="10m",
        metadata=_help(
            "wall-clock budget for auto's choice and the final training, e.g. 90s, 10m, 2h; candidates "
            "whose expected cost does not fit are skipped (and said so); the from-scratch baseline's "
            "budget in seconds of a reference 2-core CPU (counted operations, the same on every machine)"
        ),
    )
    contrastive_steps: int = field(
        default=40,
        metadata=_help(
            "for contrastive: length of the tuning schedule in steps; cross-validation keeps 0, 1/8, 1/4, "
            "1/2 or all of them",
            bounds=AT_LEAST_1,
        ),
    )
    lora_rank: int = field(default=8, metadata=_help("for lora: rank of the adapters", bounds=AT_LEAST_1))
    lora_alpha: float = field(
        default=16.0, metadata=_help("for lora: adapter scaling numerator (alpha/rank)", bounds=POSITIVE)
    )

    @property
    def budget_seconds(self) -> float:
        return parse_duration(self.budget)

    def __post_init__(self) -> None:
        check_bounds(self)
        parse_duration(self.budget)
        if self.unfreeze_top is not None and self.kind not in ("partial", "auto"):
            raise ConfigError(f"unfreeze_top applies to the partial strategy, not {self.kind!r}")


@dataclass(frozen=True)
class TrainConfig:
    """The training loop's settings."""

    epochs: int = field(default=4, metadata=_help("maximum epochs of fine-tuning", bounds=AT_LEAST_1))
    batch_size: int = field(default=32, metadata=_help("examples per optimisation step", bounds=AT_LEAST_1))
    lr: float = field(
        default=5e-5, metadata=_help("peak learning rate of the backbone's trainable groups", bounds=POSITIVE)
    )
    head_lr: float = field(
        default=1e-3, metadata=_help("peak learning rate of the new head", bounds=POSITIVE)
    )
    weight_decay: float = field(
        default=0.01, metadata=_help("AdamW weight decay (not on biases and norms)", bounds=Bounds(0))
    )
    warmup_ratio: float = field(
        default=0.1, metadata=_help("fraction of steps of linear warm-up", bounds=Bounds(0, 0.5))
    )
    grad_clip: float | None = field(
        default=1.0, metadata=_help("clip gradients to this global norm", bounds=POSITIVE)
    )
    grad_accum: int = field(default=1, metadata=_help("gradient accumulation steps", bounds=AT_LEAST_1))
    patience: int = field(
        default=2,
        metadata=_help("stop after this many epochs without validation improvement", bounds=AT_LEAST_1),
    )
    mixed_precision: Precision = field(
        default="auto", metadata=_help("auto (bf16 on CUDA when supported), no, fp16 or bf16")
    )
    seed: int = field(
        default=0, metadata=_help("random seed for splits, initialisation and shuffling", bounds=SEED)
    )
    augment: Augment = field(
        default="auto",
        metadata=_help(
            "augmentation while fine-tuning: crop (random resized crop; audio: random offset), crop_flip "
            "(+ horizontal flip), none; auto = crop_flip for images above 64 px, none for smaller ones, "
            "crop for audio. Never applied to cached features"
        ),
    )
    workers: int | None = field(
        default=None,
        metadata=_help(
            "worker processes decoding images/audio (default: up to 4, one per CPU core; 0: in the main "
            "process)",
            bounds=Bounds(0, integer=True),
        ),
    )
    class_weight: ClassWeight = field(
        default="none",
        metadata=_help(
            "classification loss weights: none, or balanced (each class weighs n / (classes x its count), "
            "scikit-learn's; multilabel: each label's positives and negatives). Raises recall on rare "
            "classes at the cost of calibrated probabilities; on skewed data graft already chooses on "
            "macro-F1 (docs/evaluation.md)"
        ),
    )
    batching: Batching = field(
        default="random",
        metadata=_help(
            "text training batches: random (uniformly shuffled); by_length groups texts of similar length "
            "(random groups of 50 batches sorted; pads 1.0-1.2x the real tokens where random batches pad "
            "2-3x): 1.9x faster fine-tuning on SMS spam, but 1.5 points less accuracy on TREC, whose "
            "classes differ in length (benchmarks/batching.py). Files: always random"
        ),
    )

    def __post_init__(self) -> None:
        check_bounds(self)


@dataclass(frozen=True)
class EvalConfig:
    """How the shipped model is evaluated on held-out data (see docs/evaluation.md)."""

    baselines: Baselines = field(
        default="auto",
        metadata=_help(
            "models trained beside yours on the same protocol, so the report shows what transfer bought: "
            "none (the prior only); cheap (+ the frozen linear probe); all (+ the same network from "
            "scratch); auto: the scratch network too when 3 epochs of it fit in what the model's own "
            "training costs (at least a minute, within --budget), both counted in operations, never timed"
        ),
    )
    target_precision: float | None = field(
        default=None,
        metadata=_help(
            "multiclass: choose (on out-of-fold outputs, never the test rows) the confidence below which "
            "predict answers 'abstain', so that answered predictions are right this often, e.g. 0.95",
            bounds=Bounds(0, 1, low_open=True, high_open=True),
        ),
    )

    costs: str | None = field(
        default=None,
        metadata=_help(
            "multiclass: a cost matrix file (CSV/TSV/JSON; rows: true class, columns: answer, optionally "
            "'abstain'); predict then answers the cheapest expected answer, and the report gives the cost "
            "per prediction (docs/evaluation.md)"
        ),
    )

    def __post_init__(self) -> None:
        check_bounds(self)
        if self.costs is not None and not self.costs.strip():
            raise ConfigError("costs must name a cost matrix file; leave it unset for none")
        if self.target_precision is not None and self.costs is not None:
            raise ConfigError(
                "--target-precision and --costs both decide when to abstain; use one (an 'abstain' column "
                "in the cost file gives abstaining a cost)"
            )


@dataclass(frozen=True)
class RunConfig:
    """Everything one ``fit`` needs, as saved in ``<run>/config.yaml``."""

    data: DataConfig = field(default_factory=DataConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluation: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "config") -> RunConfig:
        if not isinstance(raw, dict):
            raise ConfigError(f"{source}: expected a mapping of sections, got {type(raw).__name__}")
        sections = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - set(sections))
        if unknown:
            raise ConfigError(f"{source}: unknown section(s) {unknown}; expected {sorted(sections)}")
        built = {}
        for name, value in raw.items():
            section_cls = _section_class(sections[name])
            built[name] = _build_section(section_cls, value or {}, f"{source}: {name}")
        return cls(**built)

    def to_yaml(self, path: str | Path) -> None:
        Path(path).write_text(self.yaml_text(), encoding="utf-8")

    def yaml_text(self) -> str:
        """The config as ``config.yaml`` holds it."""
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_yaml(cls, path: str | Path) -> RunConfig:
        import yaml

        path = Path(path)
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        return cls.from_dict(raw or {}, source=str(path))

    def replace(self, section: str, **changes: Any) -> RunConfig:
        """A copy with some fields of one section changed (validated again)."""
        current = getattr(self, section)
        return dataclasses.replace(self, **{section: dataclasses.replace(current, **changes)})


def pretrain_defaults() -> RunConfig:
    """Training settings for supervised pre-training from random weights (``graft pretrain``):
    every layer at the head's learning rate, more epochs and more patience than fine-tuning."""
    return RunConfig(
        # one early-stopping hold-out and a held-out test split: 30 epochs from scratch per fold is too much
        data=DataConfig(folds=1, estimate="holdout"),
        strategy=StrategyConfig(kind="full"),
        evaluation=EvalConfig(baselines="none"),  # a random-init network: no probe or scratch to compare
        train=TrainConfig(epochs=30, lr=2e-3, head_lr=2e-3, batch_size=64, patience=6, warmup_ratio=0.05,
                          weight_decay=5e-4),
    )  # fmt: skip


def _section_class(f: dataclasses.Field) -> type:
    hints = typing.get_type_hints(RunConfig)
    return hints[f.name]


def _build_section(section_cls: type, values: dict[str, Any], where: str) -> Any:
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(values).__name__}")
    names = {f.name for f in dataclasses.fields(section_cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {unknown}; expected some of {sorted(names)}")
    hints = typing.get_type_hints(section_cls)
    for key, value in values.items():
        _check_type(f"{where}.{key}", hints[key], value)
    return section_cls(**values)


def _check_type(where: str, hint: Any, value: Any) -> None:
    """Reject YAML values of the wrong kind early, with the field's name."""
    options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, _UnionType) else (hint,)
    for option in options:
        if option is type(None) and value is None:
            return
        if typing.get_origin(option) is Literal and value in typing.get_args(option):
            return
        if option is float and isinstance(value, int | float) and not isinstance(value, bool):
            return
        if option is int and isinstance(value, int) and not isinstance(value, bool):
            return
        if option is str and isinstance(value, str):
            return
        if option is bool and isinstance(value, bool):
            return
    raise ConfigError(f"{where}: {value!r} is not a valid value (expected {_describe(hint)})")


def _describe(hint: Any) -> str:
    parts = []
    options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, _UnionType) else (hint,)
    for option in options:
        if typing.get_origin(option) is Literal:
            parts.append(" | ".join(repr(v) for v in typing.get_args(option)))
        elif option is type(None):
            parts.append("null")
        else:
            parts.append(getattr(option, "__name__", str(option)))
    return " | ".join(parts)


_UnionType = type(int | None)


def cli_fields(section_cls: type) -> list[tuple[dataclasses.Field, Any]]:
    """(field, resolved type hint) pairs of a section, for building CLI options."""
    hints = typing.get_type_hints(section_cls)
    return [(f, hints[f.name]) for f in dataclasses.fields(section_cls) if "help" in f.metadata]


def flag_for(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")
