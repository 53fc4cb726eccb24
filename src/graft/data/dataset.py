"""The :class:`Dataset` type: validated examples, encoded targets and the label space.

Building a dataset collects every problem (empty text, missing or unusable label, a class too small
to both train and evaluate on) and raises once, naming the rows; with ``skip_bad`` the bad rows are
left out instead and listed in the report. Duplicates are not errors: they are counted and reported.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import unicodedata
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import numpy as np

from graft.errors import DataError, format_problems

TASKS = ("multiclass", "multilabel", "regression")
# Integer labels with more distinct values than this are taken as a regression target under task=auto.
MAX_AUTO_CLASSES = 50
# The last line of an error about rows that skip_bad would leave out.
SKIP_BAD_HINT = "fix them, or pass --skip-bad to leave them out; they are listed in the report"


@dataclass
class DataReport:
    """What reading the data found that is worth telling the user (not errors)."""

    n_rows: int = 0
    duplicates: int = 0
    conflicting_duplicates: int = 0
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # files and rows left out with skip_bad, each "path: reason" or "line 7: reason"
    skipped: list[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = [f"{self.n_rows} rows"]
        if self.skipped:
            parts.append(f"{len(self.skipped)} skipped with --skip-bad")
        if self.duplicates:
            dup = f"{self.duplicates} duplicate texts"
            if self.conflicting_duplicates:
                dup += f" ({self.conflicting_duplicates} with a different label than an earlier copy)"
            parts.append(dup)
        return ", ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_rows": self.n_rows,
            "duplicates": self.duplicates,
            "conflicting_duplicates": self.conflicting_duplicates,
            "warnings": list(self.warnings),
            "notes": list(self.notes),
            "skipped": list(self.skipped),
        }


@dataclass
class Dataset:
    """Labeled examples of one modality.

    Attributes:
        modality: input type of the examples: "text", "image" or "audio".
        examples: the inputs, one per row: texts, or absolute file paths for images and audio.
        targets: encoded targets: class ids (multiclass, int64), a 0/1 matrix (multilabel, float32)
            or values (regression, float32).
        task: "multiclass", "multilabel" or "regression".
        label_space: class names in id order (empty for regression).
        source: where the data came from, for messages.
        rows: the source row of each example (file line number, or list index), for messages.
        text_col / label_col: the columns the data was read from, when it came from a table.
        report: duplicates and warnings found while reading.
        groups: a group id (str) per example (``--group-col``: a speaker, a user, a patient), or ``None``;
            a held-out split never divides a group.
        group_col: the column the groups were read from, for messages.
        source_is_file: ``rows`` are line numbers of a file (else positions in in-memory data).
    """

    modality: str
    examples: list[Any]
    targets: np.ndarray
    task: str
    label_space: tuple[Any, ...]
    source: str = "<data>"
    rows: list[int] = field(default_factory=list)
    text_col: str | None = None
    label_col: str | None = None
    report: DataReport = field(default_factory=DataReport)
    groups: np.ndarray | None = None
    group_col: str | None = None
    source_is_file: bool = False

    def __len__(self) -> int:
        return len(self.examples)

    def subset(self, indices: np.ndarray | list[int], source: str | None = None) -> Dataset:
        idx = np.asarray(indices, dtype=np.int64)
        return Dataset(
            modality=self.modality,
            examples=[self.examples[i] for i in idx],
            targets=self.targets[idx],
            task=self.task,
            label_space=self.label_space,
            source=source or self.source,
            rows=[self.rows[i] for i in idx] if self.rows else [],
            text_col=self.text_col,
            label_col=self.label_col,
            report=DataReport(n_rows=len(idx)),
            groups=None if self.groups is None else self.groups[idx],
            group_col=self.group_col,
            source_is_file=self.source_is_file,
        )

    def concat(self, other: Dataset, source: str | None = None) -> Dataset:
        """This data followed by ``other`` (same task and label space), e.g. training + test rows for a
        refit on every labeled example."""
        if other.task != self.task or other.label_space != self.label_space:
            raise ValueError("datasets of different tasks or label spaces cannot be concatenated")
        return Dataset(
            modality=self.modality,
            examples=[*self.examples, *other.examples],
            targets=np.concatenate([self.targets, other.targets]),
            task=self.task,
            label_space=self.label_space,
            source=source or f"{self.source} + {other.source}",
            rows=[],
            text_col=self.text_col,
            label_col=self.label_col,
            report=DataReport(n_rows=len(self) + len(other)),
            groups=_concat_groups(self.groups, len(self), other.groups, len(other)),
            group_col=self.group_col or other.group_col,
        )

    def class_counts(self) -> dict[Any, int]:
        """Examples per class (per label for multilabel); empty for regression."""
        if self.task == "multiclass":
            counts = np.bincount(self.targets, minlength=len(self.label_space))
        elif self.task == "multilabel":
            counts = self.targets.sum(axis=0).astype(int)
        else:
            return {}
        return {name: int(c) for name, c in zip(self.label_space, counts, strict=True)}

    def fingerprint(self) -> str:
        """sha256 over the examples and targets: identifies this exact data in caches and provenance."""
        h = hashlib.sha256()
        h.update(f"{self.task}|{json.dumps(list(self.label_space), default=str)}".encode())
        h.update(self.examples_fingerprint().encode())
        h.update(np.ascontiguousarray(self.targets).tobytes())
        return h.hexdigest()

    def examples_fingerprint(self) -> str:
        """sha256 over the examples only (features do not depend on labels)."""
        return examples_fingerprint(self.modality, self.examples)


def _concat_groups(a: np.ndarray | None, n_a: int, b: np.ndarray | None, n_b: int) -> np.ndarray | None:
    """Group ids of two datasets one after the other; rows without one form a group each."""
    if a is None and b is None:
        return None
    parts = [
        np.asarray(g, dtype=str) if g is not None else np.array([f"\0{tag}{i}" for i in range(n)], dtype=str)
        for g, n, tag in ((a, n_a, "a"), (b, n_b, "b"))
    ]
    return np.concatenate(parts)


def examples_fingerprint(modality: str, examples: list[Any]) -> str:
    """sha256 identifying a list of inputs (length-prefixed, so boundaries count).

    Image and audio examples are file paths: each file's size and modification time count too, so
    a file changed in place gets new features.
    """
    h = hashlib.sha256(modality.encode())
    media = modality != "text"
    for example in examples:
        text = str(example)
        if media:
            try:
                st = os.stat(text)
                text = f"{text}|{st.st_size}|{st.st_mtime_ns}"
            except OSError:
                pass
        data = text.encode("utf-8", "surrogatepass")
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


def row_name(row: int, source_is_file: bool) -> str:
    return f"line {row}" if source_is_file else f"row {row}"


def leave_out(problems: list[str], what: str, report: DataReport) -> None:
    """Record what ``skip_bad`` left out: each problem in ``report.skipped``, one warning in all."""
    report.skipped.extend(problems)
    report.warnings.append(f"skipped {len(problems)} {what} (--skip-bad): see skipped")


def leave_out_examples(
    ds: Dataset, bad: dict[int, str], *, skip_bad: bool, min_per_class: int = 0
) -> Dataset:
    """``ds`` without the examples ``bad`` names (index -> reason), each listed in its report, when
    ``skip_bad``; otherwise a :class:`DataError` naming every one. For problems that show only once a
    backbone reads the data (a text its tokenizer finds nothing in), checked like the bad rows of
    :func:`build_dataset`: a source whose every row is bad is an error even so, and the classes left
    must still hold ``min_per_class`` examples each."""
    if not bad:
        return ds
    where = lambda i: row_name(ds.rows[i], ds.source_is_file) if ds.rows else f"row {i}"  # noqa: E731
    problems = [f"{where(i)}: {reason}" for i, reason in sorted(bad.items())]
    if not skip_bad or len(bad) == len(ds):
        noun = "problem" if len(problems) == 1 else "problems"
        hint = "" if skip_bad else f"\n{SKIP_BAD_HINT}"
        raise DataError(format_problems(f"{ds.source}: {len(problems)} {noun} in the data", problems) + hint)
    kept = ds.subset([i for i in range(len(ds)) if i not in bad])
    kept.report = ds.report
    leave_out(problems, "rows the backbone cannot read", ds.report)
    ds.report.n_rows = len(kept)
    short = {label: n for label, n in kept.class_counts().items() if n < min_per_class}
    if short and kept.task == "multiclass":
        names = ", ".join(f"{label!r} ({n})" for label, n in short.items())
        raise DataError(
            f"{ds.source}: after leaving out {len(bad)} rows (--skip-bad), too few examples of {names}: each "
            f"class needs at least {min_per_class}; add examples or remove the class"
        )
    return kept


def text_problem(text: str, what: str = "text") -> str | None:
    """What makes ``text`` unusable, or ``None``: empty, only invisible characters, or a lone surrogate
    (JSON's ``"\\ud800"`` decodes to one: not a character, no tokenizer can read it)."""
    if not text.strip():
        return f"empty {what}"
    if is_blank(text):
        return f"empty {what}: only invisible characters {text[:20]!r} (zero-width or format)"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"not {what}: a lone surrogate \\u{ord(text[exc.start]):04x} at character {exc.start}"
    return None


def is_blank(text: str) -> bool:
    """Whether ``text`` holds nothing to read: only whitespace, control characters and invisible format
    characters (Unicode category Cf: zero-width space and joiners, byte-order marks, soft hyphens)."""
    return all(_invisible(ch) for ch in text)


def _invisible(ch: str) -> bool:
    return ch.isspace() or unicodedata.category(ch) in ("Cc", "Cf")


def _strip_invisible(text: str) -> str:
    start, end = 0, len(text)
    while start < end and _invisible(text[start]):
        start += 1
    while end > start and _invisible(text[end - 1]):
        end -= 1
    return text[start:end]


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and is_blank(value)


def _as_number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float | np.integer | np.floating):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return None
    return None


_DECIMAL = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)")


def normalize_label(value: Any) -> Any:
    """One label as stored in the label space (the rule of docs/data.md, "Labels").

    Surrounding whitespace (and invisible format characters) is no part of a label. A label that is a
    whole number, however it is written, is that integer: ``1``, ``1.0``, ``"1"``, ``" 1"``, ``"1.0"``,
    ``"+1"`` and ``"01"`` are the class ``1`` (a CSV gives "1" where JSON gives 1 and pandas 1.0).
    Booleans are ``"true"`` / ``"false"``; anything else is its text as written, so ``"0.5"`` and
    ``"0.50"`` stay two labels (and :func:`build_dataset` warns).

    Example:
        >>> [normalize_label(v) for v in (1, 1.0, "1", " 1", "1.0", "+1", "01", "0.5", " spam ")]
        [1, 1, 1, 1, 1, 1, 1, '0.5', 'spam']
    """
    if isinstance(value, bool | np.bool_):
        return str(bool(value)).lower()
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating) and float(value).is_integer():
        return int(value)
    if isinstance(value, str):
        text = _strip_invisible(value)
        if _DECIMAL.fullmatch(text):
            number = Decimal(text)
            if number == number.to_integral_value():
                return int(number)
        return text
    return str(value)


def _sort_key(label: Any) -> tuple[int, Any]:
    return (0, label) if isinstance(label, int) else (1, str(label))


def infer_task(labels: list[Any], label_sep: str | None) -> tuple[str, str]:
    """The task implied by the raw labels, and a sentence saying why (shown to the user)."""
    present = [v for v in labels if not _is_missing(v) and not (isinstance(v, list) and not v)]
    if label_sep is not None:
        return "multilabel", f"labels split on {label_sep!r}"
    if any(isinstance(v, list | tuple) for v in present):
        return "multilabel", "labels are lists"
    numbers = [_as_number(v) for v in present]
    if present and all(n is not None for n in numbers):
        if any(not float(n).is_integer() for n in numbers):
            return "regression", "labels are non-integer numbers"
        distinct = len(set(numbers))
        if distinct > MAX_AUTO_CLASSES:
            return "regression", (
                f"labels are integers with {distinct} distinct values; pass --task multiclass to treat "
                "them as classes"
            )
    return "multiclass", "labels are categories"


def build_dataset(
    examples: list[Any],
    raw_labels: list[Any],
    *,
    task: str = "auto",
    label_sep: str | None = None,
    label_space: tuple[Any, ...] | None = None,
    source: str = "<data>",
    rows: list[int] | None = None,
    source_is_file: bool = False,
    modality: str = "text",
    text_col: str | None = None,
    label_col: str | None = None,
    report: DataReport | None = None,
    require_min_per_class: bool = True,
    skip_bad: bool = False,
) -> Dataset:
    """Validate examples and labels and encode the targets.

    Args:
        examples: inputs (texts).
        raw_labels: one label per example: a category, a number, a list of categories, or a string
            of categories joined by ``label_sep``.
        task: "auto" infers it from the labels.
        label_space: a fixed label space (evaluation data must use the training data's labels);
            ``None`` derives it from the labels.
        rows: source row of each example, for messages (defaults to 0-based positions).
        require_min_per_class: training data needs two examples per class (one to train, one to
            evaluate); evaluation data does not.
        skip_bad: leave out rows with a problem of their own (empty text, missing or unusable
            label), each listed in ``report.skipped``; the checks of the whole (classes, counts)
            then run on the rows kept.

    Raises:
        DataError: listing every bad row at once.
    """
    if len(examples) != len(raw_labels):
        raise DataError(
            f"{source}: {len(examples)} examples but {len(raw_labels)} labels; give one label per example"
        )
    rows = list(rows) if rows is not None else list(range(len(examples)))
    report = report or DataReport()
    if not examples:
        raise DataError(f"{source}: no examples found; check the file and the column names")
    if task == "auto":
        task, why = infer_task(raw_labels, label_sep)
        report.notes.append(f"task: {task} ({why})")
    elif task not in TASKS:
        raise DataError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")

    spellings: dict[Any, Counter] = {}
    parsed, label_problems = _parse_labels(raw_labels, task, label_sep, spellings)
    _report_spellings(spellings, report, fixed=label_space is not None)
    found = _example_problems(examples, modality) + label_problems
    if label_space is not None and task != "regression":
        found += _unknown_labels(parsed, tuple(label_space))
    found.sort(key=lambda problem: problem[0])  # by row; a row's own problems keep their order
    # A source whose every row is bad was misread (wrong column?): that is an error even so.
    if skip_bad and found and len({i for i, _ in found}) < len(examples):
        examples, parsed, rows = _leave_out_rows(found, (examples, parsed, rows), source_is_file, report)
        found = []
    report.n_rows = len(examples)

    where = lambda i: row_name(rows[i], source_is_file)  # noqa: E731
    row_problems = [f"{where(i)}: {reason}" for i, reason in found]
    space, class_problems = _label_space(parsed, task, label_space, bool(row_problems))
    if task == "multiclass" and label_space is None and require_min_per_class:
        class_problems += _small_classes(parsed, where)
    problems = row_problems + class_problems
    if problems:
        noun = "problem" if len(problems) == 1 else "problems"
        hint = f"\n{SKIP_BAD_HINT}" if row_problems and not skip_bad else ""
        raise DataError(format_problems(f"{source}: {len(problems)} {noun} in the data", problems) + hint)

    targets = _encode_targets(parsed, task, space)
    _count_duplicates(examples, targets, report)
    return Dataset(
        modality=modality,
        examples=list(examples),
        targets=targets,
        task=task,
        label_space=space,
        source=source,
        rows=rows,
        text_col=text_col,
        label_col=label_col,
        report=report,
        source_is_file=source_is_file,
    )


def _leave_out_rows(
    found: list[tuple[int, str]], columns: tuple[list[Any], ...], source_is_file: bool, report: DataReport
) -> tuple[list[Any], ...]:
    """``columns`` (examples, parsed labels, rows) without the rows in ``found``, each recorded."""
    reasons: dict[int, list[str]] = {}
    for i, reason in found:
        reasons.setdefault(i, []).append(reason)
    rows = columns[-1]
    skipped = [f"{row_name(rows[i], source_is_file)}: {'; '.join(r)}" for i, r in reasons.items()]
    leave_out(skipped, "bad rows", report)
    return tuple([column[i] for i in range(len(column)) if i not in reasons] for column in columns)


def _example_problems(examples: list[Any], modality: str) -> list[tuple[int, str]]:
    """``(index, reason)`` for each example that is not a non-empty string."""
    what = "text" if modality == "text" else "path"
    problems = []
    for i, example in enumerate(examples):
        if not isinstance(example, str):
            problems.append((i, f"{what} is {type(example).__name__} {example!r}, expected a string"))
        elif (problem := text_problem(example, what)) is not None:
            problems.append((i, problem))
    return problems


def _parse_labels(
    raw_labels: list[Any], task: str, label_sep: str | None, spellings: dict[Any, Counter]
) -> tuple[list[Any], list[tuple[int, str]]]:
    """Each label parsed for ``task`` (``None`` where unusable), and ``(index, reason)`` problems;
    ``spellings`` gathers how each class label was written (label -> raw spelling -> rows)."""
    parsed: list[Any] = []
    problems: list[tuple[int, str]] = []

    def label_of(raw: Any) -> Any:
        label = normalize_label(raw)
        spellings.setdefault(label, Counter())[raw if isinstance(raw, str | int | float) else str(raw)] += 1
        return label

    for i, value in enumerate(raw_labels):
        if _is_missing(value) or (isinstance(value, list | tuple) and task != "multilabel" and not value):
            problems.append((i, "missing label"))
            parsed.append(None)
        elif task == "regression":
            number = _as_number(value)
            if number is None or not math.isfinite(number):
                problems.append((i, f"label {value!r} is not a finite number (task is regression)"))
            parsed.append(number)
        elif task == "multilabel":
            if isinstance(value, list | tuple):
                items = [label_of(v) for v in value if not _is_missing(v)]
            elif isinstance(value, str) and label_sep is not None:
                items = [label_of(v) for v in value.split(label_sep) if v.strip()]
            else:
                items = [label_of(value)]
            parsed.append(sorted(set(items), key=_sort_key))
        elif isinstance(value, list | tuple):
            problems.append(
                (i, f"label is a list {value!r}; for several labels per row use --task multilabel")
            )
            parsed.append(None)
        else:
            parsed.append(label_of(value))
    return parsed, problems


def _report_spellings(spellings: dict[Any, Counter], report: DataReport, fixed: bool) -> None:
    """A warning when labels written differently became one class, a note when labels were rewritten
    (``"1.0"`` read as ``1``), and (``fixed`` false: training data) a warning when labels that differ
    only in case, spacing or how a number is written stay separate classes."""
    merged = [f"{_spelled(seen)} -> {label!r}" for label, seen in spellings.items() if len(seen) > 1]
    if merged:
        report.warnings.append(
            f"labels written differently were read as one class ({_some(merged, '; ')}): surrounding spaces "
            "are not part of a label, and a whole number is one label however it is written (docs/data.md, "
            "Labels)"
        )
    rewritten = [
        f"{_spelling(raw)} as {label!r}"
        for label, seen in spellings.items()
        if len(seen) == 1 and str(raw := next(iter(seen))) != str(label)
    ]
    if rewritten:
        report.notes.append(f"labels read as {_some(rewritten, ', ')}")
    if fixed:
        return
    alike: dict[str, list[Any]] = {}
    for label in spellings:
        alike.setdefault(_looser(label), []).append(label)
    split = [
        " and ".join(f"{label!r} ({sum(spellings[label].values())} rows)" for label in labels)
        for labels in alike.values()
        if len(labels) > 1
    ]
    if split:
        report.warnings.append(
            "labels that differ only in case, spacing or how a number is written are separate classes: "
            f"{_some(split, '; ')}; write them alike if they are one class (docs/data.md, Labels)"
        )


def _some(items: list[str], sep: str, limit: int = 5) -> str:
    return sep.join(items[:limit]) + (f"{sep}..." if len(items) > limit else "")


def _spelled(seen: Counter) -> str:
    return ", ".join(f"{_spelling(raw)} ({n} rows)" for raw, n in seen.most_common())


def _spelling(raw: Any) -> str:
    return repr(raw) if isinstance(raw, str) else str(raw)


def _looser(label: Any) -> str:
    """A key under which labels a person would read as one collide: case, inner spacing, and the value
    of a number (``0.5`` / ``0.50``)."""
    text = " ".join(str(label).split()).casefold()
    return str(Decimal(text).normalize()) if _DECIMAL.fullmatch(text) else text


def _unknown_labels(parsed: list[Any], space: tuple[Any, ...]) -> list[tuple[int, str]]:
    known = set(space)
    problems = []
    for i, p in enumerate(parsed):
        for item in p if isinstance(p, list) else [p]:
            if item is not None and item not in known:
                problems.append(
                    (i, f"label {item!r} is not one the model was trained on ({', '.join(map(repr, space))})")
                )
    return problems


def _label_space(
    parsed: list[Any],
    task: str,
    label_space: tuple[Any, ...] | None,
    rows_bad: bool,
) -> tuple[tuple[Any, ...], list[str]]:
    """The label space (given, or the labels seen), and a problem if it has a single class.

    A single class is not reported while rows are bad: fixing them may well add the second.
    """
    if task == "regression":
        return (), []
    if label_space is not None:
        return tuple(label_space), []
    labels = [p for p in parsed if p is not None]
    if task == "multiclass":
        space = tuple(sorted(set(labels), key=_sort_key))
    else:
        space = tuple(sorted({item for p in labels for item in p}, key=_sort_key))
    if rows_bad or len(space) >= 2:
        return space, []
    only = f" ({space[0]!r})" if space else ""
    return space, [
        f"only one class{only} in the labels: a classifier needs at least two; check the label column"
    ]


def _small_classes(parsed: list[Any], where: Callable[[int], str]) -> list[str]:
    counts = Counter(p for p in parsed if p is not None)
    problems = []
    for label, count in sorted(counts.items(), key=lambda kv: _sort_key(kv[0])):
        if count < 2:
            problems.append(
                f"class {label!r} has only {count} example ({where(parsed.index(label))}): each class needs "
                "at least 2 (one to train on, one to evaluate on); add examples or remove the class"
            )
    return problems


def _encode_targets(parsed: list[Any], task: str, space: tuple[Any, ...]) -> np.ndarray:
    index = {label: k for k, label in enumerate(space)}
    if task == "multiclass":
        return np.array([index[p] for p in parsed], dtype=np.int64)
    if task == "multilabel":
        targets = np.zeros((len(parsed), len(space)), dtype=np.float32)
        for i, p in enumerate(parsed):
            targets[i, [index[item] for item in p]] = 1.0
        return targets
    return np.array(parsed, dtype=np.float32)


def _count_duplicates(examples: list[Any], targets: np.ndarray, report: DataReport) -> None:
    first: dict[Any, int] = {}
    dups = conflicts = 0
    for i, example in enumerate(examples):
        j = first.setdefault(example, i)
        if j != i:
            dups += 1
            if not np.array_equal(targets[i], targets[j]):
                conflicts += 1
    report.duplicates = dups
    report.conflicting_duplicates = conflicts
