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
of each of its own top-level entries. :func:`read_bundle` reads each file once, hashes those bytes,
and everything is built from them (:class:`VerifiedBundle`): a file swapped on disk after the check is
never used. It refuses a bundle whose manifest entries were edited (e.g. a reordered
``label_space``), whose files are missing or modified, which holds files the manifest does not list,
or any symbolic link. These are checksums, not signatures: they catch accidental and careless edits,
not a forger who recomputes them; so the manifest's values (:mod:`graft.manifest`) and the weights'
shapes and finiteness are checked too before use.

Reproducible: two identical trainings give byte-identical files, except ``graft.json``'s
``created_at`` and ``timings`` (and their digests in ``integrity``), the only wall-clock values a
bundle holds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import platform
import stat
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from graft.errors import BundleError, GraftError, format_problems
from graft.serialization import atomic_directory, save_tensors, sha256_file, tensors_from_bytes, write_json

# 2: graft.json carries an integrity record over its own content (format 1 hashed the other files only).
FORMAT_VERSION = 2
MANIFEST = "graft.json"
WEIGHTS = "model.safetensors"
REQUIRED = (WEIGHTS, "metrics.json", "report.html")
INTEGRITY = "integrity"
MAX_DEPTH = 64  # of nested JSON in graft.json
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
    timings: dict[str, float] | None = None,
) -> dict[str, Any]:
    """The manifest of a trained network (a TaskModel) fitted on ``source`` (a Dataset) with ``cfg``
    (a RunConfig) and evaluated as ``result``; :func:`save_bundle` adds versions, hashes and integrity.

    ``timings``: seconds per step of the fit, the one entry besides ``created_at`` that differs
    between two identical fits (no other entry, and no other file, may hold a wall-clock value)."""
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
        **({"timings": timings} if timings else {}),
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
    """The bundle folder and its checked manifest.

    Args:
        verify: also read every file the manifest lists and check its sha256 (:func:`read_bundle`);
            without it, only the manifest itself is checked (its format version, its integrity record
            and its values), e.g. to learn a bundle's modality before the bundle is loaded.

    Raises:
        BundleError: naming every problem found.
    """
    if verify:
        bundle = read_bundle(path)
        return bundle.folder, bundle.manifest
    folder = resolve_bundle_path(path)
    manifest = _parse_manifest(folder, _read_or_refuse(folder, MANIFEST))
    _refuse(folder, _manifest_changes(manifest))
    _check_values(folder, manifest)
    return folder, manifest


@dataclasses.dataclass(frozen=True)
class VerifiedBundle:
    """A bundle read once: its manifest and the bytes of every file it lists, each matched against its
    sha256. Whatever graft builds from a bundle (network, tokenizer, report) is built from these
    bytes, so a file changed on disk after the check can never be used."""

    folder: Path
    manifest: dict[str, Any]
    files: dict[str, bytes]

    def text(self, name: str) -> str:
        try:
            return self.files[name].decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BundleError(f"{self.folder / name} is not UTF-8 text ({exc}); {REFUSAL_ADVICE}") from None

    def load_json(self, name: str) -> Any:
        try:
            return json.loads(self.text(name))
        except (ValueError, RecursionError) as exc:
            where = self.folder / name
            raise BundleError(f"{where} is not valid JSON ({_short(exc)}); {REFUSAL_ADVICE}") from None

    def tensors(self) -> dict[str, torch.Tensor]:
        """The weights, every floating-point value of them finite.

        Raises:
            BundleError: an unreadable file, or the names of the tensors holding NaN or infinity.
        """
        try:
            state = tensors_from_bytes(self.files[WEIGHTS])
        except ValueError as exc:
            raise BundleError(
                f"{self.folder / WEIGHTS} is not a readable safetensors file ({exc}); {REFUSAL_ADVICE}"
            ) from None
        bad = [name for name, t in sorted(state.items()) if t.is_floating_point() and not t.isfinite().all()]
        if bad:
            raise BundleError(
                format_problems(
                    f"refusing to load bundle {self.folder}: {WEIGHTS} holds NaN or infinite values (its "
                    f"predictions would be NaN). {REFUSAL_ADVICE}",
                    [f"{name}: not finite" for name in bad],
                )
            )
        return state

    @contextlib.contextmanager
    def architecture(self) -> Iterator[Path]:
        """A private folder holding the listed ``backbone/`` files, written from the verified bytes:
        tokenizers and configs read every file of their folder, and only these reach them."""
        with tempfile.TemporaryDirectory(prefix="graft-bundle-") as tmp:
            (Path(tmp) / "backbone").mkdir()
            for name, data in self.files.items():
                if name.startswith("backbone/"):
                    copy = Path(tmp) / name
                    copy.parent.mkdir(parents=True, exist_ok=True)
                    copy.write_bytes(data)
            yield Path(tmp) / "backbone"


def read_bundle(path: str | Path) -> VerifiedBundle:
    """Read a bundle (or a run folder holding one) once, checking as it is read: the manifest's
    format version, integrity record and values; that the folder holds exactly the files it lists,
    with no symbolic link or special file; and every file's sha256.

    Raises:
        BundleError: naming every problem found (edited manifest entries, missing, modified or
            unexpected files, links), or an unsupported format version.
    """
    folder = resolve_bundle_path(path)
    present, links, problems = _walk(folder)
    manifest = _parse_manifest(folder, _read_or_refuse(folder, MANIFEST))
    problems = _manifest_changes(manifest) + problems
    listed = manifest.get("files")
    files: dict[str, bytes] = {}
    if not isinstance(listed, dict) or not all(name in listed for name in REQUIRED):
        problems.append(f"{MANIFEST}: the list of files is missing or does not name {', '.join(REQUIRED)}")
        listed = listed if isinstance(listed, dict) else {}
    for name, expected in listed.items():
        if not _safe_name(name):
            problems.append(f"{name}: not a plain path inside the bundle")
        elif any(name == link or name.startswith(link + "/") for link in links):
            continue  # named by _walk
        elif name not in present:
            problems.append(f"{name} is missing")
        else:
            data = _read_inside(folder, name)
            if data is None or hashlib.sha256(data).hexdigest() != expected:
                problems.append(f"{name} was modified after saving (sha256 mismatch)")
            else:
                files[name] = data
    problems += [
        f"{name} is not part of the bundle (added after saving); remove it"
        for name in sorted(present - set(listed) - {MANIFEST})
    ]
    _refuse(folder, problems)
    _check_values(folder, manifest)
    return VerifiedBundle(folder, manifest, files)


def _refuse(folder: Path, problems: list[str]) -> None:
    if problems:
        raise BundleError(
            format_problems(
                f"refusing to load bundle {folder}: it changed after it was saved (a bundle is read only as "
                f"written, labels and contract included). {REFUSAL_ADVICE}",
                problems,
            )
        )


def _parse_manifest(folder: Path, data: bytes) -> dict[str, Any]:
    """The manifest as JSON, of a format version this graft reads (2: with an integrity record)."""
    try:
        manifest = json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        where = folder / MANIFEST
        raise BundleError(f"{where} is not valid JSON ({_short(exc)}); {REFUSAL_ADVICE}") from None
    if not isinstance(manifest, dict):
        raise BundleError(f"{folder / MANIFEST} is not a graft manifest (a JSON object); {REFUSAL_ADVICE}")
    if _depth(manifest) > MAX_DEPTH:  # graft writes ~8 levels; hashing a deep one would overflow the stack
        raise BundleError(
            f"{folder / MANIFEST} is nested too deeply to be a graft manifest; {REFUSAL_ADVICE}"
        )
    version = manifest.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version > FORMAT_VERSION:
        raise BundleError(
            f"{folder}: bundle format version {version!r} is not supported by this graft "
            f"(reads up to {FORMAT_VERSION}); upgrade graft"
        )
    if version < FORMAT_VERSION:
        # Format 1 carried no integrity record over graft.json; none was released, so a bundle claiming
        # it is an edited one (downgrading the version would otherwise switch the checks off).
        raise BundleError(
            f"refusing to load bundle {folder}: its {MANIFEST} says format version {version}, which predates "
            "graft's integrity checks; no such bundle was ever released, so the manifest was edited. "
            f"{REFUSAL_ADVICE}"
        )
    return manifest


def _depth(value: Any) -> int:
    deepest, pending = 0, [(value, 1)]
    while pending:
        item, depth = pending.pop()
        deepest = max(deepest, depth)
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        pending.extend((child, depth + 1) for child in children)
    return deepest


def _check_values(folder: Path, manifest: dict[str, Any]) -> None:
    from graft.manifest import manifest_problems

    problems = manifest_problems(manifest)
    if problems:
        raise BundleError(
            format_problems(
                f"refusing to load bundle {folder}: its {MANIFEST} holds values graft cannot use (its "
                f"integrity record was recomputed, or a graft bug wrote them). {REFUSAL_ADVICE}",
                problems,
            )
        )


def _short(exc: BaseException) -> str:
    return str(exc)[:200] if not isinstance(exc, RecursionError) else "nested too deeply"


def _manifest_changes(manifest: dict[str, Any]) -> list[str]:
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


def _walk(folder: Path) -> tuple[set[str], list[str], list[str]]:
    """The regular files under ``folder`` (relative ``/`` names, OS metadata left out), the symbolic
    links, and a problem for each link or special file. graft never follows a link inside a bundle:
    what one points to could change unchecked (a linked folder's files would not even be listed)."""
    present: set[str] = set()
    links: list[str] = []
    problems: list[str] = []
    pending = [(folder, "")]
    while pending:
        here, prefix = pending.pop()
        with os.scandir(here) as entries:
            for entry in entries:
                name = prefix + entry.name
                if entry.is_symlink():
                    links.append(name)
                    problems.append(
                        f"{name} is a symbolic link: graft never follows links inside a bundle; replace it "
                        "with what it points to (copy the bundle with `cp -rL`)"
                    )
                elif entry.is_dir(follow_symlinks=False):
                    pending.append((Path(entry.path), name + "/"))
                elif not entry.is_file(follow_symlinks=False):
                    problems.append(f"{name} is not a regular file (a pipe, socket or device); remove it")
                elif entry.name not in OS_METADATA:
                    present.add(name)
    return present, links, sorted(problems)


def _read_inside(folder: Path, name: str) -> bytes | None:
    """The bytes of the regular file ``folder/name``, following no symbolic link on the way (``None``
    when it is no longer a regular file: replaced since :func:`_walk` saw it)."""
    parts = name.split("/")
    if os.open not in os.supports_dir_fd:  # Windows: check, then read (not race-free)
        path = folder.joinpath(*parts)
        links = [folder.joinpath(*parts[: i + 1]).is_symlink() for i in range(len(parts))]
        return None if any(links) or not path.is_file() else path.read_bytes()
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)
    fds = [os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))]
    try:
        for part in parts[:-1]:
            fds.append(os.open(part, flags | getattr(os, "O_DIRECTORY", 0), dir_fd=fds[-1]))
        fd = os.open(parts[-1], flags | getattr(os, "O_NONBLOCK", 0), dir_fd=fds[-1])  # a pipe: no wait
    except OSError:
        return None
    finally:
        for dir_fd in fds:
            os.close(dir_fd)
    with os.fdopen(fd, "rb") as f:
        return f.read() if stat.S_ISREG(os.fstat(f.fileno()).st_mode) else None


def _read_or_refuse(folder: Path, name: str) -> bytes:
    data = _read_inside(folder, name)
    if data is None:
        raise BundleError(
            f"refusing to load bundle {folder}: {name} is not a regular file inside it (a symbolic link, or "
            f"gone). {REFUSAL_ADVICE}"
        )
    return data


def _safe_name(name: Any) -> bool:
    if not isinstance(name, str):
        return False
    parts = name.split("/")
    return bool(name) and not Path(name).is_absolute() and all(p not in ("", ".", "..") for p in parts)


def _rebuild_backbone(bundle: VerifiedBundle, module: Any = None) -> Any:
    from graft.backbones import backbone_from_saved

    spec = bundle.manifest["backbone"]
    with bundle.architecture() as architecture:
        try:
            backbone = backbone_from_saved(architecture, spec, module=module)
        except GraftError:
            raise
        except (KeyError, TypeError, ValueError, OSError) as exc:  # a resealed record graft never wrote
            raise BundleError(
                f"refusing to load bundle {bundle.folder}: its backbone ({spec['kind']}) cannot be rebuilt "
                f"from {MANIFEST} and backbone/ ({type(exc).__name__}: {_short(exc)}). {REFUSAL_ADVICE}"
            ) from None
    _check_contract(bundle.folder, backbone, bundle.manifest)
    return backbone


def _check_contract(folder: Path, backbone: Any, manifest: dict[str, Any]) -> None:
    """The rebuilt backbone must preprocess exactly as recorded (tokenizer identity, sizes, ...)."""
    recorded = manifest["contract"].get("preprocessing")
    rebuilt = json.loads(json.dumps(backbone.contract.to_dict()["preprocessing"], default=str))
    if recorded is None or recorded == rebuilt:
        return
    changed = sorted(k for k in set(recorded) | set(rebuilt) if recorded.get(k) != rebuilt.get(k))
    raise BundleError(
        f"refusing to load bundle {folder}: its backbone files rebuild a preprocessing that differs from "
        f"the contract in {MANIFEST} ({', '.join(changed)}). {REFUSAL_ADVICE}"
    )


def load_network(bundle: VerifiedBundle, module: Any = None) -> Any:
    """Rebuild the TaskModel recorded in a verified bundle and load its weights (checked first).

    ``module``: a fresh instance of the user's own network, for bundles made with
    ``Backbone.from_module`` on a class graft cannot rebuild itself.
    """
    from graft.heads import TaskModel, make_head

    manifest = bundle.manifest
    backbone = _rebuild_backbone(bundle, module=module)
    _restore_adapters(bundle, backbone)
    head_spec = manifest["head"]
    head = make_head(manifest["task"], head_spec["in_dim"], head_spec["n_outputs"])
    network = TaskModel(backbone, head)
    _load_weights(bundle.folder, network, bundle.tensors())
    network.eval()
    return network


def bundle_backbone(path: str | Path) -> Any:
    """The (trained) backbone of a bundle, without its head: ``bundle:<path>`` as a source.

    The bundle is verified first; the backbone keeps the bundle's contract, so transfer from your
    own earlier model (or one made with ``graft pretrain``) checks inputs exactly as that model did.
    """
    bundle = read_bundle(path)
    backbone = _rebuild_backbone(bundle)
    adapted = _restore_adapters(bundle, backbone)
    prefix = "backbone."
    own = {k[len(prefix) :]: v for k, v in bundle.tensors().items() if k.startswith(prefix)}
    _load_weights(bundle.folder, backbone, own, prefix=prefix)
    if adapted:  # a plain backbone to transfer from: the LoRA updates folded into its weights
        from graft.adapters import merge_adapters

        merge_adapters(backbone)
    backbone.source = f"bundle:{path}"
    backbone.eval()
    return backbone


def _load_weights(folder: Path, module: Any, state: dict[str, Any], prefix: str = "") -> None:
    """Load ``state`` into ``module`` once it is known to hold exactly the module's tensors, each of
    the module's shape (``prefix``: of the names in the file, for the messages)."""
    own = module.state_dict()
    problems = [f"{prefix}{name}: missing" for name in sorted(own.keys() - state.keys())]
    problems += [f"{prefix}{name}: not in the architecture" for name in sorted(state.keys() - own.keys())]
    problems += [
        f"{prefix}{name}: shape {list(state[name].shape)} in {WEIGHTS}, {list(own[name].shape)} in the "
        "architecture"
        for name in sorted(own.keys() & state.keys())
        if state[name].shape != own[name].shape
    ]
    if problems:
        raise BundleError(
            format_problems(
                f"refusing to load bundle {folder}: {WEIGHTS} does not match the architecture recorded in "
                f"{MANIFEST}. {REFUSAL_ADVICE}",
                problems,
            )
        )
    module.load_state_dict(state)


def _restore_adapters(bundle: VerifiedBundle, backbone: Any) -> bool:
    """Re-insert the adapters (LoRA) a bundle's model was trained with, so its weights load."""
    strategy = bundle.manifest.get("strategy")
    record = strategy.get("adapters") if isinstance(strategy, dict) else None
    if not record:
        return False
    from graft.adapters import restore_adapters
    from graft.errors import ConfigError

    try:
        restore_adapters(backbone, record)
    except ConfigError as exc:
        raise BundleError(f"refusing to load bundle {bundle.folder}: {exc}. {REFUSAL_ADVICE}") from None
    return True
