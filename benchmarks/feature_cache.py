"""Feature cache and CLI start-up: graft vs itself with the cache cold, in one run.

Prints:
  * `graft --help` wall time (best of 5 runs; requirement < 0.5 s);
  * a linear-probe fit on SST-2 train with an empty feature cache, then the same fit again, timed
    in one Python process (the cache effect alone) and as two `graft fit` commands (what a user
    waits for, Python and library imports included); the ratio first / second (requirement >= 10x).

Usage:  .venv/bin/python benchmarks/feature_cache.py [--data PATH]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("GRAFT_SHARED_DATA", ROOT.parent / "shared" / "data"))
DEFAULT_DATA = SHARED / "text" / "sst2" / "train.csv"
GRAFT = [sys.executable, "-m", "graft"]


def help_time(runs: int = 5) -> float:
    best = float("inf")
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run([*GRAFT, "--help"], check=True, capture_output=True)
        best = min(best, time.perf_counter() - t)
    return best


def timed_cli(args: list[str], env: dict[str, str]) -> float:
    t = time.perf_counter()
    subprocess.run([*GRAFT, *args], check=True, capture_output=True, env=env)
    return time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    print(f"graft --help: {help_time():.3f} s (best of 5; requirement < 0.5 s)")

    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, GRAFT_CACHE_DIR=str(Path(tmp) / "cache-api"))
        os.environ["GRAFT_CACHE_DIR"] = env["GRAFT_CACHE_DIR"]
        import graft  # imports happen here, outside both timings

        graft.create_backbone  # noqa: B018 - resolve the lazy import before timing
        import graft.api

        times = []
        for attempt in ("first (cache cold)", "second (cache warm)"):
            t = time.perf_counter()
            model = graft.fit(args.data, backbone="minilm", strategy="linear_probe", progress=False,
                              baselines="none")  # fmt: skip
            times.append(time.perf_counter() - t)
            acc = model.report_.test.metrics["accuracy"]
            print(f"api  fit, {attempt:<20}: {times[-1]:7.2f} s  (held-out accuracy {acc:.4f})")
        print(f"api  ratio first/second: {times[0] / times[1]:.1f}x (requirement >= 10x)")

        env["GRAFT_CACHE_DIR"] = str(Path(tmp) / "cache-cli")
        cli = []
        for i, attempt in enumerate(("first (cache cold)", "second (cache warm)")):
            out = str(Path(tmp) / f"run{i}")
            cli.append(timed_cli(["fit", args.data, "--backbone", "minilm", "--strategy", "linear_probe",
                                  "--out", out, "--quiet"], env))  # fmt: skip
            print(f"cli  fit, {attempt:<20}: {cli[-1]:7.2f} s")
        print(
            f"cli  ratio first/second: {cli[0] / cli[1]:.1f}x (includes ~{cli[1]:.0f} s of process start, "
            "imports and bundle writing that no cache removes)"
        )


if __name__ == "__main__":
    main()
