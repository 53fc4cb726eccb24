"""Integration on the real packaged all-MiniLM-L6-v2 and real data from ../shared/data."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import graft
from graft.backbones import create_backbone
from graft.config import DataConfig, EvalConfig, RunConfig, StrategyConfig, TrainConfig
from graft.features import extract_features
from tests.conftest import shared

pytestmark = pytest.mark.slow

SENTENCES = ["A man is playing a guitar.", "The new movie is awesome!", "ok", "Ünïcödé & <html> entities"]


@pytest.fixture(scope="module")
def minilm():
    return create_backbone("minilm")


def test_minilm_matches_sentence_transformers(minilm):
    """An independent implementation of the same model as the oracle for pooling and normalisation."""
    from sentence_transformers import SentenceTransformer

    from graft.backbones.hf import minilm_path

    oracle = SentenceTransformer(str(minilm_path()), device="cpu")
    expected = oracle.encode(SENTENCES, convert_to_tensor=True)
    ours = extract_features(minilm, SENTENCES, progress=False)
    torch.testing.assert_close(ours, expected.cpu(), rtol=1e-4, atol=1e-5)


def test_minilm_contract_and_groups(minilm):
    assert minilm.contract.preprocessing | {"tokenizer_sha256": None} == {
        "tokenizer": "BertTokenizer", "tokenizer_sha256": None, "max_length": 256, "pooling": "mean",
        "normalize": True,
    }  # fmt: skip
    assert [g.name for g in minilm.layer_groups()] == ["embeddings"] + [f"layer.{i}" for i in range(6)]
    assert minilm.feature_dim == 384


def test_trec_linear_probe_on_the_full_train_set(tmp_path):
    model = graft.fit(
        shared("text", "trec", "train.jsonl"), backbone="minilm", strategy="linear_probe",
        test=shared("text", "trec", "test.jsonl"), out=tmp_path / "trec", progress=False,
    )  # fmt: skip
    assert model.report_.test.metrics["accuracy"] >= 0.88
    loaded = graft.load(tmp_path / "trec")
    result = loaded.evaluate(shared("text", "trec", "test.jsonl"))
    assert result.metrics["accuracy"] == pytest.approx(model.report_.test.metrics["accuracy"])
    assert result.baselines["majority"]["accuracy"] < 0.3


def test_partial_fine_tune_of_minilm_round_trips(tmp_path):
    import pandas as pd

    dev = pd.read_csv(shared("text", "sst2", "dev.csv")).sample(300, random_state=0)
    cfg = RunConfig(
        strategy=StrategyConfig(kind="partial", unfreeze_top=2),
        train=TrainConfig(epochs=2, batch_size=16, patience=2),
        data=DataConfig(estimate="holdout"),  # one recipe run: this test is about the round trip
        evaluation=EvalConfig(baselines="none"),
    )
    # a --val of its own: one training with early stopping (k-fold would train 5 + 1 times here)
    model = graft.fit(
        dev[:220], val=dev[220:], backbone="minilm", config=cfg, out=tmp_path / "p", progress=False
    )
    history = model.report_.history
    assert [h["epoch"] for h in history] == [1, 2]
    assert all(np.isfinite(h["train_loss"]) for h in history)
    # LP-FT: fine-tuning starts from the probe and must beat it on validation, else the probe ships
    strategy, validation = model.manifest_["strategy"], model.report_.validation
    assert strategy["kind"] == "partial"
    assert strategy["shipped"] == ("linear_probe" if validation["best_epoch"] == 0 else "partial")
    texts = ["a gorgeous , witty film", "a tedious mess"]
    np.testing.assert_allclose(
        graft.load(tmp_path / "p").predict_proba(texts), model.predict_proba(texts), atol=1e-6
    )
    assert graft.load(tmp_path / "p").predict(texts) == ["positive", "negative"]


def test_demo_runs(tmp_path, capsys):
    from graft.demo import run_demo

    run_demo(tmp_path / "demo", progress=False)
    out = capsys.readouterr().out
    assert "prior (chance) baseline" in out and (tmp_path / "demo" / "bundle" / "report.html").is_file()
