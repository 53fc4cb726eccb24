"""Bundles: a trained model as a folder, written atomically and verified when loaded.

::

    <bundle>/
      graft.json          format version, task, label space, contract, strategy, metrics summary,
                          provenance, and the sha256 of every other file
      model.safetensors   backbone and head weights (no pickle, ever)
      backbone/           what rebuilds the architecture: its config and tokenizer files
      metrics.json        the full evaluation
      report.html         self-contained report

``backbone/`` makes a bundle independent of where its backbone came from (a moved or deleted
``hf:`` folder does not break it).
"""

from __future__ import annotations

import contextlib
import json
import platform
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from graft.errors import BundleError
from graft.serialization import atomic_directory, load_tensors, save_tensors, sha256_file, write_json

FORMAT_VERSION = 1
MANIFEST = "graft.json"
WEIGHTS = "model.safetensors"


def resolve_bundle_path(path: str | Path) -> Path:
    """A bundle folder, or a run folder holding one in ``bundle/``."""
    path = Path(path)
    if (path / MANIFEST).is_file():
        return path
    if (path / "bundle" / MANIFEST).is_file():
        return path / "bundle"
    if not path.exists():
        raise BundleError(f"bundle not found: {path}")
    raise BundleError(
        f"{path} is not a graft bundle (no {MANIFEST}, nor bundle/{MANIFEST}); give the folder written "
        "by `graft fit --out`"
    )


def versions() -> dict[str, str]:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for dist in ("graft-ml", "torch", "transformers", "accelerate"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[dist] = metadata.version(dist)
    return out


def save_bundle(
    path: str | Path,
    network: Any,
    manifest: dict[str, Any],
    *,
    metrics: dict[str, Any],
    report_html: str,
) -> Path:
    """Write ``network`` (a TaskModel) and its manifest as a bundle at ``path``, atomically.

    Args:
        manifest: task, label space, contract, strategy, metrics summary, provenance ... (JSON-able);
            the format version, versions, creation time and file hashes are added here.
    """
    path = Path(path)
    with atomic_directory(path) as tmp:
        save_tensors(
            network.state_dict(), tmp / WEIGHTS, metadata={"format": "graft", "version": str(FORMAT_VERSION)}
        )
        network.backbone.save_architecture(tmp / "backbone")
        write_json(tmp / "metrics.json", metrics)
        (tmp / "report.html").write_text(report_html, encoding="utf-8")
        files = {str(p.relative_to(tmp)): sha256_file(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
        full = {
            "format_version": FORMAT_VERSION,
            **manifest,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "versions": versions(),
            "files": files,
        }
        write_json(tmp / MANIFEST, full)
    return path


def read_manifest(path: str | Path, verify: bool = True) -> tuple[Path, dict[str, Any]]:
    """The bundle folder and its manifest, after checking every file's sha256."""
    folder = resolve_bundle_path(path)
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise BundleError(f"{folder / MANIFEST} is not valid JSON ({exc.msg}, line {exc.lineno})") from None
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise BundleError(
            f"{folder}: bundle format version {version!r} is not supported by this graft "
            f"(reads up to {FORMAT_VERSION}); upgrade graft"
        )
    if verify:
        problems = []
        for name, expected in manifest.get("files", {}).items():
            file = folder / name
            if not file.is_file():
                problems.append(f"{name} is missing")
            elif sha256_file(file) != expected:
                problems.append(f"{name} was modified after saving (sha256 mismatch)")
        if WEIGHTS not in manifest.get("files", {}):
            problems.append(f"{WEIGHTS} is not listed in {MANIFEST}")
        if problems:
            raise BundleError(
                f"refusing to load bundle {folder}: "
                + "; ".join(problems)
                + ". The bundle is corrupted or was tampered with; re-save it from the original run"
            )
    return folder, manifest


def load_network(folder: Path, manifest: dict[str, Any], module: Any = None) -> Any:
    """Rebuild the TaskModel recorded in a verified bundle and load its weights.

    ``module``: a fresh instance of the user's own network, for bundles made with
    ``Backbone.from_module`` on a class graft cannot rebuild itself.
    """
    from graft.backbones import backbone_from_saved
    from graft.heads import TaskModel, make_head

    backbone = backbone_from_saved(folder / "backbone", manifest["backbone"], module=module)
    head_spec = manifest["head"]
    head = make_head(manifest["task"], head_spec["in_dim"], head_spec["n_outputs"])
    network = TaskModel(backbone, head)
    state = load_tensors(folder / WEIGHTS)
    missing, unexpected = network.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise BundleError(
            f"{folder / WEIGHTS} does not match the architecture in {MANIFEST} "
            f"(missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})"
        )
    network.eval()
    return network


def bundle_backbone(path: str | Path) -> Any:
    """The (trained) backbone of a bundle, without its head: ``bundle:<path>`` as a source.

    The bundle is verified first; the backbone keeps the bundle's contract, so transfer from your
    own earlier model (or one made with ``graft pretrain``) checks inputs exactly as that model did.
    """
    from graft.backbones import backbone_from_saved

    folder, manifest = read_manifest(path)
    backbone = backbone_from_saved(folder / "backbone", manifest["backbone"])
    state = load_tensors(folder / WEIGHTS)
    prefix = "backbone."
    own = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    missing, unexpected = backbone.load_state_dict(own, strict=False)
    if missing or unexpected:
        raise BundleError(
            f"{folder / WEIGHTS}: the backbone weights do not match its recorded architecture "
            f"(missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})"
        )
    backbone.source = f"bundle:{path}"
    backbone.eval()
    return backbone
