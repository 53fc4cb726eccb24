"""graft export: the ONNX graph equals the bundle; the contract travels; a mismatch writes nothing."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime
import pytest
import torch

import graft
from graft.cli import main
from graft.config import EvalConfig, RunConfig
from graft.export import ExportError, export_onnx
from tests.conftest import make_image_folder


def _onnx_proba(path, model, inputs) -> np.ndarray:
    batch = model.network_.backbone.preprocess(model.inputs(inputs))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {k: v.numpy() for k, v in batch.items()})[0]


@pytest.fixture
def text_model(tiny_source, sentiment_csv, tmp_path):
    cfg = RunConfig(evaluation=EvalConfig(baselines="none"))
    graft.fit(sentiment_csv, backbone=tiny_source, strategy="linear_probe", config=cfg, progress=False,
              out=tmp_path / "run")  # fmt: skip
    return graft.load(tmp_path / "run")


def test_text_export_matches_predict_proba_with_any_batch_and_length(text_model, tmp_path):
    out = tmp_path / "model.onnx"
    result = export_onnx(text_model, out)
    assert result.max_difference < 1e-4 and out.is_file()
    texts = ["great film", "an awful, awful and boring film that went on for far too long", "fun"]
    np.testing.assert_allclose(
        _onnx_proba(out, text_model, texts), text_model.predict_proba(texts), atol=1e-4
    )
    contract = json.loads((tmp_path / "model.contract.json").read_text())
    assert contract["label_space"] == list(text_model.label_space) and contract["output"] == "probabilities"
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert json.loads(meta["graft_contract"])["contract"]["modality"] == "text"
    assert (tmp_path / "model.tokenizer" / "tokenizer_config.json").is_file()


def test_image_export_of_a_classifier_brought_from_elsewhere(tmp_path):
    from graft.backbones.archs import build_architecture

    torch.manual_seed(0)
    model = graft.from_classifier(build_architecture("resnet20").eval(), labels=[str(k) for k in range(10)],
                                  head="linear", modality="image", input_size=(3, 32, 32))  # fmt: skip
    images = sorted(
        str(p) for p in make_image_folder(tmp_path / "images", n_per_class=2, size=40).rglob("*.png")
    )
    result = export_onnx(model, tmp_path / "cnn.onnx", check=images)
    assert result.checked == len(images) and result.max_difference < 1e-4
    np.testing.assert_allclose(_onnx_proba(tmp_path / "cnn.onnx", model, images), model.predict_proba(images),
                               atol=1e-4)  # fmt: skip


def test_a_mismatch_fails_the_export_and_writes_nothing(text_model, tmp_path, monkeypatch):
    import graft.export

    real = graft.export._run_onnx
    monkeypatch.setattr(graft.export, "_run_onnx", lambda path, feeds: real(path, feeds) + 0.01)
    with pytest.raises(ExportError, match="differs from the bundle"):
        export_onnx(text_model, tmp_path / "bad.onnx")
    assert not any(tmp_path.glob("*bad*"))  # nor a temporary beside it
    with pytest.raises(graft.ConfigError, match="tolerance must be a number from 0 to 1"):
        export_onnx(text_model, tmp_path / "bad.onnx", tolerance=-1.0)
    with pytest.raises(graft.ConfigError, match=r"ends in \.onnx"):
        export_onnx(text_model, tmp_path / "model.bin")


def test_cli_export(text_model, tmp_path, capsys):
    bundle = tmp_path / "run"
    assert main(["export", str(bundle), "--out", str(tmp_path / "m.onnx"), "--json", "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out)["max_difference"] < 1e-4
    with pytest.raises(SystemExit) as refused:  # the user's value: exit 2 before any work (issue 19)
        main(["export", str(bundle), "--out", str(tmp_path / "x.onnx"), "--tolerance", "-1", "--json"])
    assert refused.value.code == 2 and not any(tmp_path.glob("x*"))
    assert (
        "--tolerance: must be a number from 0 to 1" in json.loads(capsys.readouterr().out)["error"]["message"]
    )
    assert main(["export", str(tmp_path / "missing"), "--out", str(tmp_path / "y.onnx")]) == 2
