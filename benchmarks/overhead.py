"""Feature-extraction overhead: graft vs a bare PyTorch inference loop, same model, same images.

Requirement: the throughput of ``graft.features.extract_features`` is >= 0.95x that of a bare loop.

How it is measured: the real pretrained ResNet-20 (``arch:resnet20`` with the shared
``models/resnet20_cifar10.th``) and the first ``--n`` images (default: all 10,000) of the CIFAR-10
JPEG test set (``images/cifar10_jpg_test``, listed with ``graft.data.read_dataset``, in a fixed
seeded order). Both sides run the same ``nn.Module`` (``backbone.body``: the ResNet-20 whose
``linear`` head is ``nn.Identity``), the same batch size and the same number of DataLoader worker
processes (graft's default, ``graft.features.default_workers()``, unless ``--workers``):

  * graft: ``extract_features(backbone, paths, batch_size=B, progress=False, workers=W)``;
  * bare:  a ``torch.utils.data.Dataset`` that opens each file with ``PIL.Image.open(p).convert("RGB")``
    and applies torchvision's ``Resize(32) + CenterCrop(32) + ToTensor() + Normalize(mean, std)``
    (size, interpolation, mean and std read from ``backbone.contract.preprocessing``), a default
    ``DataLoader`` (batch size B, W workers), and ``body(x)`` under ``torch.inference_mode()``,
    written into a preallocated ``[n, 64]`` tensor.

Each side gets one warm-up run (``--warmup-n`` images), then the timed runs alternate (graft, bare,
graft, bare, ... ``--repeats`` each). Every timed run includes starting its worker processes.
Printed: every run, the median throughput (images/s) of each side, the ratio graft / bare with
PASS/FAIL against 0.95, the CPU time per image of the main process (the model; with several torch
threads it includes their spin-waiting) and of the workers (decoding), and the largest absolute
difference between the two sides' features (the two decode paths must agree: ~1e-5 or less).

Torch's thread count is left at its default unless ``--threads`` is given; it is printed. On a
machine whose cores are busy with other work, OpenMP threads that wait for a preempted sibling make
every forward pass several times slower; ``--threads 1`` then gives a far faster, steadier run.

Usage:  .venv/bin/python benchmarks/overhead.py [--n 10000] [--repeats 3] [--workers W] [--threads T]
Example: .venv/bin/python benchmarks/overhead.py --n 2000 --repeats 5 --threads 1
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import statistics
import sys
import time

from _shared import add_cifar_resnet20_options

LIMIT = 0.95


class PathDataset:
    """The bare side's dataset: PIL decode + torchvision transforms, one file per item."""

    def __init__(self, paths: list[str], transform) -> None:
        self.paths = paths
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        from PIL import Image

        with Image.open(self.paths[i]) as image:
            return self.transform(image.convert("RGB"))


def bare_transform(preprocessing: dict):
    from torchvision import transforms as T

    height, width = preprocessing["size"]
    if height != width or preprocessing.get("crop_pct", 1.0) != 1.0:
        raise SystemExit(f"the bare loop here covers square inputs with crop_pct 1; got {preprocessing}")
    mode = T.InterpolationMode(preprocessing.get("interpolation", "bilinear"))
    return T.Compose([
        T.Resize(height, interpolation=mode, antialias=True),
        T.CenterCrop((height, width)),
        T.ToTensor(),
        T.Normalize(preprocessing["mean"], preprocessing["std"]),
    ])  # fmt: skip


def run_bare(model, paths: list[str], transform, feature_dim: int, batch_size: int, workers: int):
    import torch

    loader = torch.utils.data.DataLoader(
        PathDataset(paths, transform), batch_size=batch_size, shuffle=False, num_workers=workers
    )
    out = torch.empty(len(paths), feature_dim, dtype=torch.float32)
    start = 0
    with torch.inference_mode():
        for x in loader:
            feats = model(x)
            out[start : start + feats.shape[0]] = feats
            start += feats.shape[0]
    return out


def cpu_seconds() -> tuple[float, float]:
    """CPU time (user + system) so far of this process and of its finished, reaped children."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime, kids.ru_utime + kids.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_cifar_resnet20_options(parser)
    parser.add_argument("--n", type=int, default=10000, help="images per timed run (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per side (default: %(default)s)")
    parser.add_argument("--warmup-n", type=int, default=1000, help="images in each side's warm-up run")
    parser.add_argument("--workers", type=int, default=None,
                        help="DataLoader worker processes (default: graft's default_workers())")  # fmt: skip
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0, help="seed of the fixed order of the images")
    args = parser.parse_args()

    import torch

    import graft.backbones
    from graft.data import read_dataset
    from graft.features import default_workers, extract_features

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    workers = default_workers() if args.workers is None else args.workers
    backbone = graft.backbones.create_backbone("arch:resnet20", weights=args.weights).eval()
    model = backbone.body.eval()
    preprocessing = backbone.contract.preprocessing
    transform = bare_transform(preprocessing)

    examples = list(read_dataset(args.data).examples)
    random.Random(args.seed).shuffle(examples)
    if args.n > len(examples):
        sys.exit(f"{args.data} has {len(examples)} images; asked for {args.n}")
    paths, warm = examples[: args.n], examples[: min(args.warmup_n, args.n)]
    print(f"data: {args.data} (first {len(paths)} of {len(examples)} images, seed {args.seed})")
    print(f"cpus: {os.cpu_count()}, torch threads: {torch.get_num_threads()}"
          f"{' (torch default)' if args.threads is None else ''}, workers: {workers}"
          f"{' (graft default)' if args.workers is None else ''}, batch size: {args.batch_size}, "
          f"load average: {os.getloadavg()[0]:.2f}")  # fmt: skip
    load, cpus = os.getloadavg()[0], os.cpu_count() or 1
    if torch.get_num_threads() > 1 and load > cpus - 0.5:
        print(
            f"note: load average {load:.1f} on {cpus} cores; torch threads that wait on a preempted "
            "sibling can make each forward pass several times slower (--threads 1 runs far faster here)"
        )
    print(f"bare transform: {transform}".replace("\n", " "))

    def graft_side(items: list[str]):
        return extract_features(backbone, items, batch_size=args.batch_size, progress=False, workers=workers)

    def bare_side(items: list[str]):
        return run_bare(model, items, transform, backbone.feature_dim, args.batch_size, workers)

    sides = {"graft": graft_side, "bare": bare_side}
    for name, fn in sides.items():
        t = time.perf_counter()
        fn(warm)
        print(f"warm-up {name:<5}: {len(warm)} images in {time.perf_counter() - t:.2f} s")

    speeds: dict[str, list[float]] = {name: [] for name in sides}
    features = {}
    cpu: dict[str, list[tuple[float, float]]] = {name: [] for name in sides}
    for i in range(args.repeats):
        for name, fn in sides.items():
            t, (main0, kids0) = time.perf_counter(), cpu_seconds()
            feats = fn(paths)
            seconds, (main1, kids1) = time.perf_counter() - t, cpu_seconds()
            speeds[name].append(len(paths) / seconds)
            # ms of CPU per image: this process (model), and the workers (decoding; reaped at the end)
            cpu[name].append(((main1 - main0) / len(paths) * 1e3, (kids1 - kids0) / len(paths) * 1e3))
            features.setdefault(name, feats)
            print(f"run {i + 1} {name:<5}: {seconds:7.2f} s  {speeds[name][-1]:8.1f} images/s  CPU ms/image: "
                  f"main {cpu[name][-1][0]:.3f}, workers {cpu[name][-1][1]:.3f}", flush=True)  # fmt: skip

    graft_feats, bare_feats = features["graft"], features["bare"]
    diff = (graft_feats - bare_feats).abs().max().item()
    scale = bare_feats.abs().max().item()
    med = {name: statistics.median(v) for name, v in speeds.items()}
    pairs = [g / b for g, b in zip(speeds["graft"], speeds["bare"], strict=True)]
    ratio = med["graft"] / med["bare"]
    print()
    print(f"{'side':<6} {'median images/s':>16} {'min':>9} {'max':>9} {'CPU ms/img main':>16} {'workers':>8}")
    for name, v in speeds.items():
        main_ms = statistics.median(c[0] for c in cpu[name])
        worker_ms = statistics.median(c[1] for c in cpu[name])
        row = f"{name:<6} {med[name]:>16.1f} {min(v):>9.1f} {max(v):>9.1f}"
        print(f"{row} {main_ms:>16.3f} {worker_ms:>8.3f}")
    print(f"features: max |graft - bare| = {diff:.3g} over {len(paths)} x {backbone.feature_dim} "
          f"(largest |feature| {scale:.3g})")  # fmt: skip
    print(f"per-pair ratios graft/bare: {', '.join(f'{r:.3f}' for r in pairs)}")
    print(f"throughput ratio graft / bare (medians): {ratio:.3f}x  "
          f"{'PASS' if ratio >= LIMIT else 'FAIL'} (requirement >= {LIMIT}x)")  # fmt: skip
    if diff > 1e-4:
        print(f"WARNING: the two decode paths disagree (max abs difference {diff:.3g} > 1e-4)")


if __name__ == "__main__":
    main()
