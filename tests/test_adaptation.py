"""graft adapt: each adapter on tiny real models, the choice on evidence, the bundle and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import graft
from graft.adaptation import Adapter, Target, adapt_model, get_adapter, register_adapter
from graft.adaptation.base import copy_model
from graft.adaptation.selftrain import THRESHOLD, pseudo_labels
from graft.cli import main
from graft.config import EvalConfig, RunConfig, TrainConfig
from graft.errors import ContractError, DataError
from tests.conftest import make_image_folder


@pytest.fixture(scope="module")
def image_model(tmp_path_factory):
    """A small BatchNorm CNN fitted on dominant-colour images; the target: the same classes, brighter."""
    root = tmp_path_factory.mktemp("adapt")
    make_image_folder(root / "source", n_per_class=16, seed=0)
    target = make_image_folder(root / "target", n_per_class=12, seed=1)
    for path in target.rglob("*.png"):  # a shift of the input statistics: brighter, lower contrast
        from PIL import Image

        pixels = np.asarray(Image.open(path)).astype(np.float32)
        Image.fromarray((0.5 * pixels + 100).clip(0, 255).astype("uint8")).save(path)
    cfg = RunConfig(
        train=TrainConfig(epochs=2, batch_size=8, lr=3e-3), evaluation=EvalConfig(baselines="none")
    )
    model = graft.fit(root / "source", backbone="arch:small_cnn", strategy="full", config=cfg, progress=False,
                      out=root / "run")  # fmt: skip
    return model, root


def _target(root, **kwargs) -> Target:
    return Target(sorted(str(p) for p in (root / "target").rglob("*.png")), say=lambda _: None, **kwargs)


def test_adabn_changes_running_statistics_and_nothing_else(image_model):
    model, root = image_model
    before = {k: v.clone() for k, v in model.network_.state_dict().items()}
    adapted = get_adapter("adabn").adapt(model, _target(root))
    after = adapted.network_.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(
        k.endswith(("running_mean", "running_var", "num_batches_tracked")) for k in changed
    )
    assert all(torch.equal(before[k], v) for k, v in model.network_.state_dict().items())  # source untouched


def test_tent_trains_only_batchnorm_scale_and_shift(image_model):
    model, root = image_model
    before = {k: v.clone() for k, v in model.network_.state_dict().items()}
    adapted = get_adapter("tent").adapt(model, _target(root))
    after = adapted.network_.state_dict()
    bn = {n for n, m in adapted.network_.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert any(k.endswith(".weight") for k in changed)
    assert all(k.rsplit(".", 1)[0] in bn for k in changed)  # BatchNorm parameters and statistics only
    assert not any(p.requires_grad for p in adapted.network_.parameters())


def test_pseudo_labels_respect_the_threshold_and_the_class_balance():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(400, 3)) * 3
    logits[:300, 0] += 4  # class 0 predicted far more often than the others
    proba = torch.as_tensor(logits).softmax(1).numpy()
    rows, labels = pseudo_labels(proba)
    assert (proba[rows].max(1) >= THRESHOLD).all() and (proba[rows].argmax(1) == labels).all()
    counts = np.bincount(labels, minlength=3)
    assert len(set(counts[counts > 0].tolist())) == 1 and counts.sum() == len(rows)
    sure = proba.max(1) >= THRESHOLD
    for c in np.unique(labels):  # each class keeps its most confident rows
        kept = proba[rows[labels == c], c]
        others = proba[sure & (proba.argmax(1) == c), c]
        assert kept.min() >= np.sort(others)[-len(kept)]


class _Scramble(Adapter):
    """A method that hurts: the head's classes permuted."""

    name = "test_scramble"

    def adapt(self, model, target):
        adapted = copy_model(model)
        with torch.no_grad():
            adapted.network_.head.linear.weight.copy_(adapted.network_.head.linear.weight.roll(1, 0))
            adapted.network_.head.linear.bias.copy_(adapted.network_.head.linear.bias.roll(1, 0))
        return adapted


def test_none_wins_when_every_method_hurts(image_model, monkeypatch):
    from graft.adaptation import base

    model, root = image_model
    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))  # the test's method stays in this test
    register_adapter(_Scramble())
    val = model.labeled(root / "source")  # labeled rows the source model gets right
    chosen, record = adapt_model(model, _target(root), methods=["test_scramble"], val=val)
    assert record["method"] == "none" and "no method beat none" in record["evidence"]["reason"]
    scores = record["evidence"]["scores"]
    assert scores["test_scramble"]["vs_none"]["difference"] < 0
    assert chosen.manifest_["adaptation"]["method"] == "none"
    assert torch.equal(chosen.network_.head.linear.weight, model.network_.head.linear.weight)


def test_adapt_writes_a_normal_bundle_with_the_evidence(image_model, tmp_path):
    _, root = image_model
    target = root / "target"
    methods = ["adabn", "self_training", "coral"]
    adapted = graft.adapt(root / "run", target, target_val=target, target_test=target, methods=methods,
                          out=tmp_path / "adapted", progress=False)  # fmt: skip
    record = adapted.manifest_["adaptation"]
    assert record["source_data"] is not None  # the bundle's own training folder, unchanged
    assert set(record["test"]["scores"]) == {"none", "adabn", "self_training", "coral"} - set(
        record["skipped"]
    )
    assert record["target_fingerprint"] and record["target_inputs"] == 36
    loaded = graft.load(tmp_path / "adapted")
    assert loaded.manifest_["adaptation"]["method"] == record["method"]
    assert len(loaded.predict(root / "target")) == 36
    html = (tmp_path / "adapted" / "report.html").read_text()
    assert (
        "Adaptation: " in html
        and "36 labeled target rows (choice)" in html
        and "36 labeled target test rows" in html
    )
    assert loaded.evaluate(root / "target").n == 36


def test_target_of_another_modality_or_empty_is_refused_before_any_work(image_model, tmp_path):
    model, _ = image_model
    texts = tmp_path / "texts.txt"
    texts.write_text("a sentence\nanother one\n")
    with pytest.raises(ContractError, match="image"):
        graft.adapt(model, texts, out=tmp_path / "never", progress=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises((DataError, ContractError)):
        graft.adapt(model, empty, out=tmp_path / "never", progress=False)
    assert not (tmp_path / "never").exists()


def test_without_labels_the_choice_is_unverified_and_says_so(image_model):
    model, root = image_model
    _, record = adapt_model(model, _target(root), methods=["adabn"])
    assert record["evidence"]["verified"] is False and "unverified" in record["evidence"]["reason"]


def test_cli_adapt_prints_the_table_and_exits_2_on_bad_input(image_model, tmp_path, capsys):
    _, root = image_model
    target = str(root / "target")
    labeled = ["--target-val", target, "--target-test", target]
    code = main(["adapt", str(root / "run"), "--target", target, *labeled, "--methods", "adabn",
                 "--out", str(tmp_path / "a"), "--quiet"])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "chosen:" in printed and "adabn" in printed and "minus none" in printed
    assert main(["adapt", str(root / "run"), "--target", str(root / "target"), "--methods", "magic",
                 "--out", str(tmp_path / "b"), "--json"]) == 2  # fmt: skip
    assert "unknown adaptation method 'magic'" in json.loads(capsys.readouterr().out)["error"]["message"]


def test_from_classifier_keeps_the_modules_own_head_and_round_trips(tmp_path):
    from graft.backbones.archs import build_architecture

    torch.manual_seed(0)
    net = build_architecture("resnet20").eval()
    labels = [f"class{k}" for k in range(10)]
    model = graft.from_classifier(net, labels=labels, head="linear", modality="image", input_size=(3, 32, 32))
    features = torch.randn(4, 64)
    with torch.no_grad():
        assert torch.allclose(model.network_.head(features), net.linear(features), atol=1e-6)
    images = make_image_folder(tmp_path / "images", n_per_class=2, size=32)
    paths = sorted(str(p) for p in images.rglob("*.png"))
    batch = model.network_.backbone.preprocess(paths)
    with torch.no_grad():
        expected = net(next(iter(batch.values()))).softmax(-1).numpy()
    np.testing.assert_allclose(model.predict_proba(paths), expected, atol=1e-5)
    model.save(tmp_path / "bundle")
    loaded = graft.load(tmp_path / "bundle")
    np.testing.assert_allclose(loaded.predict_proba(paths), expected, atol=1e-5)
    assert "imported" in loaded.manifest_["strategy"]["kind"]
    with pytest.raises(graft.ConfigError, match="one output per label"):
        graft.from_classifier(net, labels=labels[:3], head="linear", modality="image", input_size=(3, 32, 32))


def test_text_adapters_tune_the_encoder_or_refit_the_head_and_batchnorm_ones_say_why_not(
    tiny_source, sentiment_csv, tmp_path
):
    from tests.conftest import make_sentiment

    cfg = RunConfig(evaluation=EvalConfig(baselines="none"))
    model = graft.fit(sentiment_csv, backbone=tiny_source, strategy="linear_probe", config=cfg,
                      progress=False, out=tmp_path / "run")  # fmt: skip
    target = [f"{text} indeed" for text, _ in make_sentiment(30, seed=5)]
    labeled = {"text": target[:20], "label": [y for _, y in make_sentiment(30, seed=5)][:20]}
    adapted = graft.adapt(tmp_path / "run", target, target_test=labeled, progress=False,
                          methods=["adabn", "tent", "self_training", "contrastive", "coral"])  # fmt: skip
    record = adapted.manifest_["adaptation"]
    assert "BatchNorm" in record["skipped"]["adabn"] and "BatchNorm" in record["skipped"]["tent"]
    assert record["source_data"] == str(sentiment_csv)  # found through the bundle's provenance
    assert {"none", "self_training", "contrastive", "coral"} <= set(record["test"]["scores"])
    tuned = get_adapter("contrastive").adapt(
        model, Target(target, model.labeled(sentiment_csv), say=lambda _: None)
    )
    before, after = model.network_.backbone.state_dict(), tuned.network_.backbone.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # the encoder moved
    assert "calibration" not in tuned.manifest_ and len(tuned.predict(target[:3])) == 3


def test_rule_lead_adopts_a_method_that_scores_higher_and_strict_needs_the_interval(image_model, monkeypatch):
    from graft.adaptation import base
    from graft.adaptation.choose import Candidate, choose

    model, root = image_model
    val = model.labeled(root / "source")
    broken = _Scramble().adapt(model, _target(root))  # wrong on nearly every row
    candidates = [Candidate("none", broken), Candidate("repaired", model)]
    for rule in ("strict", "lead"):
        chosen, evidence = choose(candidates, _target(root), val, "accuracy", rule)
        assert chosen == "repaired" and evidence["rule"] == rule
    assert "--rule lead" in choose(candidates, _target(root), val, "accuracy", "lead")[1]["reason"]
    chosen, _ = choose(
        [Candidate("none", model), Candidate("broken", broken)], _target(root), val, "accuracy", "lead"
    )
    assert chosen == "none"
    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))
    with pytest.raises(graft.ConfigError, match="--rule"):
        adapt_model(model, _target(root), methods=["adabn"], val=val, rule="loose")


def test_out_is_never_the_source_bundle_or_a_folder_of_other_files(image_model, tmp_path):
    _, root = image_model
    with pytest.raises(graft.OutputError, match="graft would write over what this command reads"):
        graft.adapt(root / "run", root / "target", out=root / "run" / "bundle", progress=False)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(graft.OutputError, match=r"(?s)holds files graft did not write.*notes\.txt"):
        graft.adapt(root / "run", root / "target", out=busy, progress=False)
    assert (busy / "notes.txt").read_text() == "mine"
