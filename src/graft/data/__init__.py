"""Data: reading sources per modality, the Dataset type, validation, splits. Knows nothing of models."""

from graft.data.dataset import DataReport, Dataset, build_dataset
from graft.data.splits import Split, make_split
from graft.data.text import DataWarning, read_table, read_text_dataset, read_text_inputs

__all__ = [
    "DataReport",
    "DataWarning",
    "Dataset",
    "Split",
    "build_dataset",
    "make_split",
    "read_table",
    "read_text_dataset",
    "read_text_inputs",
]
