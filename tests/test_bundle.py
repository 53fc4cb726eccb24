"""Bundles: round trip, integrity, atomic writes, no pickle."""

from __future__ import annotations

import json

import numpy as np
import pytest

import graft
from graft.bundle import FORMAT_VERSION
from graft.config import RunConfig, StrategyConfig, TrainConfig
from graft.errors import BundleError
from tests.conftest import make_sentiment

TEXTS = ["the movie was great", "awful and boring plot", "quite a lovely story", "a dull film"]


@pytest.fixture(scope="module")
def fitted_run(tiny_source, tmp_path_factory):
    import csv

    folder = tmp_path_factory.mktemp("fitted")
    data = folder / "sentiment.csv"
    with open(data, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([("text", "label"), *make_sentiment(40)])
    cfg = RunConfig(
        strategy=StrategyConfig(kind="partial", unfreeze_top=1), train=TrainConfig(epochs=1, batch_size=8)
    )
    model = graft.fit(data, backbone=tiny_source, config=cfg, out=folder / "run", progress=False)
    return model, folder / "run"


@pytest.fixture
def fitted(fitted_run, tmp_path):
    """The fitted model, its run folder copied to ``tmp_path / "run"`` for this test to change."""
    import shutil

    model, run = fitted_run
    shutil.copytree(run, tmp_path / "run")
    return model


def test_round_trip_gives_identical_predictions(fitted, tmp_path):
    loaded = graft.load(tmp_path / "run")  # a run folder resolves to its bundle/
    np.testing.assert_array_equal(fitted.predict_proba(TEXTS), loaded.predict_proba(TEXTS))
    assert loaded.predict(TEXTS) == fitted.predict(TEXTS)
    again = loaded.save(tmp_path / "copy")
    np.testing.assert_array_equal(graft.load(again).predict_proba(TEXTS), loaded.predict_proba(TEXTS))


def test_manifest_records_contract_strategy_metrics_provenance(fitted, tmp_path):
    manifest = json.loads((tmp_path / "run" / "bundle" / "graft.json").read_text())
    assert manifest["format_version"] == FORMAT_VERSION
    assert manifest["task"] == "multiclass" and manifest["label_space"] == ["negative", "positive"]
    assert manifest["contract"]["modality"] == "text" and manifest["contract"]["text_col"] == "text"
    assert manifest["strategy"]["kind"] == "partial"
    assert "accuracy" in manifest["metrics"]["test"]
    prov = manifest["provenance"]
    assert len(prov["backbone_weights_sha256"]) == 64 and len(prov["data_fingerprint"]) == 64
    assert {"model.safetensors", "metrics.json", "report.html", "backbone/config.json"} <= set(
        manifest["files"]
    )
    assert "torch" in manifest["versions"]


def test_no_pickle_in_bundle(fitted, tmp_path):
    for path in (tmp_path / "run" / "bundle").rglob("*"):
        assert path.suffix not in (".pt", ".pth", ".pkl", ".bin"), path
        if path.is_file():
            assert not path.read_bytes().startswith(b"\x80"), f"{path} looks like a pickle"


@pytest.mark.parametrize("victim", ["model.safetensors", "metrics.json", "backbone/config.json"])
def test_tampered_bundle_is_refused(fitted, tmp_path, victim):
    path = tmp_path / "run" / "bundle" / victim
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=f"{victim} was modified after saving"):
        graft.load(tmp_path / "run")


def test_missing_file_and_not_a_bundle(fitted, tmp_path):
    (tmp_path / "run" / "bundle" / "report.html").unlink()
    with pytest.raises(BundleError, match=r"report\.html is missing"):
        graft.load(tmp_path / "run")
    with pytest.raises(BundleError, match="not a graft bundle"):
        graft.load(tmp_path)
    with pytest.raises(BundleError, match="bundle not found"):
        graft.load(tmp_path / "nowhere")


def test_newer_format_is_refused(fitted, tmp_path):
    manifest_path = tmp_path / "run" / "bundle" / "graft.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["format_version"] = FORMAT_VERSION + 1
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="upgrade graft"):
        graft.load(manifest_path.parent)


def test_failed_write_leaves_the_old_bundle(fitted, tmp_path, monkeypatch):
    target = tmp_path / "run" / "bundle"
    before = (target / "graft.json").read_bytes()

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr("graft.bundle.write_json", boom)
    with pytest.raises(RuntimeError):
        fitted.save(target)
    assert (target / "graft.json").read_bytes() == before
    assert not [p for p in target.parent.iterdir() if p.name.startswith(".")]


def _edit_manifest(bundle, change) -> None:
    path = bundle / "graft.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest, indent=2))


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (lambda m: m["label_space"].reverse(), "'label_space' was edited"),
        (lambda m: m.update(label_space=["bad", "good"]), "'label_space' was edited"),
        (lambda m: m["contract"]["preprocessing"].update(max_length=8), "'contract' was edited"),
        (lambda m: m["head"].update(n_outputs=3), "'head' was edited"),
        (lambda m: m.update(task="multilabel"), "'task' was edited"),
        (lambda m: m["files"].pop("report.html"), "'files' was edited"),
        (lambda m: m.update(note="hi"), "'note' was added"),
        (lambda m: m.pop("majority"), "'majority' was removed"),
        (lambda m: m.pop("integrity"), "integrity record is missing"),
    ],
)
def test_edited_manifest_is_refused_naming_the_change(fitted, tmp_path, change, named):
    _edit_manifest(tmp_path / "run" / "bundle", change)
    with pytest.raises(BundleError, match=named):
        graft.load(tmp_path / "run")


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("backbone/special_tokens_map.json", b'{"cls_token": "[SEP]", "sep_token": "[CLS]"}'),
        ("extra.pkl", b"\x80\x04K\x01."),
        ("backbone/evil.py", b"import os\n"),
    ],
)
def test_unlisted_file_is_refused(fitted, tmp_path, name, content):
    (tmp_path / "run" / "bundle" / name).write_bytes(content)
    with pytest.raises(BundleError, match=f"{name} is not part of the bundle"):
        graft.load(tmp_path / "run")


def test_file_manager_metadata_is_tolerated(fitted, tmp_path):
    (tmp_path / "run" / "bundle" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (tmp_path / "run" / "bundle" / "backbone" / "Thumbs.db").write_bytes(b"\0")
    assert graft.load(tmp_path / "run").predict(TEXTS) == fitted.predict(TEXTS)


def test_architecture_is_rebuilt_from_the_verified_files_only(fitted, tmp_path):
    """A file swapped after verification never reaches the tokenizer: the copy is checked as it is made."""
    from graft.bundle import load_network, read_manifest

    folder, manifest = read_manifest(tmp_path / "run")
    tokenizer = folder / "backbone" / "tokenizer.json"
    tokenizer.write_text(tokenizer.read_text().replace('"[CLS]"', '"[SEP]"'))
    with pytest.raises(BundleError, match=r"backbone/tokenizer\.json changed while it was read"):
        load_network(folder, manifest)


def test_older_format_loads_with_a_warning(fitted, tmp_path):
    from graft.errors import BundleWarning

    def as_format_1(manifest):
        manifest.pop("integrity")
        manifest["format_version"] = 1

    _edit_manifest(tmp_path / "run" / "bundle", as_format_1)
    with pytest.warns(BundleWarning, match=r"older graft \(format 1\).*graft.load\(path\).save\(path\)"):
        loaded = graft.load(tmp_path / "run")
    assert loaded.predict(TEXTS) == fitted.predict(TEXTS)
    resaved = loaded.save(tmp_path / "resaved")
    assert json.loads((resaved / "graft.json").read_text())["format_version"] == FORMAT_VERSION


@pytest.mark.parametrize(("umask", "dir_mode", "file_mode"), [(0o022, 0o755, 0o644), (0o027, 0o750, 0o640)])
def test_bundle_permissions_follow_the_umask(fitted, tmp_path, umask, dir_mode, file_mode):
    import os
    import stat

    old = os.umask(umask)
    try:
        path = fitted.save(tmp_path / "shared")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == dir_mode
    for item in path.rglob("*"):
        expected = dir_mode if item.is_dir() else file_mode
        assert stat.S_IMODE(item.stat().st_mode) == expected, item
