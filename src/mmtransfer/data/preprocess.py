"""Fitted preprocessing of a table's input columns, and splits that load their rows batch by batch.

A table is bound (columns -> modalities), checked (every cell opened once, bad ones collected by row, column and
file), fitted on the train rows (vocabulary, statistics, category codes), then transformed batch by batch: a
:class:`RowSplit` holds row numbers, not tensors, and decodes the files of a batch only when the batch is asked
for, in the DataLoader's worker processes where there are any. Memory does not grow with the number of image or
audio rows; text and numbers, small, are kept as read.

:class:`TablePreprocessor` is what a run folder saves (``state()``) and what ``predict`` reloads
(``from_state()``): new rows go through the same fitted preprocessing, never a refit.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from pydantic import TypeAdapter
from rich.console import Console
from rich.markup import escape
from rich.progress import track

from mmtransfer.config import ColumnConfig
from mmtransfer.data.splits import Split
from mmtransfer.modalities.audio import AudioModality
from mmtransfer.modalities.base import BadCell, BadValue, DataError, InputSpec, is_missing
from mmtransfer.modalities.image import ImageModality
from mmtransfer.modalities.tabular import TabularModality
from mmtransfer.modalities.text import TextModality

MODALITIES = {"image": ImageModality, "text": TextModality, "audio": AudioModality, "tabular": TabularModality}
STREAMED = ("image", "audio")  # kept as paths, decoded per batch
TABULAR = "tabular"  # the one input that all number / category columns form together


@dataclass
class Cells:
    """Every checked cell of a table's input columns. ``values``: for image and audio columns the cell as written
    (a path), for the others the loaded example (a string, a number); ``present`` is False where a cell is empty
    or bad; ``row_ids`` are the table's own row numbers (from 0 after the header)."""

    name: str
    base: Path
    values: dict[str, list]
    present: dict[str, np.ndarray]
    row_ids: np.ndarray


class TablePreprocessor:
    """Columns bound to modalities: check cells, fit on train rows, transform rows into a batch of tensors."""

    def __init__(self, columns: dict[str, ColumnConfig], modalities: dict | None = None):
        self.columns = {c: columns[c] for c in sorted(columns)}
        self.modalities = modalities or {c: MODALITIES[cfg.modality](c, cfg) for c, cfg in self.columns.items()}
        self.tab_cols = [c for c, cfg in self.columns.items() if cfg.modality == TABULAR]
        self.fitted = False  # by fit, or rebuilt from a run's state: then check also refuses what it cannot read

    # ------------------------------------------------------------ check, fit

    def check(self, df: pd.DataFrame, base: Path, name: str, console: Console | None = None) -> tuple[Cells, list]:
        """Open every cell once (files are decoded and dropped: an image as cheaply as the format allows, see
        ``ImageModality.check``); collect bad ones instead of stopping at the first.

        Rows are named by the table's index (``read_table`` numbers them from 0 after the header; a subset of
        rows keeps its numbers)."""
        values: dict[str, list] = {}
        present: dict[str, np.ndarray] = {}
        bad: list[BadCell] = []
        ids = df.index.to_numpy()
        for col, mod in self.modalities.items():
            if col not in df.columns:
                raise DataError(f"{name}: no column {col!r}, which the model reads; columns are {list(df.columns)}")
            column = df[col].tolist()
            rows = range(len(column))
            streamed = self.columns[col].modality in STREAMED
            read = getattr(mod, "check", mod.load) if streamed else mod.load  # a streamed cell's example is dropped
            fitted_problem = getattr(mod, "standardise_problem", None) if self.fitted else None
            if streamed and console is not None and console.is_terminal:
                rows = track(rows, description=f"checking {_escape(col)}", console=console, transient=True)
            out, here = [], np.zeros(len(column), dtype=bool)
            for i in rows:
                value = column[i]
                if is_missing(value) and self.columns[col].modality != TABULAR:
                    out.append(None)
                    continue
                try:
                    example = read(value, base)
                    reason = fitted_problem(example) if fitted_problem is not None else None
                    if reason is not None:  # a new row far outside the train range (predict, evaluate)
                        raise BadValue(reason)
                    out.append(value if streamed else example)
                    here[i] = True
                except BadValue as err:
                    bad.append(BadCell(int(ids[i]), col, err.reason, err.file))
                    out.append(None)
            values[col], present[col] = out, here
        return Cells(name, base, values, present, ids), bad

    def fit(self, cells: Cells, rows: np.ndarray) -> None:
        """Learn every modality's state on ``rows`` (the train rows), files read one at a time."""
        for col, mod in self.modalities.items():
            here = [int(r) for r in rows if cells.present[col][r]]
            if self.columns[col].modality in STREAMED:
                mod.fit(self._examples(cells, col, here))  # an iterator: one file in memory at a time
            else:
                mod.fit([cells.values[col][r] for r in here])
        self.fitted = True

    def empty_rows(self, cells: Cells, flagged: Collection = ()) -> list[BadCell]:
        """A bad cell for each row (by the table's row id) outside ``flagged`` that gives the model nothing: every
        input empty, and no number column whose filled-in value it could read."""
        if self.tab_cols:
            return []
        return [BadCell(int(row), ", ".join(self.columns), "every input of this row is empty")
                for i, row in enumerate(cells.row_ids)
                if row not in flagged and not any(cells.present[c][i] for c in self.columns)]  # fmt: skip

    def check_fitted(self, cells: Cells, rows: np.ndarray) -> list[BadCell]:
        """The cells of ``rows`` that the fitted state cannot turn into finite inputs: a number standardised with
        the train mean and std to inf (``1e300`` in a val row of a column that trained on 0 to 10)."""
        bad = []
        for col in self.tab_cols:
            problem = getattr(self.modalities[col], "standardise_problem", None)
            if problem is None:
                continue
            for r in rows:
                reason = problem(cells.values[col][r]) if cells.present[col][r] else None
                if reason is not None:
                    bad.append(BadCell(int(cells.row_ids[r]), col, reason))
        return bad

    def _examples(self, cells: Cells, col: str, rows: list[int]) -> Iterator:
        mod = self.modalities[col]
        for r in rows:
            yield self._load(cells, col, r) if cells.present[col][r] else mod.placeholder()

    def _load(self, cells: Cells, col: str, r: int):
        try:
            return self.modalities[col].load(cells.values[col][r], cells.base)
        except BadValue as err:  # the file changed since it was checked
            file = f" ({err.file})" if err.file else ""
            raise DataError(f"{cells.name}: row {cells.row_ids[r]}, column {col!r}: {err.reason}{file}") from None

    # ------------------------------------------------------------ transform

    def transform(self, cells: Cells, rows: np.ndarray | list[int], skip: Collection[str] = ()) -> dict:
        """The batch of ``rows``: one tensor per input (``name.present`` beside it), number columns together.
        The inputs in ``skip`` are not made (their files not decoded); their ``name.present`` still is."""
        rows = [int(r) for r in rows]
        out: dict[str, torch.Tensor] = {}
        for col, mod in self.modalities.items():
            if col in self.tab_cols:
                continue
            out[f"{col}.present"] = torch.as_tensor(cells.present[col][rows], dtype=torch.bool)
            if col in skip:
                continue
            if self.columns[col].modality in STREAMED:
                examples = list(self._examples(cells, col, rows))
            else:
                examples = [cells.values[col][r] if cells.present[col][r] else mod.placeholder() for r in rows]
            out[col] = mod.collate(examples)
        if self.tab_cols and TABULAR not in skip:
            out[TABULAR] = torch.cat(
                [self.modalities[c].collate([cells.values[c][r] for r in rows]) for c in self.tab_cols], 1
            )
        return out

    def input_names(self) -> list[str]:
        """The keys of a batch from :meth:`transform`."""
        names = [n for c in self.modalities if c not in self.tab_cols for n in (c, f"{c}.present")]
        return names + ([TABULAR] if self.tab_cols else [])

    def specs(self) -> dict[str, InputSpec]:
        specs = {c: m.spec() for c, m in self.modalities.items() if c not in self.tab_cols}
        if self.tab_cols:
            categorical = {}
            for j, c in enumerate(self.tab_cols):
                categorical.update({j + k: n for k, n in self.modalities[c].spec().categorical.items()})
            specs[TABULAR] = InputSpec("tabular", (len(self.tab_cols),), categorical=categorical)
        return specs

    def split(self, cells: Cells, rows: np.ndarray, labels: torch.Tensor) -> RowSplit:
        labels = torch.as_tensor(labels)  # class ids, or the numbers of a regression target
        labels = labels.float() if labels.is_floating_point() else labels.long()
        return RowSplit(self, cells, np.asarray(rows, dtype=np.int64), labels)

    # ------------------------------------------------------------ state

    def state(self) -> dict:
        """JSON: the column bindings, what each modality learned, which columns form the tabular input."""
        return {
            "columns": {c: cfg.model_dump(mode="json") for c, cfg in self.columns.items()},
            "state": {c: m.state() for c, m in self.modalities.items()},
            "tabular_columns": self.tab_cols,
        }

    @classmethod
    def from_state(cls, state: dict, base: Path | None = None) -> TablePreprocessor:
        """Rebuild from :meth:`state`: the same bindings and fitted state, nothing learned again. A modality's
        ``files`` (a run folder's copy of a tokenizer or feature extractor) resolve against ``base``."""
        adapter = TypeAdapter(ColumnConfig)
        columns = {c: adapter.validate_python(cfg) for c, cfg in state["columns"].items()}
        modalities = {}
        for c, cfg in columns.items():
            own = dict(state["state"].get(c, {}))
            if "files" in own and base is not None:
                own["files"] = str(Path(base) / own["files"])
            modalities[c] = MODALITIES[cfg.modality].from_state(c, cfg, own)
        pre = cls(columns, modalities)
        pre.fitted = True
        return pre


@dataclass
class RowSplit:
    """Some rows of a checked table: labels in memory, inputs made batch by batch by the preprocessor.

    ``extra`` holds per-row tensors computed once (the features of a frozen encoder, ``name.features``).
    """

    pre: TablePreprocessor
    cells: Cells
    rows: np.ndarray  # positions in ``cells``
    labels: torch.Tensor
    extra: dict[str, torch.Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def row_ids(self) -> np.ndarray:
        """The table's own row numbers of this split, in order."""
        return self.cells.row_ids[self.rows]

    def names(self) -> list[str]:
        """The keys of a batch: every input whose features are not cached, ``name.present``, the cached features."""
        cached = self._cached()
        return [n for n in self.pre.input_names() if n not in cached] + list(self.extra)

    @property
    def reads_files(self) -> bool:
        """Whether a batch decodes files: an image or audio input whose features are not cached."""
        cached = self._cached()
        return any(self.pre.columns[c].modality in STREAMED and c not in cached for c in self.pre.columns)

    def _cached(self) -> set[str]:
        """Inputs whose frozen encoder's features are in ``extra``: what the model reads instead of them."""
        return {k.removesuffix(".features") for k in self.extra if k.endswith(".features")}

    def batch(self, indices, names: Collection[str] | None = None) -> dict[str, torch.Tensor]:
        """The inputs of ``indices`` (positions in this split): an input whose features are cached is not decoded
        (a linear probe's epochs never open its files); ``names``: only these keys."""
        index = np.asarray(indices, dtype=np.int64)
        skip = self._cached()
        if names is not None:
            skip |= set(self.pre.input_names()) - set(names)
        out = self.pre.transform(self.cells, self.rows[index], skip=skip)
        out.update({k: v[torch.as_tensor(index)] for k, v in self.extra.items()})
        return out if names is None else {k: v for k, v in out.items() if k in names}

    def subset(self, index) -> RowSplit:
        index = np.asarray(index, dtype=np.int64)
        extra = {k: v[torch.as_tensor(index)] for k, v in self.extra.items()}
        return RowSplit(self.pre, self.cells, self.rows[index], self.labels[torch.as_tensor(index)], extra)

    def concat(self, other: RowSplit) -> RowSplit:
        if other.cells is not self.cells or set(other.extra) != set(self.extra):
            raise ValueError("cannot join row splits of different tables")
        extra = {k: torch.cat([v, other.extra[k]]) for k, v in self.extra.items()}
        return RowSplit(
            self.pre, self.cells, np.concatenate([self.rows, other.rows]), torch.cat([self.labels, other.labels]), extra
        )

    def with_labels(self, labels: torch.Tensor) -> RowSplit:
        return RowSplit(self.pre, self.cells, self.rows, labels, dict(self.extra))

    def with_features(self, name: str, features: torch.Tensor) -> RowSplit:
        return RowSplit(self.pre, self.cells, self.rows, self.labels, {**self.extra, f"{name}.features": features})

    def example_keys(self, name: str) -> list[str]:
        """One hash per row of what input ``name`` holds there: the cell (for a file its resolved path, size and
        modification time) and the column's preprocessing (its settings and fitted state), so a changed file or
        a refit gives another key, and the same photo in another split, subset or table the same one."""
        cols = self.pre.tab_cols if name == TABULAR else [name]
        state = self.pre.state()
        setting = json.dumps(
            [[c, state["columns"][c], state["state"].get(c)] for c in cols], sort_keys=True, default=str
        ).encode()
        streamed = {c for c in cols if self.pre.columns[c].modality in STREAMED}
        keys = []
        for r in self.rows:
            h = hashlib.sha256(setting)
            for col in cols:
                value = self.cells.values[col][r] if self.cells.present[col][r] else None
                if col in streamed and value is not None:  # the file itself, however the cell spells its path
                    h.update(_stat(value, self.cells.base).encode())
                else:
                    h.update(repr(value).encode())
            keys.append(h.hexdigest()[:32])
        return keys

    def to_memory(self):
        """Every row loaded at once, as an in-memory :class:`~mmtransfer.data.Split` (for small data and tests)."""
        return Split(self.batch(np.arange(len(self))), self.labels)


def _stat(value, base: Path) -> str:
    path = Path(str(value).strip()).expanduser()
    path = path if path.is_absolute() else base / path
    try:
        st = os.stat(path)
        return f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"
    except OSError:
        return f"{path}:missing"


def _escape(text: str) -> str:
    return escape(str(text))
