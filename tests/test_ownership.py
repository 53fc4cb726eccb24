"""What graft may write: nothing the user owns is replaced, no command writes where it reads, and every
output lands whole or not at all (issue 19, items 1, 2 and 7; src/graft/ownership.py)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

import graft
from graft.cli import main
from graft.config import EvalConfig, RunConfig
from graft.errors import OutputError
from graft.serialization import atomic_outputs


def snapshot(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` (what a test compares before and after a refused command)."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def fitted(tiny_bert_dir, tmp_path_factory) -> Path:
    """A run folder holding a linear-probe bundle (copied per test by ``run``)."""
    from tests.conftest import make_sentiment

    folder = tmp_path_factory.mktemp("fitted")
    data = folder / "data.csv"
    data.write_text("text,label\n" + "".join(f"{t},{y}\n" for t, y in make_sentiment(20)), encoding="utf-8")
    cfg = RunConfig(evaluation=EvalConfig(baselines="none"))
    graft.fit(data, backbone=f"hf:{tiny_bert_dir}", strategy="linear_probe", config=cfg, out=folder / "run",
              progress=False)  # fmt: skip
    shutil.copy(folder / "run" / "config.yaml", folder / "config.yaml")  # the run's settings, for a re-run
    return folder


@pytest.fixture
def run(fitted, tmp_path) -> Path:
    shutil.copytree(fitted, tmp_path / "w")
    return tmp_path / "w" / "run"


def fit_args(run: Path, *extra: str) -> list[str]:
    cfg = run.parent / "config.yaml"
    return ["fit", str(run.parent / "data.csv"), "--config", str(cfg), "--quiet", *extra]


def test_fit_refuses_a_folder_of_files_it_did_not_write_and_changes_nothing(run, tmp_path, capsys):
    # item 1: on main e673f38 important.ckpt and readme.txt were deleted and config.yaml overwritten, exit 0
    target = tmp_path / "R"
    (target / "checkpoints").mkdir(parents=True)
    (target / "bundle").mkdir()
    (target / "checkpoints" / "important.ckpt").write_text("precious")
    (target / "bundle" / "readme.txt").write_text("mine")
    (target / "config.yaml").write_text("my: own\n")
    before = snapshot(target)
    assert main(fit_args(run, "--out", str(target))) == 2
    err = capsys.readouterr().err
    assert (
        "holds no graft run" in err
        and "checkpoints/" in err
        and "config.yaml" in err
        and "--overwrite" in err
    )
    assert snapshot(target) == before


def test_a_run_folder_keeps_files_graft_did_not_write(run, capsys):
    # a completed run folder: a user's file among the checkpoints and an edited config.yaml are named
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "notes.txt").write_text("mine")
    (run / "config.yaml").write_text((run / "config.yaml").read_text() + "# my comment\n")
    (run / "bundle" / "readme.txt").write_text("mine")
    before = snapshot(run)
    assert main(fit_args(run, "--out", str(run))) == 2
    err = capsys.readouterr().err
    assert "checkpoints/notes.txt" in err and "config.yaml (changed" in err and "bundle/readme.txt" in err
    assert snapshot(run) == before


def test_success_removes_checkpoint_files_only(tmp_path):
    from graft.runs import RunFolder

    folder = RunFolder(tmp_path)
    (tmp_path / "checkpoints" / "full" / "last").mkdir(parents=True)
    for name in ("last/model.safetensors", "last/state.json", "best.safetensors"):
        (tmp_path / "checkpoints" / "full" / name).write_text("x")
    (tmp_path / "checkpoints" / "full" / "mine.txt").write_text("mine")
    folder.clean_leftovers()
    assert [p.name for p in (tmp_path / "checkpoints").rglob("*") if p.is_file()] == ["mine.txt"]


@pytest.mark.parametrize(
    "command",
    [
        lambda b, r: ["predict", str(b), str(r.parent / "data.csv"), "--out", str(b / "graft.json")],
        lambda b, r: ["predict", str(b), str(r.parent / "data.csv"), "--out", str(b / "new.csv")],
        lambda b, r: ["evaluate", str(b), str(r.parent / "data.csv"), "--report", str(b)],
        lambda b, r: ["export", str(r), "--out", str(b / "x.onnx")],
        lambda b, r: [
            "fit",
            str(r.parent / "data.csv"),
            "--config",
            str(r.parent / "config.yaml"),
            "--out",
            str(b),
        ],
        lambda b, r: ["adapt", str(r), "--target", str(r.parent / "data.csv"), "--out", str(b)],
    ],
    ids=["predict-over-manifest", "predict-into-bundle", "evaluate-report", "export", "fit", "adapt"],
)
def test_no_command_writes_inside_the_bundle_it_reads(run, command, capsys):
    # item 2: on main e673f38 each of these broke the bundle (exit 0) except adapt
    bundle = run / "bundle"
    before = snapshot(run.parent)
    assert main([*command(bundle, run), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "graft: error:" in err
    assert snapshot(run.parent) == before
    graft.load(bundle)  # still loads


def test_predict_replaces_an_existing_file_only_with_overwrite(run, capsys):
    out = run.parent / "preds.csv"
    out.write_text("my own file\n")
    assert main(["predict", str(run), str(run.parent / "data.csv"), "--out", str(out), "--quiet"]) == 2
    assert "the file exists" in capsys.readouterr().err and out.read_text() == "my own file\n"
    assert main(["predict", str(run), str(run.parent / "data.csv"), "--out", str(out), "--overwrite"]) == 0
    assert out.read_text().startswith("text,prediction")
    # nor over the inputs it reads
    data = run.parent / "data.csv"
    before = data.read_bytes()
    assert main(["predict", str(run), str(data), "--out", str(data), "--overwrite", "--quiet"]) == 2
    assert data.read_bytes() == before


def test_report_folder_is_replaced_while_graft_wrote_it_and_refused_once_edited(run, capsys):
    report = run.parent / "report"
    command = ["evaluate", str(run), str(run.parent / "data.csv"), "--report", str(report), "--quiet"]
    assert main(command) == 0 and main(command) == 0  # its own report: replaced
    record = json.loads((report / "graft-output.json").read_text())
    assert set(record["files"]) == {"metrics.json", "report.html"}
    (report / "report.html").write_text("my notes")
    assert main(command) == 2
    assert "report.html" in capsys.readouterr().err and (report / "report.html").read_text() == "my notes"
    assert main([*command, "--overwrite"]) == 0


def test_a_bundle_is_saved_over_an_intact_bundle_only(run, tmp_path):
    model = graft.load(run)
    model.save(run / "bundle")  # re-saving an intact bundle is allowed
    other = tmp_path / "photos"
    other.mkdir()
    (other / "holiday.jpg").write_bytes(b"jpeg")
    with pytest.raises(OutputError, match=r"holiday\.jpg"):
        model.save(other)
    assert (other / "holiday.jpg").read_bytes() == b"jpeg"
    model.save(other, overwrite=True)
    graft.load(other)


def test_demo_refuses_a_folder_it_did_not_make(tmp_path, capsys):
    (tmp_path / "mine.txt").write_text("mine")
    assert main(["demo", "--out", str(tmp_path), "--quiet"]) == 2
    assert "was not made by graft demo" in capsys.readouterr().err


def test_export_lands_whole_on_another_filesystem_with_a_sealed_contract(run, tmp_path):
    # item 7: on main e673f38 the graph was written to $TMPDIR and renamed: "Invalid cross-device link"
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("no second filesystem (/dev/shm) on this machine")
    out = Path(shm / f"graft-test-{os.getpid()}")
    try:
        assert main(["export", str(run), "--out", str(out / "m.onnx"), "--quiet"]) == 0
        contract = json.loads((out / "m.contract.json").read_text())
        from graft.bundle import seal_manifest

        assert seal_manifest({k: v for k, v in contract.items() if k != "integrity"}) == contract
        for name, digest in contract["files"].items():
            assert hashlib.sha256((out / name).read_bytes()).hexdigest() == digest
        assert "m.onnx" in contract["files"] and any(n.startswith("m.tokenizer/") for n in contract["files"])
        assert sorted(p.name for p in out.iterdir()) == ["m.contract.json", "m.onnx", "m.tokenizer"]
        assert main(["export", str(run), "--out", str(out / "m.onnx"), "--quiet"]) == 0  # its own: replaced
        (out / "m.onnx").write_bytes(b"changed")
        assert main(["export", str(run), "--out", str(out / "m.onnx"), "--quiet"]) == 2
    finally:
        shutil.rmtree(out, ignore_errors=True)


def test_export_writes_every_file_or_none(run, tmp_path, monkeypatch):
    # item 7: on main e673f38 a contract that could not be written left the .onnx behind alone
    real = os.replace

    def failing(src, dst):
        if str(dst).endswith(".contract.json"):
            raise OSError(28, "No space left on device", str(dst))
        return real(src, dst)

    monkeypatch.setattr(os, "replace", failing)
    assert main(["export", str(run), "--out", str(tmp_path / "x" / "m.onnx"), "--quiet"]) == 2
    assert list((tmp_path / "x").iterdir()) == []  # nothing, not even temporaries


def test_atomic_outputs_undoes_the_renames_done_when_one_fails(tmp_path, monkeypatch):
    (tmp_path / "a.txt").write_text("old a")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "f").write_text("old b")
    real = os.replace

    def failing(src, dst):
        if Path(dst).name == "c.txt":
            raise OSError(5, "I/O error", str(dst))
        return real(src, dst)

    monkeypatch.setattr(os, "replace", failing)
    with (
        pytest.raises(OSError),
        atomic_outputs(tmp_path / "a.txt", tmp_path / "b", tmp_path / "c.txt") as (a, b, c),
    ):
        a.write_text("new a")
        b.mkdir()
        (b / "f").write_text("new b")
        c.write_text("new c")
    assert (tmp_path / "a.txt").read_text() == "old a" and (tmp_path / "b" / "f").read_text() == "old b"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b"]
