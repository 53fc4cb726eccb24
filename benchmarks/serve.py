"""`graft serve` under load: throughput and p50/p95 latency, with and without request batching.

A real bundle (MiniLM linear probe on SST-2, trained on the first --train rows unless --bundle is
given) is served twice by ``graft serve`` in a subprocess on 127.0.0.1:

* **batched** (the default, ``--max-batch 64``): requests that arrive within 5 ms are scored together;
* **unbatched** (``--max-batch 1``, the baseline): every request is one forward pass, as a plain
  "load the model, call predict in the handler" endpoint would do.

Each time, --clients concurrent clients send --requests requests in all (one SST-2 test sentence each,
after a warm-up), and every answer is checked against ``Model.predict`` in this process. Printed:
requests/s, p50 and p95 latency, the batched/unbatched throughput ratio, and in-process
``predict`` on the same sentences (batches of 64) as the ceiling without HTTP.

  HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/serve.py [--requests 800 --clients 8] [--bundle PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from _shared import find_shared_data  # the script's folder is on sys.path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@contextlib.contextmanager
def serving(bundle: Path, max_batch: int):
    """``graft serve BUNDLE --port 0 --max-batch N``; yields its url once it listens."""
    process = subprocess.Popen(
        [sys.executable, "-m", "graft", "serve", str(bundle), "--port", "0", "--max-batch", str(max_batch)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    seen = []
    for line in process.stderr:
        seen.append(line)
        if "graft: serving" in line:
            url = line.split(" on ", 1)[1].split()[0]
            break
    else:
        raise SystemExit(f"graft serve did not start: {''.join(seen)[-2000:]}")
    threading.Thread(target=seen.extend, args=(process.stderr,), daemon=True).start()
    try:
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def ask(url: str, text: str) -> tuple[float, str]:
    body = json.dumps({"inputs": [text]}).encode()
    request = urllib.request.Request(
        f"{url}/predict", data=body, headers={"content-type": "application/json"}
    )
    start = time.perf_counter()
    with urllib.request.urlopen(request, timeout=120) as response:
        answer = json.loads(response.read())["predictions"][0]["prediction"]
    return time.perf_counter() - start, answer


def load(url: str, texts: list[str], clients: int) -> tuple[float, np.ndarray, list[str]]:
    """(seconds for all, latencies, answers) of one request per text from ``clients`` threads."""
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(lambda t: ask(url, t), texts[: clients * 4]))  # warm-up: connections, first batches
        start = time.perf_counter()
        results = list(pool.map(lambda t: ask(url, t), texts))
        seconds = time.perf_counter() - start
    return seconds, np.array([r[0] for r in results]), [r[1] for r in results]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=800)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--train", type=int, default=1000, help="SST-2 training rows for the bundle")
    parser.add_argument("--bundle", help="serve this text bundle instead of training one")
    parser.add_argument("--out", default="runs/serve-bench")
    args = parser.parse_args()

    import graft
    from graft.config import RunConfig

    data = find_shared_data() / "text" / "sst2"
    if args.bundle:
        bundle = Path(args.bundle)
    else:
        with (data / "train.csv").open(encoding="utf-8", newline="") as f:
            rows = [
                (r["text"], r["label"]) for _, r in zip(range(args.train), csv.DictReader(f), strict=False)
            ]
        quick = RunConfig().replace("evaluation", baselines="none")
        graft.fit(rows, strategy="linear_probe", config=quick, out=args.out, overwrite=True, progress=False)
        bundle = Path(args.out) / "bundle"
    model = graft.load(bundle)
    with (data / "test.csv").open(encoding="utf-8", newline="") as f:
        pool = [r["text"] for r in csv.DictReader(f)]
    texts = [pool[i % len(pool)] for i in range(args.requests)]
    expected = [str(p) for p in model.predict(texts)]
    start = time.perf_counter()
    for i in range(0, len(texts), 64):
        model.predict(texts[i : i + 64])
    ceiling = len(texts) / (time.perf_counter() - start)

    print(f"{len(texts)} requests of one sentence from {args.clients} clients; bundle {bundle}")
    print(f"{'server':<28}{'requests/s':>11}{'p50 ms':>9}{'p95 ms':>9}  answers equal predict")
    rates = {}
    for name, max_batch in (("graft serve (batched)", 64), ("unbatched (--max-batch 1)", 1)):
        with serving(bundle, max_batch) as url:
            seconds, latency, answers = load(url, texts, args.clients)
        rates[name] = len(texts) / seconds
        same = sum(a == e for a, e in zip(answers, expected, strict=True))
        p50, p95 = np.percentile(latency, [50, 95]) * 1000
        print(f"{name:<28}{rates[name]:>11.1f}{p50:>9.1f}{p95:>9.1f}  {same}/{len(texts)}", flush=True)
    print(f"{'in-process predict (64s)':<28}{ceiling:>11.1f}")
    batched, single = rates.values()
    print(f"throughput ratio batched / unbatched: {batched / single:.2f}x")


if __name__ == "__main__":
    main()
