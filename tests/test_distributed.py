"""Multi-process training under ``accelerate launch``: files from the main process only, metrics
reduced across processes, the same result as one process (to within the noise of sharded batches)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import make_sentiment

SCRIPT = """
import json, sys
import graft
from graft.config import RunConfig, StrategyConfig, TrainConfig
from graft.distributed import is_main_process, num_processes

train, val, test, source, out = sys.argv[1:6]
cfg = RunConfig(strategy=StrategyConfig(kind="partial", unfreeze_top=1),
                train=TrainConfig(epochs=2, batch_size=8, lr=1e-3, head_lr=1e-3, mixed_precision="no"))
model = graft.fit(train, val=val, test=test, backbone=source, config=cfg, out=out, progress=False)
from accelerate import PartialState
if is_main_process():
    print("RESULT " + json.dumps({"processes": num_processes(), "accuracy": model.metrics["test"]["accuracy"],
                                  "synchronised": PartialState().num_processes,
                                  "history": model.report_.history}))
"""


def _write(path: Path, rows) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([("text", "label"), *rows])
    return path


@pytest.mark.slow
def test_two_processes_train_like_one(tiny_source, tmp_path):
    train = _write(tmp_path / "train.csv", make_sentiment(32, seed=0))
    val = _write(tmp_path / "val.csv", make_sentiment(8, seed=1))
    test = _write(tmp_path / "test.csv", make_sentiment(16, seed=2))
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    # Accelerate 1.15's `--cpu` picks its single-process launcher; two CPU processes are torchrun's
    # (`--multi_gpu`) with ACCELERATE_USE_CPU, which makes Accelerate use gloo on the CPU.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"}
    accelerate = Path(sys.executable).with_name("accelerate")
    launch = [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_port", "29533"]  # fmt: skip
    args = [str(train), str(val), str(test), tiny_source]
    two = subprocess.run([*launch, str(script), *args, str(tmp_path / "two")], capture_output=True, text=True,
                         env=env, timeout=600)  # fmt: skip
    assert two.returncode == 0, two.stderr[-3000:]
    one = subprocess.run([sys.executable, str(script), *args, str(tmp_path / "one")], capture_output=True,
                         text=True, env=env, timeout=600)  # fmt: skip
    assert one.returncode == 0, one.stderr[-3000:]
    results = [json.loads(r.stdout.split("RESULT ", 1)[1]) for r in (one, two)]
    assert [r["processes"] for r in results] == [1, 2]
    assert [r["synchronised"] for r in results] == [1, 2]  # one process group, not two lone trainings
    assert two.stdout.count("RESULT ") == 1  # one process reports
    assert abs(results[0]["accuracy"] - results[1]["accuracy"]) <= 0.15
    assert len(results[1]["history"]) == 2 and all(h["train_loss"] > 0 for h in results[1]["history"])
    # one writer: a complete run folder, a bundle that loads, no leftovers of a second process
    import graft

    model = graft.load(tmp_path / "two")
    assert model.predict(["great film"]) in (["positive"], ["negative"])
    assert json.loads((tmp_path / "two" / "run.json").read_text())["status"] == "complete"
    leftovers = [
        str(p.relative_to(tmp_path)) for p in (tmp_path / "two").glob("**/*") if "bundle" not in p.parts
    ]
    assert sorted(leftovers) == ["two/config.yaml", "two/run.json"], leftovers
