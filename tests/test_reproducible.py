"""Same data, same seed, same command: the same bundle, byte for byte (issue 19, item 10).

The only wall-clock values a bundle holds are graft.json's ``created_at`` and ``timings``; every other
byte of every file must be the same across two runs, two output folders and two processes.
"""

from __future__ import annotations

import csv
import hashlib
import json
import subprocess
import sys

import pytest

import graft
from graft.config import RunConfig, StrategyConfig, TrainConfig
from tests.conftest import make_sentiment

TIME_VALUED = ("created_at", "timings")

SAVE_IN_A_PROCESS = """
import sys, torch
from graft.serialization import save_tensors
tensors = {"head.w": torch.arange(6.0).reshape(2, 3), "a.ids": torch.arange(4), "m": torch.ones(2).half()}
save_tensors(tensors, sys.argv[1], metadata={k: k.upper() for k in ("format", "version", "a", "b", "c", "d")})
"""


def test_safetensors_bytes_are_the_same_in_every_process(tmp_path):
    """safetensors writes its metadata from a Rust HashMap, in an order drawn per process."""
    digests = set()
    for i in range(3):
        path = tmp_path / f"{i}.safetensors"
        subprocess.run([sys.executable, "-c", SAVE_IN_A_PROCESS, str(path)], check=True, timeout=120)
        digests.add(hashlib.sha256(path.read_bytes()).hexdigest())
    assert len(digests) == 1


def _files(bundle):
    return {
        p.relative_to(bundle).as_posix(): p.read_bytes() for p in sorted(bundle.rglob("*")) if p.is_file()
    }


def _without_time(manifest):
    kept = {k: v for k, v in manifest.items() if k not in (*TIME_VALUED, "integrity")}
    digests = manifest["integrity"]["sha256"]
    return kept | {"integrity": {k: v for k, v in digests.items() if k not in TIME_VALUED}}


@pytest.mark.parametrize("strategy", ["linear_probe", "full"])
def test_two_identical_fits_give_byte_identical_bundles(tiny_source, tmp_path, strategy):
    """Two fits into two different folders: every file identical but graft.json, and graft.json identical
    once its time-valued entries are left out. The default ``--baselines auto`` trains the from-scratch
    network too, sized by counted operations (tests/test_baselines.py shows a slower clock changes
    nothing; before, its epochs came from a timed step and differed under load)."""
    data, val = tmp_path / "train.csv", tmp_path / "val.csv"
    for path, rows in ((data, make_sentiment(16)), (val, make_sentiment(6, seed=1))):
        with open(path, "w", newline="", encoding="utf-8") as f:
            csv.writer(f).writerows([("text", "label"), *rows])
    cfg = RunConfig(strategy=StrategyConfig(kind=strategy), train=TrainConfig(epochs=2, batch_size=8))
    bundles = []
    for out in ("first", "second"):
        graft.fit(data, backbone=tiny_source, val=val, config=cfg, out=tmp_path / out / "run", progress=False)
        bundles.append(_files(tmp_path / out / "run" / "bundle"))
    first, second = bundles
    assert b"same network from scratch" in first["report.html"]  # --baselines auto trained it
    assert set(first) == set(second)
    differ = sorted(name for name in first if first[name] != second[name])
    assert set(differ) <= {"graft.json"}, differ
    manifests = [json.loads(files["graft.json"]) for files in bundles]
    assert all(set(TIME_VALUED) <= set(m) for m in manifests)
    assert _without_time(manifests[0]) == _without_time(manifests[1])
