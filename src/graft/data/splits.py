"""Held-out splits that cannot leak: duplicates (and the user's groups) stay on one side.

The test split is cut first, then the validation split from what remains (see
:mod:`graft.protocols`). A split is stratified by class where every class can be represented, seeded,
and recorded by index so a resumed run sees the same split.

**Leakage.** Rows whose inputs are the same after normalisation (texts: Unicode NFKC, case-folded,
punctuation and whitespace runs collapsed, so ``"What is X ?"`` and ``"what is x?"`` are one; images
and audio: identical file bytes) form one group, as do rows sharing a user's group id
(``--group-col``, e.g. a speaker); groups are never divided between the two sides of a split.

Example:
    >>> from graft.data import build_dataset
    >>> texts = ["Good film.", "good film", "bad", "awful", "fine", "great", "ok", "meh"]
    >>> ds = build_dataset(texts, ["p", "p", "n", "n", "p", "p", "p", "n"])
    >>> keep, out, how = holdout(ds, 0.25, seed=0, name="test")
    >>> sorted(out.tolist()), how  # rows 0 and 1 are one text: held out together
    ([0, 1, 3], 'stratified, duplicate-grouped')
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from typing import Any

import numpy as np

from graft.data.dataset import Dataset
from graft.errors import DataError

_NOT_WORD = re.compile(r"[\W_]+")


def normalise_text(text: str) -> str:
    """The form two texts share when one is a trivial variant of the other (case, punctuation,
    spacing, Unicode compatibility forms). A text of punctuation only keeps its raw form."""
    folded = _NOT_WORD.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()
    return folded or text


def _file_digest(path: str) -> str:
    try:
        with open(path, "rb") as f:
            return hashlib.file_digest(f, "sha1").hexdigest()
    except OSError:
        return f"unreadable:{path}"  # reading the file later names the problem


def duplicate_keys(ds: Dataset) -> list[str]:
    """One key per example; examples with equal keys are copies of each other (see module doc)."""
    if ds.modality == "text":
        return [normalise_text(str(t)) for t in ds.examples]
    return [_file_digest(str(p)) for p in ds.examples]


def leakage_groups(ds: Dataset) -> np.ndarray | None:
    """Group id per example (copies and the user's groups merged), or ``None`` when every group is a
    single example (then a split needs no grouping)."""
    keys = duplicate_keys(ds)
    _, ids = np.unique(np.asarray(keys, dtype=str), return_inverse=True)
    if ds.groups is not None:
        ids = _merge(ids, np.unique(np.asarray(ds.groups, dtype=str), return_inverse=True)[1])
    return ids if len(np.unique(ids)) < len(ids) else None


def _merge(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Connected components of "shares an ``a`` id or a ``b`` id" (union-find over rows)."""
    parent = list(range(len(a)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for ids in (a, b):
        first: dict[int, int] = {}
        for i, g in enumerate(ids.tolist()):
            j = first.setdefault(g, i)
            parent[root(i)] = root(j)
    return np.unique([root(i) for i in range(len(a))], return_inverse=True)[1]


def _stratify_labels(ds: Dataset) -> np.ndarray | None:
    if ds.task == "multiclass":
        return ds.targets
    if ds.task == "regression" and len(ds) >= 50:
        # Quantile bins keep the target's distribution alike across splits.
        edges = np.quantile(ds.targets, [0.2, 0.4, 0.6, 0.8])
        return np.digitize(ds.targets, edges)
    return None


def iterative_assign(
    counts: np.ndarray, sizes: np.ndarray, proportions: list[float], seed: int
) -> np.ndarray:
    """Iterative stratification for multilabel data (Sechidis, Tsoumakas & Vlahavas 2011): a part
    (0 .. len(proportions) - 1) for each of ``m`` units, so that every label's positives are divided in
    ``proportions`` as nearly as whole units allow, the rarest label first.

    ``counts`` ``[m, labels]``: positives of each label in each unit (a unit is a row, or a group of
    rows that must stay together); ``sizes`` ``[m]``: rows per unit. The rarest remaining label's units
    go, in random order, each to the part that most lacks that label (ties: the part that most lacks
    rows, then at random); units with no positive label fill the parts that most lack rows. A plain
    shuffled split leaves a label with 3 positives out of some folds' validation parts a third of the
    time; this puts one in each of 3.

    Example:
        >>> y = np.array([[1, 0], [1, 0], [1, 1], [0, 1], [0, 0], [0, 0]])
        >>> parts = iterative_assign(y, np.ones(6), [0.5, 0.5], seed=0)
        >>> sorted(int(y[parts == p, 0].sum()) for p in (0, 1)), np.bincount(parts).tolist()
        ([1, 2], [3, 3])
    """
    rng = np.random.default_rng(seed)
    counts, sizes = np.asarray(counts, dtype=np.float64), np.asarray(sizes, dtype=np.float64)
    share = np.asarray(proportions, dtype=np.float64)[:, None]
    wanted = share * counts.sum(0)[None, :]  # [parts, labels] positives each part still lacks
    wanted_rows = share[:, 0] * sizes.sum()
    part = np.full(len(counts), -1)
    remaining = counts.sum(0)
    while True:
        open_labels = np.flatnonzero(remaining > 0)
        if not len(open_labels):
            break
        fewest = open_labels[remaining[open_labels] == remaining[open_labels].min()]
        label = int(rng.choice(fewest))
        units = np.flatnonzero((part < 0) & (counts[:, label] > 0))
        for u in rng.permutation(units):
            p = _most_lacking(rng, wanted[:, label], wanted_rows)
            part[u] = p
            wanted[p] -= counts[u]
            wanted_rows[p] -= sizes[u]
            remaining -= counts[u]
    for u in rng.permutation(np.flatnonzero(part < 0)):
        p = _most_lacking(rng, wanted_rows, wanted_rows)
        part[u] = p
        wanted_rows[p] -= sizes[u]
    return part


def _most_lacking(rng: np.random.Generator, need: np.ndarray, need_rows: np.ndarray) -> int:
    top = np.flatnonzero(need == need.max())
    if len(top) > 1:
        top = top[need_rows[top] == need_rows[top].max()]
    return int(rng.choice(top))


def unit_label_counts(groups: np.ndarray | None, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(positives per label, rows) of each unit: each row, or each group id 0 .. g - 1 of ``groups``."""
    targets = np.asarray(targets, dtype=np.float64)
    if groups is None:
        return targets, np.ones(len(targets))
    counts = np.zeros((int(groups.max()) + 1, targets.shape[1]))
    np.add.at(counts, groups, targets)
    return counts, np.bincount(groups).astype(np.float64)


def holdout(
    ds: Dataset, fraction: float, seed: int, name: str, groups: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, str]:
    """Indices (kept, held out) for a held-out ``fraction``, stratified when each class can be
    (multilabel: :func:`iterative_assign`), and with every group of ``groups`` (default:
    :func:`leakage_groups`) wholly on one side."""
    n = len(ds)
    groups = leakage_groups(ds) if groups is None else np.unique(groups, return_inverse=True)[1]
    if ds.task == "multilabel":
        return _multilabel_holdout(ds, fraction, seed, name, groups)
    labels = _stratify_labels(ds)
    if groups is None:
        units, unit_labels = np.arange(n), labels
    else:  # split groups, each labeled with its most common class
        units = groups
        unit_labels = None if labels is None else _group_labels(groups, labels)
    n_units = int(units.max()) + 1 if len(units) else 0
    n_out = held_out_units(n_units, fraction)
    if n_units - n_out < 2:
        raise too_few_units(ds, n_units, n_out + 2, f"holding out a {name} split")
    kept_units, out_units, how = _split_units(n_units, n_out, unit_labels, seed)
    if groups is None:
        return kept_units, out_units, how
    out = np.flatnonzero(np.isin(groups, out_units))
    return np.flatnonzero(~np.isin(groups, out_units)), out, f"{how}, duplicate-grouped"


def _multilabel_holdout(
    ds: Dataset, fraction: float, seed: int, name: str, groups: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, str]:
    counts, sizes = unit_label_counts(groups, ds.targets)
    n_out = held_out_units(len(sizes), fraction)
    if len(sizes) - n_out < 2:
        raise too_few_units(ds, len(sizes), n_out + 2, f"holding out a {name} split")
    part = iterative_assign(counts, sizes, [1 - fraction, fraction], seed)
    if not (part == 1).any() or (part == 0).sum() < 2:
        raise too_few_units(ds, len(sizes), n_out + 2, f"holding out a {name} split")
    out = part == 1 if groups is None else (part == 1)[groups]
    how = "iteratively stratified" + (", duplicate-grouped" if groups is not None else "")
    return np.flatnonzero(~out), np.flatnonzero(out), how


def held_out_units(units: int, fraction: float) -> int:
    """How many of ``units`` rows (or groups) a hold-out of ``fraction`` takes: at least one; the split
    needs 2 more on the kept side."""
    return max(1, round(fraction * units))


def count_units(groups: np.ndarray | None, n: int) -> int:
    """Independent units among ``n`` rows: the distinct ids of ``groups``, or the rows themselves."""
    return n if groups is None else len(np.unique(groups))


def too_few_units(ds: Dataset, units: int, need: int, purpose: str) -> DataError:
    """The error for data whose independent units (rows, or groups that a split keeps whole: copies of
    one input, and the user's ``--group-col`` groups) are too few for ``purpose``."""
    if ds.group_col:
        return DataError(
            f"{ds.source}: {purpose} needs at least {need} groups, but --group-col {ds.group_col!r} puts "
            f"these {len(ds)} examples in {units} group{'s' if units != 1 else ''} (a group is never divided "
            "between training and held-out rows; copies of one input count as one group). Use a column "
            "with more groups, or give separate --val and --test files so that nothing is split"
        )
    return DataError(
        f"{ds.source}: {len(ds)} examples are too few for {purpose}: they hold {units} distinct "
        f"input{'s' if units != 1 else ''} (copies of one input stay on one side of a split), at least "
        f"{need} are needed; add data"
    )


def _group_labels(groups: np.ndarray, labels: np.ndarray) -> np.ndarray:
    counts = np.zeros((int(groups.max()) + 1, int(labels.max()) + 1), dtype=np.int64)
    np.add.at(counts, (groups, labels), 1)
    return counts.argmax(1)


def _split_units(
    n: int, n_out: int, labels: np.ndarray | None, seed: int
) -> tuple[np.ndarray, np.ndarray, str]:
    from sklearn.model_selection import train_test_split

    index = np.arange(n)
    if labels is not None:
        counts = np.bincount(labels)
        counts = counts[counts > 0]
        if counts.min() >= 2 and n_out >= len(counts) and n - n_out >= len(counts):
            keep, out = train_test_split(index, test_size=n_out, random_state=seed, stratify=labels)
            return np.sort(keep), np.sort(out), "stratified"
    keep, out = train_test_split(index, test_size=n_out, random_state=seed)
    return np.sort(keep), np.sort(out), "random"


def overlap(train: Dataset, held_out: Dataset, limit: int = 5) -> dict[str, Any]:
    """How many ``held_out`` examples are copies (see :func:`duplicate_keys`) of a training example:
    for data the user split into files themselves, where graft's grouping could not act."""
    seen = set(duplicate_keys(train))
    hits = [i for i, key in enumerate(duplicate_keys(held_out)) if key in seen]
    return {
        "rows": len(hits),
        "of": len(held_out),
        "examples": [str(held_out.examples[i])[:200] for i in hits[:limit]],
    }


def sample_per_class(ds: Dataset, limit: int, seed: int) -> Dataset:
    """At most ``limit`` examples per class (multiclass) or in all, drawn with ``seed``, order kept."""
    rng = np.random.default_rng(seed)
    if ds.task == "multiclass":
        keep = []
        for c in np.unique(ds.targets):
            members = np.flatnonzero(ds.targets == c)
            keep.append(rng.choice(members, min(limit, len(members)), replace=False))
        index = np.sort(np.concatenate(keep))
    else:
        index = np.sort(rng.choice(len(ds), min(limit, len(ds)), replace=False))
    if len(index) == len(ds):
        return ds
    return ds.subset(index, source=ds.source)
