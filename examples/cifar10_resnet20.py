"""Transfer from a real pretrained ResNet-20 to a 500-labels-per-class CIFAR-10 task.

The network is a third party's CIFAR-10 ResNet-20 (../shared/data/models/resnet20_cifar10.th); the
data are the CIFAR-10 test images re-encoded as JPEG (../shared/data/images/cifar10_jpg_test), a real
domain shift: the checkpoint's own head scores about 0.81 on them. A fixed seeded split takes 500
images per class to train on (5,000 examples: graft chooses settings on a stratified 15% hold-out of
them) and the other 5,000 to test. Four runs, all through graft's public API:

1. linear probe: the user's module brought in with ``graft.Backbone.from_module``, frozen;
2. full fine-tune of the same backbone;
3. ``auto``: graft scores the probe and every fine-tuning strategy on the hold-out (never the test
   images), within its default 10-minute budget, and prints why it chose what it chose;
4. the same architecture from random weights (``arch:resnet20``), trained on the same images.

Run:  .venv/bin/python examples/cifar10_resnet20.py [--epochs 6] [--out runs/cifar10]
Prints a table of test accuracy with 95% intervals; about 20 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from _shared import print_table, shared_data

import graft
from graft.backbones.archs import build_architecture
from graft.backbones.module import read_state_file
from graft.config import RunConfig
from graft.data import read_dataset

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def resnet20_backbone(weights: Path) -> graft.Backbone:
    """What a user does with their own network: build it, load its weights, hand it to graft."""
    net = build_architecture("resnet20")  # the CIFAR ResNet-20 layout (option-A shortcuts)
    net.load_state_dict(read_state_file(weights))  # strips DataParallel's 'module.' prefix
    return graft.Backbone.from_module(
        net, modality="image", input_size=(3, 32, 32), mean=MEAN, std=STD, head="linear"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--per-class", type=int, default=500, help="training images per class")
    parser.add_argument("--epochs", type=int, default=6, help="fine-tuning / from-scratch epochs")
    parser.add_argument("--out", default="runs/cifar10", help="folder for the three runs")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    data = shared_data()
    ds = read_dataset(data / "images" / "cifar10_jpg_test")
    rng = np.random.default_rng(args.seed)
    train_idx = np.concatenate(
        [rng.choice(np.flatnonzero(ds.targets == k), args.per_class, replace=False) for k in range(10)]
    )
    test_idx = np.setdiff1d(np.arange(len(ds)), train_idx)

    def table(idx: np.ndarray) -> dict[str, list]:
        return {"path": [ds.examples[i] for i in idx], "label": [ds.label_space[ds.targets[i]] for i in idx]}

    train, test = table(train_idx), table(test_idx)
    print(f"train {len(train_idx)} ({args.per_class}/class, 15% of it for validation), test {len(test_idx)}")
    weights = data / "models" / "resnet20_cifar10.th"
    tune = RunConfig().replace("train", epochs=args.epochs, batch_size=64, lr=3e-4, head_lr=3e-3,
                               patience=args.epochs, seed=args.seed)  # fmt: skip
    scratch = tune.replace("train", lr=3e-3)
    runs = {
        "linear probe (pretrained)": dict(backbone=resnet20_backbone(weights), strategy="linear_probe"),
        "full fine-tune (pretrained)": dict(
            backbone=resnet20_backbone(weights), strategy="full", config=tune
        ),
        "auto (pretrained)": dict(backbone=resnet20_backbone(weights), strategy="auto", config=tune),
        "from scratch (arch:resnet20)": dict(backbone="arch:resnet20", strategy="full", config=scratch),
    }
    rows = []
    for name, kwargs in runs.items():
        t = time.perf_counter()
        model = graft.fit(
            train,
            test=test,
            out=Path(args.out) / name.split(" (")[0].replace(" ", "-"),
            overwrite=True,
            baselines="none",
            **kwargs,
        )  # fmt: skip  (it runs its own)
        result = model.report_.test
        if kwargs["strategy"] == "auto":
            print(model.report_.strategy["reason"])
        rows.append((name, result.metrics["accuracy"], result.intervals["accuracy"], time.perf_counter() - t))
    print()
    print_table(rows)
    print(f"(test: {len(test_idx)} images; majority baseline 0.100; the checkpoint's own head: about 0.81)")


if __name__ == "__main__":
    main()
