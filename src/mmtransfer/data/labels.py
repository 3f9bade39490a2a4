"""A table's label column: read as its task wants it (classes, numbers, label sets), checked (every class in the
train split, enough rows per class, something to learn), turned into the labels a split holds; and what to do
with bad rows (``data.on_bad_rows``)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import pandas as pd
from rich.console import Console

from mmtransfer.config import DataConfig
from mmtransfer.data.splits import split_values
from mmtransfer.modalities.base import BadCell, DataError, is_missing
from mmtransfer.tasks import DEFAULT, infer_task, parse_number, strata, task_class


@dataclass
class Target:
    """The label column as the task reads it: ``texts`` (stripped; '' where missing), the numbers of a regression
    target (``values``, NaN where unusable) or the label sets of a multi-label one (``sets``), and the label cells
    that cannot be used (``bad``)."""

    task: str
    texts: np.ndarray
    values: np.ndarray | None
    sets: list | None
    bad: list[BadCell]

    def groups(self, keep: np.ndarray) -> np.ndarray:
        """What stratifies the kept rows' splits."""
        if self.sets is not None:  # label sets: split at random
            return np.zeros(int(keep.sum()), dtype=object)
        if self.values is not None:  # numbers: by quantile bins
            return strata(self.values[keep]).astype(str)
        return self.texts[keep]

    def encode(self, keep: np.ndarray, split: np.ndarray, cfg: DataConfig) -> tuple[list[str], np.ndarray]:
        """(classes, the label of every row as a split holds it): a class id (-1 for a class the train split lacks),
        the number, or 0/1 over the labels any kept row names. A train split with one class, or a constant
        number, is refused."""
        texts, values, sets = self.texts, self.values, self.sets
        if sets is not None:  # the labels any kept row names; a row's labels as 0/1 over them
            classes = sorted({name for i in np.flatnonzero(keep) for name in sets[i]})
            label_ids = np.zeros((len(texts), len(classes)), dtype=np.float32)
            where = {c: j for j, c in enumerate(classes)}
            for i in np.flatnonzero(keep):
                label_ids[i, [where[name] for name in sets[i]]] = 1.0
        elif values is None:
            classes = sorted(set(texts[keep & (split == "train")]))
            label_ids = np.array([classes.index(v) if v in classes else -1 for v in texts])
        else:
            classes, label_ids = [cfg.label], values.astype(np.float32)  # one output: the number

        if values is None and sets is None and len(classes) < 2:  # every class of the table is in train otherwise
            _refuse_one_class(texts[keep & (split == "train")], cfg, "the train split")
        if values is not None:
            _refuse_constant(values[keep & (split == "train")], cfg, "the train split")
        return classes, label_ids


def read_target(df: pd.DataFrame, cfg: DataConfig, console: Console | None = None) -> Target:
    """The label column ``cfg.label`` of ``df``, its task inferred (or as ``data.task`` says, printed); a missing
    label, a regression label that is not a finite number within range, an empty label set is a bad cell."""
    texts = np.array(["" if is_missing(v) else str(v).strip() for v in df[cfg.label]], dtype=object)
    bad = [BadCell(int(i), cfg.label, "missing label") for i in np.flatnonzero(texts == "")]
    task, why = infer_task([t for t in texts if t], cfg.task, cfg.label, cfg.label_separator)
    if console is not None:
        console.print(f"task: {task} ({why})", markup=False, highlight=False)
    values, sets, unusable = task_class(task).read_table_labels(texts, cfg.label, cfg.label_separator)
    bad += [BadCell(i, cfg.label, reason) for i, reason in unusable]
    return Target(task, texts, values, sets, bad)


def check_labels(
    df: pd.DataFrame, labels: np.ndarray, cfg: DataConfig, bad_rows: set[int], task: str = DEFAULT
) -> list[BadCell]:
    """Rows whose split value or label cannot be used, found before any split is drawn."""
    bad = []
    rows = [i for i in range(len(df)) if i not in bad_rows]
    if not task_class(task).one_class_per_row:  # a number or a label set needs no other row like it
        labels = np.array(["any"] * len(df), dtype=object)
    if cfg.split_column:
        split = split_values(df, cfg.split_column).to_numpy()
        for i in rows:
            if split[i] not in ("train", "val", "test"):
                bad.append(
                    BadCell(i, cfg.split_column, f"split must be train, val or test, got {df[cfg.split_column][i]!r}")
                )
        train_labels = {labels[i] for i in rows if split[i] == "train"}
        for i in rows:
            if split[i] in ("val", "test") and labels[i] not in train_labels:
                bad.append(BadCell(i, cfg.label, f"label {labels[i]!r} never occurs in the train split"))
    else:
        counts = Counter(labels[i] for i in rows)
        for i in rows:
            if counts[labels[i]] < 3:  # train, val and test each need one for stratified splits
                bad.append(
                    BadCell(i, cfg.label, f"label {labels[i]!r} has {counts[labels[i]]} row(s); a class needs 3")
                )
    return bad


def refuse_or_skip(bad: list[BadCell], keep: np.ndarray, cfg: DataConfig, name: str, console) -> None:
    """``data.on_bad_rows``: error lists the bad cells (20 of them at most) and stops; skip clears their rows in
    ``keep`` and says how many rows went, by reason."""
    bad.sort(key=lambda b: (b.row, b.column))
    if cfg.on_bad_rows == "error":
        lines = [
            f"  row {b.row}, column {b.column!r}: {b.reason}" + (f" ({b.file})" if b.file else "") for b in bad[:20]
        ]
        more = f"\n  ... and {len(bad) - 20} more" if len(bad) > 20 else ""
        raise DataError(
            f"{name}: {len(bad)} bad cell(s) in {len({b.row for b in bad})} row(s) (rows count from 0 after the "
            f"header); nothing was trained (set data.on_bad_rows=skip to drop these rows)\n" + "\n".join(lines) + more
        )
    before = int(keep.sum())
    keep[[b.row for b in bad]] = False
    if console is not None:
        reasons = Counter(f"{b.column}: {b.reason}" for b in bad)
        console.print(
            f"skipped {before - int(keep.sum())} of {len(keep)} rows: "
            + "; ".join(f"{n} x {r}" for r, n in reasons.most_common()),
            style="yellow",
            markup=False,
        )


def check_target(labels: np.ndarray, values: np.ndarray | None, sets: list | None, keep, cfg: DataConfig) -> None:
    """The label column of the rows kept must give something to learn: two classes (or labels of a label set)
    at least, or a number that varies."""
    if values is not None:
        _refuse_constant(values[keep], cfg, "the table")
    elif sets is not None:
        names = sorted({label for i in np.flatnonzero(keep) for label in sets[i]})
        if len(names) == 1:
            raise DataError(
                f"data.label {cfg.label!r}: one label ({names[0]!r}) in {int(keep.sum())} rows, so every row holds it; "
                "a multi-label classifier needs at least two labels"
            )
    else:
        _refuse_one_class(labels[keep], cfg, "the table")


def _refuse_one_class(labels: np.ndarray, cfg: DataConfig, where: str) -> None:
    names = sorted(set(labels.tolist()))
    if len(names) == 1:
        number = parse_number(names[0]) is not None
        raise DataError(
            f"data.label {cfg.label!r}: one class ({names[0]!r}) in {len(labels)} rows of {where}; a classifier "
            "needs at least two" + (" (as a number to predict, data.task regression, it is constant)" if number else "")
        )


def _refuse_constant(values: np.ndarray, cfg: DataConfig, where: str) -> None:
    if len(values) and float(np.ptp(values)) == 0.0:
        raise DataError(
            f"data.label {cfg.label!r}: every one of the {len(values)} rows of {where} holds {values[0]:g}; a "
            "regression target needs values that vary (its standard deviation is 0)"
        )
