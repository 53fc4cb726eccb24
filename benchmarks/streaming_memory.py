"""Streaming feature extraction: peak memory over 10,000 images vs over 1,000.

Requirement: the peak RSS of feature extraction over 10,000 images is <= 1.5x that over 1,000.

How it is measured: the CIFAR-10 JPEG test set (shared data, ``images/cifar10_jpg_test``) is listed
once with ``graft.data.read_dataset`` and put in a fixed seeded order. For each N (``--n-small``,
``--n-large``) a fresh Python process (this script re-invoked with ``--child``, so no peak carries
over) loads the real pretrained ResNet-20 (``arch:resnet20`` with ``models/resnet20_cifar10.th``),
reads the first N paths and runs ``graft.features.extract_features`` with the default number of
DataLoader worker processes (or ``--workers``). It reports:

  * main peak: ``getrusage(RUSAGE_SELF).ru_maxrss``, the whole life of the process (imports, model
    and extraction);
  * worker peak: ``getrusage(RUSAGE_CHILDREN).ru_maxrss`` after extraction, the largest peak of
    any finished (reaped) worker;
  * tree RSS / tree PSS: the process and all its descendants (``/proc/<pid>/task/*/children``),
    summed, sampled during extraction from /proc: RSS every 50 ms (``statm``; it counts the pages a
    forked worker shares with its parent in both, an over-estimate), PSS every second
    (``smaps_rollup``, which splits shared pages between the processes sharing them, but costs the
    kernel ~10 ms per process to compute);
  * baseline: tree RSS just before extraction starts (Python, torch, the model, the path list).

Prints one table row per N, then the ratios peak(large) / peak(small) and PASS/FAIL against 1.5.
Torch's thread count is left at its default unless ``--threads`` is given (memory does not depend
on it; speed does: on cores busy with other work, OpenMP threads waiting on a preempted sibling
make the forward passes several times slower, and ``--threads 1`` is much faster).

Usage:  .venv/bin/python benchmarks/streaming_memory.py [--n-small 1000] [--n-large 10000]
                                                      [--workers W] [--threads T]
Example: .venv/bin/python benchmarks/streaming_memory.py --n-small 500 --n-large 5000 --workers 2
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from _shared import add_cifar_resnet20_options

LIMIT = 1.5
MARK = "RESULT "


PAGE = os.sysconf("SC_PAGE_SIZE")


def descendants(pid: int) -> list[int]:
    """The live descendants of ``pid``, from /proc/<pid>/task/*/children (Linux)."""
    found, todo = [], [pid]
    while todo:
        for task in Path(f"/proc/{todo.pop()}/task").glob("*"):
            with contextlib.suppress(OSError):
                kids = [int(k) for k in (task / "children").read_text().split()]
                found += kids
                todo += kids
    return found


def rss_bytes(pid: int) -> int:
    """Resident set size from /proc/<pid>/statm: cheap (microseconds)."""
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE


def pss_bytes(pid: int) -> int:
    """Proportional set size from /proc/<pid>/smaps_rollup: shared pages split between their users.
    The kernel walks the page tables for it (~10 ms for a 500 MiB process), so it is sampled less often."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) * 1024
    return 0


class TreeSampler(threading.Thread):
    """Samples the summed RSS of this process and its descendants every ``interval`` seconds, and
    their summed PSS every ``pss_every`` samples."""

    def __init__(self, interval: float = 0.05, pss_every: int = 20) -> None:
        super().__init__(daemon=True)
        self.me = os.getpid()
        self.interval, self.pss_every = interval, pss_every
        self.stop_event = threading.Event()
        self.peak_rss = self.peak_pss = self.peak_main_rss = self.peak_worker_rss = 0
        self.max_procs = self.samples = 0

    def sample(self, pss: bool = True) -> int:
        procs = [self.me, *descendants(self.me)]
        total_rss = total_pss = 0
        for pid in procs:
            try:
                rss = rss_bytes(pid)
                total_pss += pss_bytes(pid) if pss else 0
            except (OSError, ValueError):
                continue  # a worker that just exited
            total_rss += rss
            if pid == self.me:
                self.peak_main_rss = max(self.peak_main_rss, rss)
            else:
                self.peak_worker_rss = max(self.peak_worker_rss, rss)
        self.peak_rss = max(self.peak_rss, total_rss)
        self.peak_pss = max(self.peak_pss, total_pss)
        self.max_procs = max(self.max_procs, len(procs))
        self.samples += 1
        return total_rss

    def run(self) -> None:
        while not self.stop_event.wait(self.interval):
            self.sample(pss=self.samples % self.pss_every == 0)

    def stop(self) -> None:
        self.stop_event.set()
        self.join()
        self.sample()


def busy_hint(threads: int) -> None:
    """A note when other work keeps the cores busy: torch's OpenMP threads then wait on each other."""
    load, cpus = os.getloadavg()[0], os.cpu_count() or 1
    if threads > 1 and load > cpus - 0.5:
        print(
            f"note: load average {load:.1f} on {cpus} cores; {threads} torch threads that wait on a "
            "preempted sibling can make each forward pass several times slower (try --threads 1)"
        )


def child(args: argparse.Namespace) -> None:
    """One measurement, in its own process; prints one JSON line after MARK."""
    import torch

    import graft.backbones
    from graft.features import default_workers, extract_features

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    backbone = graft.backbones.create_backbone("arch:resnet20", weights=args.weights)
    paths = Path(args.paths_file).read_text().splitlines()
    workers = default_workers() if args.workers is None else args.workers
    sampler = TreeSampler()
    baseline = sampler.sample()
    sampler.start()
    t = time.perf_counter()
    feats = extract_features(backbone, paths, batch_size=args.batch_size, progress=False, workers=workers)
    seconds = time.perf_counter() - t
    sampler.stop()
    assert feats.shape == (len(paths), backbone.feature_dim) and torch.isfinite(feats).all()
    kib = 1024  # ru_maxrss is in KiB on Linux
    result = {
        "n": len(paths),
        "workers": workers,
        "threads": torch.get_num_threads(),
        "seconds": seconds,
        "baseline": baseline,
        "main_maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * kib,
        "worker_maxrss": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * kib,
        "tree_rss": sampler.peak_rss,
        "tree_pss": sampler.peak_pss,
        "sampled_main_rss": sampler.peak_main_rss,
        "sampled_worker_rss": sampler.peak_worker_rss,
        "max_procs": sampler.max_procs,
        "samples": sampler.samples,
    }
    print(MARK + json.dumps(result), flush=True)


def measure(paths: list[str], args: argparse.Namespace, tmp: Path) -> dict:
    listing = tmp / f"paths-{len(paths)}.txt"
    listing.write_text("\n".join(paths) + "\n")
    cmd = [sys.executable, __file__, "--child", "--paths-file", str(listing), "--weights", args.weights,
           "--batch-size", str(args.batch_size)]  # fmt: skip
    for flag, value in (("--workers", args.workers), ("--threads", args.threads)):
        if value is not None:
            cmd += [flag, str(value)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(MARK)]
    if proc.returncode != 0 or not lines:
        sys.exit(f"child for N={len(paths)} failed (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return json.loads(lines[-1][len(MARK) :])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_cifar_resnet20_options(parser)
    parser.add_argument("--n-small", type=int, default=1000)
    parser.add_argument("--n-large", type=int, default=10000)
    parser.add_argument("--workers", type=int, default=None,
                        help="DataLoader worker processes (default: graft's default_workers())")  # fmt: skip
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0, help="seed of the fixed order of the images")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--paths-file", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    if not Path("/proc/self/smaps_rollup").is_file():
        sys.exit("this benchmark reads /proc (Linux 4.14 or later)")

    import torch

    from graft.data import read_dataset
    from graft.features import default_workers

    t = time.perf_counter()
    examples = list(read_dataset(args.data).examples)
    listed = time.perf_counter() - t
    random.Random(args.seed).shuffle(examples)
    sizes = [args.n_small, args.n_large]
    if max(sizes) > len(examples):
        sys.exit(f"{args.data} has {len(examples)} images; asked for {max(sizes)}")
    workers = default_workers() if args.workers is None else args.workers
    print(f"data: {args.data} ({len(examples)} images, listed and checked in {listed:.1f} s)")
    threads = torch.get_num_threads() if args.threads is None else args.threads
    defaults = {"threads": " (torch default)" * (args.threads is None),
                "workers": " (graft default)" * (args.workers is None)}  # fmt: skip
    print(
        f"cpus: {os.cpu_count()}, torch threads: {threads}{defaults['threads']}, workers: {workers}"
        f"{defaults['workers']}, batch size: {args.batch_size}, load average: {os.getloadavg()[0]:.2f}"
    )
    busy_hint(threads)

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            results.append(measure(examples[:n], args, Path(tmp)))

    mib = 2**20
    header = (f"{'N':>6} {'seconds':>8} {'images/s':>9} {'baseline':>9} {'main peak':>10} "
              f"{'worker peak':>12} {'tree RSS':>9} {'tree PSS':>9}")  # fmt: skip
    print()
    print(header + "   (MiB; main/worker peak: ru_maxrss; tree: sampled during extraction)")
    for r in results:
        print(
            f"{r['n']:>6} {r['seconds']:>8.2f} {r['n'] / r['seconds']:>9.0f} {r['baseline'] / mib:>9.1f} "
            f"{r['main_maxrss'] / mib:>10.1f} {r['worker_maxrss'] / mib:>12.1f} {r['tree_rss'] / mib:>9.1f} "
            f"{r['tree_pss'] / mib:>9.1f}"
        )
    print(f"(processes seen at once: {[r['max_procs'] for r in results]}; torch threads in the children: "
          f"{[r['threads'] for r in results]}; samples: {[r['samples'] for r in results]})")  # fmt: skip
    small, large = results
    print()
    verdicts = []
    for label, key in (("tree RSS", "tree_rss"), ("tree PSS", "tree_pss"), ("main peak", "main_maxrss"),
                       ("worker peak", "worker_maxrss")):  # fmt: skip
        ratio = large[key] / small[key]
        verdicts.append(ratio <= LIMIT)
        print(f"peak({large['n']}) / peak({small['n']}), {label:<11}: {ratio:.3f}x  "
              f"{'PASS' if ratio <= LIMIT else 'FAIL'} (requirement <= {LIMIT}x)")  # fmt: skip
    print("overall:", "PASS" if all(verdicts) else "FAIL")


if __name__ == "__main__":
    main()
