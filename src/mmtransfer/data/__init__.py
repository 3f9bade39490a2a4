"""Data in: any source (a table file, a DataFrame, a folder of class folders, a built-in dataset) as seeded splits
of labelled examples, with a label budget and the labels that select the model; batches of them.

The package, bottom up (a module imports only those on the lines below its own; pyproject.toml's import-linter
contract holds it to that, so no circle can come back):

- :mod:`~mmtransfer.data.sources`: what a source is, decided in one place (:func:`open_source`), read as a table;
  :mod:`~mmtransfer.data.splits`: :class:`Split` in memory, stratified splits, label budgets.
- :mod:`~mmtransfer.data.dataset`: :class:`Dataset` and :class:`LabelUse`; :mod:`~mmtransfer.data.loaders`:
  DataLoaders of whole batches, batches made one ahead; :mod:`~mmtransfer.data.preprocess`: a table's columns
  fitted on the train rows, transformed batch by batch.
- :mod:`~mmtransfer.data.builtin`: ``digits`` and ``mnist1d``; :mod:`~mmtransfer.data.columns`: columns bound to
  modalities (configured or inferred); :mod:`~mmtransfer.data.labels`: the label column read, checked and encoded,
  bad rows refused or skipped.
- :mod:`~mmtransfer.data.table`: a table read, bound, checked, split and fitted.
- :mod:`~mmtransfer.data.load`: :func:`load_dataset`, the one entry: any source, its label budget applied.

>>> from mmtransfer.config import DataConfig
>>> data = load_dataset(DataConfig(dataset="digits", k_per_class=5))  # doctest: +SKIP
"""

from mmtransfer.data.builtin import _digits, _mnist1d
from mmtransfer.data.dataset import Dataset, LabelUse
from mmtransfer.data.load import load_dataset
from mmtransfer.data.loaders import ahead, batches, make_loader
from mmtransfer.data.splits import (
    Examples,
    Split,
    k_per_class,
    label_fraction,
    split_budget,
    stratified_halves,
    stratified_split,
)
from mmtransfer.data.table import PairedColumn, Pairing

__all__ = [
    "Dataset",
    "Examples",
    "LabelUse",
    "PairedColumn",
    "Pairing",
    "Split",
    "_digits",
    "_mnist1d",
    "ahead",
    "batches",
    "k_per_class",
    "label_fraction",
    "load_dataset",
    "make_loader",
    "split_budget",
    "stratified_halves",
    "stratified_split",
]
