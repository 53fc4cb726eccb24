"""Bundles: round trip, integrity, atomic writes, no pickle."""

from __future__ import annotations

import json

import numpy as np
import pytest

import graft
from graft.bundle import FORMAT_VERSION
from graft.config import RunConfig, StrategyConfig, TrainConfig
from graft.errors import BundleError
from tests.conftest import VOCAB, make_sentiment

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


def test_architecture_is_rebuilt_from_the_verified_bytes_only(fitted, tmp_path):
    """A tokenizer file swapped after verification never reaches the tokenizer: it is rebuilt from the
    bytes that were checked."""
    from graft.bundle import load_network, read_bundle

    bundle = read_bundle(tmp_path / "run")
    tokenizer = bundle.folder / "backbone" / "tokenizer.json"
    tokenizer.write_text(tokenizer.read_text().replace('"[CLS]"', '"[SEP]"'))
    network = load_network(bundle)
    ids = network.backbone.preprocess(["the movie"])["input_ids"]
    assert ids[0, 0].item() == VOCAB.index("[CLS]")


def _swap_during_rebuild(monkeypatch, path, tensors) -> None:
    """Write ``tensors`` over ``path`` while the architecture is rebuilt: after the bundle's hashes were
    checked, before its weights are used (the window of issue 19, item 5)."""
    import graft.bundle
    from graft.serialization import save_tensors

    rebuild = graft.bundle._rebuild_backbone

    def swap_then_rebuild(*args, **kwargs):
        save_tensors(tensors, path)
        return rebuild(*args, **kwargs)

    monkeypatch.setattr(graft.bundle, "_rebuild_backbone", swap_then_rebuild)


def test_weights_swapped_after_the_check_are_never_used(fitted, tmp_path, monkeypatch):
    """Issue 19, item 5: the weights are built from the bytes that were hashed, not read again."""
    from graft.serialization import load_tensors

    weights = tmp_path / "run" / "bundle" / "model.safetensors"
    state = load_tensors(weights)
    flipped = {k: -v if k.startswith("head.linear.") else v for k, v in state.items()}
    _swap_during_rebuild(monkeypatch, weights, flipped)
    np.testing.assert_array_equal(
        graft.load(tmp_path / "run").predict_proba(TEXTS), fitted.predict_proba(TEXTS)
    )


def test_bundle_backbone_uses_the_verified_weights_too(fitted, tmp_path, monkeypatch):
    """``bundle:PATH`` as a backbone source reads the bundle through the same single, verified read."""
    import torch

    from graft.bundle import bundle_backbone
    from graft.serialization import load_tensors

    weights = tmp_path / "run" / "bundle" / "model.safetensors"
    doubled = {k: v * 2 if v.is_floating_point() else v for k, v in load_tensors(weights).items()}
    _swap_during_rebuild(monkeypatch, weights, doubled)
    backbone = bundle_backbone(tmp_path / "run")
    for name, value in fitted.network_.backbone.state_dict().items():
        assert torch.equal(backbone.state_dict()[name], value), name


def test_a_manifest_downgraded_to_format_1_is_refused(fitted, tmp_path, capsys):
    """Issue 19, item 6: no bundle of format 1 was ever released; claiming it must not switch the checks
    off (here with the labels reversed, which would flip every prediction)."""
    from graft.cli import main

    def as_format_1(manifest):
        manifest.pop("integrity")
        manifest["format_version"] = 1
        manifest["label_space"].reverse()

    _edit_manifest(tmp_path / "run" / "bundle", as_format_1)
    with pytest.raises(BundleError, match=r"format version 1, which predates graft's integrity checks"):
        graft.load(tmp_path / "run")
    (tmp_path / "new.txt").write_text("a lovely film\n")
    assert main(["predict", str(tmp_path / "run"), str(tmp_path / "new.txt")]) == 2
    err = capsys.readouterr().err
    assert "fit the model again" in err and "Traceback" not in err


def _reseal(bundle, change=None, tensors=None) -> None:
    """Change a bundle as a forger would: new content, every digest recomputed (files and manifest)."""
    from graft.bundle import seal_manifest
    from graft.serialization import load_tensors, save_tensors, sha256_file

    if tensors is not None:
        state = load_tensors(bundle / "model.safetensors")
        tensors(state)
        save_tensors(state, bundle / "model.safetensors")
    manifest = json.loads((bundle / "graft.json").read_text())
    if change is not None:
        change(manifest)
    manifest["files"] = {name: sha256_file(bundle / name) for name in manifest["files"]}
    (bundle / "graft.json").write_text(json.dumps(seal_manifest(manifest), indent=2))


def _set(section, key, value):
    return lambda manifest: manifest[section].update({key: value})


def _nan_bias(state):
    state["head.linear.bias"][0] = float("nan")


@pytest.mark.parametrize(
    ("change", "tensors", "named"),
    [
        (
            _set("head", "in_dim", "abc"),
            None,
            r"graft.json: head.in_dim must be a positive integer, got 'abc'",
        ),
        (
            lambda m: m.update(label_space=[]),
            None,
            r"label_space must be a non-empty list of labels, got \[\]",
        ),
        (lambda m: m.update(label_space=["a", "a"]), None, r"distinct labels \(repeated: 'a'\)"),
        (_set("head", "n_outputs", 3), None, r"head.n_outputs must be 2 \(one per label of label_space\)"),
        (_set("contract", "modality", "smell"), None, r"contract.modality must be one of text, image, audio"),
        (lambda m: m.update(task="ranking"), None, r"task must be one of multiclass, multilabel, regression"),
        (_set("calibration", "temperature", 0), None, r"calibration.temperature must be a positive finite"),
        (lambda m: m.update(abstain={"threshold": "high"}), None, r"abstain.threshold must be a number"),
        (lambda m: m.update(thresholds=[0.5, float("nan")]), None, r"thresholds must be a list of 2 numbers"),
        (_set("majority", "class", 7), None, r"majority.class must be a class index in 0..1, got 7"),
        (lambda m: m.pop("head"), None, r"graft.json: head is missing"),
        (
            None,
            lambda s: s.update({"head.linear.weight": s["head.linear.weight"][:, :16].clone()}),
            r"head.linear.weight: shape \[2, 16\] in model.safetensors, \[2, 32\] in the architecture",
        ),
        (None, lambda s: s.pop("head.linear.bias"), r"head.linear.bias: missing"),
        (None, _nan_bias, r"holds NaN or infinite values(.|\n)*head.linear.bias: not finite"),
    ],
)
def test_a_resealed_bundle_is_still_checked_before_use(fitted, tmp_path, change, tensors, named):
    """Issue 19, items 8 and 9: the digests prove a bundle unchanged, not sensible; values, tensor shapes
    and finiteness are checked before use, each problem named (a BundleError, exit 2, no traceback)."""
    _reseal(tmp_path / "run" / "bundle", change, tensors)
    with pytest.raises(BundleError, match=named):
        graft.load(tmp_path / "run")


def test_every_problem_of_a_resealed_manifest_is_named_at_once(fitted, tmp_path):
    def nonsense(manifest):
        manifest["head"]["in_dim"] = "abc"
        manifest["label_space"] = []
        manifest["contract"]["text_col"] = 5

    _reseal(tmp_path / "run" / "bundle", nonsense)
    with pytest.raises(BundleError) as info:
        graft.load(tmp_path / "run")
    assert "head.in_dim" in str(info.value) and "label_space" in str(info.value)
    assert "contract.text_col must be a column name or null, got 5" in str(info.value)


@pytest.mark.parametrize(
    "text",
    ["[" * 100_000, '{"format_version": 2, "a": ' + "[" * 900 + "]" * 900 + "}"],
    ids=["unreadable", "deep"],
)
def test_a_deeply_nested_manifest_is_refused_without_a_traceback(fitted, tmp_path, capsys, text):
    from graft.cli import main

    (tmp_path / "run" / "bundle" / "graft.json").write_text(text)
    with pytest.raises(BundleError, match=r"graft.json is (not valid JSON \()?nested too deeply"):
        graft.load(tmp_path / "run")
    (tmp_path / "new.txt").write_text("a lovely film\n")
    assert main(["predict", str(tmp_path / "run"), str(tmp_path / "new.txt")]) == 2
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.parametrize("name", ["backbone", "model.safetensors", "extra"])
def test_a_symbolic_link_inside_a_bundle_is_refused_by_name(fitted, tmp_path, name):
    """Issue 19, item 11: graft never follows a link inside a bundle, and names each one (a linked
    folder's files were not even listed before)."""
    import shutil

    bundle, elsewhere = tmp_path / "run" / "bundle", tmp_path / "elsewhere"
    if name == "extra":
        elsewhere.mkdir()
        (elsewhere / "evil.py").write_text("import os\n")
    else:
        shutil.move(bundle / name, elsewhere)
    (bundle / name).symlink_to(elsewhere, target_is_directory=elsewhere.is_dir())
    with pytest.raises(BundleError, match=f"{name} is a symbolic link: graft never follows links"):
        graft.load(tmp_path / "run")


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
