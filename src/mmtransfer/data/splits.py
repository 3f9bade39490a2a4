"""Splits of labelled examples: the in-memory :class:`Split`, what any split offers (:class:`Examples`), seeded
stratified splits of a table's rows (or a split column's), and label budgets (``k_per_class``, ``label_fraction``)
with the part of a budget that selects the model."""

from __future__ import annotations

import hashlib
from collections.abc import Collection
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import pandas as pd
import torch
from rich.console import Console
from sklearn.model_selection import train_test_split

from mmtransfer.config import DataConfig
from mmtransfer.modalities.base import DataError
from mmtransfer.tasks import strata


class Examples(Protocol):
    """What training, evaluation, caching and distillation need of a split: labels [N] in memory, and the inputs
    of any rows as one batch. :class:`Split` holds its tensors; a table's
    :class:`~mmtransfer.data.preprocess.RowSplit` makes them per batch."""

    labels: torch.Tensor

    def __len__(self) -> int: ...

    def names(self) -> list[str]: ...

    def batch(self, indices, names: Collection[str] | None = None) -> dict[str, torch.Tensor]: ...

    def subset(self, index) -> Examples: ...

    def concat(self, other) -> Examples: ...

    def with_labels(self, labels: torch.Tensor) -> Examples: ...

    def with_features(self, name: str, features: torch.Tensor) -> Examples: ...

    def example_keys(self, name: str) -> list[str]: ...


@dataclass
class Split:
    """Inputs keyed by name, each [N, ...], and integer labels [N], in memory."""

    inputs: dict[str, torch.Tensor]
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def names(self) -> list[str]:
        return list(self.inputs)

    def batch(self, indices, names: Collection[str] | None = None) -> dict[str, torch.Tensor]:
        """The inputs of ``indices``; ``names``: only these."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        return {k: v[idx] for k, v in self.inputs.items() if names is None or k in names}

    def subset(self, index: np.ndarray | torch.Tensor) -> Split:
        index = torch.as_tensor(index, dtype=torch.long)
        return Split({k: v[index] for k, v in self.inputs.items()}, self.labels[index])

    def concat(self, other: Split) -> Split:
        """This split's examples followed by ``other``'s (the same inputs)."""
        if set(self.inputs) != set(other.inputs):
            raise ValueError(f"cannot join splits with inputs {sorted(self.inputs)} and {sorted(other.inputs)}")
        inputs = {k: torch.cat([v, other.inputs[k]]) for k, v in self.inputs.items()}
        return Split(inputs, torch.cat([self.labels, other.labels]))

    def with_labels(self, labels: torch.Tensor) -> Split:
        return Split(dict(self.inputs), labels)

    def with_features(self, name: str, features: torch.Tensor) -> Split:
        return Split({**self.inputs, f"{name}.features": features}, self.labels)

    def example_keys(self, name: str) -> list[str]:
        """One hash per row of input ``name``: the row tensor's dtype, shape and bytes."""
        t = self.inputs[name].detach().cpu().contiguous()
        head = str((t.dtype, tuple(t.shape[1:]))).encode()
        rows = t.reshape(len(t), -1).view(torch.uint8).numpy() if t.numel() else np.zeros((len(t), 0), np.uint8)
        return [hashlib.sha256(head + row.tobytes()).hexdigest()[:32] for row in rows]

    def to_memory(self) -> Split:
        return self


def k_per_class(split: Split, k: int, seed: int = 0, classes: list[str] | None = None) -> Split:
    """k examples of every class, drawn without replacement with ``seed``; fails if a class has fewer."""
    rng = np.random.default_rng(seed)
    labels = split.labels.numpy()
    chosen = []
    for c in np.unique(labels):
        where = np.flatnonzero(labels == c)
        if len(where) < k:
            name = repr(classes[c]) if classes else str(c)
            raise DataError(f"k_per_class={k}: class {name} has only {len(where)} labelled examples in the train split")
        chosen.append(rng.choice(where, size=k, replace=False))
    return split.subset(np.sort(np.concatenate(chosen)))


def label_fraction(split: Split, fraction: float, seed: int = 0, classes: list[str] | None = None) -> Split:
    """``fraction`` of each class's examples (rounded, at least one), drawn without replacement with ``seed``
    (a regression target: of each part of its range)."""
    rng = np.random.default_rng(seed)
    labels = strata(split.labels.numpy())
    chosen = []
    for c in np.unique(labels):
        where = np.flatnonzero(labels == c)
        chosen.append(rng.choice(where, size=max(1, int(np.floor(fraction * len(where) + 0.5))), replace=False))
    return split.subset(np.sort(np.concatenate(chosen)))


def split_budget(labelled: Split, fraction: float, seed: int = 0) -> tuple[Split, Split] | None:
    """(train, selection): of each class's n labelled examples, round(fraction * n) but at least one select the
    model and the rest train it; None when a class has a single example (nothing would be left to train on)."""
    rng = np.random.default_rng([seed, 1])  # not the stream that drew the budget
    labels = strata(labelled.labels.numpy())
    train, val = [], []
    for c in np.unique(labels):
        where = np.flatnonzero(labels == c)
        if len(where) < 2:
            return None
        n_val = min(len(where) - 1, max(1, int(np.floor(fraction * len(where) + 0.5))))
        picked = rng.permutation(where)
        val.append(picked[:n_val])
        train.append(picked[n_val:])
    return labelled.subset(np.sort(np.concatenate(train))), labelled.subset(np.sort(np.concatenate(val)))


def stratified_split(
    index: np.ndarray, labels: np.ndarray, fraction: float, seed: int, *, what: str, field: str, of: str
) -> tuple[np.ndarray, np.ndarray]:
    """(rest, held out): ``fraction`` of ``index`` held out, stratified by ``labels`` (of all rows), seeded.

    A part too small to hold one row of every class is refused in our words, naming the split (``what``), its
    size, the field that sets it and the number of classes, before scikit-learn says it its way.
    """
    names, counts = np.unique(labels[index], return_counts=True)
    if counts.min() < 2:
        rare = names[counts.argmin()]
        fixes = ""
        if what == "validation":
            fixes = ", give validation rows in the split column, or set train.validation=none"
        raise DataError(
            f"class '{rare}' has a single row in the {of}, so a stratified {what} split cannot hold one of it and "
            f"keep one: add rows{fixes}"
        )
    n, classes = len(index), len(names)
    held = int(np.ceil(fraction * n))
    for part, size in ((f"the {what} split", held), (f"what the {what} split leaves of the {of}", n - held)):
        if size < classes:
            raise DataError(
                f"{part} would hold {size} row(s) ({field}={fraction:g} of {n} {of} rows) but there are {classes} "
                f"classes; a stratified split needs at least one row of each: change {field}, add rows"
                + (", or set train.validation=none" if what == "validation" else ", or give a split column")
            )
    rest, out = train_test_split(index, test_size=fraction, stratify=labels[index], random_state=seed)
    return rest, out


def stratified_halves(split: Split, fraction: float = 0.5, seed: int = 0) -> tuple[Split, Split]:
    """Two disjoint stratified parts; the first holds ``fraction`` of the examples."""
    index = np.arange(len(split))
    a, b = train_test_split(index, train_size=fraction, stratify=strata(split.labels.numpy()), random_state=seed)
    return split.subset(np.sort(a)), split.subset(np.sort(b))


def split_values(df: pd.DataFrame, column: str) -> pd.Series:
    return df[column].astype(str).str.strip().str.lower().replace({"validation": "val", "valid": "val"})


def assign_splits(
    df: pd.DataFrame,
    labels: np.ndarray,
    cfg: DataConfig,
    hold_out: bool = True,
    console: Console | None = None,
    test: bool = True,
) -> np.ndarray:
    """'train' / 'val' / 'test' for every row: from the split column, or stratified and seeded. Without
    ``hold_out`` (no validation wanted, or a label budget that selects with its own labels) every row that is
    not a test row is a train row: a split column's val rows too, which ``console`` is told in one line.
    Without ``test`` no test rows are drawn (a split column's are kept)."""
    n = len(df)
    if cfg.split_column:
        split = split_values(df, cfg.split_column).to_numpy(dtype=object)
        if not hold_out:
            joined = int((split == "val").sum())
            split[split == "val"] = "train"
            if joined and console is not None:
                note = f"note: the {joined} val row(s) of split column {cfg.split_column!r} join the train rows: "
                console.print(note + _why_no_validation(cfg), markup=False, highlight=False)
        elif not (split == "val").any():  # no validation rows given: hold some out of train
            train_idx = np.flatnonzero(split == "train")
            _, val_idx = stratified_split(
                train_idx, labels, cfg.val_fraction, cfg.seed, what="validation", field="data.val_fraction", of="train"
            )
            split[val_idx] = "val"
        return split
    index = np.arange(n)
    if test:
        pool, held = stratified_split(
            index, labels, cfg.test_fraction, cfg.seed, what="test", field="data.test_fraction", of="table"
        )
    else:
        pool, held = index, index[:0]
    split = np.empty(n, dtype=object)
    if not hold_out:
        split[pool], split[held] = "train", "test"
        return split
    train, val = stratified_split(
        pool, labels, cfg.val_fraction, cfg.seed, what="validation", field="data.val_fraction", of="train pool"
    )
    split[train], split[val], split[held] = "train", "val", "test"
    return split


def _why_no_validation(cfg: DataConfig) -> str:
    """Why no validation split is held out of a table with a split column, in words."""
    if cfg.pool != "all":
        return f"data.pool={cfg.pool} halves them with the others (a half holds its own validation rows)"
    if cfg.k_per_class is not None or cfg.label_fraction is not None:
        k, fraction = cfg.k_per_class, cfg.label_fraction
        budget = f"k_per_class={k}" if k is not None else f"label_fraction={fraction:g}"
        return f"the label budget ({budget}) is drawn from them, and selects with its own labels"
    return "train.validation is none, so nothing selects the epoch (the last one is kept)"
