"""Feature extraction and the on-disk cache."""

from __future__ import annotations

import pytest
import torch

from graft.backbones import create_backbone
from graft.data.dataset import examples_fingerprint
from graft.features import FeatureCache, extract_features

TEXTS = [
    "the movie was great",
    "bad",
    "a really very dull and boring plot",
    "lovely",
    "the acting was superb",
]


@pytest.fixture
def backbone(tiny_source):
    return create_backbone(tiny_source)


def test_order_is_kept_despite_length_batching(backbone):
    feats = extract_features(backbone, TEXTS, batch_size=2, progress=False)
    single = torch.cat([extract_features(backbone, [t], progress=False) for t in TEXTS])
    torch.testing.assert_close(feats, single, rtol=1e-4, atol=1e-5)


def test_second_request_is_a_cache_hit(backbone, tmp_path):
    cache = FeatureCache(tmp_path)
    fp = examples_fingerprint("text", TEXTS)
    first, hit1 = cache.get_or_extract(backbone, TEXTS, fp, progress=False)
    second, hit2 = cache.get_or_extract(backbone, TEXTS, fp, progress=False)
    assert (hit1, hit2) == (False, True)
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    assert len(list(tmp_path.glob("*.safetensors"))) == 1


def test_key_depends_on_weights_contract_and_examples(tiny_source, backbone):
    fp = examples_fingerprint("text", TEXTS)
    key = FeatureCache.key(backbone, fp)
    assert FeatureCache.key(create_backbone(tiny_source, max_length=8), fp) != key
    assert FeatureCache.key(backbone, examples_fingerprint("text", TEXTS[:-1])) != key
    with torch.no_grad():
        next(backbone.parameters()).mul_(2)
    assert FeatureCache.key(backbone, fp) != key


def test_damaged_entry_is_recomputed(backbone, tmp_path):
    cache = FeatureCache(tmp_path)
    fp = examples_fingerprint("text", TEXTS)
    cache.get_or_extract(backbone, TEXTS, fp, progress=False)
    entry = next(tmp_path.glob("*.safetensors"))
    entry.write_bytes(b"not a safetensors file")
    with pytest.warns(UserWarning, match="unreadable"):
        feats, hit = cache.get_or_extract(backbone, TEXTS, fp, progress=False)
    assert not hit and feats.shape == (len(TEXTS), backbone.feature_dim)


def test_cache_can_be_turned_off(backbone, tmp_path, monkeypatch):
    monkeypatch.setenv("GRAFT_CACHE_DIR", "off")
    cache = FeatureCache()
    assert cache.root is None
    _, hit = cache.get_or_extract(backbone, TEXTS, "fp", progress=False)
    assert not hit
