"""Contrastive body tuning on real few-label text tasks: which learning rate, temperature and step count.

For each data set (TREC, 6 classes; SST-2, 2 classes), seed (which 8 examples per class are labeled),
temperature and learning rate, one :func:`graft.contrastive.tune_body` run of the packaged MiniLM
snapshots its weights at several steps. Each snapshot embeds the labeled examples and a fixed
500-row sample of the test file; scikit-learn's LogisticRegression (defaults, as SetFit's head) is
fitted on the former and scored on the latter. Optionally each snapshot is also averaged with the
pretrained weights (``--wise 0.5``: WiSE-FT's weight interpolation) and scored again. The frozen
MiniLM + LogisticRegression baseline of every seed is scored in the same run.

Results go to a JSON-lines file, one line per run; a rerun with the same ``--out`` skips the runs it
holds, so an interrupted sweep resumes. Prints a table per data set (accuracy per seed, mean, min) and
the seconds per training step.

Usage:
    nice .venv/bin/python benchmarks/contrastive_sweep.py --out /tmp/sweep.jsonl > /tmp/sweep.log 2>&1
    .venv/bin/python benchmarks/contrastive_sweep.py --out /tmp/sweep.jsonl --report   # table only
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _shared import find_shared_data

DATASETS = {
    "trec": ("text/trec/train.jsonl", "text/trec/test.jsonl"),
    "sst2": ("text/sst2/train.csv", "text/sst2/test.csv"),
}


def read_rows(path: Path) -> list[tuple[str, str]]:
    if path.suffix == ".jsonl":
        with open(path, encoding="utf-8") as f:
            return [(r["text"], r["label"]) for r in map(json.loads, f) if r]
    with open(path, newline="", encoding="utf-8") as f:
        return [(r["text"], r["label"]) for r in csv.DictReader(f)]


def few_labels(rows: list[tuple[str, str]], per_class: int, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    by_class: dict[str, list[tuple[str, str]]] = {}
    for row in rows:
        by_class.setdefault(row[1], []).append(row)
    picked = [row for label in sorted(by_class) for row in rng.sample(by_class[label], per_class)]
    rng.shuffle(picked)
    return picked


def score(backbone, train: list[tuple[str, str]], test: list[tuple[str, str]]) -> float:
    from sklearn.linear_model import LogisticRegression

    from graft.features import extract_features

    texts = [t for t, _ in train] + [t for t, _ in test]
    features = extract_features(backbone, texts, progress=False).numpy()
    head = LogisticRegression(max_iter=5000).fit(features[: len(train)], [y for _, y in train])
    return float(head.score(features[len(train) :], [y for _, y in test]))


def interpolate(pretrained: dict, tuned: dict, alpha: float) -> dict:
    return {
        k: (alpha * tuned[k] + (1 - alpha) * v) if v.is_floating_point() else tuned[k]
        for k, v in pretrained.items()
    }


def run_key(row: dict) -> tuple:
    return (row["dataset"], row["seed"], row["lr"], row["temperature"], row["batch_size"])


def sweep(args: argparse.Namespace, done: set[tuple]) -> None:
    import torch

    from graft.backbones import create_backbone
    from graft.contrastive import tune_body

    shared = find_shared_data()
    backbone = create_backbone("minilm")
    pretrained = {k: v.detach().clone() for k, v in backbone.state_dict().items()}
    print(f"torch threads: {torch.get_num_threads()}", flush=True)
    data = {}
    for name in args.datasets:
        train_file, test_file = DATASETS[name]
        test = read_rows(shared / test_file)
        if len(test) > args.test_rows:
            test = random.Random(0).sample(test, args.test_rows)
        data[name] = (read_rows(shared / train_file), test)

    def record(row: dict) -> None:
        with open(args.out, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        done.add(run_key(row))

    for name in args.datasets:
        for seed in args.seeds:
            row = {"dataset": name, "seed": seed, "lr": 0.0, "temperature": 0.0, "batch_size": 0}
            if run_key(row) in done:
                continue
            backbone.load_state_dict(pretrained)
            row["scores"] = {
                "0": score(backbone, few_labels(data[name][0], args.per_class, seed), data[name][1])
            }
            print(f"{name} seed {seed} frozen: {row['scores']['0']:.3f}", flush=True)
            record(row)

    last = max(args.steps)
    for temperature in args.temperatures:
        for lr in args.lrs:
            for name in args.datasets:
                for seed in args.seeds:
                    row = {"dataset": name, "seed": seed, "lr": lr, "temperature": temperature,
                           "batch_size": args.batch_size}  # fmt: skip
                    if run_key(row) in done:
                        continue
                    train, test = data[name]
                    labeled = few_labels(train, args.per_class, seed)
                    backbone.load_state_dict(pretrained)
                    t0 = time.perf_counter()
                    snaps = tune_body(
                        backbone, [t for t, _ in labeled], [y for _, y in labeled], steps=last, lr=lr,
                        batch_size=args.batch_size, temperature=temperature, seed=seed,
                        snapshot_at=args.steps,
                    )  # fmt: skip
                    row["seconds_per_step"] = (time.perf_counter() - t0) / last
                    row["scores"], row["wise"] = {}, {}
                    t1 = time.perf_counter()
                    for step, state in sorted(snaps.items()):
                        backbone.load_state_dict(state)
                        row["scores"][str(step)] = score(backbone, labeled, test)
                        for alpha in args.wise:
                            backbone.load_state_dict(interpolate(pretrained, state, alpha))
                            row["wise"][f"{alpha}@{step}"] = score(backbone, labeled, test)
                    row["eval_seconds"] = time.perf_counter() - t1
                    shown = " ".join(f"{s}:{a:.3f}" for s, a in row["scores"].items())
                    wise = " ".join(f"{s}:{a:.3f}" for s, a in row["wise"].items())
                    print(f"{name} seed {seed} lr {lr:g} t {temperature:g}: {shown}  wise {wise}  "
                          f"({row['seconds_per_step']:.2f} s/step, eval {row['eval_seconds']:.0f} s)",
                          flush=True)  # fmt: skip
                    record(row)


def report(rows: list[dict]) -> None:
    for name in dict.fromkeys(r["dataset"] for r in rows):
        mine = [r for r in rows if r["dataset"] == name]
        seeds = sorted({r["seed"] for r in mine})
        print(f"\n== {name}: test accuracy, LogisticRegression on embeddings of 8 labeled examples per class")
        print(
            f"{'setting':<34}" + "".join(f"{'seed ' + str(s):>9}" for s in seeds) + f"{'mean':>8}{'min':>8}"
        )
        table: dict[str, dict[int, float]] = {}
        for r in mine:
            if r["lr"] == 0:
                table.setdefault("frozen", {})[r["seed"]] = r["scores"]["0"]
                continue
            prefix = f"lr {r['lr']:g} t {r['temperature']:g} b {r['batch_size']}"
            for step, acc in r["scores"].items():
                table.setdefault(f"{prefix} step {int(step):>3}", {})[r["seed"]] = acc
            for key, acc in r.get("wise", {}).items():
                alpha, step = key.split("@")
                table.setdefault(f"{prefix} step {int(step):>3} w{alpha}", {})[r["seed"]] = acc
        for setting, by_seed in table.items():
            cells = "".join(f"{by_seed[s]:>9.3f}" if s in by_seed else f"{'':>9}" for s in seeds)
            values = list(by_seed.values())
            print(f"{setting:<34}{cells}{statistics.mean(values):>8.3f}{min(values):>8.3f}")
        timed = [r["seconds_per_step"] for r in mine if "seconds_per_step" in r]
        if timed:
            print(f"seconds per step: median {statistics.median(timed):.2f} (min {min(timed):.2f}, "
                  f"max {max(timed):.2f}) over {len(timed)} runs")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--lrs", nargs="+", type=float, default=[1e-5, 2e-5, 5e-5])
    parser.add_argument("--temperatures", nargs="+", type=float, default=[0.1, 0.05])
    parser.add_argument("--steps", nargs="+", type=int, default=[10, 20, 40, 80],
                        help="snapshots; the schedule spans the largest")  # fmt: skip
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--wise", nargs="*", type=float, default=[0.5],
                        help="also score each snapshot averaged with the pretrained weights, "
                        "with these weights on the tuned ones")  # fmt: skip
    parser.add_argument("--per-class", type=int, default=8)
    parser.add_argument("--test-rows", type=int, default=500)
    parser.add_argument("--out", default="contrastive_sweep.jsonl", help="results, one JSON line per run")
    parser.add_argument("--report", action="store_true", help="print the table of --out and stop")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("GRAFT_CACHE_DIR", "off")

    out = Path(args.out)
    rows = (
        [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()] if out.is_file() else []
    )
    if not args.report:
        sweep(args, {run_key(r) for r in rows})
        rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    report(rows)


if __name__ == "__main__":
    main()
