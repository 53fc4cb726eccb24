"""Bundles: round trip, integrity, atomic writes, no pickle."""

from __future__ import annotations

import json

import numpy as np
import pytest

import graft
from graft.bundle import FORMAT_VERSION
from graft.config import RunConfig, StrategyConfig, TrainConfig
from graft.errors import BundleError

TEXTS = ["the movie was great", "awful and boring plot", "quite a lovely story", "a dull film"]


@pytest.fixture
def fitted(tiny_source, sentiment_csv, tmp_path):
    cfg = RunConfig(
        strategy=StrategyConfig(kind="partial", unfreeze_top=1), train=TrainConfig(epochs=1, batch_size=8)
    )
    return graft.fit(sentiment_csv, backbone=tiny_source, config=cfg, out=tmp_path / "run", progress=False)


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
