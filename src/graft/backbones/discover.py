"""Which timm and torchvision models match a name pattern, and whether their weights are on this machine.

graft never downloads at run time on its own (``HF_HUB_OFFLINE``): a model is usable offline when its
pretrained weights are already in the Hugging Face cache (timm) or the torch hub cache (torchvision).
Checking looks at files only; nothing is fetched.
"""

from __future__ import annotations

import fnmatch
from pathlib import Path
from typing import Any

LIMIT = 200  # models listed per library, at most


def timm_models(pattern: str) -> list[dict[str, Any]]:
    """timm models matching ``pattern`` that have pretrained weights: spec and local availability."""
    import timm

    rows = []
    for name in timm.list_models(pattern, pretrained=True)[:LIMIT]:
        rows.append({"spec": f"timm:{name}", "local": _timm_local(name)})
    return rows


def _timm_local(name: str) -> bool:
    from huggingface_hub import try_to_load_from_cache
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name)
    repo = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if not repo:
        return False
    repo = repo.split("@")[0]  # timm's "org/name.tag" ids keep the tag in the file name, not the repo
    for filename in ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"):
        if isinstance(try_to_load_from_cache(repo, filename), str):
            return True
    return False


def torchvision_models(pattern: str) -> list[dict[str, Any]]:
    """torchvision classification models matching ``pattern``: spec and whether the default weights are
    in the torch hub cache."""
    import torch
    import torchvision

    checkpoints = Path(torch.hub.get_dir()) / "checkpoints"
    rows = []
    for name in sorted(torchvision.models.list_models(module=torchvision.models)):
        if not fnmatch.fnmatch(name, pattern):
            continue
        try:
            url = torchvision.models.get_model_weights(name).DEFAULT.url
        except (ValueError, AttributeError):
            continue
        rows.append({"spec": f"torchvision:{name}", "local": (checkpoints / Path(url).name).is_file()})
    return rows[:LIMIT]
