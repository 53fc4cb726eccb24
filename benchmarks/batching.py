"""Length-grouped text batches (``--batching by_length``, the default) against uniformly random ones.

For each dataset and seed, ``--rows`` training texts and ``--val-rows`` validation texts are drawn
(seeded) and the same network is fine-tuned twice with ``graft.fit(..., strategy="full", val=...)``
(one fine-tune with early stopping on the validation rows, no k-fold choice), identical in everything
but ``train.batching``; both are scored on the same fixed test rows. Printed per run: seconds spent
training (the fit's ``final`` timing: the fine-tune itself), test accuracy; then the mean time ratio
random / by_length and the mean accuracy difference.

Data: SMS spam (``text/sms_spam``; lengths 2-910 characters) and TREC (``text/trec``; short
questions); the test rows: TREC's official test file, a fixed 1,000 SMS rows never drawn for training.

  HF_HUB_OFFLINE=1 nice .venv/bin/python benchmarks/batching.py --datasets sms trec --seeds 0 1 2 --epochs 3
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _shared import find_shared_data  # the script's folder is on sys.path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

Rows = list[tuple[str, str]]
SMS_TEST_ROWS = 1000


def load(name: str) -> tuple[Rows, Rows]:
    """(training pool, fixed test rows) of (text, label)."""
    base = find_shared_data() / "text"
    if name == "trec":
        read = [json.loads(line) for line in (base / "trec" / "train.jsonl").open(encoding="utf-8")]
        test = [json.loads(line) for line in (base / "trec" / "test.jsonl").open(encoding="utf-8")]
        return [(r["text"], r["label"]) for r in read], [(r["text"], r["label"]) for r in test]
    lines = (base / "sms_spam" / "SMSSpamCollection.tsv").read_text(encoding="utf-8").splitlines()
    rows = [(text, label) for label, text in (line.split("\t", 1) for line in lines if line.strip())]
    order = np.random.default_rng(0).permutation(len(rows))
    return [rows[i] for i in order[SMS_TEST_ROWS:]], [rows[i] for i in order[:SMS_TEST_ROWS]]


def run(train: Rows, val: Rows, test: Rows, batching: str, seed: int, epochs: int) -> dict:
    import graft
    from graft.config import DataConfig, RunConfig, TrainConfig

    config = RunConfig(
        data=DataConfig(estimate="holdout"), train=TrainConfig(seed=seed, epochs=epochs, batching=batching)
    )
    with tempfile.TemporaryDirectory() as cache:
        os.environ["GRAFT_CACHE_DIR"] = cache
        t = time.perf_counter()
        model = graft.fit(train, backbone="minilm", strategy="full", val=val, test=test, config=config,
                          baselines="none", progress=False)  # fmt: skip
        total = time.perf_counter() - t
    report = model.report_
    timings = {k: round(v, 2) for k, v in report.timings.items()}
    accuracy = float(report.test.metrics["accuracy"])
    seconds = timings.get("final", total)
    return {"batching": batching, "seed": seed, "accuracy": accuracy, "train_seconds": seconds,
            "total_seconds": round(total, 2), "timings": timings}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--datasets", nargs="+", default=["sms", "trec"], choices=["sms", "trec"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--rows", type=int, default=1000, help="training texts drawn per run")
    parser.add_argument("--val-rows", type=int, default=300, help="validation texts drawn per run")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--megabatch", type=int, help="batches per sorted group (default: graft's)")
    parser.add_argument("--json", type=Path, help="write every run here")
    args = parser.parse_args()
    if args.megabatch:
        from graft.engine import LengthGroupedShuffle

        LengthGroupedShuffle.MEGABATCH = args.megabatch
    runs = []
    for name in args.datasets:
        pool, test = load(name)
        for seed in args.seeds:
            pick = np.random.default_rng(seed).permutation(len(pool))
            train = [pool[i] for i in pick[: args.rows]]
            val = [pool[i] for i in pick[args.rows : args.rows + args.val_rows]]
            for batching in ("random", "by_length"):
                r = {"dataset": name, **run(train, val, test, batching, seed, args.epochs)}
                runs.append(r)
                print(f"{name:5s} seed {seed} {batching:9s}  train {r['train_seconds']:7.1f}s  "
                      f"accuracy {r['accuracy']:.4f}", flush=True)  # fmt: skip
    for name in args.datasets:
        mine = [r for r in runs if r["dataset"] == name]
        rand = [r for r in mine if r["batching"] == "random"]
        grouped = [r for r in mine if r["batching"] == "by_length"]
        ratio = np.mean([a["train_seconds"] / b["train_seconds"] for a, b in zip(rand, grouped, strict=True)])
        diff = np.mean([b["accuracy"] - a["accuracy"] for a, b in zip(rand, grouped, strict=True)])
        print(f"{name}: time random / by_length = {ratio:.2f}x; accuracy by_length - random = {diff:+.4f} "
              f"(mean of {len(rand)} seeds)")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({"argv": sys.argv, "runs": runs}, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
