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

Integrity: ``graft.json`` lists the sha256 of every other file and, under ``integrity``, the sha256
of each of its own top-level entries. Loading refuses a bundle whose manifest entries were edited
(e.g. a reordered ``label_space``), whose files are missing or modified, or which holds files the
manifest does not list; the architecture is rebuilt from a verified private copy of ``backbone/``.
These are checksums, not signatures: they catch accidental and careless edits, not a forger who
recomputes them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import platform
import tempfile
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from graft.errors import BundleError, BundleWarning, format_problems
from graft.serialization import atomic_directory, load_tensors, save_tensors, sha256_file, write_json

# 2: graft.json carries an integrity record over its own content (format 1 hashed the other files only).
FORMAT_VERSION = 2
MANIFEST = "graft.json"
WEIGHTS = "model.safetensors"
INTEGRITY = "integrity"
# Written by file managers, never read by graft: tolerated in a bundle folder.
OS_METADATA = frozenset({".DS_Store", "Thumbs.db", "desktop.ini"})
REFUSAL_ADVICE = "Use an intact copy of the bundle, or fit the model again"


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


def _canonical_sha256(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def seal_manifest(manifest: dict[str, Any]) -> dict[str, Any]:
    """``manifest`` as JSON will read it back, plus the sha256 of each top-level entry.

    One digest per entry (not one for the whole file) lets a refusal name what was edited
    (``label_space``, ``contract``, ``files`` ...) while graft.json stays plain, readable JSON.
    """
    body = json.loads(json.dumps({k: v for k, v in manifest.items() if k != INTEGRITY}, default=str))
    body[INTEGRITY] = {"sha256": {key: _canonical_sha256(value) for key, value in body.items()}}
    return body


def make_manifest(
    network: Any,
    source: Any,
    cfg: Any,
    strategy: dict[str, Any],
    result: Any,
    *,
    majority: dict[str, Any],
    pretrained_sha256: str,
    fingerprint: str,
    calibration: dict[str, Any] | None = None,
    abstain: dict[str, Any] | None = None,
    costs: dict[str, Any] | None = None,
    thresholds: list[float] | None = None,
) -> dict[str, Any]:
    """The manifest of a trained network (a TaskModel) fitted on ``source`` (a Dataset) with ``cfg``
    (a RunConfig) and evaluated as ``result``; :func:`save_bundle` adds versions, hashes and integrity."""
    bb, head = network.backbone, network.head
    return {
        "task": source.task,
        "label_space": list(source.label_space),
        "contract": {
            **bb.contract.to_dict(),
            ("text_col" if source.modality == "text" else "path_col"): source.text_col,
            "label_col": source.label_col,
            **({"label_regex": cfg.data.label_regex} if cfg.data.label_regex else {}),
        },
        "backbone": bb.spec(),
        "head": {
            "type": type(head).__name__,
            "in_dim": bb.feature_dim,
            "n_outputs": head.linear.out_features,
        },
        "strategy": strategy,
        "metrics": {
            "test": result.metrics,
            "intervals_95": result.intervals,
            "baselines": result.baselines,
            "n_test": result.n,
        },
        "majority": majority,
        **({"calibration": calibration} if calibration else {}),
        **({"abstain": abstain} if abstain else {}),
        **({"costs": costs} if costs else {}),
        **({"thresholds": thresholds} if thresholds else {}),
        "provenance": {
            "backbone_source": cfg.backbone.source,
            "backbone_weights_sha256": pretrained_sha256,
            "data_source": source.source,
            "data_fingerprint": fingerprint,
            "seed": cfg.train.seed,
            "config": cfg.to_dict(),
        },
    }


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
            the format version, versions, creation time, file hashes and the integrity record are
            added here.
    """
    path = Path(path)
    with atomic_directory(path) as tmp:
        save_tensors(
            network.state_dict(), tmp / WEIGHTS, metadata={"format": "graft", "version": str(FORMAT_VERSION)}
        )
        network.backbone.save_architecture(tmp / "backbone")
        write_json(tmp / "metrics.json", metrics)
        (tmp / "report.html").write_text(report_html, encoding="utf-8")
        files = {p.relative_to(tmp).as_posix(): sha256_file(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
        full = {
            "format_version": FORMAT_VERSION,
            **manifest,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "versions": versions(),
            "files": files,
        }
        write_json(tmp / MANIFEST, seal_manifest(full))
    return path


def read_manifest(path: str | Path, verify: bool = True) -> tuple[Path, dict[str, Any]]:
    """The bundle folder and its manifest, after checking the manifest's own content, that the folder
    holds exactly the files it lists, and every file's sha256.

    Raises:
        BundleError: naming every change found (edited manifest entries, missing, modified or
            unexpected files), or an unsupported format version.
    """
    folder = resolve_bundle_path(path)
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{folder / MANIFEST} is not valid JSON ({exc}); {REFUSAL_ADVICE}") from None
    if not isinstance(manifest, dict):
        raise BundleError(f"{folder / MANIFEST} is not a graft manifest (a JSON object); {REFUSAL_ADVICE}")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise BundleError(
            f"{folder}: bundle format version {version!r} is not supported by this graft "
            f"(reads up to {FORMAT_VERSION}); upgrade graft"
        )
    if verify:
        problems = _manifest_changes(manifest) + _file_problems(folder, manifest.get("files"))
        if problems:
            raise BundleError(
                format_problems(
                    f"refusing to load bundle {folder}: it changed after it was saved (a bundle is read "
                    f"only as written, labels and contract included). {REFUSAL_ADVICE}",
                    problems,
                )
            )
    return folder, manifest


def _manifest_changes(manifest: dict[str, Any]) -> list[str]:
    if manifest.get("format_version") == 1:
        warnings.warn(
            "this bundle was saved by an older graft (format 1), whose graft.json carries no integrity "
            "record: its labels and contract cannot be checked. Re-save it once: "
            "graft.load(path).save(path)",
            BundleWarning,
            stacklevel=4,
        )
        return []
    recorded = (
        manifest.get(INTEGRITY, {}).get("sha256") if isinstance(manifest.get(INTEGRITY), dict) else None
    )
    if not isinstance(recorded, dict):
        return [f"{MANIFEST}: its integrity record is missing or malformed"]
    body = {k: v for k, v in manifest.items() if k != INTEGRITY}
    problems = [
        f"{MANIFEST}: {key!r} was edited after saving"
        for key in body
        if key in recorded and _canonical_sha256(body[key]) != recorded[key]
    ]
    problems += [f"{MANIFEST}: {key!r} was added after saving" for key in body if key not in recorded]
    problems += [f"{MANIFEST}: {key!r} was removed after saving" for key in recorded if key not in body]
    return problems


def _file_problems(folder: Path, files: Any) -> list[str]:
    if not isinstance(files, dict) or WEIGHTS not in files:
        return [f"{MANIFEST}: the list of files is missing or does not name {WEIGHTS}"]
    problems = []
    for name, expected in files.items():
        file = folder / name
        if not _safe_name(name):
            problems.append(f"{name}: not a plain path inside the bundle")
        elif not file.is_file():
            problems.append(f"{name} is missing")
        elif sha256_file(file) != expected:
            problems.append(f"{name} was modified after saving (sha256 mismatch)")
    present = {
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if not p.is_dir() and p.name not in OS_METADATA
    }
    for name in sorted(present - set(files) - {MANIFEST}):
        problems.append(f"{name} is not part of the bundle (added after saving); remove it")
    return problems


def _safe_name(name: str) -> bool:
    parts = Path(name).parts
    return bool(parts) and not Path(name).is_absolute() and ".." not in parts


@contextlib.contextmanager
def verified_architecture(folder: Path, manifest: dict[str, Any]) -> Iterator[Path]:
    """A private copy of the bundle's ``backbone/`` folder holding only the files the manifest lists,
    each checked against its sha256 as it is copied.

    Tokenizers and configs are read from this copy: a file added to (or swapped in) the bundle
    after verification can never reach them.
    """
    prefix = "backbone/"
    with tempfile.TemporaryDirectory(prefix="graft-bundle-") as tmp:
        target = Path(tmp) / "backbone"
        target.mkdir()
        for name, expected in manifest["files"].items():
            if not name.startswith(prefix) or not _safe_name(name):
                continue
            data = (folder / name).read_bytes()
            if hashlib.sha256(data).hexdigest() != expected:
                raise BundleError(f"refusing to load bundle {folder}: {name} changed while it was read")
            copy = Path(tmp) / name
            copy.parent.mkdir(parents=True, exist_ok=True)
            copy.write_bytes(data)
        yield target


def _rebuild_backbone(folder: Path, manifest: dict[str, Any], module: Any = None) -> Any:
    from graft.backbones import backbone_from_saved

    with verified_architecture(folder, manifest) as architecture:
        backbone = backbone_from_saved(architecture, manifest["backbone"], module=module)
    _check_contract(folder, backbone, manifest)
    return backbone


def _check_contract(folder: Path, backbone: Any, manifest: dict[str, Any]) -> None:
    """The rebuilt backbone must preprocess exactly as recorded (tokenizer identity, sizes, ...)."""
    recorded = manifest.get("contract", {}).get("preprocessing")
    rebuilt = json.loads(json.dumps(backbone.contract.to_dict()["preprocessing"], default=str))
    if recorded is None or recorded == rebuilt:
        return
    changed = sorted(k for k in set(recorded) | set(rebuilt) if recorded.get(k) != rebuilt.get(k))
    raise BundleError(
        f"refusing to load bundle {folder}: its backbone files rebuild a preprocessing that differs from "
        f"the contract in {MANIFEST} ({', '.join(changed)}). {REFUSAL_ADVICE}"
    )


def load_network(folder: Path, manifest: dict[str, Any], module: Any = None) -> Any:
    """Rebuild the TaskModel recorded in a verified bundle and load its weights.

    ``module``: a fresh instance of the user's own network, for bundles made with
    ``Backbone.from_module`` on a class graft cannot rebuild itself.
    """
    from graft.heads import TaskModel, make_head

    backbone = _rebuild_backbone(folder, manifest, module=module)
    _restore_adapters(folder, backbone, manifest)
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
    folder, manifest = read_manifest(path)
    backbone = _rebuild_backbone(folder, manifest)
    adapted = _restore_adapters(folder, backbone, manifest)
    state = load_tensors(folder / WEIGHTS)
    prefix = "backbone."
    own = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    missing, unexpected = backbone.load_state_dict(own, strict=False)
    if missing or unexpected:
        raise BundleError(
            f"{folder / WEIGHTS}: the backbone weights do not match its recorded architecture "
            f"(missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})"
        )
    if adapted:  # a plain backbone to transfer from: the LoRA updates folded into its weights
        from graft.adapters import merge_adapters

        merge_adapters(backbone)
    backbone.source = f"bundle:{path}"
    backbone.eval()
    return backbone


def _restore_adapters(folder: Path, backbone: Any, manifest: dict[str, Any]) -> bool:
    """Re-insert the adapters (LoRA) a bundle's model was trained with, so its weights load."""
    strategy = manifest.get("strategy")
    record = strategy.get("adapters") if isinstance(strategy, dict) else None
    if not record:
        return False
    from graft.adapters import restore_adapters
    from graft.errors import ConfigError

    try:
        restore_adapters(backbone, record)
    except ConfigError as exc:
        raise BundleError(f"refusing to load bundle {folder}: {exc}. {REFUSAL_ADVICE}") from None
    return True
