"""The command line: exit codes, one-line errors without tracebacks, --json, predict output."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest

from graft.cli import COMMANDS, main


def run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "graft", *argv], capture_output=True, text=True, timeout=600)


def test_help_is_fast_and_does_not_import_torch():
    code = "import sys; from graft.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    result = run("fit", "--help")
    assert result.returncode == 0 and "examples:" in result.stdout and "--strategy" in result.stdout


def test_usage_errors_exit_2(capsys):
    assert main([]) == 2
    with pytest.raises(SystemExit) as info:
        main(["fit"])
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:
        main(["fit", "x.csv", "--strategy", "magic"])
    assert info.value.code == 2


def test_bad_input_is_one_clear_line_exit_2(tmp_path):
    result = run("fit", str(tmp_path / "missing.csv"), "--out", str(tmp_path / "r"))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip() == f"graft: error: file not found: {tmp_path / 'missing.csv'}"


def test_bad_config_value_exit_2(tmp_path, capsys):
    (tmp_path / "d.csv").write_text("text,label\na,x\nb,y\n")
    assert main(["fit", str(tmp_path / "d.csv"), "--epochs", "0", "--out", str(tmp_path / "r")]) == 2
    assert "epochs must be >= 1" in capsys.readouterr().err


def test_unknown_backbone_exit_2(tmp_path, sentiment_csv, capsys):
    assert main(["fit", str(sentiment_csv), "--backbone", "minlm", "--out", str(tmp_path / "r")]) == 2
    assert "did you mean 'minilm'" in capsys.readouterr().err


def test_internal_error_exit_1(monkeypatch, capsys):
    def broken(args):
        raise RuntimeError("boom")

    monkeypatch.setitem(COMMANDS, "backbones", broken)
    assert main(["backbones"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "internal error" in err


def test_backbones_lists_sources(capsys):
    assert main(["backbones", "--json"]) == 0
    names = [b["name"] for b in json.loads(capsys.readouterr().out)]
    assert names == ["arch", "bundle", "hf", "minilm", "timm", "torchvision"]


def test_fit_evaluate_predict_end_to_end(tiny_source, sentiment_csv, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["fit", str(sentiment_csv), "--backbone", tiny_source, "--strategy", "full", "--epochs", "2",
                 "--batch-size", "8", "--lr", "5e-3", "--out", str(out), "--json", "--quiet"])  # fmt: skip
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert {"accuracy", "macro_f1"} <= set(summary["metrics"]) and summary["strategy"] == "full"
    assert (out / "config.yaml").is_file()

    assert main(["evaluate", str(out), str(sentiment_csv), "--json", "--quiet"]) == 0
    evaluation = json.loads(capsys.readouterr().out)
    assert evaluation["n"] == 80 and "accuracy" in evaluation["metrics"]
    assert "majority" in evaluation["baselines"]

    inputs = tmp_path / "new.txt"
    inputs.write_text("the movie was great\nawful plot\n")
    preds = tmp_path / "preds.csv"
    assert main(["predict", str(out), str(inputs), "--out", str(preds), "--quiet"]) == 0
    rows = list(csv.DictReader(preds.open()))
    assert [r["text"] for r in rows] == ["the movie was great", "awful plot"]
    assert set(rows[0]) == {"text", "prediction", "p_negative", "p_positive"}
    assert abs(float(rows[0]["p_negative"]) + float(rows[0]["p_positive"]) - 1) < 1e-4

    # the same run folder again without --resume/--overwrite is refused, exit 2
    again = ["fit", str(sentiment_csv), "--backbone", tiny_source, "--out", str(out), "--quiet"]
    assert main(again) == 2
    assert "already holds a complete run" in capsys.readouterr().err


def test_predict_with_wrong_modality_exit_2(tiny_source, sentiment_csv, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["fit", str(sentiment_csv), "--backbone", tiny_source, "--strategy", "linear_probe",
                 "--out", str(out), "--quiet"]) == 0  # fmt: skip
    capsys.readouterr()
    images = tmp_path / "images.txt"
    images.write_text("photos/cat.jpg\nphotos/dog.png\n")
    assert main(["predict", str(out), str(images), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "takes text (modality 'text')" in err and "image files" in err

    table = tmp_path / "other.csv"
    table.write_text("review,stars\ngreat,5\n")
    assert main(["predict", str(out), str(table), "--quiet"]) == 2
    assert "expected a text column 'text'" in capsys.readouterr().err


def test_tampered_bundle_exit_2(tiny_source, sentiment_csv, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["fit", str(sentiment_csv), "--backbone", tiny_source, "--strategy", "linear_probe",
                 "--out", str(out), "--quiet"]) == 0  # fmt: skip
    weights = out / "bundle" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"\x00" * 8)
    assert main(["evaluate", str(out), str(sentiment_csv), "--quiet"]) == 2
    assert "model.safetensors was modified" in capsys.readouterr().err
