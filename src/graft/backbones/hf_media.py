"""Vision and audio encoders from Hugging Face folders: ``hf:<folder>`` for ViT, ConvNeXt, DINOv2, ...
and for raw-waveform speech encoders (wav2vec2, HuBERT, WavLM, ...).

The network is ``transformers.AutoModel`` (the bare encoder: no pretraining or classification head).
Preprocessing is graft's own :class:`~graft.backbones.preprocess.ImagePreprocess` /
:class:`~graft.backbones.preprocess.AudioPreprocess`, derived from the folder's image processor /
feature extractor config, so files are decoded in DataLoader workers without the model and the
contract (hence the feature-cache key) records exactly what was done:

* images: ``size`` (``{"height", "width"}`` or ``{"shortest_edge"}``), ``crop_size`` with
  ``do_center_crop`` (or ConvNeXt's ``crop_pct``) -> ``crop_pct = crop / resize``, ``image_mean``,
  ``image_std`` (mean 0, std 1 when ``do_normalize`` is off), ``resample`` (PIL filter) ->
  interpolation, ``num_channels`` from the model config. graft keeps the aspect ratio (resize the
  shorter side, centre crop) where some processors stretch to ``{"height", "width"}``; pixels are
  always rescaled to [0, 1].
* audio: ``sampling_rate`` and ``do_normalize``; clips are padded / cropped to ``duration`` seconds
  (:data:`DEFAULT_AUDIO_DURATION` unless given).

Pooling (``spec()["pooling"]``, also in the contract):

* ``"cls"``: ViT / DeiT style models whose pooler is a BERT-style dense + tanh layer. That layer is
  dropped (its weights are random in most checkpoints, which are saved from ``...ForImageClassification``)
  and the feature is the class token of ``last_hidden_state`` (after the final layer norm), which is
  what their image classifiers read.
* ``"pooler"``: models whose own ``pooler_output`` is ``[batch, dim]`` (or ``[batch, dim, 1, 1]``):
  ConvNeXt (mean + layer norm), Swin, ResNet, DINOv2 (class token), BEiT, ...
* ``"mean"``: otherwise the mean of ``last_hidden_state`` over tokens (or over the spatial grid);
  always for audio (mean over frames, padding included: every clip has the same length).

Example:
    >>> bb = create_backbone("hf:/models/vit-base-patch16-224")   # doctest: +SKIP
    >>> bb(bb.preprocess(["cat.jpg"])).shape                       # doctest: +SKIP
    torch.Size([1, 768])
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from graft.backbones.base import Backbone, Contract, LayerGroup, find_block_list, groups_from_blocks
from graft.backbones.hf import _quiet_transformers, hf_load_error, hf_location
from graft.backbones.preprocess import INTERPOLATIONS, AudioPreprocess, ImagePreprocess, preprocess_from_dict
from graft.errors import ConfigError

DEFAULT_AUDIO_DURATION = 2.0
POOLINGS = ("cls", "pooler", "mean")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# PIL.Image.Resampling values, as stored in image processor configs.
_PIL_FILTERS = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
# Audio models whose inputs are spectrograms / filter-bank features, not waveforms, or that are not
# plain encoders: graft's audio preprocessing gives raw waveforms.
_NOT_WAVEFORM_TYPES = {
    "audio-spectrogram-transformer",
    "whisper",
    "clap",
    "clap_audio_model",
    "wav2vec2-bert",
    "speech_to_text",
    "seamless_m4t",
    "seamless_m4t_v2",
}
# Parameters that a bare encoder may legitimately lack in a checkpoint saved from a task model.
_OPTIONAL_KEYS = ("pooler.", "masked_spec_embed")


class HFMediaBackbone(Backbone):
    """A transformers vision or audio encoder + graft preprocessing + pooling, as a graft backbone.

    Args:
        model: the bare encoder (``AutoModel``), weights loaded.
        pre: the :class:`ImagePreprocess` / :class:`AudioPreprocess` its inputs need.
        source: the source spec, for messages and provenance.
        pooling: ``"cls"``, ``"pooler"`` or ``"mean"``; chosen from the model when ``None``
            (see the module docstring).
        processor: the transformers image processor / feature extractor, saved with the architecture.
        feature_dim: the feature size; measured with one dummy forward when ``None``.
    """

    def __init__(
        self,
        model: nn.Module,
        pre: ImagePreprocess | AudioPreprocess,
        *,
        source: str,
        pooling: str | None = None,
        processor: Any = None,
        feature_dim: int | None = None,
    ) -> None:
        super().__init__()
        if pooling is not None and pooling not in POOLINGS:
            raise ConfigError(f"unknown pooling {pooling!r}; expected one of {POOLINGS}")
        self.modality = pre.modality
        if self.modality == "audio":
            pooling = pooling or "mean"
        elif pooling in (None, "cls") and _dense_pooler(model):
            # A BERT-style pooler is not what the image classifiers read (and is often untrained):
            # drop it, so it neither costs time nor holds parameters without gradients.
            model.pooler = None
            pooling = "cls"
        self.model = model
        self._pre = pre
        self._processor = processor
        self.source = source
        self.pooling = pooling or self._choose_pooling()
        self.feature_dim = int(feature_dim) if feature_dim else self._measure_dim()
        self.contract = Contract(self.modality, {**pre.to_dict(), "pooling": self.pooling})

    # -- the Backbone surface ------------------------------------------------------------------
    def preprocess(self, examples: list[Any]) -> dict[str, torch.Tensor]:
        return self._pre([str(e) for e in examples])

    def preprocessor(self, augment: str = "none") -> ImagePreprocess | AudioPreprocess:
        return self._pre.with_augment(augment)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        key = self._pre.input_key
        out = self.model(**{key: batch[key]})
        if self.pooling == "pooler":
            return out.pooler_output.flatten(1)
        hidden = out.last_hidden_state
        if self.pooling == "cls":
            return hidden[:, 0]
        if hidden.ndim == 4:  # feature maps [batch, channels, height, width]
            return hidden.mean((2, 3))
        return hidden.mean(1)

    def layer_groups(self) -> list[LayerGroup]:
        prefix, n = _block_list(self)
        if not n:
            return [LayerGroup("encoder", dict(self.named_parameters()))]
        groups = groups_from_blocks(self, prefix, n)
        if getattr(self.model.config, "do_stable_layer_norm", False):
            # Pre-LN speech encoders apply encoder.layer_norm after the blocks, though it is
            # registered before them: it belongs to the final group.
            moved = {
                k: p
                for g in groups
                if g.name == "embeddings"
                for k, p in g.params.items()
                if k.startswith("model.encoder.layer_norm.")
            }
            if moved:
                groups = [
                    LayerGroup(g.name, {k: p for k, p in g.params.items() if k not in moved}) for g in groups
                ]
                if groups[-1].name == "final":
                    groups[-1] = LayerGroup("final", {**moved, **groups[-1].params})
                else:
                    groups.append(LayerGroup("final", moved))
                groups = [g for g in groups if g.params]
        return groups

    def spec(self) -> dict[str, Any]:
        return {
            "kind": "hf_media",
            "source": self.source,
            "modality": self.modality,
            "model_type": str(getattr(self.model.config, "model_type", "")),
            "preprocess": self._pre.to_dict(),
            "pooling": self.pooling,
            "feature_dim": self.feature_dim,
        }

    def save_architecture(self, folder: Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        with _quiet_transformers():
            self.model.config.save_pretrained(folder)
            if self._processor is not None:
                self._processor.save_pretrained(folder)

    # -- helpers -------------------------------------------------------------------------------
    def _dummy_batch(self) -> dict[str, torch.Tensor]:
        if isinstance(self._pre, AudioPreprocess):
            n = min(self._pre.num_samples, self._pre.sample_rate)  # at most 1 s: enough for any stride
            gen = torch.Generator().manual_seed(0)
            return {self._pre.input_key: torch.randn(2, n, generator=gen) * 0.1}
        return {self._pre.input_key: torch.zeros(2, *self._pre.example_shape())}

    @torch.no_grad()
    def _run_dummy(self) -> Any:
        was_training = self.model.training
        self.model.eval()
        batch = self._dummy_batch()
        key = self._pre.input_key
        try:
            return self.model(**{key: batch[key]})
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConfigError(
                f"backbone {self.source!r} ({type(self.model).__name__}) failed on a dummy {self.modality} "
                f"input of shape {tuple(batch[key].shape)}: {first}"
            ) from None
        finally:
            self.model.train(was_training)

    def _choose_pooling(self) -> str:
        pooled = getattr(self._run_dummy(), "pooler_output", None)
        if torch.is_tensor(pooled) and (
            pooled.ndim == 2 or (pooled.ndim == 4 and pooled.shape[2:] == (1, 1))
        ):
            return "pooler"
        return "mean"

    @torch.no_grad()
    def _measure_dim(self) -> int:
        was_training = self.training
        self.eval()
        try:
            out = self.forward(self._dummy_batch())
        except ConfigError:
            raise
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConfigError(
                f"backbone {self.source!r} ({type(self.model).__name__}) failed on a dummy "
                f"{self.modality} input: {first}"
            ) from None
        finally:
            self.train(was_training)
        if out.ndim != 2:
            raise ConfigError(
                f"backbone {self.source!r} gives features of shape {tuple(out.shape)} with pooling "
                f"{self.pooling!r}; expected [batch, features]"
            )
        return int(out.shape[1])


def config_feature_dim(config: Any) -> int | None:
    """The feature size a model config announces (``hidden_size``, or ``hidden_sizes[-1]``)."""
    sizes = getattr(config, "hidden_sizes", None)
    if sizes:
        return int(sizes[-1])
    size = getattr(config, "hidden_size", None)
    return int(size) if size else None


def _dense_pooler(model: nn.Module) -> bool:
    """Whether ``model.pooler`` is a BERT-style dense (+ activation) layer over the first token."""
    pooler = getattr(model, "pooler", None)
    return isinstance(pooler, nn.Module) and isinstance(getattr(pooler, "dense", None), nn.Linear)


def _block_list(module: nn.Module) -> tuple[str, int]:
    """The list of same-typed blocks that holds the most parameters.

    Same as :func:`find_block_list` for plain transformers; for hierarchical models (ConvNeXt,
    Swin: stages of blocks) it picks the stages, where the longest list would be the blocks of one
    stage (stage 3 of ConvNeXt-T holds 9 of its 18 blocks) and lump the other stages together.
    """
    best: tuple[int, int, str] = (-1, 0, "")
    for name, child in module.named_modules():
        if isinstance(child, nn.ModuleList) and len(child) and len({type(c) for c in child}) == 1:
            n_params = sum(p.numel() for p in child.parameters())
            if n_params and (n_params, len(child)) > best[:2]:
                best = (n_params, len(child), name)
    if best[1]:
        return best[2], best[1]
    return find_block_list(module)


# -- preprocessing from transformers processor configs -------------------------------------------


def _pair(value: Any) -> tuple[int, int] | None:
    if value is None:
        return None
    if isinstance(value, int | float):
        return int(value), int(value)
    if isinstance(value, list | tuple) and len(value) == 2:
        return int(value[0]), int(value[1])
    return None


def _interpolation(value: Any) -> str:
    if value is None:
        return "bilinear"
    if isinstance(value, str):
        name = value.lower().rsplit(".", 1)[-1]
        return name if name in INTERPOLATIONS else "bilinear"
    inner = getattr(value, "value", value)  # PIL enum / torchvision InterpolationMode
    if isinstance(inner, str):
        return _interpolation(inner)
    try:
        return _PIL_FILTERS.get(int(inner), "bilinear")
    except (TypeError, ValueError):
        return "bilinear"


def image_preprocess_from_config(processor: dict[str, Any], config: Any) -> ImagePreprocess:
    """graft's image preprocessing equivalent to a transformers image processor's settings.

    Args:
        processor: the image processor's ``to_dict()`` (``{}`` when the folder has none: then the
            model config's ``image_size`` and ImageNet normalisation).
        config: the model config (``num_channels``, ``image_size``).
    """
    channels = int(getattr(config, "num_channels", 3) or 3)
    size = processor.get("size")
    size = size if isinstance(size, dict) else ({"shortest_edge": size} if size else {})
    size = {k: v for k, v in size.items() if v is not None}
    shortest = "shortest_edge" in size and "height" not in size
    if "height" in size and "width" in size:
        resize = (int(size["height"]), int(size["width"]))
    elif "shortest_edge" in size:
        resize = (int(size["shortest_edge"]),) * 2
    elif "longest_edge" in size:
        resize = (int(size["longest_edge"]),) * 2
    else:
        resize = _pair(getattr(config, "image_size", None)) or (224, 224)
    out_size, crop_pct = resize, 1.0
    crop = processor.get("crop_size")
    crop_hw = _pair(crop) if not isinstance(crop, dict) else _pair((crop.get("height"), crop.get("width")))
    if processor.get("do_center_crop") and crop_hw and all(crop_hw):
        out_size = crop_hw
        crop_pct = min(crop_hw) / min(resize) if shortest else crop_hw[0] / resize[0]
    elif shortest and processor.get("crop_pct") and resize[0] < 384:
        # ConvNeXt: resize the shorter side to size / crop_pct, then centre crop to size.
        crop_pct = float(processor["crop_pct"])
    crop_pct = min(1.0, max(0.05, float(crop_pct)))
    if processor.get("do_normalize", True):
        mean = tuple(processor.get("image_mean") or IMAGENET_MEAN)
        std = tuple(processor.get("image_std") or IMAGENET_STD)
    else:
        mean, std = (0.0,) * channels, (1.0,) * channels
    if isinstance(mean, int | float):
        mean = (float(mean),) * channels
    if isinstance(std, int | float):
        std = (float(std),) * channels
    if len(mean) != channels:
        mean = (mean[0],) * channels if len(mean) else (0.5,) * channels
    if len(std) != channels:
        std = (std[0],) * channels if len(std) else (0.5,) * channels
    return ImagePreprocess(
        size=out_size,
        mean=mean,
        std=std,
        interpolation=_interpolation(processor.get("resample")),
        crop_pct=round(crop_pct, 6),
        channels=channels,
        resize="squash" if "height" in size and "width" in size else "cover",
        crop_offset="floor",  # transformers' center_crop starts at (h - crop) // 2
    )


def audio_preprocess_from_config(processor: dict[str, Any], duration: float | None = None) -> AudioPreprocess:
    """graft's audio preprocessing from a feature extractor's ``to_dict()`` (16 kHz, normalised by
    default), with clips of ``duration`` seconds (default :data:`DEFAULT_AUDIO_DURATION`)."""
    return AudioPreprocess(
        sample_rate=int(processor.get("sampling_rate") or 16000),
        duration=float(duration if duration is not None else DEFAULT_AUDIO_DURATION),
        normalize=bool(processor.get("do_normalize", True)),
    )


def _load_processor(name: str, local: bool, modality: str) -> Any:
    """The folder's image processor / feature extractor, or ``None`` when it has none."""
    if local and not (Path(name) / "preprocessor_config.json").is_file():
        return None
    from transformers import AutoFeatureExtractor, AutoImageProcessor

    loader = AutoImageProcessor if modality == "image" else AutoFeatureExtractor
    try:
        return loader.from_pretrained(name)
    except (OSError, ValueError, KeyError, ImportError):
        if local:
            raise
        return None


# -- loading -------------------------------------------------------------------------------------


def _check_config(config: Any, modality: str, source: str) -> None:
    model_type = str(getattr(config, "model_type", "")).lower()
    if getattr(config, "is_encoder_decoder", False) or model_type in _NOT_WAVEFORM_TYPES:
        what = "spectrogram features" if modality == "audio" else "an encoder-decoder"
        raise ConfigError(
            f"backbone {source!r} ({model_type or type(config).__name__}) takes {what}; hf: audio "
            "backbones must be raw-waveform encoders (wav2vec2, HuBERT, WavLM, data2vec-audio, ...)"
            if modality == "audio"
            else f"backbone {source!r} ({model_type}) is {what}, not a vision encoder"
        )


def _check_model(model: nn.Module, modality: str, source: str) -> None:
    expected = "pixel_values" if modality == "image" else "input_values"
    got = getattr(model, "main_input_name", None)
    if got != expected:
        kinds = (
            "vision encoders (ViT, ConvNeXt, DINOv2, Swin, ...)"
            if modality == "image"
            else "raw-waveform audio encoders (wav2vec2, HuBERT, WavLM, ...)"
        )
        raise ConfigError(
            f"backbone {source!r} ({type(model).__name__}) takes {got!r}, not {expected!r}: it is not an "
            f"{modality} encoder graft can use; hf: {modality} sources must be {kinds}"
        )


def load_hf_media(
    path_or_id: str, modality: str, *, source: str, duration: float | None = None
) -> HFMediaBackbone:
    """Load a vision or audio encoder from a local folder (or the hub when online).

    Args:
        path_or_id: a folder with ``config.json``, weights and ``preprocessor_config.json``, or a hub id.
        modality: "image" or "audio" (see :func:`graft.backbones.hf.hf_modality`).
        source: the source spec, for messages and provenance.
        duration: seconds per audio clip (default :data:`DEFAULT_AUDIO_DURATION`).

    Raises:
        ConfigError: missing folder, unreachable hub, or a model that is not a vision/audio encoder.
    """
    if modality not in ("image", "audio"):
        raise ConfigError(f"hf: media backbones are 'image' or 'audio', got {modality!r}")
    from transformers import AutoConfig, AutoModel

    name, local = hf_location(path_or_id, source)
    try:
        with _quiet_transformers():
            config = AutoConfig.from_pretrained(name)
            _check_config(config, modality, source)
            processor = _load_processor(name, local, modality)
            model, info = AutoModel.from_pretrained(name, output_loading_info=True, dtype=torch.float32)
    except ConfigError:
        raise
    except (OSError, ValueError, KeyError) as exc:
        raise hf_load_error(exc, source, local) from None
    _check_model(model, modality, source)
    missing = [k for k in (info or {}).get("missing_keys", []) if not k.startswith(_OPTIONAL_KEYS)]
    if missing:
        warnings.warn(
            f"backbone {source!r}: {len(missing)} weights are not in the checkpoint and start random "
            f"(e.g. {sorted(missing)[:3]})",
            stacklevel=2,
        )
    settings = processor.to_dict() if processor is not None else {}
    pre = (
        image_preprocess_from_config(settings, model.config)
        if modality == "image"
        else audio_preprocess_from_config(settings, duration)
    )
    return HFMediaBackbone(model, pre, source=source, processor=processor).eval()


def hf_media_from_saved(folder: Path, spec: dict[str, Any]) -> HFMediaBackbone:
    """The architecture from a bundle's ``backbone/`` folder, with untrained weights (loaded next,
    with keys as in :meth:`HFMediaBackbone.state_dict`)."""
    from transformers import AutoConfig, AutoModel

    folder = Path(folder)
    with _quiet_transformers():
        config = AutoConfig.from_pretrained(folder)
        model = AutoModel.from_config(config)
        modality = spec.get("modality") or preprocess_from_dict(spec["preprocess"]).modality
        processor = _load_processor(str(folder), True, modality)
    return HFMediaBackbone(
        model,
        preprocess_from_dict(spec["preprocess"]),
        source=spec.get("source", f"hf:{folder}"),
        pooling=spec["pooling"],
        processor=processor,
        feature_dim=spec.get("feature_dim"),
    ).eval()
