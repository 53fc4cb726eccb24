"""Shared fixtures: a tiny real BERT saved to a local folder, small labeled text sets, paths to real data.

Every test runs offline (HF_HUB_OFFLINE=1) with the feature cache in a per-session folder.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _find_shared_data() -> Path | None:
    """../shared/data beside the checkout; a clone elsewhere (CI, mktemp) sets GRAFT_SHARED_DATA or
    falls back to the team machines' /work/shared/data."""
    if os.environ.get("GRAFT_SHARED_DATA"):
        return Path(os.environ["GRAFT_SHARED_DATA"])
    repo = Path(__file__).resolve().parents[1]
    for base in (*repo.parents, Path("/work")):
        if (base / "shared" / "data" / "README.md").is_file():
            return base / "shared" / "data"
    return None


SHARED_DATA = _find_shared_data()

POSITIVE = ["great", "good", "wonderful", "excellent", "lovely", "fun", "brilliant", "superb"]
NEGATIVE = ["bad", "awful", "boring", "terrible", "dull", "poor", "horrible", "weak"]
FILLER = ["the", "movie", "film", "was", "really", "quite", "plot", "acting", "and", "very", "a", "story"]
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *FILLER, *POSITIVE, *NEGATIVE]


@pytest.fixture(autouse=True, scope="session")
def _session_env(tmp_path_factory):
    os.environ["GRAFT_CACHE_DIR"] = str(tmp_path_factory.mktemp("feature-cache"))
    yield


def make_sentiment(n_per_class: int, seed: int = 0) -> list[tuple[str, str]]:
    """Short sentences whose label is carried by one sentiment word."""
    rng = random.Random(seed)
    rows = []
    for label, words in (("positive", POSITIVE), ("negative", NEGATIVE)):
        for _ in range(n_per_class):
            filler = rng.sample(FILLER, rng.randint(2, 5))
            filler.insert(rng.randint(0, len(filler)), rng.choice(words))
            rows.append((" ".join(filler), label))
    rng.shuffle(rows)
    return rows


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    """A 2-layer, 32-wide BERT with a 36-word vocabulary, saved as a Hugging Face folder."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizer

    folder = tmp_path_factory.mktemp("tiny-bert")
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=64,
    )  # fmt: skip
    BertModel(config).save_pretrained(folder)
    BertTokenizer(vocab={w: i for i, w in enumerate(VOCAB)}).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_source(tiny_bert_dir) -> str:
    return f"hf:{tiny_bert_dir}"


@pytest.fixture
def sentiment_csv(tmp_path) -> Path:
    path = tmp_path / "sentiment.csv"
    import csv

    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows(make_sentiment(40))
    return path


@pytest.fixture
def val_csv(tmp_path) -> Path:
    """A separate validation file for ``sentiment_csv``: a run with it trains once, early-stopping on it
    (no k-fold choice and refit), which keeps engine-level tests short."""
    import csv

    path = tmp_path / "val.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([("text", "label"), *make_sentiment(8, seed=1)])
    return path


def shared(*parts: str) -> Path:
    if SHARED_DATA is None:
        pytest.fail("real data not found: set GRAFT_SHARED_DATA to the shared/data folder")
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.fail(f"real data missing: {path} (set GRAFT_SHARED_DATA to the shared/data folder)")
    return path


def make_image_folder(root: Path, n_per_class: int = 12, size: int = 16, seed: int = 0) -> Path:
    """Class folders of small PNGs whose class is the dominant colour (red / green / blue)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for k, name in enumerate(("red", "green", "blue")):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            pixels = rng.integers(0, 90, (size, size, 3))
            pixels[..., k] += 150
            Image.fromarray(pixels.astype("uint8")).save(folder / f"{name}_{i}.png")
    return root


@pytest.fixture
def image_folder(tmp_path) -> Path:
    return make_image_folder(tmp_path / "images")


def killed_then_resumed(script: str, *args: str, folder: Path) -> None:
    """Run ``python -c script *args kill`` (it must end with ``os._exit(137)`` mid-training, before any
    bundle is written), then ``... resume`` in a new process, which must succeed."""
    import subprocess
    import sys

    run = [sys.executable, "-c", script, *args]
    killed = subprocess.run([*run, "kill"], capture_output=True, text=True, timeout=300)
    assert killed.returncode == 137, killed.stderr
    assert not (folder / "bundle").exists()
    resumed = subprocess.run([*run, "resume"], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
