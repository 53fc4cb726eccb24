"""``graft demo image``: supervised pre-training, then transfer with 10 labels per class.

scikit-learn's bundled handwritten digits (1,797 8x8 scans, UCI) are written out as PNG class
folders. A small CNN is pre-trained from random weights on digits 0-4 (``graft pretrain``); then
the task changes to digits 5-9, of which only 10 labeled images per class are given. Three ways to
use those 50 labels are compared on the same held-out test images of 5-9:

* linear probe on the pre-trained network (frozen, cached features),
* full fine-tune of the pre-trained network,
* the same architecture trained from scratch on the 50 images (what transfer must beat).

The pre-training classes never appear in the transfer task, so any gain comes from features that
carry over between related input distributions. The demo prints the comparison as measured, with
95% intervals: on these easy 8x8 scans a small CNN trained from scratch on 50 images is a strong
baseline, and the output says how transfer fares against it rather than assuming it wins.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

PRETRAIN_DIGITS = (0, 1, 2, 3, 4)
TRANSFER_DIGITS = (5, 6, 7, 8, 9)
LABELS_PER_CLASS = 10


def write_digits(root: Path, seed: int = 0) -> dict[str, Path]:
    """PNG class folders: ``pretrain/`` (0-4, all), ``transfer/`` (5-9, 10 each), ``test/`` (5-9, rest)."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    folders = {name: root / name for name in ("pretrain", "transfer", "test")}
    picked: set[int] = set()
    for digit in TRANSFER_DIGITS:
        idx = np.flatnonzero(digits.target == digit)
        picked.update(rng.choice(idx, LABELS_PER_CLASS, replace=False).tolist())
    for i, (image, target) in enumerate(zip(digits.images, digits.target, strict=True)):
        part = "pretrain" if target in PRETRAIN_DIGITS else "transfer" if i in picked else "test"
        folder = folders[part] / str(target)
        folder.mkdir(parents=True, exist_ok=True)
        pixels = (image * (255.0 / 16.0)).round().astype(np.uint8)
        Image.fromarray(pixels, mode="L").save(folder / f"{i:04d}.png")
    return folders


def run_image_demo(
    out: Path, progress: bool = True, *, pretrain_epochs: int = 15, epochs: int = 40
) -> dict[str, Any]:
    """Write the data, pre-train, transfer three ways, print the comparison; returns accuracies."""
    import graft
    from graft.config import RunConfig, TrainConfig, pretrain_defaults

    def say(message: str = "") -> None:
        print(message, flush=True)

    from graft.ownership import claim_folder

    claim_folder(out, command="demo image")  # new, empty or an earlier image demo's
    data = write_digits(out / "data")
    n_pre = sum(1 for _ in data["pretrain"].rglob("*.png"))
    n_test = sum(1 for _ in data["test"].rglob("*.png"))
    say(f"1. wrote scikit-learn's digits as PNG folders under {out / 'data'}: {n_pre} images of 0-4 "
        f"to pre-train on, {LABELS_PER_CLASS} labeled images per class of 5-9, {n_test} test images "
        "of 5-9")  # fmt: skip
    say("2. pre-training small_cnn from random weights on digits 0-4 (graft pretrain) ...")
    pre_cfg = pretrain_defaults().replace("train", epochs=pretrain_epochs, augment="none")
    base = graft.pretrain(data["pretrain"], "small_cnn", out=out / "pretrain", config=pre_cfg,
                          overwrite=True, progress=progress)  # fmt: skip
    say(f"   digits 0-4, held-out accuracy {base.metrics['test']['accuracy']:.3f}")
    tune = TrainConfig(epochs=epochs, lr=3e-3, head_lr=3e-3, batch_size=16, patience=10, augment="none",
                       warmup_ratio=0.0)  # fmt: skip
    runs = {
        "linear probe (pre-trained)": ("bundle", "linear_probe", RunConfig(train=tune)),
        "full fine-tune (pre-trained)": ("bundle", "full", RunConfig(train=tune)),
        "from scratch (same network)": ("scratch", "full", RunConfig(train=tune)),
    }
    say(f"3. transfer to digits 5-9 with {LABELS_PER_CLASS} labels per class, three ways ...")
    results: dict[str, Any] = {}
    kept_probe: list[str] = []
    for name, (start, strategy, cfg) in runs.items():
        source = f"bundle:{out / 'pretrain'}" if start == "bundle" else "arch:small_cnn"
        model = graft.fit(
            data["transfer"],
            backbone=source,
            strategy=strategy,
            test=data["test"],
            config=cfg,
            out=out / name.split(" (")[0].replace(" ", "-"),
            overwrite=True,
            progress=progress,
            baselines="none",
        )  # fmt: skip  (the demo trains them itself)
        results[name] = model.report_.test
        if model.report_.strategy["shipped"] != strategy:  # fine-tuning never beat its starting probe
            kept_probe.append(name)
    say(f"\n   digits 5-9, {n_test} held-out test images, {LABELS_PER_CLASS} labels per class:")
    say(f"   {'':<30}{'accuracy':>9}  {'95% interval':<15}")
    for name, test in results.items():
        lo, hi = test.intervals["accuracy"]
        mark = (
            "  (kept the linear probe: fine-tuning never beat it on validation)" if name in kept_probe else ""
        )
        say(f"   {name:<30}{test.metrics['accuracy']:>9.3f}  [{lo:.3f}, {hi:.3f}]{mark}")
    prior = next(iter(results.values())).baselines["prior"]["accuracy"]
    say(f"   {'prior (chance)':<30}{prior:>9.3f}")
    accuracy = {name: test.metrics["accuracy"] for name, test in results.items()}
    scratch = accuracy.pop("from scratch (same network)")
    best = max(accuracy, key=accuracy.get)
    say(
        f"   best transfer ({best.split(' (')[0]}) vs the same network from scratch: "
        f"{accuracy[best] - scratch:+.3f} (overlapping intervals: the test set cannot tell them apart)"
    )
    say(f"\nnext: graft predict {out / 'full-fine-tune'} {data['test'] / '7'}   |   open "
        f"{out / 'full-fine-tune' / 'bundle' / 'report.html'}")  # fmt: skip
    sys.stdout.flush()
    return {name: test.metrics["accuracy"] for name, test in results.items()}
