"""The names ``mmtransfer.preprocess`` has always offered, now :mod:`mmtransfer.data.preprocess`:
``from mmtransfer.preprocess import TablePreprocessor`` (tests, older scripts) keeps working; nothing patches
these names, they are only imported."""

from mmtransfer.data.preprocess import MODALITIES, STREAMED, TABULAR, Cells, RowSplit, TablePreprocessor

__all__ = ["MODALITIES", "STREAMED", "TABULAR", "Cells", "RowSplit", "TablePreprocessor"]
