"""A table's column names and how its cells are quoted, read cheaply: the csv module on its first line, no pandas.

The command line checks a config's column names against them before torch loads (a missing label column is one
error line within a second), and ``predict`` / ``evaluate`` compare a new table's header with a run's columns.

>>> table_columns("sms", DataConfig(sep="tab", header=False, names=["label", "text"]))  # doctest: +SKIP
['label', 'text']
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

from mmtransfer.config import DataConfig, did_you_mean
from mmtransfer.errors import UserError

TEXT_SUFFIXES = (".csv", ".tsv", ".txt")
PARQUET_SUFFIXES = (".parquet", ".pq")


def table_format(path: str | Path, sep: str | None) -> str:
    """parquet or text; a file with another suffix is a text table only when ``sep`` says how to split it."""
    suffix = Path(path).suffix.lower()
    if suffix in PARQUET_SUFFIXES:
        return "parquet"
    if suffix in TEXT_SUFFIXES or sep is not None:
        return "text"
    raise UserError(
        f"{path}: not a table: expected a .csv, .tsv or .parquet file, or a folder of class folders; a text table "
        "with another name reads with data.sep set (e.g. --set data.sep=tab, or data.sep=,)"
    )


def first_row(path: str | Path, sep: str, encoding: str = "utf-8") -> list[str]:
    """The cells of a text table's first line (its header, where it has one); [] for an empty file."""
    csv.field_size_limit(sys.maxsize)
    enc = "utf-8-sig" if encoding.lower().replace("_", "-") in ("utf-8", "utf8") else encoding  # pandas drops a BOM
    with open(path, newline="", encoding=enc, errors="replace") as f:
        return next(csv.reader(f, delimiter=sep), [])


def quoting(path: str | Path, sep: str, encoding: str = "utf-8") -> int:
    """How to read a text table's quotes: as CSV quoting (``csv.QUOTE_MINIMAL``) unless it is tab-separated and
    its quotes are not CSV quoting, then literally (``csv.QUOTE_NONE``).

    Tab-separated files are often written without any quoting, their texts holding quotes of their own (the SMS
    Spam Collection: ``ham<TAB>"Happy valentines day" I know...``); read as CSV quoting, a quote opening a cell
    swallows the tabs and lines after it, rows are merged and texts change. A cell that opens with a quote but
    does not close it right before a separator is not CSV quoting: the strict csv reader refuses it."""
    if sep != "\t":
        return csv.QUOTE_MINIMAL
    csv.field_size_limit(sys.maxsize)
    with open(path, newline="", encoding=encoding, errors="replace") as f:
        if not any('"' in chunk for chunk in iter(lambda: f.read(1 << 20), "")):
            return csv.QUOTE_MINIMAL
        f.seek(0)
        try:
            for _ in csv.reader(f, delimiter=sep, strict=True):
                pass
        except csv.Error:
            return csv.QUOTE_NONE
    return csv.QUOTE_MINIMAL


def table_columns(path: str | Path, cfg: DataConfig) -> list[str]:
    """The column names ``path`` has once read as ``cfg`` says (header, names, sep), as ``tables.read_table``
    gives them: ``names`` where set, else the header's cells, else 0, 1, 2, ... (a table without a header)."""
    if table_format(path, cfg.sep) == "parquet":
        import pyarrow.parquet as pq  # here, on purpose: the command line checks headers before anything heavy loads

        found = [str(c) for c in pq.read_schema(path).names if not str(c).startswith("__index_level_")]
    else:
        found = first_row(path, cfg.separator(path), cfg.encoding)
        if not found:
            raise UserError(f"{path}: empty file: no header, no rows")
        if not cfg.header:
            found = [str(i) for i in range(len(found))]
    if cfg.names is not None:
        check_names(cfg.names, len(found), path, cfg)
        return list(cfg.names)
    if cfg.header:
        check_unique(found, path)
    return found


def check_unique(header: list[str], path) -> None:
    """Each column name once: pandas would rename a second ``note`` to ``note.1`` and read both, so the config's
    ``note`` would silently be the first of them."""
    seen: dict[str, list[int]] = {}
    for number, cell in enumerate(header, start=1):
        if str(cell).strip():  # empty ones (trailing separators) are pandas' "Unnamed: 3", "Unnamed: 4"
            seen.setdefault(str(cell), []).append(number)
    for cell, numbers in seen.items():
        if len(numbers) > 1:
            times = "twice" if len(numbers) == 2 else f"{len(numbers)} times"
            where = ", ".join(map(str, numbers[:-1])) + f" and {numbers[-1]}"
            raise UserError(
                f"{path}: column {cell!r} appears {times} in the header (columns {where}, counting from 1); "
                "rename all but one, or name the columns with data.names"
            )


def check_names(names: list[str], count: int, path, cfg: DataConfig) -> None:
    """``data.names`` must name every column of the table, no more, no fewer."""
    if len(names) != count:
        sep = {"\t": "tab", " ": "space"}.get(cfg.separator(path), repr(cfg.separator(path)))
        raise UserError(
            f"{path}: data.names gives {len(names)} name(s) ({', '.join(names)}) but the table has {count} "
            f"column(s) (separated by {sep}; data.sep sets what separates them)"
        )


def check_columns(columns: list[str], cfg: DataConfig, name: str, also: list[tuple[str, str, str]] = ()) -> None:
    """The columns a data config names (label, columns, ignore, split_column) must be in the table: a missing one
    is an error naming it, the nearest column, and the table's columns. ``also``: more (what, column, field)."""
    wanted = [("label column", cfg.label, "data.label"), *also]
    wanted += [("column", c, f"data.columns.{c}") for c in cfg.columns]
    wanted += [("column", c, "data.ignore") for c in cfg.ignore]
    if cfg.split_column:
        wanted.append(("split column", cfg.split_column, "data.split_column"))
    for what, column, field in wanted:
        if column not in columns:
            hint = did_you_mean(column, columns)
            note = ""
            if not cfg.header and cfg.names is None:
                note = " (it has no header: name its columns with data.names, e.g. --set 'data.names=[label,text]')"
            elif cfg.header and cfg.names is None and any(_looks_like_data(c) for c in columns):
                note = " (is its first line data? then --set data.header=false and name the columns with data.names)"
            shown = ", ".join(map(str, columns[:30])) + (f", ... ({len(columns)} in all)" if len(columns) > 30 else "")
            raise UserError(f"{name}: no {what} {column!r} ({field}){hint or ';'} its columns: {shown}{note}")


def _looks_like_data(cell) -> bool:
    """A header cell that reads like a value: a number, or a long text."""
    text = str(cell).strip()
    try:
        float(text)
        return True
    except ValueError:
        return len(text) > 40


def folder_columns(folder: str | Path, cfg: DataConfig) -> list[str]:
    """The columns ``tables.read_folder`` gives a folder of class folders, without listing its files: the files
    (image or audio), the label (named ``data.label``) and split, when it has split folders."""
    root = Path(folder)
    splits = {"train", "val", "valid", "validation", "test"}
    children = [p.name.lower() for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    return ["image", "audio", cfg.label, *(["split"] if children and set(children) <= splits else [])]
