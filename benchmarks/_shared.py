"""What the image benchmarks share: finding ../shared/data and the data/weights options."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def find_shared_data() -> Path:
    """$GRAFT_SHARED_DATA, else ``shared/data`` beside an ancestor of the checkout, else /work/shared/data."""
    if os.environ.get("GRAFT_SHARED_DATA"):
        return Path(os.environ["GRAFT_SHARED_DATA"])
    for base in (*ROOT.parents, Path("/work")):
        if (base / "shared" / "data" / "README.md").is_file():
            return base / "shared" / "data"
    return Path("/work/shared/data")


def add_cifar_resnet20_options(parser: argparse.ArgumentParser) -> None:
    """``--data`` (the CIFAR-10 JPEG class folders) and ``--weights`` (the real ResNet-20)."""
    shared = find_shared_data()
    parser.add_argument("--data", default=str(shared / "images" / "cifar10_jpg_test"),
                        help="folder of class folders of images (default: %(default)s)")  # fmt: skip
    parser.add_argument("--weights", default=str(shared / "models" / "resnet20_cifar10.th"),
                        help="ResNet-20 weights (default: %(default)s)")  # fmt: skip
