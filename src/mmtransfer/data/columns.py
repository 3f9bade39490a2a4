"""Binding a table's columns to modalities: the ones a config names, the others inferred from their values (and
why), printed as a table with each column's resolved settings."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.text import Text

from mmtransfer.config import (
    AUTO,
    IMAGE_DEFAULTS,
    AudioColumn,
    ColumnConfig,
    DataConfig,
    ImageColumn,
    TabularColumn,
    TextColumn,
)
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
            reads = f"; read by {binding.names[col]}" if binding.names.get(col) else ""
            console.print((line or f"{column.modality} column {col}") + reads + (f" [{note}]" if note else ""),
                          markup=False, highlight=False)  # fmt: skip
    if any(h.startswith("inferred") for h in how.values()):
        console.print("override with data.columns.NAME.modality=image|text|audio|tabular", style="dim", markup=False)


def describe_column(c: ColumnConfig) -> str:
    """The modality and the settings a user most needs to see (an image's size and how it gets there)."""
    if c.modality == TABULAR:
        return f"tabular ({c.kind})"
    if c.modality == "image":
        how = c.resize + (f", fill {c.fill}, margin {c.margin}" if c.resize == "pad" else "")
        return f"image ({c.channels}x{c.size[0]}x{c.size[1]}, {how})"
    return c.modality


# ---------------------------------------------------------------- binding columns to the encoders that read them


@dataclass
class Reader:
    """What binding needs to know of the encoder that will read a column. The data layer knows no encoder: the
    caller that does (:func:`mmtransfer.backbones.bind_encoders`) says, per column, which one reads it."""

    encoder: object | None = None  # its config; None: the modality's from-scratch default
    chosen: bool = False  # picked for the column (a preset), not named in model.encoders
    why: str = ""  # a note on the choice, printed with the column
    name: str = ""  # the encoder in words ("efficientnet_lite lite0"), printed with the column
    image: tuple[dict, str] | None = None  # a pretrained image backbone's (settings, where they come from)
    audio: tuple[dict, str] | None = None  # a pretrained sound encoder's (settings, where they come from)
    tokenizer: str | None = None  # the tokenizer a Hugging Face text model brings


@dataclass
class Binding:
    """What binding columns to encoders decided: every column resolved (no auto left), the encoder chosen for a
    column the config does not name (None: the modality's from-scratch default), and, per column, where each
    setting came from (``origins``: field -> "you" | a backbone | "default") and a note."""

    columns: dict[str, ColumnConfig]
    encoders: dict[str, object] = field(default_factory=dict)
    readers: dict[str, object] = field(default_factory=dict)  # every column's encoder where known (None: default)
    names: dict[str, str] = field(default_factory=dict)  # each known reader in words
    origins: dict[str, dict[str, str]] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)


AUDIO_SHOWN = ("sample_rate", "seconds", "features")  # what a sound encoder may ask of its column

Binder = Callable[[dict[str, ColumnConfig]], Binding]  # what load_dataset takes to bind a table's columns


def bind(columns: dict[str, ColumnConfig], reader: Callable[[str, ColumnConfig], Reader] | None = None) -> Binding:
    """Resolve every ``auto`` setting of ``columns`` once, from the encoder that will read each column
    (``reader(name, column)``; without one, the modalities' own defaults apply).

    An image column read by a pretrained backbone takes the backbone's size, resize, crop, mean and std, and
    random crops and flips in training; a text column read by a Hugging Face model takes its tokenizer. A value
    the user set is always kept."""
    binding = Binding({})
    for name, column in columns.items():
        found = reader(name, column) if reader is not None else Reader()
        if found.chosen and found.encoder is not None:
            binding.encoders[name] = found.encoder
        binding.readers[name] = found.encoder
        if found.name:
            binding.names[name] = found.name
        if found.why:
            binding.notes[name] = found.why
        if column.modality == "image":
            settings, source = found.image if found.image is not None else ({}, "")
            settings = {**settings, "augment": "crop_flip"} if found.image is not None else {}
            auto = set(column.auto_fields())
            binding.columns[name] = column.resolved(settings)
            binding.origins[name] = {k: ("you" if k not in auto else source if k in settings else "default")
                                     for k in IMAGE_DEFAULTS}  # fmt: skip
        elif column.modality == "audio":
            settings, source = found.audio if found.audio is not None else ({}, "")
            binding.columns[name] = column.resolved(settings)
            binding.origins[name] = {k: ("you" if k in column.model_fields_set else source if k in settings
                                         else "default") for k in AUDIO_SHOWN}  # fmt: skip
        elif column.modality == "text":
            binding.columns[name] = column.resolved(found.tokenizer)
            binding.origins[name] = {
                "tokenizer": "you" if column.tokenizer != AUTO else found.tokenizer or "default",
                "max_length": "you" if column.max_length != AUTO else "default",
            }
        else:
            binding.columns[name] = column
    return binding


def binding_line(name: str, column: ColumnConfig, binding: Binding) -> str:
    """One line per column: its resolved settings and where each came from."""
    origins = binding.origins.get(name, {})
    if column.modality == "image":
        text = describe_image(column)
    elif column.modality == "text":
        text = f"tokenizer {column.tokenizer or 'a word vocabulary'}, {column.max_length} tokens"
    elif column.modality == "audio" and column.extractor is None:
        text = f"{column.sample_rate} Hz, {column.seconds:g} s, {column.features}"
    else:
        return ""
    by_source: dict[str, list[str]] = {}
    for key, source in origins.items():
        by_source.setdefault(source, []).append(key)
    parts = [f"{', '.join(keys)} from {'you' if src == 'you' else src}" for src, keys in by_source.items()]
    return f"{column.modality} column {name}: {text} ({'; '.join(parts)})"


def describe_image(col: ImageColumn) -> str:
    """An image column's preprocessing in words, e.g. "224x224, shorter side to 256 then centre crop, ..."."""
    h, w = col.size
    if col.resize == "crop":
        how = f"shorter side scaled to {round(min(h, w) / col.crop_pct)} then centre crop"
    elif col.resize == "pad":
        how = "fitted inside, aspect kept, padded"
    else:
        how = "stretched"
    aug = {True: "shift", False: "none"}.get(col.augment, col.augment)
    return f"{h}x{w}, {how}, mean {_values(col.mean)} std {_values(col.std)}, training augmentation {aug}"


def _values(value) -> str:
    """One value, or one per channel joined by '/'."""
    return "/".join(f"{x:g}" for x in value) if isinstance(value, tuple) else f"{value:g}"
