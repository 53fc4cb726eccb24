"""Data: reading sources per modality, the Dataset type, validation, splits. Knows nothing of models."""

from graft.data.dataset import DataReport, Dataset, build_dataset
from graft.data.encodings import DataWarning
from graft.data.media import layout_splits
from graft.data.sources import detect_modality, read_dataset, read_inputs
from graft.data.splits import holdout, leakage_groups, overlap
from graft.data.text import read_table, read_text_dataset, read_text_inputs

__all__ = [
    "DataReport",
    "DataWarning",
    "Dataset",
    "build_dataset",
    "detect_modality",
    "holdout",
    "layout_splits",
    "leakage_groups",
    "overlap",
    "read_dataset",
    "read_inputs",
    "read_table",
    "read_text_dataset",
    "read_text_inputs",
]
