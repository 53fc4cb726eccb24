"""Feature extraction and the on-disk feature cache.

A frozen backbone's features are computed once: the cache key is the backbone's weights sha256, its
contract (tokenizer, max length, pooling, ...) and the examples' fingerprint. Heads and probes then
train on the cached features in seconds.

The cache lives in ``$GRAFT_CACHE_DIR`` (default ``~/.cache/graft/features``); ``GRAFT_CACHE_DIR=off``
disables it.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from graft.serialization import load_tensors, save_tensors

FEATURE_FORMAT = 2  # 2: image resizing matches timm exactly (the longer side truncated)


def default_device() -> torch.device:
    """This process's device (its own GPU under ``accelerate launch``; else the first GPU, or the CPU)."""
    from graft.distributed import local_device

    return local_device()


def default_workers() -> int:
    """Worker processes decoding image/audio files: one per CPU core beyond the first, 1 to 4."""
    return max(1, min(4, (os.cpu_count() or 2) - 1))


def file_loader(
    examples: list[Any],
    collate: Any,
    *,
    batch_size: int,
    workers: int | None,
    device: torch.device,
) -> torch.utils.data.DataLoader:
    """Batches of decoded files, in order, decoded by ``workers`` processes (0: in this process)."""
    workers = default_workers() if workers is None else workers
    return torch.utils.data.DataLoader(
        examples,
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=device.type == "cuda",
        prefetch_factor=4 if workers else None,
    )


def _batches_by_length(examples: list[Any], batch_size: int) -> list[list[int]]:
    # Similar lengths share a batch, so padding (and wasted compute) is small; longest first, so
    # the peak memory shows in the first batch rather than at the end.
    order = sorted(range(len(examples)), key=lambda i: -len(str(examples[i])))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def input_batches(
    backbone: torch.nn.Module,
    examples: list[Any],
    *,
    batch_size: int = 64,
    device: torch.device | None = None,
    workers: int | None = None,
) -> Iterator[tuple[list[int], dict[str, torch.Tensor]]]:
    """``(indices, batch on device)`` over ``examples``, preprocessed as the backbone's contract says
    (no augmentation): texts tokenised in batches of similar length, files decoded in order by
    ``workers`` processes. Gradients and the module's mode are the caller's."""
    device = device or default_device()
    if getattr(backbone, "streams_files", False):
        loader = file_loader(examples, backbone.preprocessor(), batch_size=batch_size, workers=workers,
                             device=device)  # fmt: skip
        start = 0
        for batch in loader:
            n = len(next(iter(batch.values())))
            moved = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            yield list(range(start, start + n)), moved
            start += n
        return
    for index in _batches_by_length(examples, batch_size):
        batch = backbone.preprocess([examples[i] for i in index])
        yield index, {k: v.to(device) for k, v in batch.items()}


@torch.inference_mode()
def extract_features(
    backbone: torch.nn.Module,
    examples: list[Any],
    *,
    batch_size: int = 64,
    progress: bool = True,
    desc: str = "extracting features",
    device: torch.device | None = None,
    workers: int | None = None,
) -> torch.Tensor:
    """Features of ``examples`` in their order, as a float32 CPU tensor ``[n, feature_dim]``.

    Texts are tokenised here in batches of similar length. Image and audio files are streamed:
    ``workers`` processes (default :func:`default_workers`) decode batch after batch while the
    model runs, so memory does not grow with the number of files.
    """
    from tqdm.auto import tqdm

    device = device or default_device()
    backbone.to(device).eval()
    out = torch.empty(len(examples), backbone.feature_dim, dtype=torch.float32)
    autocast = {"device_type": device.type, "enabled": device.type == "cuda", "dtype": torch.bfloat16}
    with tqdm(total=len(examples), desc=desc, disable=not progress, unit="ex", dynamic_ncols=True) as bar:
        for index, batch in input_batches(backbone, examples, batch_size=batch_size, device=device,
                                          workers=workers):  # fmt: skip
            with torch.autocast(**autocast):
                feats = backbone(batch)
            out[torch.tensor(index)] = feats.float().cpu()
            bar.update(len(index))
    return out


def default_cache_dir() -> Path | None:
    env = os.environ.get("GRAFT_CACHE_DIR")
    if env is not None:
        return None if env.lower() in ("", "off", "0", "none") else Path(env).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "graft" / "features"


class FeatureCache:
    """Features on disk, keyed by what determines them.

    Args:
        root: cache folder; ``None`` uses :func:`default_cache_dir` (which may disable caching).
    """

    def __init__(self, root: str | os.PathLike | None = None) -> None:
        self.root = Path(root) if root is not None else default_cache_dir()

    @staticmethod
    def key(backbone: Any, examples_fingerprint: str, weights_sha256: str | None = None) -> str:
        payload = {
            "format": FEATURE_FORMAT,
            "weights": weights_sha256 or backbone.weights_sha256(),
            "contract": backbone.contract.to_dict(),
            "examples": examples_fingerprint,
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()

    def path(self, key: str) -> Path | None:
        return self.root / f"{key}.safetensors" if self.root else None

    def load(self, key: str, n: int) -> torch.Tensor | None:
        path = self.path(key)
        if path is None or not path.is_file():
            return None
        try:
            features = load_tensors(path)["features"]
        except Exception as exc:  # a damaged cache entry is recomputed, never trusted
            warnings.warn(f"feature cache entry {path} is unreadable ({exc}); recomputing", stacklevel=2)
            return None
        return features if features.shape[0] == n else None

    def save(self, key: str, features: torch.Tensor, meta: dict[str, str]) -> None:
        from graft.distributed import is_main_process

        path = self.path(key)
        if path is None or not is_main_process():  # under accelerate launch, one writer
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        save_tensors({"features": features}, tmp, metadata=meta)
        tmp.replace(path)

    def get_or_extract(
        self,
        backbone: Any,
        examples: list[Any],
        examples_fingerprint: str,
        *,
        batch_size: int = 64,
        progress: bool = True,
        desc: str = "extracting features",
        weights_sha256: str | None = None,
    ) -> tuple[torch.Tensor, bool]:
        """(features, whether they came from the cache).

        ``weights_sha256`` of the backbone, when the caller already has it, saves hashing again.
        """
        if self.root is None:
            return extract_features(
                backbone, examples, batch_size=batch_size, progress=progress, desc=desc
            ), False
        key = self.key(backbone, examples_fingerprint, weights_sha256)
        cached = self.load(key, len(examples))
        if cached is not None:
            return cached, True
        features = extract_features(backbone, examples, batch_size=batch_size, progress=progress, desc=desc)
        self.save(key, features, {"backbone": str(backbone.source), "n": str(len(examples))})
        return features, False
