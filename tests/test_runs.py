"""Run folders: broken records, contradictory flags, the exclusive lock, clean-up after success."""

from __future__ import annotations

import json
import os

import pytest

import graft
from graft.config import RunConfig, StrategyConfig, TrainConfig
from graft.engine import Callback
from graft.errors import ConfigError, GraftError
from graft.runs import LOCK_FILE, RUN_FILE


def _probe(tiny_source, data, out, **kwargs):
    return graft.fit(data, backbone=tiny_source, strategy="linear_probe", out=out, progress=False, **kwargs)


class _StopAfterFirstEpoch(Callback):
    def on_epoch_end(self, record, history) -> None:
        raise KeyboardInterrupt


FULL = RunConfig(strategy=StrategyConfig(kind="full"), train=TrainConfig(epochs=2, batch_size=8, patience=2))


@pytest.mark.parametrize("content", ["", "{not json", "[]", '{"status": "running"}'])
def test_broken_record_is_reported_with_the_way_out(tiny_source, sentiment_csv, tmp_path, content):
    out = tmp_path / "run"
    out.mkdir()
    (out / RUN_FILE).write_text(content)
    for resume in (False, True):
        with pytest.raises(ConfigError, match=r"run\.json is broken .*Pass --overwrite to start it afresh"):
            _probe(tiny_source, sentiment_csv, out, resume=resume)
    model = _probe(tiny_source, sentiment_csv, out, overwrite=True)
    assert json.loads((out / RUN_FILE).read_text())["status"] == "complete"
    assert model.report_ is not None


def test_resume_and_overwrite_together_are_refused(tiny_source, sentiment_csv, tmp_path):
    with pytest.raises(ConfigError, match="pass only one"):
        _probe(tiny_source, sentiment_csv, tmp_path / "run", resume=True, overwrite=True)
    assert not (tmp_path / "run").exists()


def test_a_folder_in_use_is_refused(tiny_source, sentiment_csv, tmp_path):
    import fcntl

    out = tmp_path / "run"
    out.mkdir()
    with open(out / LOCK_FILE, "w") as holder:
        fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
        holder.write("4242\n")
        holder.flush()
        with pytest.raises(ConfigError, match=r"in use by another graft run \(process 4242\)"):
            _probe(tiny_source, sentiment_csv, out)
    assert not (out / RUN_FILE).exists()
    _probe(tiny_source, sentiment_csv, out)  # released: the folder is usable again
    assert not (out / LOCK_FILE).exists()


def test_success_after_resume_leaves_no_leftovers(tiny_source, sentiment_csv, val_csv, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        graft.fit(sentiment_csv, backbone=tiny_source, config=FULL, out=out, val=val_csv, progress=False,
                  callbacks=[_StopAfterFirstEpoch()])  # fmt: skip
    # what a crash while saving leaves behind
    (out / ".bundle.x1y2.tmp").mkdir()
    (out / ".bundle.x1y2.tmp" / "model.safetensors").write_bytes(b"half")
    (out / ".run.json.abc.tmp").write_text("{")
    graft.fit(
        sentiment_csv, backbone=tiny_source, config=FULL, out=out, val=val_csv, resume=True, progress=False
    )
    assert sorted(p.name for p in out.iterdir()) == ["bundle", "config.yaml", "run.json"]


def test_resume_of_a_complete_run_cleans_up_too(tiny_source, sentiment_csv, tmp_path):
    out = tmp_path / "run"
    _probe(tiny_source, sentiment_csv, out)
    (out / "checkpoints" / "last").mkdir(parents=True)  # killed between the bundle and the clean-up
    loaded = _probe(tiny_source, sentiment_csv, out, resume=True)
    assert loaded.report_ is None  # loaded from the bundle, not trained again
    assert not (out / "checkpoints").exists()


def test_a_run_stopped_before_any_checkpoint_starts_afresh(tiny_source, sentiment_csv, tmp_path):
    """A 'running' record with nothing to resume from (e.g. the backbone failed to load) loses
    nothing by starting over, so it does not demand --resume or --overwrite."""
    import shutil

    out, broken = tmp_path / "run", tmp_path / "no-weights"
    broken.mkdir()
    shutil.copy(tiny_source.removeprefix("hf:") + "/config.json", broken)  # a text model without weights
    with pytest.raises(GraftError):
        graft.fit(sentiment_csv, backbone=f"hf:{broken}", out=out, progress=False)
    assert json.loads((out / RUN_FILE).read_text())["status"] == "running"
    _probe(tiny_source, sentiment_csv, out)
    assert json.loads((out / RUN_FILE).read_text())["status"] == "complete"


def test_run_files_follow_the_umask(tiny_source, sentiment_csv, tmp_path):
    import stat

    old = os.umask(0o022)
    try:
        _probe(tiny_source, sentiment_csv, tmp_path / "run")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "run" / RUN_FILE).stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "run" / "bundle").stat().st_mode) == 0o755
