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

Then a hostile client (``--hostile``, on by default): one client sends --small one-sentence requests one
after another to an idle server, then again while another client sends maximum-size requests without
pause (the server's limits: --max-inputs texts filling --max-body, each text far longer than the
model reads). Printed: p50/p95 of the one-sentence requests in both cases and their ratio (the bound:
5x), and the server's RSS before the first maximum-size request, at its peak, and once it is answered
(the bound: within 20% of before).

  HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/serve.py [--requests 800 --clients 8] [--bundle PATH]
  HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/serve.py --bundle PATH --skip-throughput  # the load test only
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
def serving(bundle: Path, *options: str):
    """``graft serve BUNDLE --port 0 OPTIONS``; yields (its url, its process id) once it listens."""
    process = subprocess.Popen(
        [sys.executable, "-m", "graft", "serve", str(bundle), "--port", "0", *options],
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
        yield url, process.pid
    finally:
        process.terminate()
        process.wait(timeout=30)


def post(url: str, body: bytes, timeout: float = 120) -> dict:
    request = urllib.request.Request(
        f"{url}/predict", data=body, headers={"content-type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def ask(url: str, text: str) -> tuple[float, str]:
    start = time.perf_counter()
    answer = post(url, json.dumps({"inputs": [text]}).encode())["predictions"][0]["prediction"]
    return time.perf_counter() - start, answer


def health(url: str) -> dict:
    with urllib.request.urlopen(f"{url}/health", timeout=30) as response:
        return json.loads(response.read())


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    """A process's resident memory (``VmHWM``: its peak so far), from /proc (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise SystemExit(f"no {field} in /proc/{pid}/status: the memory part needs Linux")


def largest_request(pool: list[str], limits: dict) -> bytes:
    """``max_inputs`` texts as long as ``max_body`` allows (the largest request the server takes)."""
    size = min(limits["max_text_chars"], limits["max_body"] // limits["max_inputs"] - 16)
    story = " ".join(pool)
    texts = [story[i * 997 % len(story) :][:size] for i in range(limits["max_inputs"])]
    texts = [t if len(t) == size else (t + " " + story)[:size] for t in texts]
    body = json.dumps({"inputs": texts}, ensure_ascii=True).encode()
    assert len(body) <= limits["max_body"], (len(body), limits["max_body"])
    return body


def hostile(bundle: Path, pool: list[str], args: argparse.Namespace) -> None:
    """One-sentence latency on an idle server, then beside a client sending maximum-size requests; the
    server's memory before and after one."""
    options = ["--threads", str(args.threads), "--max-inputs", str(args.max_inputs)]
    with serving(bundle, *options) as (url, pid):
        limits = health(url)["limits"]
        body = largest_request(pool, limits)
        for text in pool[:20]:  # warm-up
            ask(url, text)
        idle = np.array([ask(url, t)[0] for t in pool[20 : 20 + args.small]])
        before = rss_mb(pid)
        stop, big = threading.Event(), []

        def flood() -> None:
            while not stop.is_set():
                start = time.perf_counter()
                post(url, body, timeout=3600)
                big.append(time.perf_counter() - start)

        flooder = threading.Thread(target=flood)
        flooder.start()
        while health(url)["queued"] == 0:  # the first maximum-size request is queued
            time.sleep(0.05)
        loaded = np.array([ask(url, t)[0] for t in pool[20 + args.small : 20 + 2 * args.small]])
        stop.set()
        flooder.join()  # the maximum-size request in flight is answered
        time.sleep(2)
        after, peak = rss_mb(pid), rss_mb(pid, "VmHWM")
    p_idle, p_loaded = np.percentile(idle, [50, 95]) * 1000, np.percentile(loaded, [50, 95]) * 1000
    ratio, change = p_loaded[1] / p_idle[1], after / before - 1
    print(f"\nhostile client: maximum-size requests of {limits['max_inputs']} texts x "
          f"{len(body) // limits['max_inputs']:,} bytes ({len(body) / 2**20:.1f} MiB; {len(big)} answered, "
          f"{np.mean(big):.0f} s each), --threads {args.threads}")  # fmt: skip
    print(f"{'one-sentence requests':<28}{'p50 ms':>9}{'p95 ms':>9}")
    print(f"{'idle server':<28}{p_idle[0]:>9.1f}{p_idle[1]:>9.1f}")
    print(f"{'beside maximum requests':<28}{p_loaded[0]:>9.1f}{p_loaded[1]:>9.1f}")
    print(f"p95 ratio loaded / idle: {ratio:.2f}x (bound 5x: {'ok' if ratio <= 5 else 'FAILED'})")
    print(f"server RSS: {before:.0f} MB before, {peak:.0f} MB at peak, {after:.0f} MB after "
          f"({change:+.1%}; bound 20%: {'ok' if abs(change) <= 0.2 else 'FAILED'})")  # fmt: skip


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
    parser.add_argument("--skip-throughput", action="store_true", help="run the hostile-client test only")
    parser.add_argument("--small", type=int, default=100, help="one-sentence requests per latency sample")
    parser.add_argument("--threads", type=int, default=2, help="the server's --threads")
    parser.add_argument("--max-inputs", type=int, default=1024, help="the server's --max-inputs, which "
                        "sets the size of a maximum request (default: the server's default)")  # fmt: skip
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
    with (data / "test.csv").open(encoding="utf-8", newline="") as f:
        pool = [r["text"] for r in csv.DictReader(f)]
    if not args.skip_throughput:
        throughput(bundle, pool, args)
    hostile(bundle, pool, args)


def throughput(bundle: Path, pool: list[str], args: argparse.Namespace) -> None:
    import graft

    model = graft.load(bundle)
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
        with serving(bundle, "--max-batch", str(max_batch)) as (url, _):
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
