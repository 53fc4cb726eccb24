# ruff: noqa: E501  (the catalogue is a table: one case per line)
"""The hostile-input battery (issue 19): a catalogue of bad inputs, bad option values, tampered bundles and
clashing output paths against ``fit``, ``predict``, ``evaluate``, ``export`` and ``curve`` (``serve``'s
hostile clients: tests/test_serve.py and the end of this file).

Every case must end with exit code 2 and a message naming the problem, without a traceback; no file
under the working folder may change (sha256 of every file before and after); every bundle that loaded
before the command still loads after it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

import graft
from graft.cli import main
from graft.config import EvalConfig, RunConfig
from tests.conftest import make_sentiment


@dataclass(frozen=True)
class Case:
    name: str
    argv: tuple[str, ...]  # {w}: the working folder, {bb}: the tiny backbone source
    expect: tuple[str, ...]  # substrings of the error message
    setup: Callable[[Path], None] | None = None


def _write(relative: str, content: str | bytes) -> Callable[[Path], None]:
    def setup(w: Path) -> None:
        path = w / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)

    return setup


def _edit_manifest(edit: Callable[[dict], None], reseal: bool = False) -> Callable[[Path], None]:
    """Edit ``bad/bundle/graft.json`` (a copy of the run); ``reseal``: recompute its integrity record,
    as someone who knows the format would, so only the content checks can catch the edit."""

    def setup(w: Path) -> None:
        from graft.bundle import seal_manifest

        shutil.copytree(w / "run", w / "bad")
        path = w / "bad" / "bundle" / "graft.json"
        manifest = json.loads(path.read_text())
        edit(manifest)
        if reseal:
            manifest = seal_manifest({k: v for k, v in manifest.items() if k != "integrity"})
        path.write_text(json.dumps(manifest))

    return setup


def _swap_tensors(change: Callable[[dict], None]) -> Callable[[Path], None]:
    """Change ``bad/bundle/model.safetensors`` and reseal the manifest around it."""

    def setup(w: Path) -> None:
        from safetensors.torch import load_file, save_file

        from graft.bundle import seal_manifest

        shutil.copytree(w / "run", w / "bad")
        weights = w / "bad" / "bundle" / "model.safetensors"
        tensors = load_file(weights)
        change(tensors)
        save_file(tensors, weights)
        path = w / "bad" / "bundle" / "graft.json"
        manifest = json.loads(path.read_text())
        manifest["files"]["model.safetensors"] = hashlib.sha256(weights.read_bytes()).hexdigest()
        path.write_text(json.dumps(seal_manifest({k: v for k, v in manifest.items() if k != "integrity"})))

    return setup


def _head_weight(tensors: dict, value) -> None:
    key = next(k for k in tensors if k.startswith("head.") and k.endswith("weight"))
    tensors[key] = value(tensors[key])


def fit(*extra: str, data: str = "{w}/data.csv") -> tuple[str, ...]:
    """``graft fit`` on the tiny backbone into ``{w}/r``; a later ``--out`` in ``extra`` wins."""
    return (
        "fit",
        data,
        "--backbone",
        "{bb}",
        "--strategy",
        "linear_probe",
        "--quiet",
        "--out",
        "{w}/r",
        *extra,
    )


def predict(*extra: str, bundle: str = "{w}/run") -> tuple[str, ...]:
    return ("predict", bundle, "{w}/new.txt", "--quiet", *extra)


def export(*extra: str) -> tuple[str, ...]:
    return ("export", "{w}/run", "--out", "{w}/m.onnx", "--quiet", *extra)


def evaluate(*extra: str, data: str = "{w}/data.csv") -> tuple[str, ...]:
    return ("evaluate", "{w}/run", data, "--quiet", *extra)


REVERSED = _edit_manifest(lambda m: m["label_space"].reverse())
FORMAT_1 = _edit_manifest(
    lambda m: (m.update(format_version=1), m.pop("integrity"), m["label_space"].reverse())
)


def nested_manifest(w: Path) -> None:
    shutil.copytree(w / "run", w / "bad")
    (w / "bad/bundle/graft.json").write_text("[" * 100_000)


def symlinked_folder(w: Path) -> None:
    shutil.copytree(w / "run", w / "bad")
    (w / "extra").mkdir()
    (w / "bad/bundle/extra").symlink_to(w / "extra")


SENTIMENT = "".join(f"{t},{y}\n" for t, y in make_sentiment(10))

CASES = [
    # -- fit: data
    Case("fit: missing file", fit(data="{w}/nope.csv"), ("nope.csv",)),
    Case("fit: empty file", fit(data="{w}/empty.csv"), ("empty.csv",), _write("empty.csv", "")),
    Case("fit: binary garbage", fit(data="{w}/junk.csv"), ("junk.csv",), _write("junk.csv", bytes(range(256)) * 4)),
    Case("fit: one class", fit(data="{w}/one.csv"), ("one.csv", "class"),
         _write("one.csv", "text,label\n" + "good film,pos\n" * 10)),
    Case("fit: duplicate column names", fit(data="{w}/dup.csv"), ("dup.csv", "text"),
         _write("dup.csv", "text,text,label\n" + "a,b,x\nc,d,y\n" * 10)),
    Case("fit: one group", fit("--group-col", "g", data="{w}/g.csv"), ("'g'",),
         _write("g.csv", "text,label,g\n" + SENTIMENT.replace("\n", ",1\n"))),
    Case("fit: negative seed", fit("--seed", "-1"), ("seed",)),
    Case("fit: huge seed", fit("--seed", str(2**64)), ("seed",)),
    Case("fit: NaN learning rate", fit("--lr", "nan"), ("lr",)),
    Case("fit: zero epochs", fit("--epochs", "0"), ("epochs",)),
    Case("fit: negative cost", fit("--costs", "{w}/costs.csv"), ("costs.csv", "-1"),
         _write("costs.csv", "true,negative,positive\nnegative,0,-1\npositive,1,0\n")),
    Case("fit: broken YAML config", fit("--config", "{w}/c.yaml"), ("c.yaml",), _write("c.yaml", "train: [unclosed\n")),
    # -- fit: output paths
    Case("fit: --out over the user's files", fit("--out", "{w}/mine"), ("mine", "notes.txt"),
         _write("mine/checkpoints/notes.txt", "precious")),
    Case("fit: --out is a bundle", fit("--out", "{w}/run/bundle"), ("bundle",)),
    Case("fit: --out inside a bundle", fit("--out", "{w}/run/bundle/r"), ("inside the bundle",)),
    Case("fit: --out is the data file", fit("--out", "{w}/data.csv"), ("data.csv",)),
    Case("fit: --backbone of a tampered bundle", fit("--backbone", "bundle:{w}/bad"), ("label_space",), REVERSED),
    # -- predict
    Case("predict: --out over the bundle's manifest", predict("--out", "{w}/run/bundle/graft.json"), ("graft.json",)),
    Case("predict: --out over an existing file", predict("--out", "{w}/data.csv"), ("data.csv",)),
    Case("predict: --out over its own input", predict("--out", "{w}/new.txt", "--overwrite"), ("new.txt",)),
    Case("predict: a lone surrogate", ("predict", "{w}/run", "{w}/s.jsonl"), ("surrogate",),
         _write("s.jsonl", '{"text": "fine"}\n{"text": "\\ud800 bad"}\n')),
    Case("predict: missing input", ("predict", "{w}/run", "{w}/none.txt"), ("none.txt",)),
    Case("predict: image for a text model", ("predict", "{w}/run", "{w}/a.png"), ("text",),
         _write("a.png", b"\x89PNG\r\n\x1a\n")),
    Case("predict: not a bundle", predict(bundle="{w}"), ("not a graft bundle",)),
    Case("predict: reversed label_space", predict(bundle="{w}/bad"), ("label_space",), REVERSED),
    Case("predict: format 1, integrity removed", predict(bundle="{w}/bad"), ("format",), FORMAT_1),
    Case("predict: nonsense head.in_dim, resealed", predict(bundle="{w}/bad"), ("in_dim",),
         _edit_manifest(lambda m: m["head"].update(in_dim="abc"), reseal=True)),
    Case("predict: empty label_space, resealed", predict(bundle="{w}/bad"), ("label_space",),
         _edit_manifest(lambda m: m.update(label_space=[]), reseal=True)),
    Case("predict: 100,000 nested [", predict(bundle="{w}/bad"), ("graft.json",), nested_manifest),
    Case("predict: tensors of other shapes, resealed", predict(bundle="{w}/bad"), ("shape",),
         _swap_tensors(lambda t: _head_weight(t, lambda x: x[:, :-1].contiguous()))),
    Case("predict: NaN weights, resealed", predict(bundle="{w}/bad"), ("NaN",),
         _swap_tensors(lambda t: _head_weight(t, lambda x: x * float("nan")))),
    Case("predict: a symlinked folder in the bundle", predict(bundle="{w}/bad"), ("extra",), symlinked_folder),
    # -- evaluate
    Case("evaluate: --report into the bundle", evaluate("--report", "{w}/run/bundle"), ("bundle",)),
    Case("evaluate: unknown labels", evaluate(data="{w}/other.csv"), ("other.csv", "maybe"),
         _write("other.csv", "text,label\ngood film,maybe\nbad film,positive\n")),
    Case("evaluate: over a report someone edited", evaluate("--report", "{w}/rep"), ("report.html",),
         _write("rep/report.html", "my notes")),
    # -- export
    Case("export: NaN tolerance", export("--tolerance", "nan"), ("tolerance",)),
    Case("export: negative tolerance", export("--tolerance", "-1"), ("tolerance",)),
    Case("export: not .onnx", export("--out", "{w}/m.txt"), (".onnx",)),
    Case("export: into the bundle", export("--out", "{w}/run/bundle/m.onnx"), ("bundle",)),
    Case("export: over a file graft did not write", export(), ("m.onnx",), _write("m.onnx", b"not a graph")),
    # -- curve
    Case("curve: more per class than there are", ("curve", "{w}/data.csv", "--backbone", "{bb}", "--sizes", "1000",
         "--strategies", "linear_probe", "--seeds", "1", "--quiet"), ("1000",)),
]  # fmt: skip


@pytest.fixture(scope="module")
def workspace(tiny_bert_dir, tmp_path_factory) -> Path:
    """data.csv, new.txt and a fitted run (tiny BERT, linear probe), copied per case."""
    w = tmp_path_factory.mktemp("battery")
    (w / "data.csv").write_text(
        "text,label\n" + "".join(f"{t},{y}\n" for t, y in make_sentiment(20)), encoding="utf-8"
    )
    (w / "new.txt").write_text("the movie was great\nawful plot\n", encoding="utf-8")
    cfg = RunConfig(evaluation=EvalConfig(baselines="none"))
    graft.fit(w / "data.csv", backbone=f"hf:{tiny_bert_dir}", strategy="linear_probe", config=cfg,
              out=w / "run", progress=False)  # fmt: skip
    return w


def _snapshot(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def _loadable(root: Path) -> set[str]:
    out = set()
    for manifest in root.rglob("graft.json"):
        try:
            graft.load(manifest.parent)
        except Exception:  # a bundle the case broke on purpose
            continue
        out.add(manifest.parent.relative_to(root).as_posix())
    return out


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_input_exit_2_names_the_problem_and_changes_nothing(case, workspace, tiny_bert_dir, tmp_path,
                                                                    capsys):  # fmt: skip
    w = tmp_path / "w"
    shutil.copytree(workspace, w)
    if case.setup is not None:
        case.setup(w)
    before, loadable = _snapshot(w), _loadable(w)
    argv = [a.format(w=w, bb=f"hf:{tiny_bert_dir}") for a in case.argv]
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse refuses an option value: usage error
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2, err[-3000:]
    assert "Traceback" not in err and "internal error" not in err
    for expected in case.expect:
        assert expected in err, err[-3000:]
    assert _snapshot(w) == before
    assert _loadable(w) >= loadable


# -- serve: hostile clients against one server, then the same server still answers as predict does

_MULTIPART = "multipart/form-data; boundary=x"


def _upload(name: str, data: bytes) -> bytes:
    head = f'--x\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\n\r\n'
    return head.encode() + data + b"\r\n--x--\r\n"


SERVE_CASES = [
    ("lone surrogate", b'{"inputs": ["fine", "\\ud800 bad"]}', "application/json", 422, "surrogate"),
    ("not JSON", b"\x00\xff{", "application/json", 422, "JSON"),
    (
        "100,000 nested [",
        b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        "application/json",
        422,
        "",
    ),
    ("inputs not a list", b'{"inputs": "one text"}', "application/json", 422, "inputs"),
    ("numbers for texts", b'{"inputs": [1, 2]}', "application/json", 422, "inputs"),
    ("empty text", b'{"inputs": ["   "]}', "application/json", 422, "empty"),
    (
        "too many inputs",
        json.dumps({"inputs": ["a film"] * 9}).encode(),
        "application/json",
        413,
        "--max-inputs",
    ),
    (
        "text too long",
        json.dumps({"inputs": ["a" * 5000]}).encode(),
        "application/json",
        413,
        "--max-text-chars",
    ),
    ("body too large", json.dumps({"inputs": ["word " * 60_000]}).encode(), "application/json", 413, ""),
    ("a file for a text model", _upload("x" * 300 + ".png", b"\x89PNG"), _MULTIPART, 422, "text"),
    ("no content type", b'{"inputs": ["fine"]}', "text/plain", 422, "JSON"),
]


def test_serve_answers_hostile_clients_alone_and_keeps_serving(workspace, tmp_path):
    from tests.test_serve import _get, _request, _serving

    w = tmp_path / "w"
    shutil.copytree(workspace, w)
    before = _snapshot(w)
    limits = ("--max-inputs", "8", "--max-text-chars", "4000", "--max-body", "256KB", "--max-queue", "64")
    with _serving(w / "run", *limits) as served:
        base, model = served[0], served[1]
        for name, body, kind, status, detail in SERVE_CASES:
            got, answer = _request(f"{base}/predict", body, kind)
            assert got == status, (name, got, answer)
            message = str(answer.get("detail", ""))
            assert detail in message and "/tmp" not in message and "Traceback" not in message, (name, message)
            assert _get(f"{base}/health")["status"] == "ok", name
        good = ["the movie was great", "awful plot"]
        got, answer = _request(f"{base}/predict", json.dumps({"inputs": good}).encode(), "application/json")
        assert got == 200 and [p["prediction"] for p in answer["predictions"]] == model.predict(good)
    assert _snapshot(w) == before
    graft.load(w / "run")
