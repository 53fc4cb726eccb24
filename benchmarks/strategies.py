"""Every strategy at 8, 32 and 128 labeled examples per class, and where ``auto``'s pick lands.

Cells: SST-2 and TREC (graft's packaged MiniLM) and CIFAR-10-JPEG (the real pretrained ResNet-20,
``arch:resnet20`` with ``../shared/data/models/resnet20_cifar10.th``). For each cell and seed, k
training examples of every class are drawn (seeded, the same sample for every strategy) and every
strategy is scored on the same test rows: the full SST-2 / TREC test files (``--test-limit N``: a
fixed random N of them), and for CIFAR-10 a fixed half of the 10,000 JPEGs (500 per class) that no
training sample is drawn from. Every run is ``graft.fit(sample, strategy=S, test=test)`` with graft's
defaults (the protocol chooses settings on the sample: 5-fold cross-validation up to 2,000 examples),
so a strategy's number includes its own settings search.

Printed (and with ``--markdown``, written between ``<!-- strategies:begin -->`` and
``<!-- strategies:end -->`` with the command line): test accuracy per strategy and cell (mean over
seeds, best per cell in bold), the strategy ``auto`` shipped in each cell, and how often ``auto`` is
within 1 point of the best single strategy of its cell.

Quick run:
  nice .venv/bin/python benchmarks/strategies.py --datasets trec --shots 8 --seeds 0 --test-limit 200 \\
      --strategies linear_probe contrastive auto
Full grid (hours on 2 CPU cores; ``--resume`` continues an interrupted one):
  HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/strategies.py --json strategies.json --resume \\
      --markdown docs/strategies.md
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
from _shared import find_shared_data  # the script's folder is on sys.path
from fewshot import command_line, load_dataset, machine, sample, say, write_markdown

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DATASETS = ("sst2", "trec", "cifar10")
STRATEGIES = ("linear_probe", "contrastive", "bitfit", "lora", "partial", "gradual", "full", "auto")
MARKS = ("<!-- strategies:begin -->", "<!-- strategies:end -->")
CIFAR_SPLIT_SEED = 0  # which 500 images per class form CIFAR's test half: fixed


def cifar_rows() -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(training pool, test rows) of (path, label): a fixed half of each class each."""
    from graft.data import read_dataset

    ds = read_dataset(find_shared_data() / "images" / "cifar10_jpg_test")
    rng = np.random.default_rng(CIFAR_SPLIT_SEED)
    pool, test = [], []
    for k, label in enumerate(ds.label_space):
        idx = rng.permutation(np.flatnonzero(ds.targets == k))
        half = len(idx) // 2
        pool += [(str(ds.examples[i]), str(label)) for i in idx[:half]]
        test += [(str(ds.examples[i]), str(label)) for i in idx[half:]]
    return pool, test


def columns(rows: list[tuple[str, str]], dataset: str) -> dict[str, list[str]]:
    name = "path" if dataset == "cifar10" else "text"
    return {name: [x for x, _ in rows], "label": [y for _, y in rows]}


def fit_kwargs(dataset: str) -> dict:
    if dataset == "cifar10":
        weights = find_shared_data() / "models" / "resnet20_cifar10.th"
        return {"backbone": "arch:resnet20", "weights": str(weights)}
    return {"backbone": "minilm"}


def run_one(dataset: str, strategy: str, train: dict, test: dict, seed: int, cache: Path) -> dict:
    import graft
    from graft.config import RunConfig, TrainConfig

    os.environ["GRAFT_CACHE_DIR"] = tempfile.mkdtemp(prefix="cache-", dir=cache)  # cold every run
    t = time.perf_counter()
    model = graft.fit(
        train, strategy=strategy, test=test, progress=False,
        config=RunConfig(train=TrainConfig(seed=seed)), baselines="none", **fit_kwargs(dataset),
    )  # fmt: skip
    seconds = time.perf_counter() - t
    report = model.report_
    record = report.strategy
    out = {
        "accuracy": float(report.test.metrics["accuracy"]),
        "seconds": round(seconds, 2),
        "shipped": record.get("shipped", record.get("kind")),
    }
    if strategy == "auto":
        out["pick"] = record.get("kind")
        out["reason"] = record.get("reason")
        out["candidates"] = record.get("candidates")
    return out


def summarise(runs: list[dict], datasets: list[str], shots: list[int]) -> list[str]:
    """A table per dataset: strategies down, shots across; then auto's record against the best."""
    ok = [r for r in runs if r.get("error") is None]
    lines: list[str] = []
    close, cells = 0, 0
    for dataset in datasets:
        ks = [k for k in shots if any(r["dataset"] == dataset and r["shots"] == k for r in ok)]
        if not ks:
            continue
        mean: dict[tuple[str, int], tuple[float, int, float]] = {}
        for s in STRATEGIES:
            for k in ks:
                mine = [r for r in ok if (r["dataset"], r["shots"], r["strategy"]) == (dataset, k, s)]
                if mine:
                    mean[(s, k)] = (
                        float(np.mean([r["accuracy"] for r in mine])), len(mine),
                        float(np.mean([r["seconds"] for r in mine])),
                    )  # fmt: skip
        lines += [f"**{dataset}** (test accuracy, mean over seeds; seconds per run)", ""]
        lines += ["| strategy | " + " | ".join(f"{k} per class" for k in ks) + " |"]
        lines += ["|---|" + "---|" * len(ks)]
        best = {
            k: max((v[0] for (s, kk), v in mean.items() if kk == k and s != "auto"), default=None) for k in ks
        }
        for s in STRATEGIES:
            cells_text = []
            for k in ks:
                if (s, k) not in mean:
                    cells_text.append("—")
                    continue
                acc, n, sec = mean[(s, k)]
                text = f"{acc:.3f}"
                text = f"**{text}**" if s != "auto" and acc == best[k] else text
                cells_text.append(f"{text} ({n} seeds, {sec:.0f}s)")
            if any(c != "—" for c in cells_text):
                lines.append(f"| {s} | " + " | ".join(cells_text) + " |")
        picks = []
        for k in ks:
            mine = [r for r in ok if (r["dataset"], r["shots"], r["strategy"]) == (dataset, k, "auto")]
            names = [r.get("shipped") or r.get("pick") for r in mine]
            picks.append(", ".join(f"{n} ×{names.count(n)}" for n in dict.fromkeys(names)) or "—")
            if ("auto", k) in mean and best[k] is not None:
                cells += 1
                close += mean[("auto", k)][0] >= best[k] - 0.01
        lines += ["| auto shipped | " + " | ".join(picks) + " |", ""]
    if cells:
        lines.append(
            f"auto within 1 point of the best single strategy (its mean over seeds) in {close} of {cells} "
            f"cells ({close / cells:.0%}; target >= 80%)."
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--datasets", nargs="+", choices=DATASETS, default=list(DATASETS))
    parser.add_argument("--shots", nargs="+", type=int, default=[8, 32, 128])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--strategies", nargs="+", choices=STRATEGIES, default=list(STRATEGIES))
    parser.add_argument("--test-limit", type=int, help="text: score on a fixed random N test rows")
    parser.add_argument("--json", help="write the raw per-run results here (after every run)")
    parser.add_argument("--resume", action="store_true", help="keep the finished runs already in --json")
    parser.add_argument("--markdown", help="write the tables into this markdown file")
    parser.add_argument("--section", default="Every strategy, every size", help="--markdown heading")
    args = parser.parse_args()
    if args.resume and not args.json:
        parser.error("--resume needs --json")

    runs: list[dict] = []
    if args.resume and Path(args.json).exists():
        earlier = json.loads(Path(args.json).read_text())
        if earlier["meta"].get("test_limit") != args.test_limit:
            parser.error(f"--resume: {args.json} was run with --test-limit {earlier['meta']['test_limit']!r}")
        runs = [r for r in earlier["runs"] if r.get("error") is None]
        say(f"resuming: {len(runs)} finished runs in {args.json}")
    meta = {"command": command_line(), "machine": machine(), "test_limit": args.test_limit}
    done = {_key(r) for r in runs}
    say(f"machine: {meta['machine']}")
    with tempfile.TemporaryDirectory(prefix="strategies-") as tmp:
        for dataset in args.datasets:
            pool, test = cifar_rows() if dataset == "cifar10" else load_dataset(dataset, args.test_limit)
            for shots in args.shots:
                for seed in args.seeds:
                    train = columns(sample(pool, shots, seed), dataset)
                    for strategy in args.strategies:
                        cell = (dataset, shots, seed, strategy)
                        if cell in done:
                            continue
                        run = dict(zip(("dataset", "shots", "seed", "strategy"), cell, strict=True))
                        try:
                            run |= run_one(dataset, strategy, train, columns(test, dataset), seed, Path(tmp))
                            run["error"] = None
                            say(f"[{dataset} k={shots} seed={seed}] {strategy}: {run['accuracy']:.4f} in "
                                f"{run['seconds']:.0f}s (shipped {run['shipped']})")  # fmt: skip
                        except Exception as exc:  # one failed run must not lose the grid
                            run["error"] = "".join(traceback.format_exception(exc))
                            say(f"[{dataset} k={shots} seed={seed}] {strategy} FAILED:\n{run['error']}")
                        runs = [r for r in runs if _key(r) != cell] + [run]
                        if args.json:
                            Path(args.json).write_text(json.dumps({"meta": meta, "runs": runs}, indent=1))
    body = summarise(runs, args.datasets, args.shots)
    print("\n".join(body))
    if args.markdown:
        limit = f"; text test files cut to a fixed random {args.test_limit} rows" if args.test_limit else ""
        header = ["", f"Measured on {meta['machine']}{limit}:", "", "```", meta["command"], "```", ""]
        write_markdown(Path(args.markdown), args.section, header + body + [""], marks=MARKS)
        say(f"wrote the tables into {args.markdown}")


def _key(run: dict) -> tuple:
    return (run["dataset"], run["shots"], run["seed"], run["strategy"])


if __name__ == "__main__":
    main()
