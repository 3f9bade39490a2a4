"""Tables in: read a CSV / Parquet file, a DataFrame or a folder of class folders, bind columns to modalities,
check every cell, split, fit the preprocessing on the train rows.

Every referenced file is opened before training starts (and decoded again batch by batch while training,
:mod:`mmtransfer.data.preprocess`). A bad cell (missing or corrupt file, audio holding NaN or inf, empty text,
NaN or inf in a number column, a number too large to standardise, unknown label) stops the run with an error
naming the row, column and file, or, with ``on_bad_rows: skip``, its row is dropped and the skips are counted by
reason. A label column must give something to learn: two classes at least, or numbers that vary.

Rows are numbered as pandas numbers them: from 0, after the header (a file's line numbers can differ, since
a quoted cell may span lines).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from rich.console import Console

from mmtransfer.config import ColumnConfig, DataConfig, did_you_mean
from mmtransfer.data.columns import Binder, bind, bind_columns, print_binding
from mmtransfer.data.dataset import Dataset
from mmtransfer.data.labels import check_labels, check_target, read_target, refuse_or_skip
from mmtransfer.data.preprocess import Cells, TablePreprocessor
from mmtransfer.data.sources import read_source
from mmtransfer.data.splits import assign_splits
from mmtransfer.modalities.base import BadCell, DataError


@dataclass(frozen=True)
class Pairing:
    """Two columns of the same rows read by two models (cross-modal distillation): the teacher's column is kept
    as read and is never an input of this run; the student's, where named, is this run's only input."""

    teacher: str
    student: str | None = None


@dataclass
class PairedColumn:
    """The teacher's column of a paired table: its cells by table row, and the folder relative paths resolve
    against."""

    name: str
    values: np.ndarray
    base: Path
    table: str


def load_table_dataset(
    cfg: DataConfig,
    source: str | Path | pd.DataFrame | None = None,
    console: Console | None = None,
    hold_out: bool = True,
    binder: Binder | None = None,
    test: bool = True,
    paired: Pairing | None = None,
) -> Dataset:
    """Read, bind, check and fit a table into a :class:`~mmtransfer.data.Dataset` whose splits are
    :class:`~mmtransfer.data.preprocess.RowSplit`: image and audio cells are decoded batch by batch, never all at
    once. ``data.preprocessor`` is the fitted :class:`~mmtransfer.data.preprocess.TablePreprocessor`. Without
    ``test`` no test rows are drawn, and ``data.test`` is None unless a split column names some. ``paired``
    keeps a teacher's column out of the inputs (``data.paired`` holds its cells)."""
    df, base, name, cfg = read_source(cfg, source)
    if len(df) == 0:
        raise DataError(f"{name}: no rows (only a header?); nothing to train on")
    _say_skipped_files(df, console)
    ignored = None
    if paired is not None:
        cfg = paired_config(list(df.columns), cfg, paired, name)
        ignored = list(cfg.ignore)
    columns, how = bind_columns(df, cfg, name)
    binding = (binder or bind)(columns)  # every auto setting resolved once, from the encoder reading it
    columns = binding.columns
    if console is not None:
        print_binding(df, cfg, name, how, binding, console)
    pre = TablePreprocessor(columns)
    target = read_target(df, cfg, console)
    cells, bad_cells = pre.check(df, base, name, console)
    bad = target.bad + bad_cells
    bad += _empty_rows(pre, cells, columns, len(df), {b.row for b in bad})
    bad += check_labels(df, target.texts, cfg, {b.row for b in bad}, target.task)

    keep = np.ones(len(df), dtype=bool)
    if bad:
        refuse_or_skip(bad, keep, cfg, name, console)
    check_target(target.texts, target.values, target.sets, keep, cfg)
    split = np.empty(len(df), dtype=object)
    split[keep] = assign_splits(df[keep], target.groups(keep), cfg, hold_out=hold_out, console=console, test=test)
    classes, label_ids = target.encode(keep, split, cfg)
    pre.fit(cells, np.flatnonzero(keep & (split == "train")))
    unreadable = pre.check_fitted(cells, np.flatnonzero(keep))  # numbers the train statistics cannot standardise
    if unreadable:
        refuse_or_skip(unreadable, keep, cfg, name, console)
        bad += unreadable
    parts = _parts(pre, cells, keep, split, label_ids, name, hold_out=hold_out, test=test)
    augment = {c: pre.modalities[c].augment for c, col in columns.items() if col.modality == "image" and col.augment}
    data = Dataset(
        Path(name).stem, classes, parts["train"], parts["val"], parts["test"], specs=pre.specs(), augment=augment
    )
    data.preprocessor = pre
    data.task = target.task
    if paired is not None:
        values = df[paired.teacher].to_numpy(dtype=object)
        data.paired, data.ignored = PairedColumn(paired.teacher, values, Path(base), name), ignored
    data.columns, data.encoders = columns, binding.encoders
    data.preprocessing = {
        **pre.state(),
        "skipped_rows": [{"row": b.row, "column": b.column, "reason": b.reason, "file": b.file} for b in bad],
    }
    return data


def paired_config(columns: list, cfg: DataConfig, paired: Pairing, name: str) -> DataConfig:
    """The data config the student reads a paired table with: the teacher's column ignored, and with a student
    column named, every other column but the label and the split column. Both columns must be in the table."""
    for field_name, column in (("teacher_column", paired.teacher), ("student_column", paired.student)):
        if column is not None and column not in columns:
            hint = did_you_mean(column, [str(c) for c in columns])
            raise DataError(f"{name}: no column {column!r} (transfer.distill.{field_name}){hint or ';'} its "
                            f"columns: {', '.join(map(str, columns))}")  # fmt: skip
    roles = dict.fromkeys(cfg.columns, "in data.columns")
    roles.update({cfg.label: "the label", cfg.split_column: "the split column"})
    role = roles.get(paired.teacher)
    if role is not None:
        raise DataError(
            f"{name}: transfer.distill.teacher_column {paired.teacher!r} is {role}; the teacher's column is "
            "read by the teacher only, never by this run"
        )
    ignore = [*cfg.ignore, *([] if paired.teacher in cfg.ignore else [paired.teacher])]
    if paired.student is not None:
        keep = {paired.student, cfg.label, cfg.split_column}
        ignore += [c for c in columns if c not in keep and c not in ignore]
        columns_cfg = {c: v for c, v in cfg.columns.items() if c == paired.student}
        return cfg.model_copy(update={"ignore": ignore, "columns": columns_cfg})
    return cfg.model_copy(update={"ignore": ignore})


def _say_skipped_files(df: pd.DataFrame, console: Console | None) -> None:
    """A folder's files that are neither images nor audio, named (five of them) on the console."""
    skipped_files = df.attrs.get("skipped_files", [])
    if skipped_files and console is not None:
        console.print(
            f"skipped {len(skipped_files)} file(s) that are not images or audio: {', '.join(skipped_files[:5])}"
            + (f", ... {len(skipped_files) - 5} more" if len(skipped_files) > 5 else ""),
            markup=False,
        )


def _empty_rows(
    pre: TablePreprocessor, cells: Cells, columns: dict[str, ColumnConfig], n: int, bad_rows: set[int]
) -> list[BadCell]:
    """Rows, not bad already, whose every input is empty (a table with number columns has none: they are always
    present)."""
    if pre.tab_cols:
        return []
    return [
        BadCell(i, ", ".join(sorted(columns)), "every input of this row is empty")
        for i in sorted(set(range(n)) - bad_rows)
        if not any(cells.present[c][i] for c in columns)
    ]


def _parts(
    pre: TablePreprocessor,
    cells: Cells,
    keep: np.ndarray,
    split: np.ndarray,
    label_ids: np.ndarray,
    name: str,
    *,
    hold_out: bool,
    test: bool,
) -> dict:
    """The train, val and test splits of the kept rows (val None without ``hold_out``; test None when not drawn
    and none given); an empty split that should hold rows is refused."""
    wanted = ("train", "val", "test") if hold_out else ("train", "test")  # without hold_out: no val rows
    parts = {}
    for s in wanted:
        rows = np.flatnonzero(keep & (split == s))
        if len(rows) == 0 and s == "test" and not test:
            continue
        if len(rows) == 0:
            raise DataError(f"{name}: the {s} split is empty")
        parts[s] = pre.split(cells, rows, label_ids[rows])
    parts.setdefault("val", None)
    parts.setdefault("test", None)
    return parts
