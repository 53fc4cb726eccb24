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
from graft.errors import ConfigError
from graft.serialization import atomic_write_bytes, remove_stale_temporaries

RUN_FILE = "run.json"
LOCK_FILE = ".graft.lock"
CHECKPOINTS = "checkpoints"
BUNDLE = "bundle"
_OWNED = (CHECKPOINTS, BUNDLE, RUN_FILE, "config.yaml")


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
        cfg.to_yaml(self.path / "config.yaml")

    def finish(self, cfg: RunConfig, fingerprint: str) -> None:
        """Mark the run complete and remove what only an interrupted run needs."""
        self.write_record(cfg, "complete", fingerprint)
        self.clean_leftovers()

    def clean_leftovers(self) -> None:
        shutil.rmtree(self.checkpoints, ignore_errors=True)
        remove_stale_temporaries(self.bundle)
        remove_stale_temporaries(self.path / RUN_FILE)


@contextlib.contextmanager
def claim_run_folder(
    out: str | Path, cfg: RunConfig, fingerprint: str, *, resume: bool, overwrite: bool
) -> Iterator[RunFolder]:
    """Lock ``out`` for this process and check it against the requested run.

    A new run gets a ``running`` record; ``resume`` continues an earlier run with the same settings
    and data; ``overwrite`` replaces whatever the folder holds (a broken record included).

    Raises:
        ConfigError: the folder is in use by another process, holds another run (without
            ``resume``/``overwrite``), holds a run with other settings or data, or has a broken
            record; each message says how to go on.
    """
    check_run_flags(out, resume=resume, overwrite=overwrite)
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(folder):
        run = RunFolder(folder)
        if overwrite:
            _remove_run(folder)
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
    out: str | Path | None, cfg: RunConfig, fingerprint: str, *, resume: bool, overwrite: bool
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
    with claim_run_folder(out, cfg, fingerprint, resume=resume, overwrite=overwrite) as run:
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
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
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
