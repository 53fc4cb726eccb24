"""ONNX export of a bundle, with its contract beside it and a parity check against PyTorch.

One graph from preprocessed tensors to what ``predict_proba`` returns: backbone, head, the bundle's
temperature, the activation (softmax / sigmoid; regression: values), with a dynamic batch axis (and
sequence axis for text). LoRA adapters are merged first. Beside ``model.onnx``: ``model.contract.json``
(task, label space, contract, preprocessing, decision rules: label thresholds, abstain threshold,
costs; the sha256 of the graph and of every tokenizer file, and an integrity record of its own, as a
bundle manifest has) and, for text, the tokenizer files in ``model.tokenizer/``; the contract also goes
into the ONNX metadata (``graft_contract``). The files are staged beside ``--out`` and put in place
together, after onnxruntime and the PyTorch bundle scored the same preprocessed inputs: a probability
difference above the tolerance fails the export and writes nothing. An earlier export is replaced
only when its contract says graft wrote it as it is (:mod:`graft.ownership`).

Example:
    >>> result = export_onnx(graft.load("runs/sst2"), "sst2.onnx")   # doctest: +SKIP
    >>> result.max_difference < 1e-4                                  # doctest: +SKIP
    True
"""

from __future__ import annotations

import json
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from graft.errors import ConfigError

if TYPE_CHECKING:
    from graft.api import Model

TOLERANCE = 1e-4  # the largest probability (or value) difference the parity check accepts
OPSET = 17
CHECK_TEXTS = (
    "a short one",
    "This is a longer sentence, with punctuation; it checks that the sequence axis is dynamic!",
    "Ünïcode and numbers: 42 % of 3.14 — fine?",
)


class ExportError(Exception):
    """The exported graph does not reproduce the bundle (a bug, not a user error: exit code 1)."""


@dataclass
class ExportResult:
    path: Path
    inputs: list[str]
    output: str
    max_difference: float
    checked: int
    files: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "inputs": self.inputs, "output": self.output, "files": self.files,
                "max_difference": self.max_difference, "checked": self.checked}  # fmt: skip


class _Graph(torch.nn.Module):
    """Preprocessed tensors (in ``keys`` order) -> calibrated probabilities or values."""

    def __init__(self, network: torch.nn.Module, keys: list[str], temperature: float | None) -> None:
        super().__init__()
        self.network, self.keys, self.temperature = network, keys, temperature

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        logits = self.network(dict(zip(self.keys, tensors, strict=True)))
        if self.temperature:
            logits = logits / self.temperature
        return self.network.head.activate(logits)


def export_paths(out: str | Path) -> tuple[Path, Path, Path]:
    """The graph, its contract and (text models) its tokenizer folder for ``--out``."""
    out = Path(out)
    if out.suffix != ".onnx":
        raise ConfigError(f"--out {out}: an ONNX file name ends in .onnx")
    return out, out.with_suffix(".contract.json"), out.with_suffix(".tokenizer")


def claim_export(out: str | Path, *, reads: list[Any] = (), overwrite: bool) -> None:
    """Refuse (before any work) an export over files graft did not write, or over what it reads."""
    from graft.ownership import check_not_read, refuse_foreign, unrecorded

    paths = export_paths(out)
    check_not_read(paths, reads)
    refuse_foreign(unrecorded(paths[1], [paths[0], paths[2]]), paths[0], option="--out", overwrite=overwrite)


def export_onnx(
    model: Model,
    out: str | Path,
    *,
    check: list[Any] | None = None,
    tolerance: float = TOLERANCE,
    overwrite: bool = False,
) -> ExportResult:
    """Write ``model`` as ONNX at ``out`` (see the module docstring); ``check``: inputs for the parity
    check (default: built-in sentences for text, generated files for images and audio); ``overwrite``:
    replace files graft did not write there."""
    import copy

    from graft.config import Bounds
    from graft.serialization import atomic_outputs

    Bounds(0, 1).check("tolerance", tolerance)
    claim_export(out, overwrite=overwrite)
    paths = export_paths(out)
    plain = copy.deepcopy(model)
    plain.merge_adapters()
    network = plain.network_.eval()
    with tempfile.TemporaryDirectory() as scratch:
        examples = list(check) if check else _check_inputs(model, Path(scratch))
        batch = network.backbone.preprocess(model.inputs(examples))
    keys = list(batch)
    with atomic_outputs(*paths) as (graph_file, contract_file, tokenizer):
        output, difference = _write_graph(model, network, batch, graph_file, tolerance)
        if model.modality == "text":
            _save_tokenizer(network.backbone, tokenizer)
        contract = contract_record(model, keys, output)
        _write_contract(contract_file, contract, {paths[0].name: graph_file, paths[2].name: tokenizer})
    files = [str(p) for p in paths if p.exists() and (p != paths[2] or model.modality == "text")]
    return ExportResult(paths[0], keys, output, difference, len(examples), files)


def _write_graph(
    model: Model, network: torch.nn.Module, batch: dict[str, torch.Tensor], path: Path, tolerance: float
) -> tuple[str, float]:
    """Trace the graph to ``path`` with the contract in its metadata; the output name and the largest
    difference between onnxruntime and the bundle on ``batch``.

    Raises:
        ExportError: the difference is above ``tolerance`` (nothing is put in place).
    """
    keys = list(batch)
    calibration = model.manifest_.get("calibration") or {}
    graph = _Graph(network, keys, calibration.get("temperature")).eval()
    axes = network.backbone.onnx_axes(batch)
    output = "values" if model.task == "regression" else "probabilities"
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on Python control flow in the backbone
        torch.onnx.export(graph, tuple(batch[k] for k in keys), str(path), input_names=keys,
                          output_names=[output], dynamic_axes={**axes, output: {0: "batch"}},
                          opset_version=OPSET, dynamo=False)  # fmt: skip
        expected = graph(*(batch[k] for k in keys)).numpy()
    _add_metadata(path, contract_record(model, keys, output))
    got = _run_onnx(path, {k: batch[k].numpy() for k in keys})
    difference = float(np.abs(got - expected).max())
    if not difference <= tolerance:
        raise ExportError(
            f"the ONNX graph differs from the bundle by {difference:.3g} (tolerance {tolerance:g}) on "
            f"{len(batch[keys[0]])} inputs; nothing was written"
        )
    return output, difference


def _write_contract(path: Path, contract: dict[str, Any], outputs: dict[str, Path]) -> None:
    """The contract, with the sha256 of every file of the export (``outputs``: the final name beside
    the contract -> where it is staged) and sealed as a bundle manifest is: the export's own record."""
    from graft.ownership import sealed_record
    from graft.serialization import sha256_file

    files = {}
    for name, staged in outputs.items():
        if staged.is_file():
            files[name] = sha256_file(staged)
        for file in sorted(staged.rglob("*")) if staged.is_dir() else []:
            if file.is_file():
                files[f"{name}/{file.relative_to(staged).as_posix()}"] = sha256_file(file)
    record = sealed_record(**contract, files=files)
    path.write_text(json.dumps(record, indent=1, default=str), encoding="utf-8")


def _check_inputs(model: Model, folder: Path) -> list[Any]:
    """A few inputs of the model's modality: sentences, or generated image / audio files."""
    rng = np.random.default_rng(0)
    if model.modality == "text":
        return list(CHECK_TEXTS)
    paths = []
    for i, size in enumerate((37, 64, 101)):
        if model.modality == "image":
            from PIL import Image

            path = folder / f"check_{i}.png"
            Image.fromarray(rng.integers(0, 256, (size, size + 7, 3)).astype("uint8")).save(path)
        else:
            import soundfile

            path = folder / f"check_{i}.wav"
            soundfile.write(path, rng.normal(0, 0.1, 4000 * (i + 1)).astype("float32"), 16000)
        paths.append(str(path))
    return paths


def contract_record(model: Model, keys: list[str] | None = None, output: str | None = None) -> dict[str, Any]:
    """Task, label space, input contract and decision rules of ``model`` (JSON-able); with the graph's
    input names and output name when exported."""
    manifest = model.manifest_
    output = output or ("values" if model.task == "regression" else "probabilities")
    rules = {k: manifest[k] for k in ("thresholds", "abstain", "costs", "calibration") if manifest.get(k)}
    return {
        "graft_export": 1,
        "task": model.task,
        "label_space": list(model.label_space),
        "contract": model.contract,
        "backbone": manifest["backbone"],
        "inputs": keys,
        "output": output,
        "decision_rules": rules,
        "note": "inputs are the backbone's preprocessed tensors; output: probabilities with the bundle's "
        "temperature applied (regression: values)",
    }


def _add_metadata(path: Path, contract: dict[str, Any]) -> None:
    import onnx

    proto = onnx.load(str(path))
    entry = proto.metadata_props.add()
    entry.key, entry.value = "graft_contract", json.dumps(contract, default=str)
    onnx.save(proto, str(path))


def _run_onnx(path: Path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


def _save_tokenizer(backbone: Any, folder: Path) -> None:
    tokenizer = getattr(backbone, "tokenizer", None)
    if tokenizer is None:
        raise ConfigError("this text backbone has no Hugging Face tokenizer to export beside the graph")
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(folder))
