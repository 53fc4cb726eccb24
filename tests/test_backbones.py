"""The backbone registry and the Hugging Face text backbone, on a tiny BERT saved to disk."""

from __future__ import annotations

import pytest
import torch

from graft.backbones import create_backbone, list_backbones, parse_source, register_backbone
from graft.backbones.base import check_modality
from graft.errors import ConfigError, ContractError


def test_registry_lists_and_matches():
    names = ["arch", "bundle", "ge2e", "hf", "minilm", "mpnet", "timm", "torchvision"]
    assert [s.name for s in list_backbones()] == names
    assert [s.name for s in list_backbones("mini*")] == ["minilm"]


def test_unknown_source_lists_close_matches():
    with pytest.raises(ConfigError, match="did you mean 'minilm'"):
        parse_source("minlm")


def test_duplicate_registration_raises():
    with pytest.raises(ConfigError, match="already registered"):
        register_backbone("minilm", lambda a, m: None, modality="text", description="x")


def test_argument_rules():
    with pytest.raises(ConfigError, match="needs an argument"):
        parse_source("hf")
    with pytest.raises(ConfigError, match="takes no argument"):
        parse_source("minilm:foo")


def test_missing_local_folder_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="folder not found"):
        create_backbone(f"hf:{tmp_path}/absent/model")


def test_unknown_hub_id_offline_is_a_config_error():
    with pytest.raises(ConfigError, match="hub is offline"):
        create_backbone("hf:nobody/not-a-model")


def test_tiny_bert_contract_groups_and_features(tiny_source):
    bb = create_backbone(tiny_source)
    assert bb.contract.modality == "text"
    assert bb.contract.preprocessing["pooling"] == "mean"
    assert bb.max_length == 64  # from max_position_embeddings: the tokenizer sets no real limit
    groups = bb.layer_groups()
    assert [g.name for g in groups] == ["embeddings", "layer.0", "layer.1"]
    # every parameter in exactly one group, matched by identity; the unused pooler is gone
    ids = [id(p) for g in groups for p in g.params.values()]
    assert len(ids) == len(set(ids)) == len(list(bb.parameters()))
    assert bb.model.pooler is None
    batch = bb.preprocess(["the movie was great", "bad"])
    feats = bb(batch)
    assert feats.shape == (2, bb.feature_dim) and torch.isfinite(feats).all()
    # padding does not change a text's features (mask-aware mean pooling)
    alone = bb(bb.preprocess(["bad"]))
    torch.testing.assert_close(feats[1], alone[0], rtol=1e-4, atol=1e-5)


def test_truncation_is_counted(tiny_source):
    bb = create_backbone(tiny_source, max_length=8)
    texts = ["the movie was great", " ".join(["very"] * 20), "x" * 3]
    assert bb.count_truncated(texts) == 1


def test_weights_hash_tracks_weights(tiny_source):
    a, b = create_backbone(tiny_source), create_backbone(tiny_source)
    assert a.weights_sha256() == b.weights_sha256()
    with torch.no_grad():
        next(b.parameters()).add_(1.0)
    assert a.weights_sha256() != b.weights_sha256()


def test_modality_mismatch_names_both():
    from graft.backbones.base import Contract

    with pytest.raises(ContractError, match=r"pretrained on image but data.csv holds text"):
        check_modality("text", Contract("image"), "resnet", "data.csv")


def test_float16_checkpoint_loads_as_float32(tmp_path, tiny_bert_dir):
    """transformers 5 keeps a checkpoint's dtype; graft trains float32 masters (and CPUs have no
    float16 layer norm), so an hf: folder saved in float16 still gives a float32 backbone."""
    from transformers import AutoModel, AutoTokenizer

    folder = tmp_path / "half"
    AutoModel.from_pretrained(tiny_bert_dir).half().save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_bert_dir).save_pretrained(folder)
    bb = create_backbone(f"hf:{folder}")
    assert {p.dtype for p in bb.parameters()} == {torch.float32}
    assert bb(bb.preprocess(["the movie"])).dtype == torch.float32


def test_sentence_transformers_pooling_config_is_read(tmp_path, tiny_bert_dir):
    import json
    import shutil

    folder = tmp_path / "st"
    shutil.copytree(tiny_bert_dir, folder)
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_cls_token": True}))
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]
    (folder / "modules.json").write_text(json.dumps(modules))
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 16}))
    bb = create_backbone(f"hf:{folder}")
    assert (bb.pooling, bb.normalize, bb.max_length) == ("cls", True, 16)
    feats = bb(bb.preprocess(["the movie", "was great"]))
    torch.testing.assert_close(feats.norm(dim=-1), torch.ones(2))


def test_backbones_pattern_lists_timm_and_torchvision_models_and_finds_local_weights(
    tmp_path, monkeypatch, capsys
):
    import json
    from pathlib import Path

    import torchvision

    from graft.cli import main

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    # weights "downloaded" earlier: torchvision's resnet18 checkpoint, timm's resnet18.a1_in1k snapshot
    url = torchvision.models.get_model_weights("resnet18").DEFAULT.url
    (tmp_path / "torch" / "hub" / "checkpoints").mkdir(parents=True)
    (tmp_path / "torch" / "hub" / "checkpoints" / Path(url).name).write_bytes(b"weights")
    snapshot = tmp_path / "hf" / "models--timm--resnet18.a1_in1k" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "model.safetensors").write_bytes(b"weights")
    (tmp_path / "hf" / "models--timm--resnet18.a1_in1k" / "refs").mkdir()
    (tmp_path / "hf" / "models--timm--resnet18.a1_in1k" / "refs" / "main").write_text("abc123")

    assert main(["backbones", "resnet18*", "--json"]) == 0
    found = json.loads(capsys.readouterr().out)
    timm_rows = {r["spec"]: r["local"] for r in found["timm"]}
    tv_rows = {r["spec"]: r["local"] for r in found["torchvision"]}
    assert timm_rows["timm:resnet18.a1_in1k"] is True and timm_rows["timm:resnet18.a2_in1k"] is False
    assert tv_rows == {"torchvision:resnet18": True}
    assert main(["backbones", "resnet18*"]) == 0
    assert "timm:resnet18.a1_in1k" in capsys.readouterr().out
    assert main(["backbones", "no_such_model_*"]) == 2


def _long_texts() -> list[str]:
    """Real texts run together (English, Spanish, Arabic, tweets with emoji) up to 30,000 characters,
    and texts made to trip a cut: runs of spaces, combining accents, CJK, emoji, one endless word."""
    import csv
    import random

    from tests.conftest import shared

    rng = random.Random(0)
    texts = []
    for name in ("agnews_sub", "tweeteval_emoji_sub", "xlmt_sentiment_arabic", "xlmt_sentiment_spanish",
                 "goemotions_multilabel", "sst2"):  # fmt: skip
        with open(shared("text", name, "test.csv"), encoding="utf-8", newline="") as f:
            rows = [r["text"] for r in csv.DictReader(f)]
        for _ in range(6):
            rng.shuffle(rows)
            joined = rng.choice([" ", "\n", "   ", "", " \u0301 "]).join(rows[:300])
            texts.append(joined[: rng.randint(2_500, 30_000)])
    return [
        *texts,
        "a" * 20_000, " " * 5_000 + "good film " * 800, "e\u0301" * 9_000, "\u597d" * 5_000,
        ("great" + " " * 40) * 500, "!" * 9_000, "\u200b" * 9_000 + " bad film" * 500, "\U0001f600 " * 6_000,
    ]  # fmt: skip


class _Recording:
    """A tokenizer that remembers the longest text it was handed."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer, self.longest = tokenizer, 0

    def __call__(self, texts, **kwargs):
        self.longest = max(self.longest, *map(len, texts))
        return self.tokenizer(texts, **kwargs)

    def __getattr__(self, name):
        return getattr(self.tokenizer, name)


def _assert_cut_changes_nothing(bb, texts: list[str]) -> None:
    reference = bb.tokenizer(
        texts, truncation=True, max_length=bb.max_length, padding=True, return_tensors="pt"
    )
    bb.tokenizer = _Recording(bb.tokenizer)
    batch = bb.preprocess(texts)
    assert batch.keys() <= reference.keys()
    for key, value in batch.items():
        assert torch.equal(value, reference[key]), key
    bb.tokenizer.longest = 0
    bb.preprocess(texts[:30])  # real texts: each cut at the first try, to 8 characters per token
    assert bb.tokenizer.longest <= 8 * bb.max_length < min(map(len, texts[:30]))
    bb.tokenizer = bb.tokenizer.tokenizer


def test_minilm_cuts_long_texts_before_tokenizing_without_changing_a_token():
    """Issue 19 item 4: a 10 KB text was tokenized whole before being truncated to 256 tokens."""
    bb = create_backbone("minilm")
    texts = _long_texts()
    _assert_cut_changes_nothing(bb, texts)
    assert bb.count_truncated(texts) == len(texts) - 2  # the zero-width and emoji texts fit in 256 tokens
    whole = bb.tokenizer(
        texts[:4], truncation=True, max_length=bb.max_length, padding=True, return_tensors="pt"
    )
    with torch.inference_mode():  # and so the predictions: the same features, from far less tokenizing
        torch.testing.assert_close(bb(bb.preprocess(texts[:4])), bb(dict(whole)), rtol=0, atol=0)


@pytest.mark.parametrize("kind", ["byte_level_bpe", "unigram"])
def test_the_cut_holds_for_other_tokenizer_families(kind):
    """Byte-level BPE (GPT-2, RoBERTa) splits runs of spaces by what follows them; Unigram with Metaspace
    (T5, XLM-R) normalises them: the cut must leave both alone. Tokenizers trained here on SST-2."""
    import csv

    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    from graft.backbones.hf import HFTextBackbone
    from tests.conftest import shared

    with open(shared("text", "sst2", "train.csv"), encoding="utf-8", newline="") as f:
        corpus = [r["text"] for r in csv.DictReader(f)]
    specials = ["<s>", "</s>", "<pad>", "<unk>"]
    if kind == "byte_level_bpe":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=specials,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())  # fmt: skip
    else:
        tok = Tokenizer(models.Unigram())
        tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(" {2,}", " ")])
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        trainer = trainers.UnigramTrainer(vocab_size=600, special_tokens=specials, unk_token="<unk>")
    tok.train_from_iterator(corpus, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 1)]
    )
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>", model_max_length=64)  # fmt: skip
    config = BertConfig(vocab_size=len(fast), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64)  # fmt: skip
    _assert_cut_changes_nothing(
        HFTextBackbone(BertModel(config), fast, source="test", max_length=64), _long_texts()
    )
