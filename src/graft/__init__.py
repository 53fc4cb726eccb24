"""graft: transfer learning for small labeled datasets.

foundation model -> task head -> adaptation -> honest evaluation.

    >>> import graft                                                        # doctest: +SKIP
    >>> model = graft.fit("train.csv", backbone="minilm", strategy="auto")   # doctest: +SKIP
    >>> model.predict(["the battery died after a day"])                      # doctest: +SKIP

Importing graft is cheap: the API (and torch) load on first use of ``fit``, ``load`` or ``Model``.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from graft.errors import (
    BundleError,
    ConfigError,
    ContractError,
    DataError,
    GraftError,
    NotFittedError,
    OutputError,
)

__version__ = "0.1.0"

_LAZY = {
    "adapt": "graft.api",
    "fit": "graft.api",
    "from_classifier": "graft.api",
    "load": "graft.api",
    "Model": "graft.api",
    "RunConfig": "graft.config",
    "DataConfig": "graft.config",
    "BackboneConfig": "graft.config",
    "StrategyConfig": "graft.config",
    "TrainConfig": "graft.config",
    "EvalConfig": "graft.config",
    "create_backbone": "graft.backbones",
    "list_backbones": "graft.backbones",
    "register_backbone": "graft.backbones",
    "Backbone": "graft.backbones.base",
    "pretrain": "graft.api",
}


def __getattr__(name: str) -> Any:
    # PEP 562 lazy import: `import graft` (and so `graft --help`) must not import torch.
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'graft' has no attribute {name!r}")


__all__ = [
    "BundleError",
    "ConfigError",
    "ContractError",
    "DataError",
    "GraftError",
    "NotFittedError",
    "OutputError",
    *_LAZY,
]
