"""Reading text data: CSV, TSV (with or without header or quoting), JSONL, DataFrames, Python lists.

Everything becomes a :class:`Table` first (columns, records, the source row of each record), then
the text and label columns are chosen and :func:`graft.data.dataset.build_dataset` validates them.

Example:
    >>> ds = read_text_dataset("../shared/data/text/sst2/train.csv")   # doctest: +SKIP
    >>> ds.task, ds.label_space
    ('multiclass', ('negative', 'positive'))
"""

from __future__ import annotations

import csv
import functools
import io
import json
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from graft.config import DataConfig
from graft.data.dataset import (
    SKIP_BAD_HINT,
    DataReport,
    Dataset,
    build_dataset,
    is_blank,
    leave_out,
    text_problem,
)
from graft.data.encodings import decode_bytes, emit_warnings
from graft.data.formats import media_modality
from graft.errors import ContractError, DataError, format_problems

TEXT_NAMES = (
    "text", "sentence", "sentences", "review", "content", "message", "question", "utterance",
    "document", "body", "input", "query", "prompt", "comment", "tweet", "title", "description",
)  # fmt: skip
LABEL_NAMES = (
    "label", "labels", "target", "targets", "class", "category", "intent", "y", "sentiment",
    "tag", "tags", "output", "score", "rating",
)  # fmt: skip
JSONL_SUFFIXES = (".jsonl", ".ndjson")
TABLE_SUFFIXES = (".csv", ".tsv", ".tab", ".txt", ".json", *JSONL_SUFFIXES)


@dataclass
class Table:
    """Records read from a source, before columns are chosen.

    ``rows[i]`` is the source row of ``records[i]``: a 1-based line number for files, a 0-based
    position for in-memory data.
    """

    columns: list[str]
    records: list[list[Any]]
    rows: list[int]
    source: str
    is_file: bool
    has_header: bool = True
    report: DataReport = field(default_factory=DataReport)

    def __post_init__(self) -> None:
        # Two columns of one name: whichever is read, the other is silently ignored.
        seen: dict[str, int] = {}
        for j, name in enumerate(self.columns):
            if name and name in seen:
                raise DataError(
                    f"{self.source}: two columns are named {name!r} (columns {seen[name] + 1} and {j + 1}); "
                    "rename one, so that it is clear which to read"
                )
            seen.setdefault(name, j)

    def column(self, index: int) -> list[Any]:
        return [r[index] for r in self.records]

    def where(self, i: int) -> str:
        return f"line {self.rows[i]}" if self.is_file else f"row {self.rows[i]}"


# --------------------------------------------------------------------------------------------------
# files -> Table


def _delimiter_for(path: Path, sample: list[str]) -> str:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return ","
    if suffix in (".tsv", ".tab"):
        return "\t"
    lines = [s for s in sample if s.strip()]
    if lines and all("\t" in s for s in lines):
        return "\t"
    return ","


_QUOTED_FIELD = r'(?:"(?:[^"]|"")*"|[^"\t]*)'
_QUOTED_LINE = re.compile(rf"^{_QUOTED_FIELD}(?:\t{_QUOTED_FIELD})*\r?$")


def _tsv_is_quoted(lines: list[str]) -> bool:
    """A TSV uses quoting only if every field is either wholly quoted or free of quotes.

    Real TSVs (e.g. the SMS spam collection) put bare ``"`` inside texts; parsing those as quotes
    would swallow newlines and merge rows.
    """
    saw_quote = False
    for line in lines:
        if '"' not in line:
            continue
        if not _QUOTED_LINE.match(line):
            return False
        saw_quote = True
    return saw_quote


def _looks_like_header(first: list[str], rest: list[list[str]], wanted: set[str]) -> bool:
    cells = [c.strip() for c in first]
    if wanted & set(cells):
        return True
    if any(_is_number(c) for c in cells if c):
        return False
    lowered = {c.lower() for c in cells}
    if lowered & (set(TEXT_NAMES) | set(LABEL_NAMES)):
        return True
    for j, cell in enumerate(cells):
        # A value that repeats further down its column is data (a label), not a column name.
        if cell and any(len(r) > j and r[j].strip() == cell for r in rest[:500]):
            return False
    return all(0 < len(c) <= 40 for c in cells) and len(set(cells)) == len(cells)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


@functools.cache
def _allow_fields_of_any_size() -> None:
    """Lift the csv module's 131,072-character field limit: a long document in one cell is valid
    CSV (and reads as JSONL already)."""
    csv.field_size_limit(2**31 - 1)  # the limit is a C long, 32 bits on Windows


def _skip_or_raise(header: str, problems: list[str], total: int, skip_bad: bool, report: DataReport) -> None:
    """Unparsable records: one error naming them all, or (``skip_bad``) each listed in the report.

    A file whose every record is bad is an error even with ``skip_bad``: it was not read right.
    """
    if skip_bad and len(problems) < total:
        leave_out(problems, "unparsable lines", report)
        return
    hint = "" if skip_bad else f"\n{SKIP_BAD_HINT}"
    raise DataError(format_problems(header, problems) + hint)


def _drop_wrong_widths(
    body: list[tuple[int, list[str]]], width: int, source: str, dialect: tuple[str, int], cfg: DataConfig,
    report: DataReport,
) -> list[tuple[int, list[str]]]:  # fmt: skip
    bad = {
        line: f"line {line}: expected {width} fields, found {len(rec)}"
        for line, rec in body
        if len(rec) != width
    }
    if not bad:
        return body
    delimiter, quoting = dialect
    sep = "tab" if delimiter == "\t" else repr(delimiter)
    hint = "; is the file quoted consistently?" if quoting == csv.QUOTE_MINIMAL else ""
    header = (
        f"{source}: {len(bad)} row(s) with the wrong number of {sep}-separated fields "
        f"(header has {width}{hint})"
    )
    _skip_or_raise(header, list(bad.values()), len(body), cfg.skip_bad, report)
    return [(line, rec) for line, rec in body if line not in bad]


def read_delimited(path: Path, text: str, cfg: DataConfig, report: DataReport) -> Table:
    _allow_fields_of_any_size()
    source = str(path)
    lines = text.splitlines()
    delimiter = _delimiter_for(path, lines[:50])
    quoting = csv.QUOTE_MINIMAL
    if delimiter == "\t" and not _tsv_is_quoted(lines):
        quoting = csv.QUOTE_NONE
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, quoting=quoting, strict=False)
    parsed: list[tuple[int, list[str]]] = []
    start = 1
    try:
        for record in reader:
            if record and any(cell.strip() for cell in record):
                parsed.append((start, record))
            start = reader.line_num + 1
    except csv.Error as exc:
        raise DataError(f"{source}: line {reader.line_num}: cannot parse: {exc}") from None
    if not parsed:
        raise DataError(f"{source}: the file is empty")

    wanted = {c for c in (cfg.text_col, cfg.label_col) if c}
    first = parsed[0][1]
    if cfg.header == "auto":
        has_header = _looks_like_header(first, [r for _, r in parsed[1:]], wanted)
    else:
        has_header = cfg.header == "yes"
    if has_header:
        columns = [c.strip() for c in first]
        body = parsed[1:]
    else:
        columns = [str(j) for j in range(len(first))]
        body = parsed
    body = _drop_wrong_widths(body, len(columns), source, (delimiter, quoting), cfg, report)
    if quoting == csv.QUOTE_NONE and any('"' in line for line in lines[:1000]):
        report.notes.append(f"{path.name}: read without quote handling (its quotes are part of the text)")
    return Table(
        columns=columns,
        records=[rec for _, rec in body],
        rows=[line for line, _ in body],
        source=source,
        is_file=True,
        has_header=has_header,
        report=report,
    )


class _Fields(dict):
    """A JSON object, with the keys it names more than once (``json`` keeps the last silently)."""

    def __init__(self, pairs: list[tuple[str, Any]]) -> None:
        super().__init__(pairs)
        self.repeated: list[str] = []
        if len(self) < len(pairs):
            counts = Counter(k for k, _ in pairs)
            self.repeated = sorted(k for k, n in counts.items() if n > 1)


def _object_problem(obj: Any) -> str | None:
    """Why a parsed record is not a usable object of named fields, or ``None``."""
    if not isinstance(obj, dict):
        return f"expected a JSON object with named fields, got {type(obj).__name__}"
    if getattr(obj, "repeated", None):
        return f"field {obj.repeated[0]!r} appears twice in one object; keep one"
    return None


def _json_array_objects(text: str, source: str) -> tuple[list[tuple[int, Any]], list[str]]:
    try:
        data = json.loads(text, object_pairs_hook=_Fields)
    except json.JSONDecodeError as exc:
        raise DataError(f"{source}: line {exc.lineno}: not valid JSON: {exc.msg}") from None
    except RecursionError:
        raise DataError(f"{source}: not valid JSON: nested too deeply") from None
    objects, problems = [], []
    for i, obj in enumerate(data if isinstance(data, list) else [data]):
        problem = _object_problem(obj)
        if problem:
            problems.append(f"item {i}: {problem}")
        else:
            objects.append((i, obj))
    return objects, problems


def _json_line_objects(text: str) -> tuple[list[tuple[int, Any]], list[str]]:
    objects, problems = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line, object_pairs_hook=_Fields)
        except json.JSONDecodeError as exc:
            problems.append(f"line {number}: not valid JSON ({exc.msg} at column {exc.colno})")
            continue
        except RecursionError:
            problems.append(f"line {number}: not valid JSON (nested too deeply)")
            continue
        problem = _object_problem(obj)
        if problem:
            problems.append(f"line {number}: {problem}")
        else:
            objects.append((number, obj))
    return objects, problems


def read_json_records(path: Path, text: str, report: DataReport, skip_bad: bool = False) -> Table:
    """A JSON array of objects (``.json``) or one object per line; ``skip_bad`` leaves bad lines out."""
    source = str(path)
    is_array = path.suffix.lower() == ".json" and text.lstrip().startswith("[")
    objects, problems = _json_array_objects(text, source) if is_array else _json_line_objects(text)
    if problems:
        total = len(objects) + len(problems)
        _skip_or_raise(f"{source}: {len(problems)} bad JSON line(s)", problems, total, skip_bad, report)
    if not objects:
        raise DataError(f"{source}: the file is empty")
    columns: list[str] = []
    for _, obj in objects:
        for key in obj:
            if key not in columns:
                columns.append(key)
    records = [[obj.get(c) for c in columns] for _, obj in objects]
    rows = [where for where, _ in objects]
    return Table(columns, records, rows, source, is_file=not is_array, report=report)


def read_table(path: str | os.PathLike, cfg: DataConfig | None = None) -> Table:
    """Read a CSV/TSV/JSONL/JSON file into a :class:`Table`."""
    cfg = cfg or DataConfig()
    path = Path(path)
    if not path.exists():
        raise DataError(f"file not found: {path}")
    if path.is_dir():
        raise DataError(
            f"{path} is a folder; text data is read from a CSV, TSV, JSONL or JSON file "
            f"({', '.join(TABLE_SUFFIXES)})"
        )
    report = DataReport()
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror}") from None
    text = decode_bytes(raw, str(path), cfg.encoding, report)
    suffix = path.suffix.lower()
    if suffix in JSONL_SUFFIXES or suffix == ".json":
        return read_json_records(path, text, report, cfg.skip_bad)
    return read_delimited(path, text, cfg, report)


def table_from_object(data: Any) -> Table:
    """A DataFrame, a dict of columns, a list of dicts or a list of (text, label) pairs."""
    if isinstance(data, Table):
        return data
    if type(data).__module__.startswith("pandas") and hasattr(data, "columns"):
        columns = [str(c) for c in data.columns]
        records = [list(r) for r in data.itertuples(index=False, name=None)]
        return Table(columns, records, list(range(len(records))), "<DataFrame>", is_file=False)
    if isinstance(data, dict):
        columns = [str(k) for k in data]
        values = [list(v) for v in data.values()]
        lengths = {len(v) for v in values}
        if len(lengths) > 1:
            sizes = {c: len(v) for c, v in zip(columns, values, strict=True)}
            raise DataError(f"<dict>: columns have different lengths {sizes}; give one value per row")
        records = [list(r) for r in zip(*values, strict=True)]
        return Table(columns, records, list(range(len(records))), "<dict>", is_file=False)
    if isinstance(data, list | tuple):
        items = list(data)
        if items and all(isinstance(x, dict) for x in items):
            columns = []
            for x in items:
                columns.extend(k for k in x if k not in columns)
            records = [[x.get(c) for c in columns] for x in items]
            return Table(columns, records, list(range(len(items))), "<list>", is_file=False)
        if items and all(isinstance(x, list | tuple) and len(x) == 2 for x in items):
            records = [list(x) for x in items]
            return Table(["text", "label"], records, list(range(len(items))), "<list>", is_file=False)
        raise DataError(
            "<list>: expected dicts like {'text': ..., 'label': ...} or (text, label) pairs; "
            "for a plain list of texts pass the labels separately: graft.fit(texts, labels=labels)"
        )
    raise DataError(
        f"cannot read data of type {type(data).__name__}; give a file path, a pandas DataFrame, a dict "
        "of columns or a list of (text, label) pairs"
    )


# --------------------------------------------------------------------------------------------------
# choosing columns


def attach_groups(ds: Dataset, table: Table, group_col: str | None) -> Dataset:
    """``ds`` with each example's group id from ``group_col`` of ``table`` (``Dataset.groups``); a
    row without one is a group of its own."""
    if not group_col:
        return ds
    import numpy as np

    j = _resolve_column(table, group_col, "group")
    position = {row: i for i, row in enumerate(table.rows)}
    values = [table.records[position[row]][j] for row in ds.rows]
    missing = [v is None or (isinstance(v, float) and v != v) or not str(v).strip() for v in values]
    ids = [f"\0row{row}" if gap else str(v) for v, gap, row in zip(values, missing, ds.rows, strict=True)]
    ds.groups = np.array(ids, dtype=str)
    ds.group_col = table.columns[j]
    ds.report.notes.append(f"groups: {len(set(ids))} in column {table.columns[j]!r}")
    return ds


def _resolve_column(table: Table, name: str, role: str) -> int:
    if name in table.columns:
        return table.columns.index(name)
    if name.isdigit() and int(name) < len(table.columns):
        return int(name)
    hint = "" if table.has_header else " (the file has no header: use 0-based column numbers)"
    raise DataError(
        f"{table.source}: no {role} column {name!r}; the columns are {table.columns}{hint}; pass --{role}-col"
    )


def _by_name(table: Table, names: tuple[str, ...], exclude: set[int]) -> list[int]:
    return [j for j, c in enumerate(table.columns) if c.lower() in names and j not in exclude]


def _textlike(table: Table, j: int) -> bool:
    values = [v for v in table.column(j)[:500] if v is not None]
    strings = [v for v in values if isinstance(v, str) and v.strip() and not _is_number(v)]
    return bool(values) and len(strings) >= 0.9 * len(values)


def _mean_length(table: Table, j: int) -> float:
    values = [str(v) for v in table.column(j)[:500] if v is not None]
    return sum(map(len, values)) / max(1, len(values))


def detect_label_column(table: Table, input_j: int) -> int:
    """The label column beside input column ``input_j``: the one with a label-like name, or the
    only other column."""
    named = _by_name(table, LABEL_NAMES, {input_j})
    others = [j for j in range(len(table.columns)) if j != input_j]
    if len(named) == 1:
        return named[0]
    if len(others) == 1:
        return others[0]
    raise DataError(
        f"{table.source}: cannot tell which column holds the label among {table.columns}; pass --label-col"
    )


def choose_columns(
    table: Table,
    text_col: str | None,
    label_col: str | None,
    prefer: tuple[str | None, str | None] = (None, None),
) -> tuple[int, int]:
    """Indices of the text and label columns: as given, or detected when unambiguous.

    ``prefer`` names columns to use when present and not given explicitly (a trained model's own
    column names, when reading its evaluation data).
    """
    if table.has_header:
        text_col = text_col or (prefer[0] if prefer[0] in table.columns else None)
        label_col = label_col or (prefer[1] if prefer[1] in table.columns else None)
    label_j = _resolve_column(table, label_col, "label") if label_col else None
    text_j = _resolve_column(table, text_col, "text") if text_col else None
    if text_j is None:
        taken = {label_j} if label_j is not None else set()
        named = _by_name(table, TEXT_NAMES, taken)
        if len(named) == 1:
            text_j = named[0]
        else:
            if label_j is None:
                taken |= set(_by_name(table, LABEL_NAMES, set()))
            candidates = [j for j in range(len(table.columns)) if j not in taken and _textlike(table, j)]
            if len(candidates) == 2 and not table.has_header:
                # Without a header, a text/label pair: the longer column is the text.
                candidates = [max(candidates, key=lambda j: _mean_length(table, j))]
                lengths = sorted(_mean_length(table, j) for j in range(len(table.columns)))
                if len(lengths) == 2 and lengths[1] < 2 * lengths[0]:
                    candidates = []
            if len(candidates) != 1:
                raise DataError(
                    f"{table.source}: cannot tell which column holds the text among {table.columns}; "
                    "pass --text-col"
                )
            text_j = candidates[0]
    if label_j is None:
        label_j = detect_label_column(table, text_j)
    if label_j == text_j:
        raise DataError(
            f"{table.source}: the text and label columns are the same ({table.columns[text_j]!r})"
        )
    return text_j, label_j


# --------------------------------------------------------------------------------------------------
# public entry points


def read_text_dataset(
    data: Any,
    cfg: DataConfig | None = None,
    *,
    labels: list[Any] | None = None,
    label_space: tuple[Any, ...] | None = None,
    task: str | None = None,
    require_min_per_class: bool = True,
    prefer_columns: tuple[str | None, str | None] = (None, None),
) -> Dataset:
    """Read labeled text data from a file path, DataFrame, dict, list of pairs, or texts + ``labels``.

    Args:
        data: the source.
        cfg: column names, task, delimiter, header and encoding settings; ``cfg.skip_bad`` leaves
            bad rows out (listed in the report) instead of raising.
        labels: labels of ``data`` when ``data`` is a plain list of texts.
        label_space: the label space to enforce (evaluation data of a trained model).
        task: overrides ``cfg.task`` (evaluation data uses the model's task).
        prefer_columns: (text, label) column names to use when the source has them.
    """
    cfg = cfg or DataConfig()
    task = task or cfg.task
    if labels is not None:
        if not isinstance(data, list | tuple):
            raise DataError("labels= is for a plain list of texts; a table carries its own label column")
        texts, raw_labels = list(data), list(labels)
        return build_dataset(
            texts, raw_labels, task=task, label_sep=cfg.label_sep, label_space=label_space,
            source="<list>", require_min_per_class=require_min_per_class, skip_bad=cfg.skip_bad,
        )  # fmt: skip
    table = read_table(data, cfg) if isinstance(data, str | os.PathLike) else table_from_object(data)
    text_j, label_j = choose_columns(table, cfg.text_col, cfg.label_col, prefer_columns)
    report = table.report
    report.notes.insert(0, f"columns: text={table.columns[text_j]!r}, label={table.columns[label_j]!r}")
    ds = build_dataset(
        table.column(text_j),
        table.column(label_j),
        task=task,
        label_sep=cfg.label_sep,
        label_space=label_space,
        source=table.source,
        rows=table.rows,
        source_is_file=table.is_file,
        text_col=table.columns[text_j],
        label_col=table.columns[label_j],
        report=report,
        require_min_per_class=require_min_per_class,
        skip_bad=cfg.skip_bad,
    )
    return attach_groups(ds, table, cfg.group_col)


def read_text_inputs(data: Any, text_col: str | None = None, encoding: str | None = None) -> list[str]:
    """Unlabeled texts for prediction, checked against a text model's contract.

    ``data`` is a list of strings, a DataFrame, or a file: CSV/TSV/JSONL (the text column is
    ``text_col``, the column the model was trained on) or a ``.txt`` file with one text per line.

    Raises:
        ContractError: inputs of another modality, a missing text column, or non-text values.
    """
    if isinstance(data, str) and not Path(data).exists() and not data.lower().endswith(TABLE_SUFFIXES):
        raise ContractError(
            f"expected a list of texts or a file of them; {data[:60]!r} is not a file. To predict one text, "
            "wrap it in a list: [text]"
        )
    if isinstance(data, str | os.PathLike):
        path = Path(data)
        if path.is_dir():
            _refuse_media_folder(path)
        if media_modality(path.name):
            _refuse_media([str(path)], str(path))
        if path.suffix.lower() == ".txt" and path.exists():
            report = DataReport()
            text = decode_bytes(path.read_bytes(), str(path), encoding, report)
            lines = [line for line in text.splitlines() if line.strip()]
            if lines and not all("\t" in line for line in lines[:50]):
                emit_warnings(report)
                _check_texts(lines, str(path))
                return lines
        table = read_table(path, DataConfig(text_col=text_col, encoding=encoding))
        emit_warnings(table.report)
    elif isinstance(data, list | tuple) and all(isinstance(x, str) for x in data):
        texts = list(data)
        _check_texts(texts, "<inputs>")
        return texts
    else:
        if isinstance(data, list | tuple):
            bad = next(i for i, x in enumerate(data) if not isinstance(x, str))
            raise ContractError(
                f"this model takes text (modality 'text'); input {bad} is {type(data[bad]).__name__} "
                f"{data[bad]!r}"
            )
        table = table_from_object(data)
    if text_col and text_col in table.columns:
        j = table.columns.index(text_col)
    elif len(table.columns) == 1:
        j = 0
    elif text_col and not (text_col.isdigit() and table.has_header):
        # A positional name (the model was trained on a file without a header) says nothing about
        # a file with named columns: those are matched by name below.
        raise ContractError(
            f"{table.source}: expected a text column {text_col!r} (the column this model was trained on); "
            f"the input has columns {table.columns}; pass --text-col to name the text column"
        )
    else:
        named = _by_name(table, TEXT_NAMES, set())
        if len(named) != 1:
            raise ContractError(
                f"{table.source}: cannot tell which column holds the text among {table.columns}; "
                "pass --text-col"
            )
        j = named[0]
    texts = table.column(j)
    _check_texts(texts, table.source, table)
    return texts


def _check_texts(texts: list[Any], source: str, table: Table | None = None) -> None:
    problems = []
    for i, t in enumerate(texts):
        where = table.where(i) if table else f"input {i}"
        if not isinstance(t, str):
            problems.append(f"{where}: {type(t).__name__} {t!r} is not text")
        elif is_blank(t):
            problems.append(
                f"{where}: empty text" + (f" (only invisible characters {t[:20]!r})" if t.strip() else "")
            )
        elif (problem := text_problem(t)) is not None:
            problems.append(f"{where}: {problem}")
    if problems:
        raise ContractError(format_problems(f"{source}: this model takes text (modality 'text')", problems))
    _refuse_media(texts, source)


_PATHLIKE = re.compile(r"^\S+\.([A-Za-z0-9]{2,5})$")


def _refuse_media(texts: list[str], source: str) -> None:
    """Inputs that are all file names of images or audio are a modality mismatch, not text."""
    names = [t.strip() for t in texts]
    # Looked at first: only inputs that all look like file names pay for loading the format lists.
    if not names or not all(_PATHLIKE.match(n) for n in names):
        return
    kinds = {media_modality(n) for n in names}
    if len(kinds) == 1 and None not in kinds:
        modality = kinds.pop()
        raise ContractError(
            f"{source}: this model takes text (modality 'text') but the inputs are {modality} files "
            f"(e.g. {texts[0]!r}); use a model trained on {modality} data, or pass the texts themselves"
        )


def _refuse_media_folder(path: Path) -> None:
    names = [p.name for p in path.rglob("*") if p.is_file()][:200]
    kinds = [media_modality(n) for n in names]
    for modality in ("image", "audio"):
        if names and kinds.count(modality) >= 0.5 * len(names):
            raise ContractError(
                f"{path}: this model takes text (modality 'text') but the folder holds {modality} files; "
                f"use a model trained on {modality} data"
            )
    raise ContractError(f"{path} is a folder; give a CSV, TSV, JSONL or .txt file of texts")
