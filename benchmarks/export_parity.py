"""ONNX export parity on real test files: the exported graph (run by onnxruntime) against the bundle.

1. SST-2: a MiniLM linear-probe bundle (``graft fit sst2/train.csv --strategy linear_probe``), exported;
   the 1,821 test sentences tokenised with the *exported* tokenizer folder (``transformers.AutoTokenizer``,
   as a deployment without graft would), scored by onnxruntime, compared with ``Model.predict_proba``.
2. CIFAR-10: the real ResNet-20 fine-tuned by graft (``--strategy full``, 1,000 JPEGs, 2 epochs), exported;
   the other 9,000 JPEGs preprocessed by the bundle's contract, scored both ways.

Prints, per bundle: labels identical (fraction), the largest probability difference, and the time per
example of onnxruntime and of the bundle on this machine (one run; not a benchmark of either).

  HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/export_parity.py --out runs/export
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
from _shared import find_shared_data  # the script's folder is on sys.path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def compare(name: str, onnx_proba: np.ndarray, torch_proba: np.ndarray, seconds: tuple[float, float]) -> dict:
    same = float(np.mean(onnx_proba.argmax(1) == torch_proba.argmax(1)))
    diff = float(np.abs(onnx_proba - torch_proba).max())
    n = len(onnx_proba)
    print(f"{name}: {n} test inputs; labels identical {same:.4%}; max probability difference {diff:.2e}; "
          f"onnxruntime {1e3 * seconds[0] / n:.2f} ms/example, bundle {1e3 * seconds[1] / n:.2f} ms/example",
          flush=True)  # fmt: skip
    return {"labels_identical": same, "max_difference": diff}


def sst2(out: Path) -> dict:
    import csv

    import onnxruntime
    from transformers import AutoTokenizer

    import graft
    from graft.config import RunConfig
    from graft.export import export_onnx

    data = find_shared_data() / "text" / "sst2"
    quick = RunConfig().replace("evaluation", baselines="none")
    model = graft.fit(data / "train.csv", strategy="linear_probe", config=quick, out=out / "sst2",
                      overwrite=True, progress=False)  # fmt: skip
    result = export_onnx(model, out / "sst2.onnx")
    with (data / "test.csv").open(encoding="utf-8", newline="") as f:
        texts = [row["text"] for row in csv.DictReader(f)]
    tokenizer = AutoTokenizer.from_pretrained(str(out / "sst2.tokenizer"))
    session = onnxruntime.InferenceSession(str(out / "sst2.onnx"), providers=["CPUExecutionProvider"])
    limit = model.network_.backbone.max_length
    t, parts = time.perf_counter(), []
    for i in range(0, len(texts), 64):
        enc = tokenizer(
            texts[i : i + 64], padding=True, truncation=True, max_length=limit, return_tensors="np"
        )
        parts.append(session.run(None, {k: enc[k].astype(np.int64) for k in result.inputs})[0])
    onnx_seconds = time.perf_counter() - t
    t = time.perf_counter()
    expected = model.predict_proba(texts)
    return compare(
        "SST-2 MiniLM probe", np.concatenate(parts), expected, (onnx_seconds, time.perf_counter() - t)
    )


def cifar(out: Path) -> dict:
    import onnxruntime

    import graft
    from graft.backbones.archs import build_architecture
    from graft.backbones.module import read_state_file
    from graft.config import RunConfig
    from graft.data import read_dataset
    from graft.export import export_onnx

    shared = find_shared_data()
    ds = read_dataset(shared / "images" / "cifar10_jpg_test")
    order = np.random.default_rng(0).permutation(len(ds))
    train, test = order[:1000], order[1000:]
    net = build_architecture("resnet20")
    net.load_state_dict(read_state_file(shared / "models" / "resnet20_cifar10.th"))
    norm = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}
    backbone = graft.Backbone.from_module(
        net, modality="image", input_size=(3, 32, 32), head="linear", **norm
    )
    table = {"path": [ds.examples[i] for i in train], "label": [ds.label_space[ds.targets[i]] for i in train]}
    cfg = (
        RunConfig().replace("train", epochs=2, batch_size=64, lr=3e-4).replace("evaluation", baselines="none")
    )
    model = graft.fit(table, backbone=backbone, strategy="full", config=cfg, out=out / "cifar",
                      overwrite=True, progress=False)  # fmt: skip
    export_onnx(model, out / "cifar.onnx")
    paths = [ds.examples[i] for i in test]
    session = onnxruntime.InferenceSession(str(out / "cifar.onnx"), providers=["CPUExecutionProvider"])
    pre = model.network_.backbone.preprocessor()
    t, parts = time.perf_counter(), []
    for i in range(0, len(paths), 256):
        batch = pre(paths[i : i + 256])
        parts.append(session.run(None, {k: v.numpy() for k, v in batch.items()})[0])
    onnx_seconds = time.perf_counter() - t
    t = time.perf_counter()
    expected = model.predict_proba(paths)
    return compare("CIFAR-10 ResNet-20 fine-tuned", np.concatenate(parts), expected,
                   (onnx_seconds, time.perf_counter() - t))  # fmt: skip


def main() -> None:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=raw)
    parser.add_argument("--out", type=Path, default=Path("runs/export"))
    parser.add_argument("--only", choices=("sst2", "cifar"))
    args = parser.parse_args()
    for name, run in (("sst2", sst2), ("cifar", cifar)):
        if args.only in (None, name):
            run(args.out)


if __name__ == "__main__":
    main()
