"""The names ``mmtransfer.tables`` has always offered, now in the :mod:`mmtransfer.data` package (reading sources,
binding columns, checking labels, loading a table). ``from mmtransfer.tables import load_table_dataset`` (tests,
older scripts) keeps working; nothing patches these names, they are only imported."""

from mmtransfer.data.columns import bind_columns, describe_column, infer_columns, print_binding
from mmtransfer.data.labels import check_labels
from mmtransfer.data.preprocess import MODALITIES
from mmtransfer.data.sources import AUDIO_SUFFIXES, IMAGE_SUFFIXES, read_folder, read_source, read_table
from mmtransfer.data.splits import assign_splits, split_values
from mmtransfer.data.table import load_table_dataset
from mmtransfer.modalities.base import DataError

__all__ = [
    "AUDIO_SUFFIXES",
    "IMAGE_SUFFIXES",
    "MODALITIES",
    "DataError",
    "assign_splits",
    "bind_columns",
    "check_labels",
    "describe_column",
    "infer_columns",
    "load_table_dataset",
    "print_binding",
    "read_folder",
    "read_source",
    "read_table",
    "split_values",
]
