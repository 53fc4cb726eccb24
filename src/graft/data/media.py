"""Reading image and audio datasets: class folders, split trees, tables of paths, labels from names.

Layouts understood::

    root/<class>/<file>                     one tree, split by the protocol
    root/{train,val,test}/<class>/<file>    the split is the layout's (see :func:`layout_splits`)
    root/<file>   + label_regex             labels taken from file names (FSDD: '^(\\d+)_')
    table.csv / .jsonl with a path column   paths relative to the table's folder, + a label column

Examples become absolute path strings; files are decoded lazily, batch by batch, by the backbone's
preprocessing (in worker processes), never all at once. Before any work every file is decoded once
(:func:`graft.data.images.check_image` / :func:`graft.data.audio.check_audio`) and every broken one
is reported in one :class:`DataError`, or skipped and listed with ``skip_bad`` (as are rows of a
table with an empty or missing path). Which names are images and which audio is decided by
:mod:`graft.data.formats`: every format Pillow or soundfile reads.
"""

from __future__ import annotations

import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from graft.config import DataConfig
from graft.data.dataset import SKIP_BAD_HINT, DataReport, Dataset, build_dataset, leave_out
from graft.data.encodings import decode_bytes, decode_head, emit_warnings
from graft.data.formats import describe_formats, media_modality, media_name_pattern
from graft.data.text import (
    Table,
    _resolve_column,
    attach_groups,
    detect_label_column,
    read_table,
    table_from_object,
)
from graft.errors import ContractError, DataError, format_problems

PATH_NAMES = (
    "path",
    "file",
    "filename",
    "file_name",
    "filepath",
    "image",
    "image_path",
    "img",
    "audio",
    "audio_path",
    "wav",
    "clip",
    "location",
)
SPLIT_NAMES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "dev": "val",
    "test": "test",
    "testing": "test",
}


def _media_files(folder: Path) -> tuple[dict[str, list[Path]], list[Path]]:
    """Media files under ``folder`` by modality (sorted), and the other files (ignored)."""
    found: dict[str, list[Path]] = {"image": [], "audio": []}
    other: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            path = Path(dirpath) / name
            modality = media_modality(name)
            (found[modality] if modality else other).append(path)
    return found, other


def _one_modality(found: dict[str, list[Path]], where: str) -> str:
    present = [m for m, files in found.items() if files]
    if not present:
        raise DataError(f"{where}: no {describe_formats('image')} or {describe_formats('audio')} found")
    if len(present) > 1:
        counts = ", ".join(f"{len(found[m])} {m}" for m in present)
        raise DataError(f"{where}: mixes input types ({counts} files); keep one type per dataset")
    return present[0]


def layout_splits(path: str | os.PathLike) -> dict[str, Path]:
    """``{"train": ..., "val": ..., "test": ...}`` sub-trees when ``path`` is laid out that way, else {}."""
    root = Path(path)
    if not root.is_dir():
        return {}
    subdirs = [d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")]
    named = {SPLIT_NAMES.get(d.name.lower()): d for d in subdirs}
    if "train" not in named or None in named or len(named) != len(subdirs):
        return {}
    return {k: v for k, v in named.items() if k}


def detect_modality(data: Any, cfg: DataConfig | None = None) -> str:
    """The input type of a data source, from file names only (cheap: nothing is decoded)."""
    cfg = cfg or DataConfig()
    if isinstance(data, str | os.PathLike):
        path = Path(data)
        if path.is_dir():
            found, _ = _media_files(path)
            return _one_modality(found, str(path))
        modality = media_modality(path.name)
        if modality:
            return modality
        if not path.exists():
            return "text"  # read_table names the missing file
        with path.open("rb") as f:
            head = decode_head(f.read(65536), cfg.encoding)
        if not media_name_pattern().search(head):
            return "text"  # no file names of media in the first 64 KB: not worth reading it all twice
        table = read_table(path, cfg)
    else:
        try:
            table = table_from_object(data)
        except DataError:
            if isinstance(data, list | tuple) and data and all(isinstance(x, str) for x in data):
                modalities = {media_modality(x) for x in data}
                return modalities.pop() if len(modalities) == 1 and None not in modalities else "text"
            return "text"
    j = _path_column(table, cfg.path_col)
    return "text" if j is None else _column_modality(table, j)


def _column_modality(table: Table, j: int) -> str:
    values = [str(v) for v in table.column(j) if v is not None]
    kinds = {media_modality(v) for v in values[:1000]}
    kinds.discard(None)
    return kinds.pop() if len(kinds) == 1 else "image"


def _path_column(table: Table, path_col: str | None) -> int | None:
    """The column of media paths: as named, else the one whose values are media file names."""
    if path_col:
        if path_col in table.columns:
            return table.columns.index(path_col)
        if path_col.isdigit() and int(path_col) < len(table.columns):
            return int(path_col)
        raise DataError(f"{table.source}: no path column {path_col!r}; the columns are {table.columns}")
    candidates = []
    for j in range(len(table.columns)):
        values = [v for v in table.column(j)[:500] if isinstance(v, str) and v.strip()]
        if values and sum(media_modality(v.strip()) is not None for v in values) >= 0.9 * len(values):
            candidates.append(j)
    if len(candidates) > 1:
        named = [j for j in candidates if table.columns[j].lower() in PATH_NAMES]
        candidates = named if len(named) == 1 else candidates
        if len(candidates) > 1:
            raise DataError(
                f"{table.source}: several columns hold file paths "
                f"({[table.columns[j] for j in candidates]}); "
                "pass --path-col"
            )
    return candidates[0] if candidates else None


def default_scan_workers() -> int:
    return max(1, min(8, (os.cpu_count() or 1) * 2))


def find_bad_files(paths: list[str], modality: str, workers: int | None = None) -> dict[int, str]:
    """``{index: reason}`` for the files that do not decode (each is decoded once, in threads)."""
    from graft.data.audio import check_audio
    from graft.data.images import check_image

    check = check_image if modality == "image" else check_audio
    workers = workers or default_scan_workers()
    if len(paths) < 64 or workers == 1:
        results = [check(p) for p in paths]
    else:
        with ThreadPoolExecutor(workers) as pool:
            results = list(pool.map(check, paths, chunksize=32))
    return {i: reason for i, reason in enumerate(results) if reason is not None}


def _drop_bad(
    paths: list[str], labels: list[Any], modality: str, cfg: DataConfig, source: str, report: DataReport
) -> tuple[list[str], list[Any], list[int]]:
    bad = find_bad_files(paths, modality)
    if not bad:
        return paths, labels, list(range(len(paths)))
    problems = [f"{paths[i]}: {reason}" for i, reason in sorted(bad.items())]
    if not cfg.skip_bad:
        raise DataError(
            format_problems(
                f"{source}: {len(bad)} of {len(paths)} {modality} files cannot be decoded (fix or remove "
                "them, or pass --skip-bad to leave them out; they will be listed in the report)",
                problems,
            )
        )
    leave_out(problems, f"unreadable {modality} files", report)
    keep = [i for i in range(len(paths)) if i not in bad]
    return [paths[i] for i in keep], [labels[i] for i in keep], keep


def _folder_labels(root: Path, files: list[Path], cfg: DataConfig) -> tuple[list[Any], str]:
    if cfg.label_regex:
        pattern = re.compile(cfg.label_regex)
        labels, problems = [], []
        for f in files:
            match = pattern.search(f.name)
            if match is None or match.group(1) is None:
                problems.append(f"{f}: the name does not match --label-regex {cfg.label_regex!r}")
                labels.append(None)
            else:
                labels.append(match.group(1))
        if problems:
            raise DataError(format_problems(f"{root}: {len(problems)} files without a label", problems))
        return labels, f"labels from file names ({cfg.label_regex!r})"
    loose = [f for f in files if f.parent == root]
    if loose:
        raise DataError(
            f"{root}: {len(loose)} files lie directly in the folder (e.g. {loose[0].name!r}), not in a "
            "class sub-folder; put each class in its own folder (root/<class>/<file>), or take labels "
            "from the file names with --label-regex (e.g. '^(\\d+)_')"
        )
    return [f.relative_to(root).parts[0] for f in files], "labels from class folders"


def read_media_folder(path: str | os.PathLike, cfg: DataConfig | None = None, **build: Any) -> Dataset:
    """A folder of class sub-folders (or of files labeled by ``cfg.label_regex``) as a Dataset."""
    cfg = cfg or DataConfig()
    root = Path(path)
    found, other = _media_files(root)
    modality = _one_modality(found, str(root))
    files = found[modality]
    labels, how = _folder_labels(root, files, cfg)
    report = DataReport()
    report.notes.append(f"{modality} files: {len(files)}, {how}")
    if other:
        report.notes.append(f"ignored {len(other)} non-{modality} files (e.g. {other[0].name!r})")
    paths = [str(f.resolve()) for f in files]
    paths, labels, rows = _drop_bad(paths, labels, modality, cfg, str(root), report)
    return build_dataset(
        paths,
        labels,
        modality=modality,
        source=str(root),
        rows=rows,
        report=report,
        label_sep=cfg.label_sep,
        skip_bad=cfg.skip_bad,
        **build,
    )


def read_media_table(
    table: Table, cfg: DataConfig, path_j: int, prefer_label: str | None = None, **build: Any
) -> Dataset:
    """A table whose ``path_j`` column holds file paths (relative to the table's folder)."""
    label_col = cfg.label_col or (prefer_label if prefer_label in table.columns else None)
    label_j = _resolve_column(table, label_col, "label") if label_col else detect_label_column(table, path_j)
    modality = _column_modality(table, path_j)
    report = table.report
    paths, kept = _table_paths(table, path_j, modality, cfg.skip_bad)
    report.notes.insert(0, f"columns: path={table.columns[path_j]!r}, label={table.columns[label_j]!r}")
    labels = [table.records[i][label_j] for i in kept]
    paths, labels, keep = _drop_bad(paths, labels, modality, cfg, table.source, report)
    ds = build_dataset(
        paths,
        labels,
        modality=modality,
        source=table.source,
        rows=[table.rows[kept[k]] for k in keep],
        source_is_file=table.is_file,
        text_col=table.columns[path_j],
        label_col=table.columns[label_j],
        report=report,
        label_sep=cfg.label_sep,
        skip_bad=cfg.skip_bad,
        **build,
    )
    return attach_groups(ds, table, cfg.group_col)


def _table_paths(table: Table, path_j: int, modality: str, skip_bad: bool) -> tuple[list[str], list[int]]:
    """The absolute path of each row, and the rows kept (``skip_bad`` leaves out empty and missing ones)."""
    base = Path(table.source).parent if table.is_file else Path.cwd()
    paths, kept, problems = [], [], []
    for i, value in enumerate(table.column(path_j)):
        if not isinstance(value, str) or not value.strip():
            problems.append(f"{table.where(i)}: empty path")
            continue
        file = Path(value.strip())
        file = file if file.is_absolute() else base / file
        if not file.is_file():
            problems.append(f"{table.where(i)}: file not found: {file}")
        elif media_modality(file.name) != modality:
            problems.append(f"{table.where(i)}: {file.name} is not a {modality} file like the others")
        else:
            paths.append(str(file.resolve()))
            kept.append(i)
    if problems and (not skip_bad or not kept):
        hint = "" if skip_bad else f"\n{SKIP_BAD_HINT}"
        raise DataError(format_problems(f"{table.source}: {len(problems)} bad paths", problems) + hint)
    if problems:
        leave_out(problems, "rows with bad paths", table.report)
    return paths, kept


def read_media_inputs(
    data: Any, modality: str, path_col: str | None = None, encoding: str | None = None
) -> list[str]:
    """Unlabeled image/audio files for prediction, checked against the model's modality.

    ``data`` is a folder (every file of the modality in it), one file, a list of paths, a CSV/JSONL
    with a path column, or a ``.txt`` file with one path per line (read with ``encoding``).

    Raises:
        ContractError: inputs of another type (text, or files of the other media type).
        DataError: missing or undecodable files.
    """
    base = Path.cwd()
    if isinstance(data, str | os.PathLike):
        path = Path(data)
        if path.is_dir():
            found, _ = _media_files(path)
            present = [m for m, f in found.items() if f]
            if modality not in present:
                got = present[0] if present else "no media"
                raise ContractError(
                    f"{path}: this model takes {modality} files but the folder holds {got} files; use a "
                    f"model trained on {got} data"
                    if present
                    else f"{path}: no {modality} files found"
                )
            values = [str(f) for f in found[modality]]
        elif media_modality(path.name):
            values = [str(path)]
        elif path.suffix.lower() == ".txt" and path.is_file():
            report = DataReport()
            text = decode_bytes(path.read_bytes(), str(path), encoding, report)
            emit_warnings(report)
            values, base = [line.strip() for line in text.splitlines() if line.strip()], path.parent
        else:
            table = read_table(path, DataConfig(path_col=path_col, encoding=encoding))
            emit_warnings(table.report)
            values, base = _inputs_from_table(table, path_col, modality), path.parent
    elif isinstance(data, list | tuple) and all(isinstance(x, str | os.PathLike) for x in data):
        values = [str(x) for x in data]
    else:
        values = _inputs_from_table(table_from_object(data), path_col, modality)
    problems = []
    resolved = []
    for i, value in enumerate(values):
        kind = media_modality(value)
        if kind != modality:
            suffix = Path(value).suffix
            what = (
                f"{kind} file"
                if kind
                else (f"a {suffix} file" if suffix else "no file name with a known extension")
            )
            raise ContractError(
                f"input {i} ({value[:80]!r}): this model takes {modality} files (modality {modality!r}); "
                f"got {what}. Use a model trained on that kind of data"
            )
        file = Path(value) if Path(value).is_absolute() else base / value
        if not file.is_file():
            problems.append(f"input {i}: file not found: {file}")
        resolved.append(str(file.resolve()))
    if problems:
        raise DataError(format_problems(f"{len(problems)} missing input files", problems))
    bad = find_bad_files(resolved, modality)
    if bad:
        raise DataError(
            format_problems(
                f"{len(bad)} input files cannot be decoded",
                [f"{resolved[i]}: {r}" for i, r in sorted(bad.items())],
            )
        )
    return resolved


def _inputs_from_table(table: Table, path_col: str | None, modality: str) -> list[str]:
    j = _path_column(table, path_col)
    if j is None:
        raise ContractError(
            f"{table.source}: this model takes {modality} files, but no column holds {modality} file "
            f"paths (columns {table.columns}); pass --path-col"
        )
    return [str(v) for v in table.column(j)]
