"""One entry point for labeled data of any modality, and for unlabeled inputs at prediction time.

The input type is decided from names alone (a folder of JPEGs, a CSV whose column holds ``.wav``
paths, or text), before anything is decoded, so that a modality mismatch with the backbone is
refused before any work.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from graft.config import DataConfig
from graft.data.dataset import Dataset
from graft.data.media import (
    _path_column,
    detect_modality,
    read_media_folder,
    read_media_inputs,
    read_media_table,
)
from graft.data.text import read_table, read_text_dataset, read_text_inputs, table_from_object
from graft.errors import DataError


def read_dataset(
    data: Any,
    cfg: DataConfig | None = None,
    *,
    labels: list[Any] | None = None,
    label_space: tuple[Any, ...] | None = None,
    task: str | None = None,
    require_min_per_class: bool = True,
    prefer_columns: tuple[str | None, str | None] = (None, None),
) -> Dataset:
    """Labeled text, image or audio data from a folder, a table file, a DataFrame or Python lists.

    Args mirror :func:`graft.data.read_text_dataset`; ``prefer_columns`` are the (input, label)
    column names of a trained model, used when the source has them.
    """
    cfg = cfg or DataConfig()
    build = {
        "label_space": label_space,
        "task": task or cfg.task,
        "require_min_per_class": require_min_per_class,
    }
    if cfg.group_col and (
        labels is not None or (isinstance(data, str | os.PathLike) and Path(data).is_dir())
    ):
        raise DataError(
            f"--group-col {cfg.group_col}: groups come from a column of a table (CSV/TSV/JSONL, a DataFrame "
            "or a dict of columns); this data has no columns"
        )
    if labels is not None:
        if isinstance(data, list | tuple) and detect_modality(list(data)) != "text":
            table = table_from_object({"path": [str(x) for x in data], "label": list(labels)})
            return read_media_table(table, cfg, 0, **build)
        return read_text_dataset(
            data,
            cfg,
            labels=labels,
            label_space=label_space,
            task=task,
            require_min_per_class=require_min_per_class,
            prefer_columns=prefer_columns,
        )
    if isinstance(data, str | os.PathLike):
        path = Path(data)
        if path.is_dir():
            return read_media_folder(path, cfg, **build)
        if not path.exists():
            raise DataError(f"file not found: {path}")
        table = read_table(path, cfg)
    else:
        table = table_from_object(data)
    try:
        j = _path_column(table, cfg.path_col)
    except DataError:
        if cfg.path_col or prefer_columns[0] not in table.columns:
            raise
        j = table.columns.index(prefer_columns[0])  # several path columns: the model's own
    if j is not None:
        return read_media_table(table, cfg, j, prefer_label=prefer_columns[1], **build)
    return read_text_dataset(
        table,
        cfg,
        label_space=label_space,
        task=task,
        require_min_per_class=require_min_per_class,
        prefer_columns=prefer_columns,
    )


def read_inputs(
    data: Any, modality: str, column: str | None = None, encoding: str | None = None
) -> list[str]:
    """Unlabeled inputs for a model of ``modality``: texts, or checked media file paths.

    ``encoding`` applies to a text file of inputs (texts, or a table of paths).
    """
    if modality == "text":
        return read_text_inputs(data, column, encoding)
    return read_media_inputs(data, modality, column, encoding)


__all__ = ["detect_modality", "read_dataset", "read_inputs"]
