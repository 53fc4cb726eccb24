"""Per-label thresholds chosen out of fold (graft's multilabel default) against the fixed 0.5 cut.

A real multilabel task from real text: each sentence is tagged with its sentiment (``positive`` or
``negative``) and, for product reviews, ``product``: SST-2 movie-review sentences and UCI Amazon
product-review sentences (``text/uci_sentiment``), mixed 9:1, so ``product`` is the rare label. For
each size and seed a training sample is drawn; the test rows are a fixed 900 SST-2 test sentences
and the 100 Amazon sentences never drawn for training. Every run is
``graft.fit(sample, strategy="linear_probe", task="multilabel")`` with MiniLM; the same model's test
probabilities are then answered two ways: at the thresholds it ships (chosen on its out-of-fold
outputs) and at 0.5. Printed: macro- and micro-F1 of both, per run and as the mean paired difference.

  HF_HUB_OFFLINE=1 nice .venv/bin/python benchmarks/multilabel_thresholds.py --sizes 100 400 --seeds 0 1 2 3 4
"""

from __future__ import annotations

import argparse
import csv
import json
import os
from pathlib import Path

import numpy as np
from _shared import find_shared_data  # the script's folder is on sys.path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

Row = tuple[str, list[str]]
AMAZON_TEST = 100
SST2_TEST = 900
PRODUCT_SHARE = 0.1


def load() -> tuple[list[Row], list[Row], list[Row]]:
    """(movie pool, product pool, fixed test rows) of (sentence, tags)."""
    base = find_shared_data() / "text"

    def sst2(name: str) -> list[Row]:
        with (base / "sst2" / name).open(encoding="utf-8", newline="") as f:
            return [(r["text"], [r["label"]]) for r in csv.DictReader(f)]

    lines = (base / "uci_sentiment" / "amazon_cells_labelled.txt").read_text(encoding="utf-8").splitlines()
    amazon = [(t, ["positive" if y.strip() == "1" else "negative", "product"])
              for t, y in (line.rsplit("\t", 1) for line in lines if line.strip())]  # fmt: skip
    order = np.random.default_rng(0).permutation(len(amazon))
    test = sst2("test.csv")[:SST2_TEST] + [amazon[i] for i in order[:AMAZON_TEST]]
    return sst2("train.csv"), [amazon[i] for i in order[AMAZON_TEST:]], test


def f1s(truth: np.ndarray, predicted: np.ndarray) -> tuple[float, float]:
    from sklearn.metrics import f1_score

    return (float(f1_score(truth, predicted, average="macro", zero_division=0)),
            float(f1_score(truth, predicted, average="micro", zero_division=0)))  # fmt: skip


def run(train: list[Row], test: list[Row], seed: int) -> dict:
    import graft
    from graft.config import RunConfig, TrainConfig

    model = graft.fit(
        [t for t, _ in train], labels=[tags for _, tags in train], task="multilabel", backbone="minilm",
        strategy="linear_probe", config=RunConfig(train=TrainConfig(seed=seed)), baselines="none",
        progress=False,
    )  # fmt: skip
    space = list(model.label_space)
    truth = np.array([[label in tags for label in space] for _, tags in test], dtype=int)
    proba = model.predict_proba([t for t, _ in test])
    cut = np.asarray(model.manifest_.get("thresholds", [0.5] * len(space)))
    tuned, fixed = f1s(truth, proba >= cut), f1s(truth, proba > 0.5)
    return {"labels": space, "thresholds": cut.tolist(), "macro_f1": tuned[0], "micro_f1": tuned[1],
            "macro_f1_at_0.5": fixed[0], "micro_f1_at_0.5": fixed[1]}  # fmt: skip


def main() -> None:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=raw)
    parser.add_argument("--sizes", nargs="+", type=int, default=[100, 400], help="training rows per run")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    movies, products, test = load()
    runs = []
    for size in args.sizes:
        for seed in args.seeds:
            rng = np.random.default_rng(seed)
            n_product = max(2, round(PRODUCT_SHARE * size))
            train = [movies[i] for i in rng.choice(len(movies), size - n_product, replace=False)]
            train += [products[i] for i in rng.choice(len(products), n_product, replace=False)]
            r = {
                "size": size,
                "seed": seed,
                **run([train[i] for i in rng.permutation(len(train))], test, seed),
            }
            runs.append(r)
            print(f"size {size:4d} seed {seed}: macro-F1 {r['macro_f1']:.4f} "
                  f"(0.5: {r['macro_f1_at_0.5']:.4f})  "
                  f"micro-F1 {r['micro_f1']:.4f} (0.5: {r['micro_f1_at_0.5']:.4f})  thresholds "
                  + ", ".join(f"{lab} {t:.2f}" for lab, t in zip(r["labels"], r["thresholds"], strict=True)),
                  flush=True)  # fmt: skip
    for size in args.sizes:
        mine = [r for r in runs if r["size"] == size]
        for name in ("macro_f1", "micro_f1"):
            diff = [r[name] - r[f"{name}_at_0.5"] for r in mine]
            print(f"size {size}: {name} tuned - 0.5 = {np.mean(diff):+.4f} (min {min(diff):+.4f}, max "
                  f"{max(diff):+.4f}, {len(diff)} seeds)")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(runs, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
