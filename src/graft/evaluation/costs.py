"""What errors cost: ``--costs FILE`` and the cost-minimising decision rule.

Accuracy counts every error alike; in use, a missed fraud and a false alarm do not cost the same. A
cost matrix gives the cost of each answer for each true class: rows are true classes, columns the
answers (every class, and optionally ``abstain``: the cost of passing the input to a person). A CSV or
TSV file (the first cell is a free label such as ``true\\answer``)::

    true\\answer,ham,spam,abstain
    ham,0,10,1
    spam,1,0,1

or JSON, ``{"ham": {"spam": 10, "abstain": 1}, "spam": {"ham": 1, "abstain": 1}}`` (an omitted
diagonal cell costs 0). Costs are finite numbers >= 0: a gain is written as a smaller cost (adding
one amount to a whole row changes no decision), so a negative cell is refused as the typo it usually
is. Class names are read as data labels are (``1.0`` is the class ``1``).

With calibrated probabilities ``p(class | x)`` the **expected cost** of answer ``j`` is
``sum_i p(i | x) * C[i, j]``; the cost-minimising rule (Bayes' decision rule) answers the cheapest one,
which need not be the most probable class: with the matrix above an SMS is called spam only when
``p(spam) > 10/11``. No retraining is needed: the rule uses the model's probabilities, and the bundle
stores the matrix so that ``predict`` applies it. The report measures on the test rows the mean cost
per prediction of the top-label rule, of the cost rule (with the paired saving) and of the best single
answer given the training class frequencies, each with a 95% BCa interval.

Example:
    >>> import numpy as np
    >>> costs = Costs(labels=["ham", "spam"], answers=["ham", "spam"], matrix=np.array([[0.0, 10], [1, 0]]))
    >>> decide(np.array([[0.2, 0.8], [0.05, 0.95]]), costs).tolist()   # spam only above 10/11
    [0, 1]
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from graft.errors import ConfigError, DataError
from graft.evaluation.abstain import ABSTAIN
from graft.evaluation.intervals import bca, enclose, mean_stat, row_types


@dataclass(frozen=True)
class Costs:
    """A cost matrix: ``matrix[i, j]`` is the cost of answering ``answers[j]`` when the truth is
    ``labels[i]``. ``labels`` are the task's classes in label-space order (as text); ``answers`` the
    same, then ``abstain`` when the file gives its cost."""

    labels: list[str]
    answers: list[str]
    matrix: np.ndarray
    source: str = ""

    @property
    def abstains(self) -> bool:
        return len(self.answers) > len(self.labels)

    def to_dict(self) -> dict[str, Any]:
        return {"labels": self.labels, "answers": self.answers, "matrix": self.matrix.tolist(),
                "source": self.source}  # fmt: skip

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Costs:
        return cls(list(raw["labels"]), list(raw["answers"]), np.asarray(raw["matrix"], dtype=np.float64),
                   raw.get("source", ""))  # fmt: skip


def read_costs(path: str | Path, label_space: list[Any]) -> Costs:
    """The cost matrix in ``path`` (CSV, TSV or JSON) for a task with these classes; a
    :class:`~graft.errors.DataError` naming the file, line and cell for anything missing or wrong."""
    path = Path(path)
    labels = [str(label) for label in label_space]
    if ABSTAIN in labels:
        raise ConfigError(
            f"--costs: a class is named {ABSTAIN!r}, which is also the name of the answer that passes an "
            "input to a person; rename that class"
        )
    if not path.is_file():
        raise DataError(f"{path}: no such cost file (--costs: a CSV, TSV or JSON cost matrix)")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read the cost file ({exc})") from None
    cells = (
        _json_cells(path, text, labels)
        if path.suffix.lower() == ".json"
        else _table_cells(path, text, labels)
    )
    answers = labels + ([ABSTAIN] if any(answer == ABSTAIN for _, answer in cells) else [])
    matrix = np.full((len(labels), len(answers)), np.nan)
    for (truth, answer), value in cells.items():
        matrix[labels.index(truth), answers.index(answer)] = value
    missing = [f"({labels[i]}, {answers[j]})" for i, j in zip(*np.nonzero(np.isnan(matrix)), strict=True)]
    if missing:
        raise DataError(
            f"{path}: no cost given for (true class, answer) {', '.join(missing[:5])}"
            + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            + "; give a number for every class as row and every class as column"
        )
    return Costs(labels, answers, matrix, str(path))


def _number(path: Path, where: str, raw: Any) -> float:
    try:
        value = float(raw)
    except (TypeError, ValueError):
        value = math.nan
    if not math.isfinite(value) or isinstance(raw, bool):
        raise DataError(
            f"{path}: {where}: {raw!r} is not a cost (expected a finite number, e.g. 0, 1 or 2.5)"
        )
    if value < 0:
        # Bayes' rule compares answers within a row: adding one amount to a whole row changes no
        # decision, so any gain can be written as a cost >= 0, and a minus sign is most likely a typo.
        raise DataError(
            f"{path}: {where}: the cost {raw!r} is negative; costs must be >= 0 (to reward an answer, "
            "give the others of its row a higher cost)"
        )
    return value


def _check_label(path: Path, where: str, name: str, labels: list[str], *, answer: bool) -> str:
    from graft.data.dataset import normalize_label

    label = name if name == ABSTAIN else str(normalize_label(name))
    known = labels + ([ABSTAIN] if answer else [])
    if label not in known:
        raise DataError(
            f"{path}: {where}: {name!r} is not a class of this task (classes: {', '.join(labels[:20])}"
            + (f"; or {ABSTAIN!r} as an answer" if answer else "")
            + ")"
        )
    return label


def _table_cells(path: Path, text: str, labels: list[str]) -> dict[tuple[str, str], float]:
    delimiter = "\t" if path.suffix.lower() in (".tsv", ".tab") or "\t" in text.split("\n", 1)[0] else ","
    rows = [row for row in csv.reader(text.splitlines(), delimiter=delimiter) if any(c.strip() for c in row)]
    if len(rows) < 2:
        raise DataError(f"{path}: a cost matrix needs a header row of answers and one row per true class")
    header = [
        _check_label(path, f"line 1, column {j + 1}", name.strip(), labels, answer=True)
        for j, name in enumerate(rows[0][1:])
    ]
    if len(set(header)) != len(header):
        raise DataError(f"{path}: line 1: an answer is named twice ({', '.join(header)})")
    cells: dict[tuple[str, str], float] = {}
    seen: set[str] = set()
    for line, row in enumerate(rows[1:], start=2):
        truth = _check_label(path, f"line {line}", row[0].strip(), labels, answer=False)
        if truth in seen:
            raise DataError(f"{path}: line {line}: true class {truth!r} has a second row")
        seen.add(truth)
        if len(row) - 1 != len(header):
            raise DataError(
                f"{path}: line {line}: {len(row) - 1} costs for {len(header)} answers in the header"
            )
        for answer, raw in zip(header, row[1:], strict=True):
            cells[truth, answer] = _number(path, f"line {line}, column {answer!r}", raw.strip())
    return cells


def _json_cells(path: Path, text: str, labels: list[str]) -> dict[tuple[str, str], float]:
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(raw, dict) or not all(isinstance(v, dict) for v in raw.values()):
        raise DataError(f'{path}: expected {{"true class": {{"answer": cost, ...}}, ...}}')
    cells: dict[tuple[str, str], float] = {(label, label): 0.0 for label in labels}
    for key, row in raw.items():
        truth = _check_label(path, "a key", key, labels, answer=False)
        for name, value in row.items():
            answer = _check_label(path, f"row {key!r}", name, labels, answer=True)
            cells[truth, answer] = _number(path, f"row {key!r}, answer {name!r}", value)
    return cells


def expected_costs(proba: np.ndarray, costs: Costs) -> np.ndarray:
    """``[n, answers]``: the expected cost of each answer under each row's probabilities."""
    return np.asarray(proba, dtype=np.float64) @ costs.matrix


def decide(proba: np.ndarray, costs: Costs, *, abstain: bool = True) -> np.ndarray:
    """The cheapest answer of each row (column indices into ``costs.answers``); ``abstain=False``
    chooses among the classes only."""
    expected = expected_costs(proba, costs)
    if not abstain:
        expected = expected[:, : len(costs.labels)]
    return expected.argmin(1)


def cost_report(
    costs: Costs, proba: np.ndarray, targets: np.ndarray, prior: np.ndarray, *, seed: int = 0
) -> dict[str, Any]:
    """Mean cost per prediction on labeled rows, with 95% BCa intervals, of three rules: the top
    label, the cost-minimising rule, and the single answer cheapest under ``prior`` (the training class
    frequencies); the paired saving of the cost rule; and which (true class, answer) cells cost most."""
    targets = np.asarray(targets)
    n_classes = len(costs.labels)
    answers = {
        "top_label": np.asarray(proba).argmax(1),
        "cost_rule": decide(proba, costs),
        "best_constant": np.full(len(targets), int((prior @ costs.matrix).argmin())),
    }
    per_row = {rule: costs.matrix[targets, chosen] for rule, chosen in answers.items()}
    rules: dict[str, Any] = {}
    for rule, values in per_row.items():
        rules[rule] = {"mean_cost": float(values.mean()) if len(values) else float("nan"),
                       "interval_95": _mean_interval(values, seed)}  # fmt: skip
    rules["best_constant"]["answer"] = (
        costs.answers[int(answers["best_constant"][0])] if len(targets) else None
    )
    saving = per_row["top_label"] - per_row["cost_rule"]
    chosen = answers["cost_rule"]
    return {
        "source": costs.source,
        "answers": costs.answers,
        "matrix": costs.matrix.tolist(),
        "rows": len(targets),
        "rules": rules,
        "saving": {
            "mean": float(saving.mean()) if len(saving) else float("nan"),
            "interval_95": _mean_interval(saving, seed),
        },
        "abstained": int(np.sum(chosen == n_classes)) if costs.abstains else 0,
        "costliest": _costliest(costs, targets, chosen),
    }


def _mean_interval(values: np.ndarray, seed: int) -> list[float]:
    if len(values) < 2:
        return [float("nan"), float("nan")]
    ((lo, hi),) = bca(mean_stat, *row_types(values[:, None]), seed=seed)
    return list(enclose(values.mean(), lo, hi))  # the reported mean, summed in another order


def _costliest(costs: Costs, targets: np.ndarray, chosen: np.ndarray, top: int = 5) -> list[dict[str, Any]]:
    """The (true class, answer) cells of the cost rule's answers that cost most in total."""
    cells: dict[tuple[int, int], int] = {}
    for t, a in zip(targets.tolist(), chosen.tolist(), strict=True):
        cells[t, a] = cells.get((t, a), 0) + 1
    rows = [
        {
            "true": costs.labels[t],
            "answer": costs.answers[a],
            "count": n,
            "cost_each": float(costs.matrix[t, a]),
            "total": float(n * costs.matrix[t, a]),
        }
        for (t, a), n in cells.items()
        if costs.matrix[t, a] != 0
    ]
    return sorted(rows, key=lambda r: -r["total"])[:top]
