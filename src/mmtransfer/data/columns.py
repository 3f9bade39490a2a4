"""Binding a table's columns to modalities: the ones a config names, the others inferred from their values (and
why), printed as a table with each column's resolved settings."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.text import Text

from mmtransfer.backbones import binding_line
from mmtransfer.config import AudioColumn, ColumnConfig, DataConfig, ImageColumn, TabularColumn, TextColumn
from mmtransfer.data.preprocess import TABULAR
from mmtransfer.data.sources import AUDIO_SUFFIXES, IMAGE_SUFFIXES
from mmtransfer.display import Grid
from mmtransfer.headers import check_columns
from mmtransfer.modalities.base import DataError


def infer_columns(df: pd.DataFrame, skip: set[str]) -> dict[str, tuple[ColumnConfig, str]]:
    """Guess each column's modality from its values: (config, why)."""
    out: dict[str, tuple[ColumnConfig, str]] = {}
    for col in df.columns:
        if col in skip:
            continue
        values = df[col].dropna()
        if len(values) == 0:
            continue
        if pd.api.types.is_bool_dtype(values) or pd.api.types.is_numeric_dtype(values):
            out[col] = (TabularColumn(kind="numeric"), "numbers")
            continue
        text = values.astype(str).str.strip()
        suffixes = text.map(lambda v: Path(v).suffix.lower())
        if suffixes.isin(AUDIO_SUFFIXES).mean() > 0.5:
            out[col] = (AudioColumn(), "paths to audio files (.wav/.flac/.ogg)")
        elif suffixes.isin(IMAGE_SUFFIXES).mean() > 0.5:
            out[col] = (ImageColumn(), "paths to image files")
        elif text.nunique() <= max(20, len(text) // 20) and text.str.split().str.len().mean() <= 2:
            out[col] = (TabularColumn(kind="categorical"), f"{text.nunique()} distinct short values")
        else:
            out[col] = (TextColumn(), "free text")
    return out


def bind_columns(df: pd.DataFrame, cfg: DataConfig, name: str) -> tuple[dict[str, ColumnConfig], dict[str, str]]:
    """The columns used as inputs and their modality: configured ones, plus inferred ones; and how each was
    bound (configured, or inferred and why)."""
    try:  # the label, columns, ignore and split column are in the table (the nearest named where one is not)
        check_columns(list(df.columns), cfg, name)
    except ValueError as err:
        raise DataError(str(err)) from None
    skip = {cfg.label, *cfg.ignore, *cfg.columns, *([cfg.split_column] if cfg.split_column else [])}
    inferred = infer_columns(df, skip) if cfg.infer else {}
    columns = {**{c: v[0] for c, v in inferred.items()}, **cfg.columns}
    dotted = [c for c in columns if "." in str(c)]
    if dotted:  # '.' separates an input from its mask or features in a batch, and modules in a model
        raise DataError(f"{name}: column names may not contain '.': {dotted}; rename them")
    if not columns:
        raise DataError(f"{name}: no input columns (label {cfg.label!r}; set data.columns or data.infer)")
    how = {c: "configured" if c in cfg.columns else f"inferred: {inferred[c][1]}" for c in columns}
    return columns, how


def print_binding(df: pd.DataFrame, cfg: DataConfig, name: str, how: dict, binding, console: Console) -> None:
    """The column table (each column's modality, resolved settings, encoder and how it was bound), then one
    line per image or text column saying where each setting came from."""
    rows = []
    for col in df.columns:
        if col in binding.columns:
            rows.append([str(col), describe_column(binding.columns[col]), how[col]])
        else:
            role = "label" if col == cfg.label else "split" if col == cfg.split_column else "ignored"
            rows.append([str(col), Text(role, style="dim"), ""])
    console.print(Grid(f"columns of {name}", ["column", "modality", "how"], rows))
    for col, column in binding.columns.items():
        line = binding_line(col, column, binding)
        note = binding.notes.get(col, "")
        if line or note:
            encoder = binding.readers.get(col)
            reads = f"; read by {_encoder_name(encoder)}" if encoder is not None else ""
            console.print((line or f"{column.modality} column {col}") + reads + (f" [{note}]" if note else ""),
                          markup=False, highlight=False)  # fmt: skip
    if any(h.startswith("inferred") for h in how.values()):
        console.print("override with data.columns.NAME.modality=image|text|audio|tabular", style="dim", markup=False)


def _encoder_name(encoder) -> str:
    if encoder.type == "efficientnet_lite":
        return f"efficientnet_lite {encoder.variant}"
    if encoder.type == "hf":
        return f"hf {encoder.path}"
    return encoder.type


def describe_column(c: ColumnConfig) -> str:
    """The modality and the settings a user most needs to see (an image's size and how it gets there)."""
    if c.modality == TABULAR:
        return f"tabular ({c.kind})"
    if c.modality == "image":
        how = c.resize + (f", fill {c.fill}, margin {c.margin}" if c.resize == "pad" else "")
        return f"image ({c.channels}x{c.size[0]}x{c.size[1]}, {how})"
    return c.modality
