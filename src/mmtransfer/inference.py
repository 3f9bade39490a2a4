"""Using a trained run on data: rows go through the run's fitted preprocessing (never refitted), in batches.

- :func:`read_rows`: a table, folder or DataFrame checked cell by cell against the run's columns; bad rows are
  listed (``on_bad_rows: error``) or set aside with their reasons (``skip``), never dropped silently.
- :func:`predict`: one output row per input row (its id, the predicted class, one probability per class),
  written to CSV as batches finish, so memory stays bounded on large inputs.
- :func:`evaluate_data`: metrics on a new labelled table, and a confusion-matrix PNG.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from rich.console import Console

from mmtransfer.config import DataConfig, did_you_mean
from mmtransfer.data import batches
from mmtransfer.data.preprocess import RowSplit
from mmtransfer.data.sources import open_source
from mmtransfer.modalities.base import BadCell, DataError, is_missing
from mmtransfer.modalities.tabular import MISSING
from mmtransfer.outputs import atomic_path, save_figure
from mmtransfer.tasks import plot_predicted_vs_true
from mmtransfer.train import evaluate, inference, progress_bar


@dataclass
class Rows:
    """The usable rows of some data, as a split through the run's preprocessing; ``labels`` is -1 where a row
    has no label; ``rejected`` are the rows set aside (``on_bad_rows: skip``) with why."""

    split: RowSplit
    has_labels: bool
    ids: list
    rejected: list[BadCell] = field(default_factory=list)
    table: pd.DataFrame | None = None
    id_column: str | None = None  # the column naming rows (None: the row number)


def read_data(source, data=None, columns=(), encoding: str | None = None) -> tuple[pd.DataFrame, Path, str]:
    """(table, folder that relative paths resolve against, name): a CSV / TSV / Parquet file, a folder of class
    subfolders (``data.folder`` layout, its class folders named in column ``data.label``), or a DataFrame, read as
    new rows for a run whose input columns are ``columns`` (:func:`~mmtransfer.data.sources.read_new_rows`)."""
    found = open_source(source, data or DataConfig(), columns=list(columns), encoding=encoding)
    return found.df, found.base, found.name


def read_rows(
    run,
    source,
    *,
    rows: list[int] | None = None,
    need_labels: bool = False,
    on_bad_rows: str = "error",
    id_column: str | None = None,
    encoding: str | None = None,
    console: Console | None = None,
    skippable: bool = True,
) -> Rows:
    """Check ``source`` (or only its ``rows``) against the run's input columns and return the usable rows.

    A folder's rows are named by their file (its ``image`` / ``audio`` column) unless ``id_column`` says
    otherwise. Empty cells that will be masked or filled are counted on the console."""
    pre = run.preprocessor
    if pre is None:
        raise DataError(
            f"{run.path}: this run was trained on the built-in {run.cfg.data.dataset} data, not a table; "
            "it reads no table columns (use the Python API on the built-in name)"
        )
    df, base, name, id_column = _new_rows(run, source, rows, need_labels, id_column, encoding, console)
    label = run.cfg.data.label
    has_labels = label in df.columns
    cells, bad = pre.check(df, base, name, console)
    ids = df.index.to_numpy()
    label_ids = np.full(len(df), -1)
    if has_labels:  # the targets as the run's task reads them (numbers, label sets, class indices)
        texts = ["" if is_missing(value) else str(value) for value in df[label].tolist()]
        label_ids, unreadable = run.model.task.parse_labels(texts, run.classes)
        if need_labels:
            bad += [BadCell(int(ids[i]), label, reason) for i, reason in unreadable]
    bad += pre.empty_rows(cells, {b.row for b in bad})
    bad.sort(key=lambda b: (b.row, b.column))
    if bad and on_bad_rows == "error":
        _refuse(bad, name, skippable)
    flagged = {b.row for b in bad}
    positions = np.flatnonzero(np.array([row not in flagged for row in ids], dtype=bool))
    if len(positions) == 0:
        raise DataError(
            f"{name}: every one of its {len(df)} rows has a bad cell, so none is left; the first: row {bad[0].row}, "
            f"column {bad[0].column!r}: {bad[0].reason}" + (f" ({bad[0].file})" if bad[0].file else "")
        )
    split = pre.split(cells, positions, torch.as_tensor(label_ids[positions]))
    if console is not None:
        _report_missing(pre, cells, positions, console)
    shown = df[id_column].to_numpy()[positions] if id_column else ids[positions]
    return Rows(split, has_labels, list(shown), bad, df, id_column)


def _new_rows(run, source, rows, need_labels: bool, id_column, encoding, console):
    """(table, base folder, name, id column) of new rows for ``run``: every input column the model reads is
    there, the label too where it is needed, only ``rows`` where given; the columns it does not read are named."""
    pre, label = run.preprocessor, run.cfg.data.label
    found = open_source(source, run.cfg.data, columns=list(pre.columns), encoding=encoding)
    df, name = found.df, found.name
    if len(df) == 0:
        raise DataError(f"{name}: no rows (only a header?); nothing to do")
    missing = [c for c in pre.columns if c not in df.columns]
    if missing:
        raise DataError(
            f"{name}: no column {missing[0]!r}, which the model reads"
            + (f" (nor {missing[1:]})" if len(missing) > 1 else "")
            + did_you_mean(missing[0], list(df.columns))
            + f"; the table has {list(df.columns)}"
        )
    if id_column is None and found.kind == "folder":
        id_column = next((c for c in ("image", "audio") if c in df.columns), None)  # name rows by their file
    skipped_files = df.attrs.get("skipped_files", [])
    if skipped_files and console is not None:
        console.print(_skipped_note(skipped_files), markup=False)
    if id_column is not None and id_column not in df.columns:
        raise DataError(f"{name}: --id-column {id_column!r} is not a column; the table has {list(df.columns)}")
    if rows is not None:
        if max(rows, default=-1) >= len(df):
            raise DataError(f"{name}: has {len(df)} rows, the run recorded row {max(rows)}")
        df = df.iloc[rows]
    if need_labels and label not in df.columns:
        raise DataError(
            f"{name}: no label column {label!r} to evaluate against{did_you_mean(label, list(df.columns))}; the "
            f"table has {list(df.columns)}"
        )
    ignored = [c for c in df.columns if c not in pre.columns and c not in (label, id_column, "split")]
    if ignored and console is not None:
        console.print(f"columns the model does not read, ignored: {', '.join(map(str, ignored))}", markup=False)
    return df, found.base, name, id_column


def _refuse(bad: list[BadCell], name: str, skippable: bool) -> None:
    """--on-bad-rows error: the bad cells (20 of them at most), and nothing done."""
    lines = [f"  row {b.row}, column {b.column!r}: {b.reason}" + (f" ({b.file})" if b.file else "") for b in bad]
    more = f"\n  ... and {len(lines) - 20} more" if len(lines) > 20 else ""
    raise DataError(
        f"{name}: {len(bad)} bad cell(s) in {len({b.row for b in bad})} row(s) (rows count from 0 after the "
        f"header); nothing was done"
        + (" (--on-bad-rows skip sets them aside in a file of their own)" if skippable else "")
        + "\n"
        + "\n".join(lines[:20])
        + more
    )


def labelled_rows(run, table, rows: list[int]) -> RowSplit:
    """The recorded rows of the run's own table (``evaluate RUN``), every one labelled and readable."""
    return read_rows(run, table, rows=rows, need_labels=True, skippable=False).split


def _skipped_note(files: list[str]) -> str:
    return (
        f"skipped {len(files)} file(s) that are not images or audio: "
        + ", ".join(files[:5])
        + (f", ... {len(files) - 5} more" if len(files) > 5 else "")
    )


def _report_missing(pre, cells, positions: np.ndarray, console: Console) -> None:
    """One line per input column with empty cells among the rows used: how many, and what is done with them."""
    for col in pre.columns:
        if col in pre.tab_cols:
            empty = sum(cells.values[col][r] is MISSING for r in positions)
            how = "filled with the train mean" if pre.columns[col].kind == "numeric" else "given the unseen code"
        else:
            empty = int((~cells.present[col][positions]).sum())
            how = "masked out of the model's input"
        if empty:
            console.print(f"column {col!r}: {empty} empty cell(s), {how}", markup=False)


def probabilities(model, split, batch_size: int = 32) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
    """(row positions, class probabilities [B, C]) batch by batch, in eval mode, on the model's device: batches of
    32 under inference_mode with channels-last convolutions (as fast per photo as 256, in an eighth of the memory)."""
    device = next(model.parameters()).device
    task = model.task  # decodes: softmax, one sigmoid per label, or the numbers in the target's units
    with inference(model):
        for index, inputs in batches(split, batch_size):
            yield index, task.decode(model({k: v.to(device) for k, v in inputs.items()})).cpu()


def predict(
    run,
    source,
    out: str | Path,
    *,
    id_column: str | None = None,
    on_bad_rows: str = "error",
    batch_size: int = 32,
    encoding: str | None = None,
    console: Console | None = None,
    progress: bool = True,
) -> dict:
    """Write ``out`` (CSV): id, predicted class, one probability per class (``p_<class>``), and the true label
    where the data has one; rows set aside go to ``<out stem>.rejected.csv`` with their reasons."""
    rows = read_rows(run, source, on_bad_rows=on_bad_rows, id_column=id_column, encoding=encoding, console=console)
    id_column = rows.id_column
    out = Path(out)
    label, task = run.cfg.data.label, run.model.task
    header = [id_column or "row", "prediction", *task.columns(run.classes)]
    labels = rows.table[label].to_numpy()[np.asarray(rows.split.rows)] if rows.has_labels else None
    header += [label] if rows.has_labels else []
    show = progress and console is not None and console.is_terminal
    written = 0
    # written to a temporary name and renamed when complete: a killed predict leaves no partial CSV under ``out``
    with atomic_path(out) as tmp, tmp.open("w", newline="") as f, progress_bar(show, console) as bar:
        writer = csv.writer(f)
        writer.writerow(header)
        progress_task = bar.add_task("predict", total=len(rows.split), status="")
        for index, p in probabilities(run.model, rows.split, batch_size):
            for i, cells in zip(index, task.rows(p.numpy(), run.classes), strict=True):
                writer.writerow([_plain(rows.ids[i]), *cells] + ([labels[i]] if labels is not None else []))
            written += len(index)
            bar.update(progress_task, advance=len(index))
    rejected_path = out.with_name(f"{out.stem}.rejected.csv")
    if rows.rejected:
        names = rows.table[id_column] if id_column else None
        rejected = pd.DataFrame(
            [
                {
                    **({id_column: _plain(names.loc[b.row])} if id_column else {}),
                    "row": b.row,
                    "column": b.column,
                    "reason": b.reason,
                    "file": b.file or "",
                }
                for b in rows.rejected
            ]
        )
        with atomic_path(rejected_path) as tmp:
            rejected.to_csv(tmp, index=False)
    else:
        rejected_path.unlink(missing_ok=True)  # a previous run's file would say rows were rejected now
        rejected_path = None
    return {
        "rows": written,
        "rejected_rows": len({b.row for b in rows.rejected}),
        "out": str(out),
        "rejected": str(rejected_path) if rejected_path else None,
    }


def _plain(value):
    """An id as a person wrote it: 7 rather than 7.0 (pandas reads an integer column with a gap as floats)."""
    if isinstance(value, (float, np.floating)):
        return "" if np.isnan(value) else int(value) if float(value).is_integer() else value
    return value


def evaluate_data(run, source, png: str | Path | None = None, encoding: str | None = None, console=None) -> dict:
    """Metrics of the run on a new labelled table (its fitted preprocessing), and a confusion-matrix PNG."""
    rows = read_rows(run, source, need_labels=True, encoding=encoding, console=console, skippable=False)
    metrics = evaluate(run.model, rows.split, cpu=run.cfg.train.cpu)
    kind = run.model.task.plot_kind
    if png is not None and kind == "predicted_vs_true":
        pred = torch.cat([p for _, p in probabilities(run.model, rows.split)]).numpy()
        plot_predicted_vs_true(pred, rows.split.labels.numpy(), png, f"{run.path.name} on {Path(str(source)).name}")
        metrics["plot_png"] = str(png)
    elif png is not None and kind == "confusion":
        plot_confusion(metrics["confusion"], run.classes, png, f"{run.path.name} on {Path(str(source)).name}")
        metrics["confusion_png"] = str(png)
    return metrics


def plot_confusion(confusion: list[list[int]], classes: list[str], path: str | Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(confusion)
    size = max(4.0, 0.5 * len(classes) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    for i in range(len(classes)):
        for j in range(len(classes)):
            colour = "white" if cm[i, j] > cm.max() / 2 else "black"
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", color=colour, fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    try:
        save_figure(fig, path, dpi=120)
    finally:
        plt.close(fig)
