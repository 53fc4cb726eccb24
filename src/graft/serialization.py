"""Writing artifacts so that nothing is lost: safetensors state dicts, atomic files and folders, sha256.

Pickle is never used: tensors go to safetensors, structure to JSON.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load, load_file, save


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def save_tensors(
    tensors: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict[str, str] | None = None
) -> None:
    """safetensors file of CPU tensors; tensors sharing storage (tied weights) are stored as copies.

    The same tensors and metadata give the same bytes in every process (see :func:`_sorted_metadata`).
    """
    seen: set[tuple[int, int]] = set()
    out = {}
    for name, tensor in tensors.items():
        t = tensor.detach().to("cpu")
        key = (t.untyped_storage().data_ptr(), t.storage_offset()) if t.numel() else (0, id(t))
        if key in seen or not t.is_contiguous():
            t = t.clone().contiguous()
        seen.add(key)
        out[name] = t
    Path(path).write_bytes(_sorted_metadata(save(out, metadata=metadata)))
    _follow_umask(path, 0o666)  # an existing file keeps its mode through write_bytes


def _sorted_metadata(data: bytes) -> bytes:
    """``data`` (a safetensors file) with the ``__metadata__`` keys of its JSON header in sorted order.

    safetensors writes them from a Rust HashMap, whose order changes from process to process: two
    identical trainings would give files with different sha256. The tensors' entries keep their
    order; their offsets count from the end of the header, so the header's length may change (it is
    padded with spaces to a multiple of 8, as safetensors does).
    """
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    if "__metadata__" not in header:
        return data
    header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + data[8 + n :]


def load_tensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def tensors_from_bytes(data: bytes) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file already read (and verified) as ``data``; no second read.

    Raises:
        ValueError: ``data`` is not a valid safetensors file.
    """
    try:
        return load(data)
    except Exception as exc:  # safetensors raises its own error types (and OverflowError, ...)
        raise ValueError(str(exc) or type(exc).__name__) from None


def write_json(path: str | os.PathLike, data: Any) -> None:
    Path(path).write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n", encoding="utf-8")


def current_umask() -> int:
    """The process umask (read without changing it where /proc allows; else set and restored)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _follow_umask(path: str | os.PathLike, mode: int) -> None:
    # mkstemp/mkdtemp create 0600/0700 whatever the umask; a renamed-into-place artifact must get
    # the permissions an ordinary open()/mkdir() would have given it (shared model folders).
    os.chmod(path, mode & ~current_umask())


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename (permissions follow the umask)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        _follow_umask(tmp, 0o666)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_directory(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside ``target``; on success it replaces ``target`` by renames.

    A reader sees the old folder or the new one, never half of one. On error the temporary folder
    is removed and ``target`` is untouched.
    """
    with atomic_outputs(target) as (staged,):
        staged.mkdir()
        yield staged


@contextlib.contextmanager
def atomic_outputs(*targets: str | os.PathLike) -> Iterator[tuple[Path, ...]]:
    """Write several outputs (files or folders) so that all of them land, or none.

    Yields one path per target, in a temporary folder beside it (so on the target's own filesystem:
    the final rename never crosses devices); the caller creates a file or a folder there, or nothing
    (that target is then left as it is). On success every staged path is renamed onto its target;
    if one rename fails, the targets already replaced get their old content back. On error nothing
    is replaced and the staged paths are removed. Permissions follow the umask.
    """
    paths = [Path(t) for t in targets]
    stages = []
    try:
        for target in paths:
            target.parent.mkdir(parents=True, exist_ok=True)
            stages.append(Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")))
        staged = [stage / target.name for stage, target in zip(stages, paths, strict=True)]
        yield tuple(staged)
        _commit(list(zip(paths, staged, strict=True)))
    finally:
        for stage in stages:
            shutil.rmtree(stage, ignore_errors=True)


def _commit(pairs: list[tuple[Path, Path]]) -> None:
    """Rename each staged path onto its target; undo the renames done so far if one fails."""
    done: list[tuple[Path, Path | None]] = []
    try:
        for target, staged in pairs:
            if not staged.exists() and not staged.is_symlink():
                continue
            backup = None
            if target.exists() or target.is_symlink():
                backup = target.parent / f".{target.name}.old-{os.getpid()}"
                _remove(backup)
                _set_aside(target, backup)
            try:
                os.replace(staged, target)
            except BaseException:
                if backup is not None:
                    os.replace(backup, target)
                raise
            done.append((target, backup))
    except BaseException:
        for target, backup in reversed(done):
            _remove(target)
            if backup is not None:
                os.replace(backup, target)
        raise
    for _, backup in done:
        if backup is not None:
            _remove(backup)


def _set_aside(target: Path, backup: Path) -> None:
    """Keep ``target`` as ``backup``: a file by a hard link (it never goes missing: the rename that
    follows replaces it atomically), a folder by a rename."""
    if target.is_file() and not target.is_symlink():
        with contextlib.suppress(OSError):
            os.link(target, backup)
            return
    os.replace(target, backup)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def remove_stale_temporaries(target: str | os.PathLike) -> None:
    """Remove what an interrupted :func:`atomic_directory` or :func:`atomic_write_bytes` of
    ``target`` left beside it (``.<name>.*.tmp``, ``.<name>.old-*``).

    Only for a caller that knows no other process is writing ``target`` (the run folder's lock).
    """
    target = Path(target)
    if not target.parent.is_dir():
        return
    for pattern in (f".{target.name}.*.tmp", f".{target.name}.old-*"):
        for stale in target.parent.glob(pattern):
            _remove(stale)
