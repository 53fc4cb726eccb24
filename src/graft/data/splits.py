"""Train / validation / test protocols.

Held-out data never touches training or model choice: the test split is cut first, then the
validation split from what remains. Splits are stratified by class where every class can be
represented, seeded, and recorded by index so a resumed run sees the same split.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from graft.data.dataset import Dataset
from graft.errors import DataError


@dataclass
class Split:
    """The three parts. ``indices[part]`` indexes the original training source, or is ``None`` when
    that part came from its own file."""

    train: Dataset
    val: Dataset
    test: Dataset
    description: str
    indices: dict[str, np.ndarray | None]


def _stratify_labels(ds: Dataset) -> np.ndarray | None:
    if ds.task == "multiclass":
        return ds.targets
    if ds.task == "regression" and len(ds) >= 50:
        # Quantile bins keep the target's distribution alike across splits.
        edges = np.quantile(ds.targets, [0.2, 0.4, 0.6, 0.8])
        return np.digitize(ds.targets, edges)
    return None


def holdout(ds: Dataset, fraction: float, seed: int, name: str) -> tuple[np.ndarray, np.ndarray, str]:
    """Indices (kept, held out) for a held-out ``fraction``; stratified when each class can be."""
    from sklearn.model_selection import train_test_split

    n = len(ds)
    n_out = max(1, round(fraction * n))
    if n - n_out < 2:
        raise DataError(f"{ds.source}: {n} examples are too few to hold out a {name} split; add data")
    labels = _stratify_labels(ds)
    index = np.arange(n)
    how = "random"
    if labels is not None:
        counts = np.bincount(labels)
        counts = counts[counts > 0]
        if counts.min() >= 2 and n_out >= len(counts) and n - n_out >= len(counts):
            keep, out = train_test_split(index, test_size=n_out, random_state=seed, stratify=labels)
            return np.sort(keep), np.sort(out), "stratified"
    keep, out = train_test_split(index, test_size=n_out, random_state=seed)
    return np.sort(keep), np.sort(out), how


def make_split(
    train: Dataset,
    *,
    val: Dataset | None = None,
    test: Dataset | None = None,
    val_fraction: float = 0.15,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> Split:
    """The three splits: given files are used as they are, missing ones are held out of ``train``."""
    parts = []
    source = train
    train_idx = np.arange(len(source))
    indices: dict[str, np.ndarray | None] = {"val": None, "test": None}
    if test is None:
        keep, out, how = holdout(source, test_fraction, seed, "test")
        test = source.subset(out, source=f"{source.source} [test split]")
        train_idx, indices["test"] = keep, out
        parts.append(f"test: {how} {test_fraction:.0%} hold-out ({len(test)})")
    else:
        parts.append(f"test: {test.source} ({len(test)})")
    if val is None:
        remaining = source.subset(train_idx)
        keep, out, how = holdout(remaining, val_fraction, seed + 1, "validation")
        indices["val"] = train_idx[out]
        train_idx = train_idx[keep]
        val = source.subset(indices["val"], source=f"{source.source} [validation split]")
        parts.append(f"validation: {how} {val_fraction:.0%} hold-out ({len(val)})")
    else:
        parts.append(f"validation: {val.source} ({len(val)})")
    indices["train"] = train_idx
    parts.insert(0, f"train: {len(train_idx)}")
    return Split(
        train=source.subset(train_idx), val=val, test=test, description="; ".join(parts), indices=indices
    )
