"""Which paths graft may write: one rule for the outputs of every command.

1. graft writes a path only when nothing is there yet, or when what is there is what graft itself
   wrote and nobody changed since. It recognises its own outputs by the record each carries: a run
   folder by ``run.json``, a bundle by ``graft.json`` (which lists every file's sha256), an ONNX export
   by ``NAME.contract.json`` (the graph and tokenizer files with their sha256), a report folder
   (``evaluate --report``, ``curve --out``) by ``graft-output.json``. A plain file (``predict --out``)
   carries no record, so an existing one is never graft's. Whatever else is in the way is refused by
   name before any work (exit code 2); ``--overwrite`` takes it over explicitly.
2. graft never writes where the same command reads (the bundle, the data, the inputs), nor inside a
   bundle: a bundle is only ever written whole.
3. Outputs are staged beside their targets and renamed into place together: every file of an output,
   or none (:func:`graft.serialization.atomic_outputs`).

Records are sealed like a bundle manifest (:func:`graft.bundle.seal_manifest`): a record edited by
hand no longer vouches for anything.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from graft.errors import OutputError, format_problems

RECORD = "graft-output.json"
BUNDLE_MANIFEST = "graft.json"
# Written by file managers, never read by graft: neither foreign nor graft's, just tolerated.
OS_METADATA = frozenset({".DS_Store", "Thumbs.db", "desktop.ini"})


def refuse_foreign(found: list[str], target: Path, *, option: str, overwrite: bool, why: str = "") -> None:
    """Raise :class:`OutputError` naming ``found`` (files in the way that graft did not write)."""
    if not found or overwrite:
        return
    raise OutputError(
        format_problems(
            f"{option} {target}: {why or 'it holds files graft did not write, or changed since'}; graft "
            f"never replaces those. Choose another {option}, or pass --overwrite to replace them",
            found,
        )
    )


def check_not_read(writes: Iterable[str | Path], reads: Iterable[Any], *, option: str = "--out") -> None:
    """Rule 2: no output is, holds, or lies inside something this command reads, nor inside a bundle.

    ``reads``: paths the command reads (files or folders); anything that is not a path (a DataFrame,
    a list of texts, ``None``) is skipped.
    """
    read_paths = [Path(r).resolve() for r in reads if isinstance(r, str | os.PathLike) and Path(r).exists()]
    for write in writes:
        target = Path(write).resolve()
        for read in read_paths:
            if target == read or read in target.parents or target in read.parents:
                raise OutputError(
                    f"{option} {write}: graft would write over what this command reads ({read}); write "
                    f"the output somewhere else"
                )
        bundle = next((p for p in target.parents if (p / BUNDLE_MANIFEST).is_file()), None)
        if bundle is not None:
            raise OutputError(
                f"{option} {write} lies inside the bundle {bundle}, which would then fail its integrity "
                "check; write it outside the bundle"
            )


def claim_file(
    path: str | Path, *, reads: Iterable[Any] = (), overwrite: bool, option: str = "--out"
) -> Path:
    """A plain output file (``predict --out``): new, or replaced only with ``overwrite`` (a plain file
    carries no record that graft wrote it)."""
    path = Path(path)
    check_not_read([path], reads, option=option)
    if path.is_dir():
        raise OutputError(f"{option} {path} is a folder; give a file name")
    found = [str(path)] if path.exists() or path.is_symlink() else []
    refuse_foreign(found, path, option=option, overwrite=overwrite, why="the file exists")
    return path


def claim_report_folder(
    folder: str | Path, names: Iterable[str], *, reads: Iterable[Any] = (), overwrite: bool, option: str
) -> Path:
    """A folder that receives ``names`` and a ``graft-output.json`` listing them: any folder, where
    files of those names are replaced only when the record says graft wrote them as they are."""
    folder = Path(folder)
    targets = [folder / name for name in [*names, RECORD]]
    check_not_read(targets, reads, option=option)
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{option} {folder} is a file; give a folder")
    found = unrecorded(folder / RECORD, [t for t in targets if t.name != RECORD])
    refuse_foreign(found, folder, option=option, overwrite=overwrite)
    return folder


def claim_bundle(
    folder: str | Path, *, reads: Iterable[Any] = (), overwrite: bool, option: str = "--out"
) -> Path:
    """A bundle folder to write whole: nothing there, an empty folder, or an intact bundle (every file
    as its ``graft.json`` lists it)."""
    folder = Path(folder)
    check_not_read([folder], reads, option=option)
    refuse_foreign(bundle_in_the_way(folder), folder, option=option, overwrite=overwrite)
    return folder


def claim_folder(folder: str | Path, *, command: str, option: str = "--out") -> Path:
    """A folder a command fills as it likes (``graft demo``): new, empty, or made by the same command
    earlier (its ``graft-output.json`` says so). Created, and marked as the command's, here."""
    folder = Path(folder)
    check_not_read([folder], [], option=option)
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{option} {folder} is a file; give a folder")
    record = _read_record(folder / RECORD)
    if folder.exists() and (record is None or record.get("command") != command):
        present = sorted(p.name for p in folder.iterdir() if p.name not in OS_METADATA)
        refuse_foreign(present, folder, option=option, overwrite=False,
                       why=f"it is not empty and was not made by graft {command}")  # fmt: skip
    if record is None:
        from graft.serialization import atomic_write_bytes

        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(
            folder / RECORD, _json_bytes(sealed_record(graft_output=1, command=command, files={}))
        )
    return folder


def unrecorded(record_file: Path, outputs: Iterable[Path]) -> list[str]:
    """Files at ``outputs`` (walking folders) that the sealed record ``record_file`` does not list
    under ``files`` with their current sha256 (paths relative to the record's folder); the record
    itself when it is present but not an intact graft record."""
    listed = _listed_files(record_file)
    found = [] if listed is not None or not record_file.exists() else [record_file.name]
    base = record_file.parent
    for output in outputs:
        for file in _entries(output):
            name = file.relative_to(base).as_posix() if file.is_relative_to(base) else str(file)
            if file == record_file:
                continue
            if file.is_symlink() or (listed or {}).get(name) != _sha256(file):
                found.append(name)
    return found


def bundle_in_the_way(folder: Path) -> list[str]:
    """What at ``folder`` keeps graft from writing a bundle there (see :func:`claim_bundle`)."""
    if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
        return [str(folder)]
    return unrecorded(folder / BUNDLE_MANIFEST, [folder]) if folder.exists() else []


def sealed_record(**content: Any) -> dict[str, Any]:
    """A record (``graft-output.json``, an export's contract) sealed as a bundle manifest is."""
    from graft.bundle import seal_manifest

    return seal_manifest(content)


def write_report_folder(
    folder: str | Path, files: dict[str, bytes], *, command: str, overwrite: bool, option: str
) -> Path:
    """Write ``files`` (name -> bytes) into ``folder`` with a ``graft-output.json`` listing them, all
    or none (checked again by :func:`claim_report_folder` first: the folder may have changed while the
    command worked)."""
    from graft.serialization import atomic_outputs, sha256_bytes

    folder = claim_report_folder(folder, files, overwrite=overwrite, option=option)
    record = sealed_record(
        graft_output=1, command=command, files={n: sha256_bytes(b) for n, b in files.items()}
    )
    targets = [folder / name for name in [*files, RECORD]]
    with atomic_outputs(*targets) as staged:
        for path, data in zip(staged, [*files.values(), _json_bytes(record)], strict=True):
            path.write_bytes(data)
    return folder


def _json_bytes(value: Any) -> bytes:
    return (json.dumps(value, indent=1, default=str) + "\n").encode("utf-8")


def _listed_files(record_file: Path) -> dict[str, str] | None:
    """The ``files`` of an intact sealed record, ``None`` when there is none or it was edited."""
    record = _read_record(record_file)
    return record["files"] if record is not None else None


def _read_record(record_file: Path) -> dict[str, Any] | None:
    """An intact sealed record with a ``files`` entry, ``None`` when there is none or it was edited."""
    from graft.bundle import INTEGRITY, seal_manifest

    try:
        record = json.loads(record_file.read_bytes())
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(record, dict) or not isinstance(record.get("files"), dict):
        return None
    if seal_manifest({k: v for k, v in record.items() if k != INTEGRITY}) != record:
        return None
    return record


def _entries(path: Path) -> Iterator[Path]:
    """Every file and symlink at or under ``path`` (symlinks reported, never followed)."""
    if path.is_symlink() or path.is_file():
        yield path
        return
    if not path.is_dir():
        return
    for root, dirs, names in os.walk(path):
        for name in sorted(names):
            if name not in OS_METADATA:
                yield Path(root, name)
        for name in sorted(dirs):
            if Path(root, name).is_symlink():
                yield Path(root, name)


def _sha256(path: Path) -> str | None:
    from graft.serialization import sha256_file

    try:
        return sha256_file(path)
    except OSError:
        return None
