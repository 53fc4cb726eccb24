"""The run folder of one ``fit``: its record, an exclusive lock, and the clean-up after success.

::

    <out>/
      run.json       status (running | complete), the config and the data fingerprint
      config.yaml    the config, for reading and for ``--config``
      checkpoints/   while fine-tuning (removed once the bundle is written)
      bundle/        the result
      .graft.lock    while a process uses the folder (an advisory ``flock``; removed on release)

Two ``fit`` processes never share a folder: the second is refused while the first holds the lock,
whatever state ``run.json`` is in. A run that was killed leaves its record and checkpoints for
``--resume``; one that succeeded leaves no checkpoints and no temporary folders.

Ownership (:mod:`graft.ownership`): ``--out`` must be new, empty, or a run folder; inside one, graft
replaces only what it wrote (``config.yaml`` as the record says, checkpoint files, an intact
``bundle/``). Anything else in the way is refused by name unless ``--overwrite``; the clean-up after
success removes checkpoint files only, never a file graft did not write.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from graft.config import RunConfig
from graft.errors import ConfigError, OutputError
from graft.ownership import OS_METADATA, bundle_in_the_way, check_not_read, refuse_foreign
from graft.serialization import atomic_write_bytes, remove_stale_temporaries

RUN_FILE = "run.json"
CONFIG_FILE = "config.yaml"
LOCK_FILE = ".graft.lock"
CHECKPOINTS = "checkpoints"
BUNDLE = "bundle"
_OWNED = (CHECKPOINTS, BUNDLE, RUN_FILE, CONFIG_FILE)


@dataclass
class RunFolder:
    """A claimed run folder (see :func:`claim_run_folder`).

    Attributes:
        path: the folder.
        resumed: an earlier, interrupted run in this folder is being continued.
        complete: the folder already holds a finished run with the same settings and data.
        writer: this process writes the folder's files (the main process of a multi-process run).
    """

    path: Path
    resumed: bool = False
    complete: bool = False
    writer: bool = True  # False in the other processes of a multi-process run: they write nothing

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS

    @property
    def bundle(self) -> Path:
        return self.path / BUNDLE

    def write_record(self, cfg: RunConfig, status: str, fingerprint: str) -> None:
        record = {"status": status, "config": cfg.to_dict(), "data_fingerprint": fingerprint}
        atomic_write_bytes(self.path / RUN_FILE, json.dumps(record, indent=2).encode())
        atomic_write_bytes(self.path / CONFIG_FILE, cfg.yaml_text().encode("utf-8"))

    def finish(self, cfg: RunConfig, fingerprint: str) -> None:
        """Mark the run complete and remove what only an interrupted run needs."""
        self.write_record(cfg, "complete", fingerprint)
        self.clean_leftovers()

    def clean_leftovers(self) -> None:
        _remove_checkpoints(self.checkpoints)
        remove_stale_temporaries(self.bundle)
        remove_stale_temporaries(self.path / RUN_FILE)


@contextlib.contextmanager
def claim_run_folder(
    out: str | Path, cfg: RunConfig, fingerprint: str, *, resume: bool, overwrite: bool, reads: list[Any] = ()
) -> Iterator[RunFolder]:
    """Lock ``out`` for this process and check it against the requested run.

    A new run gets a ``running`` record; ``resume`` continues an earlier run with the same settings
    and data; ``overwrite`` replaces graft's own entries (``run.json``, ``config.yaml``,
    ``checkpoints/``, ``bundle/``) whatever they hold, a broken record included; ``reads``: the paths
    the run reads (data, bundles), which the folder's outputs must not touch.

    Raises:
        ConfigError: the folder is in use by another process, holds another run (without
            ``resume``/``overwrite``), holds a run with other settings or data, or has a broken
            record; each message says how to go on.
        OutputError: the folder holds files graft did not write (without ``overwrite``), or its
            outputs would touch what the run reads.
    """
    check_run_flags(out, resume=resume, overwrite=overwrite)
    folder = Path(out)
    check_not_read([folder / name for name in (*_OWNED, LOCK_FILE)], reads)
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"--out {folder} is a file; a run folder is a folder: choose another --out")
    folder.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(folder):
        run = RunFolder(folder)
        if overwrite:
            _remove_run(folder)
        else:
            found, why = _in_the_way(folder)
            refuse_foreign(found, folder, option="--out", overwrite=False, why=why)
        record = _earlier_record(folder, cfg, fingerprint, resume)
        if record is not None and record.get("status") == "complete":
            run.complete = True
            run.clean_leftovers()
        else:
            run.resumed = record is not None
            run.write_record(cfg, "running", fingerprint)
        yield run


@contextlib.contextmanager
def open_run(
    out: str | Path | None,
    cfg: RunConfig,
    fingerprint: str,
    *,
    resume: bool,
    overwrite: bool,
    reads: list[Any] = (),
) -> Iterator[RunFolder | None]:
    """:func:`claim_run_folder` for a run with a folder; ``None`` for one without (nothing is written)."""
    from graft.distributed import barrier, is_main_process

    if out is None:
        yield None
        return
    if not is_main_process():  # under accelerate launch: the main process owns the folder
        barrier()
        record = read_record(Path(out)) or {}
        yield RunFolder(Path(out), resumed=resume, complete=record.get("status") == "complete", writer=False)
        return
    with claim_run_folder(out, cfg, fingerprint, resume=resume, overwrite=overwrite, reads=reads) as run:
        barrier()
        yield run


def check_run_flags(out: str | Path | None, *, resume: bool, overwrite: bool) -> None:
    """Refuse contradictory run-folder flags (cheap: callers check before reading any data)."""
    if resume and overwrite:
        raise ConfigError("--resume continues the run in --out and --overwrite replaces it; pass only one")
    if resume and out is None:
        raise ConfigError("resume needs the run folder: pass out=")


def _earlier_record(folder: Path, cfg: RunConfig, fingerprint: str, resume: bool) -> dict[str, Any] | None:
    """The record of the earlier run to continue, ``None`` to start afresh."""
    record = read_record(folder)
    if record is None:
        if resume:
            raise ConfigError(f"--resume: {folder} holds no run to resume (no {RUN_FILE}); drop --resume")
        return None
    interrupted_early = record.get("status") == "running" and not (folder / CHECKPOINTS).exists()
    if not resume:
        if interrupted_early and not (folder / BUNDLE).exists():
            return None  # it stopped before its first checkpoint: starting afresh loses nothing
        raise ConfigError(
            f"{folder} already holds a {record.get('status', 'earlier')} run; pass --resume to continue it, "
            "--overwrite to replace it, or choose another --out"
        )
    before = RunConfig.from_dict(record["config"], source=str(folder / RUN_FILE))
    if before != cfg:
        diffs = config_diff(before.to_dict(), cfg.to_dict())
        raise ConfigError(
            f"--resume: the settings differ from the run in {folder} ({'; '.join(diffs[:5])}); resume with "
            "the same settings, or start a new --out"
        )
    if record.get("data_fingerprint") != fingerprint:
        raise ConfigError(
            f"--resume: the data differs from the run in {folder} (fingerprint mismatch); resume with "
            "the same data, or start a new --out"
        )
    return record


def read_record(folder: Path) -> dict[str, Any] | None:
    """``run.json`` of ``folder``, ``None`` when there is none.

    Raises:
        ConfigError: the record is empty or not a run record (e.g. cut short by a full disk).
    """
    file = folder / RUN_FILE
    if not file.is_file():
        return None
    try:
        record = json.loads(file.read_text(encoding="utf-8"))
        problem = None if isinstance(record, dict) and isinstance(record.get("config"), dict) else "no config"
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        problem = "empty file" if not file.read_bytes().strip() else f"not valid JSON: {exc}"
    if problem is not None:
        raise ConfigError(
            f"{file} is broken ({problem}), so the run in {folder} cannot be resumed or checked. Pass "
            f"--overwrite to start it afresh there (its checkpoints and bundle are replaced), or choose "
            "another --out"
        )
    return record


def config_diff(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    """``key: before -> after`` for every setting that differs between two config dicts."""
    out = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += config_diff(va, vb, f"{prefix}{key}.")
        elif va != vb:
            out.append(f"{prefix}{key}: {va!r} -> {vb!r}")
    return out


def _in_the_way(folder: Path) -> tuple[list[str], str]:
    """What in ``folder`` graft did not write (so may not replace), and why that matters.

    Without a run record the folder must be empty (OS litter and graft's own lock aside); with one,
    ``config.yaml`` must be what the record says, ``checkpoints/`` hold checkpoint files only and
    ``bundle/`` be an intact bundle. Other files beside them are the user's and are never touched.
    """
    if not (folder / RUN_FILE).is_file():
        present = [
            name for name in _walk(folder) if name != LOCK_FILE and name.rsplit("/", 1)[-1] not in OS_METADATA
        ]
        kind = "a bundle" if (folder / "graft.json").is_file() else "not empty"
        return (
            present,
            f"it is {kind} and holds no graft run ({RUN_FILE}); a run folder is new, empty or a run's",
        )
    record = read_record(folder) or {}
    found = []
    config = folder / CONFIG_FILE
    if config.exists() and not _is_config_of(config, record.get("config")):
        found.append(f"{CONFIG_FILE} (changed after graft wrote it)")
    from graft.engine import is_checkpoint_file

    if folder.joinpath(CHECKPOINTS).exists():
        found += [
            f"{CHECKPOINTS}/{name}" for name in _walk(folder / CHECKPOINTS) if not is_checkpoint_file(name)
        ]
    found += [f"{BUNDLE}/{name}" for name in bundle_in_the_way(folder / BUNDLE)]
    return found, ""


def _is_config_of(path: Path, config: Any) -> bool:
    """``config.yaml`` is what graft wrote for the run record's config, byte for byte (a comment a
    person added would be lost if graft rewrote it)."""
    try:
        return path.read_text(encoding="utf-8") == RunConfig.from_dict(config, source=RUN_FILE).yaml_text()
    except (OSError, ValueError):
        return False


def _walk(folder: Path) -> list[str]:
    """Every file and symlink under ``folder``, relative to it (symlinks never followed)."""
    out = []
    for root, dirs, names in os.walk(folder):
        links = [d for d in dirs if Path(root, d).is_symlink()]
        out += [Path(root, n).relative_to(folder).as_posix() for n in [*names, *links]]
    return sorted(out)


def _remove_checkpoints(folder: Path) -> None:
    """Remove the checkpoint files under ``folder`` and the folders they leave empty; anything else
    (a file graft did not write) stays."""
    if not folder.is_dir():
        return
    from graft.engine import is_checkpoint_file

    for name in _walk(folder):
        if is_checkpoint_file(name):
            (folder / name).unlink(missing_ok=True)
    for root, _dirs, _names in sorted(os.walk(folder), key=lambda entry: -len(entry[0])):
        with contextlib.suppress(OSError):
            Path(root).rmdir()  # only succeeds on an empty folder


def _remove_run(folder: Path) -> None:
    for name in _OWNED:
        target = folder / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()
    remove_stale_temporaries(folder / BUNDLE)
    remove_stale_temporaries(folder / RUN_FILE)


@contextlib.contextmanager
def _exclusive_lock(folder: Path) -> Iterator[None]:
    """Hold ``folder/.graft.lock`` (``flock``, never blocking) while the run uses the folder.

    The file is removed on release; a process that opened it just before can then lock an unlinked
    file, so the lock only counts once the path still names the locked file (checked after locking).
    """
    try:
        import fcntl
    except ImportError:  # Windows: no flock; the run.json checks still apply
        yield
        return
    path = folder / LOCK_FILE
    fd = _locked_descriptor(path, fcntl)
    try:
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        os.close(fd)  # closing the descriptor releases the lock


def _locked_descriptor(path: Path, fcntl: Any) -> int:
    for _ in range(10):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise ConfigError(
                f"{path.parent} is in use by another graft run (process {holder}); wait for it to finish, "
                "or choose another --out"
            ) from None
        try:
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                os.ftruncate(fd, 0)
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)  # the holder removed the file meanwhile: lock the new one
    raise ConfigError(f"{path.parent}: could not lock the run folder (it keeps changing); try again")
