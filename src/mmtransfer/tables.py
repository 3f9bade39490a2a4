"""Tables in: read a CSV / Parquet file or a DataFrame, bind columns to modalities, check every cell, split.

Every referenced file is opened before training starts (and decoded again batch by batch while training,
:mod:`mmtransfer.preprocess`). A bad cell (missing or corrupt file, audio holding NaN or inf, empty text,
NaN or inf in a number column, a number too large to standardise, unknown label) stops the run with an error
naming the row, column and file, or, with ``on_bad_rows: skip``, its row is dropped and the skips are counted by
reason. A label column must give something to learn: two classes at least, or numbers that vary.

Rows are numbered as pandas numbers them: from 0, after the header (a file's line numbers can differ, since
a quoted cell may span lines).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
from rich.console import Console
from rich.text import Text

from mmtransfer.backbones import bind_encoders
from mmtransfer.config import AudioColumn, ColumnConfig, DataConfig, ImageColumn, TabularColumn, TextColumn
from mmtransfer.data import Dataset, stratified_split
from mmtransfer.display import Grid
from mmtransfer.modalities.base import BadCell, DataError, is_missing
from mmtransfer.modalities.tabular import MAX_VALUE
from mmtransfer.preprocess import MODALITIES, TABULAR, TablePreprocessor
from mmtransfer.tasks import infer_task, parse_number, parse_set, strata

__all__ = ["MODALITIES", "DataError", "load_table_dataset", "read_folder", "read_table"]
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
AUDIO_SUFFIXES = {".wav", ".flac", ".ogg"}


def read_table(
    source: str | Path | pd.DataFrame,
    encoding: str | None = None,
    *,
    sep: str | None = None,
    header: bool = True,
    names: list[str] | None = None,
) -> tuple[pd.DataFrame, Path, str]:
    """(table, folder that relative paths resolve against, a name for messages). ``encoding`` is the text
    encoding of a CSV / TSV file (UTF-8 by default); a byte it cannot decode is reported with its line.

    ``sep``, ``header`` and ``names`` are ``data.sep`` / ``data.header`` / ``data.names``: a text table is split by
    ``sep`` (default: a tab for .tsv, else a comma; with ``sep`` set, a file of any name is a text table); without
    a header its first line is data and its columns are ``names`` (default 0, 1, 2, ...); with one, ``names``
    renames them. A tab-separated file whose quotes are not CSV quoting is read with its quotes as they are
    (:func:`mmtransfer.headers.quoting`)."""
    from mmtransfer.headers import check_names, check_unique, first_row, quoting, table_columns, table_format

    if isinstance(source, pd.DataFrame):
        return source.reset_index(drop=True), Path.cwd(), "DataFrame"
    path = Path(source)
    if path.is_dir():
        raise DataError(f"{path}: a folder, not a table (a folder of class folders is data.folder)")
    if not path.is_file():
        raise DataError(f"table not found: {path}")
    try:
        settings = DataConfig(sep=sep, header=header, names=names, encoding=encoding or "utf-8")
    except ValueError as err:  # pydantic's ValidationError: the field and why, in one line
        first = err.errors()[0] if hasattr(err, "errors") else {"loc": ("?",), "msg": str(err)}
        raise DataError(f"{path}: data.{first['loc'][0]}: {first['msg'].removeprefix('Value error, ')}") from None
    try:
        kind = table_format(path, settings.sep)
        if kind == "parquet":
            table_columns(path, settings)  # refuses a name given twice (with data.names: a count that differs)
            df = pd.read_parquet(path)
        else:
            delimiter = settings.separator(path)
            if header and names is None:  # before pandas renames a second 'note' to 'note.1'
                check_unique(first_row(path, delimiter, settings.encoding), path)
            # Only empty cells (and NaN) are missing: a label or category "NA" or "None" is a value.
            df = pd.read_csv(
                path,
                sep=delimiter,
                header=0 if header else None,
                quoting=quoting(path, delimiter, settings.encoding),
                keep_default_na=False,
                na_values=["", "nan", "NaN"],
                encoding=settings.encoding,
            )
            if not header:
                df.columns = [str(c) for c in df.columns]
        if names is not None:
            check_names(names, df.shape[1], path, settings)
            df.columns = list(names)
    except UnicodeDecodeError as err:
        line = _undecodable_line(path, encoding or "utf-8")
        raise DataError(
            f"{path}: line {line}: not {encoding or 'utf-8'} text ({err.reason}); set data.encoding "
            "(--encoding), e.g. latin-1 or cp1252"
        ) from None
    except LookupError:
        raise DataError(f"{path}: unknown text encoding {encoding!r} (data.encoding)") from None
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: empty file: no header, no rows") from None
    except (pd.errors.ParserError, ValueError, OSError) as err:
        if isinstance(err, DataError):
            raise
        if isinstance(err, pd.errors.ParserError):
            raise DataError(f"{path}: cannot read the table: {err}; is data.sep right?") from None
        message = str(err) if str(err).startswith(str(path)) else f"{path}: cannot read the table: {err}"
        raise DataError(message) from None
    return df.reset_index(drop=True), path.parent.resolve(), str(path)


def _undecodable_line(path: Path, encoding: str) -> int:
    """The first line (from 1, the header included) that ``encoding`` cannot decode."""
    for number, line in enumerate(path.read_bytes().split(b"\n"), start=1):
        try:
            line.decode(encoding)
        except UnicodeDecodeError:
            return number
    return 0


def read_folder(folder: str | Path, label: str = "label") -> tuple[pd.DataFrame, Path, str]:
    """A folder laid out as torchvision's ImageFolder, as a table: one subfolder per class holding image or
    audio files, optionally under ``train/``, ``val/`` (or ``valid/``, ``validation/``) and ``test/``.

    Columns: ``image`` or ``audio`` (paths relative to the folder, by the files' suffixes), ``label`` (the class
    folder's name) and, with split folders, ``split``. Files that are neither images nor audio by their suffix
    (a ``Thumbs.db``, a ``notes.txt``) are left out, as torchvision's ImageFolder does, but not silently: they
    are listed in ``df.attrs["skipped_files"]``, which the loaders print. Hidden files are ignored."""
    root = Path(folder)
    if not root.is_dir():
        raise DataError(f"data.folder: no such folder: {root}")
    splits = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
    children = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    split_dirs = [p for p in children if p.name.lower() in splits]
    if split_dirs and len(split_dirs) != len(children):
        others = [p.name for p in children if p not in split_dirs]
        raise DataError(f"{root}: mixes split folders ({[p.name for p in split_dirs]}) with others ({others})")
    rows, skipped = [], []
    media = IMAGE_SUFFIXES | AUDIO_SUFFIXES
    for part in split_dirs or [root]:
        classes = sorted(p for p in part.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not classes:
            raise DataError(f"{part}: no class folders (expected {part}/<class name>/<files>)")
        for cls in classes:
            files = sorted(f for f in cls.rglob("*") if f.is_file() and not f.name.startswith("."))
            for f in files:
                if f.suffix.lower() not in media:
                    skipped.append(f.relative_to(root).as_posix())
                    continue
                row = {"file": f.relative_to(root).as_posix(), label: cls.name}
                if split_dirs:
                    row["split"] = splits[part.name.lower()]
                rows.append(row)
    if not rows:
        raise DataError(
            f"{root}: no image or audio files in its class folders"
            + (f" ({len(skipped)} other files, e.g. {skipped[0]})" if skipped else "")
        )
    df = pd.DataFrame(rows)
    suffixes = df["file"].map(lambda v: Path(v).suffix.lower())
    kind = "audio" if suffixes.isin(AUDIO_SUFFIXES).sum() > suffixes.isin(IMAGE_SUFFIXES).sum() else "image"
    df = df.rename(columns={"file": kind})
    df.attrs["skipped_files"] = skipped
    return df, root.resolve(), str(root)


def read_source(cfg: DataConfig, source=None) -> tuple[pd.DataFrame, Path, str, DataConfig]:
    """The table a data config names (``table`` or ``folder``, or ``source`` given), and the config to use
    with it: a folder with split subfolders brings its own split column."""
    folder = cfg.folder if source is None else source if not isinstance(source, pd.DataFrame) else None
    if folder is not None and Path(folder).is_dir():
        df, base, name = read_folder(folder, cfg.label)
        if "split" in df.columns and cfg.split_column is None:
            cfg = cfg.model_copy(update={"split_column": "split"})
        return df, base, name, cfg
    df, base, name = read_table(
        source if source is not None else cfg.table, cfg.encoding, sep=cfg.sep, header=cfg.header, names=cfg.names
    )
    return df, base, name, cfg


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
    from mmtransfer.headers import check_columns

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
    from mmtransfer.backbones import binding_line

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


def split_values(df: pd.DataFrame, column: str) -> pd.Series:
    return df[column].astype(str).str.strip().str.lower().replace({"validation": "val", "valid": "val"})


def check_labels(
    df: pd.DataFrame, labels: np.ndarray, cfg: DataConfig, bad_rows: set[int], task: str = "classification"
) -> list[BadCell]:
    """Rows whose split value or label cannot be used, found before any split is drawn."""
    bad = []
    rows = [i for i in range(len(df)) if i not in bad_rows]
    if task != "classification":  # a number or a label set needs no other row like it: only the split values
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


def _refuse_or_skip(bad: list[BadCell], keep: np.ndarray, cfg: DataConfig, name: str, console) -> None:
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


def _check_target(labels: np.ndarray, values: np.ndarray | None, sets: list | None, keep, cfg: DataConfig) -> None:
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


def load_table_dataset(
    cfg: DataConfig,
    source: str | Path | pd.DataFrame | None = None,
    console: Console | None = None,
    hold_out: bool = True,
    model=None,
    test: bool = True,
):
    """Read, bind, check and fit a table into a :class:`~mmtransfer.data.Dataset` whose splits are
    :class:`~mmtransfer.preprocess.RowSplit`: image and audio cells are decoded batch by batch, never all at once.
    ``data.preprocessor`` is the fitted :class:`~mmtransfer.preprocess.TablePreprocessor`. Without ``test`` no
    test rows are drawn, and ``data.test`` is None unless a split column names some."""
    df, base, name, cfg = read_source(cfg, source)
    if len(df) == 0:
        raise DataError(f"{name}: no rows (only a header?); nothing to train on")
    skipped_files = df.attrs.get("skipped_files", [])
    if skipped_files and console is not None:
        console.print(
            f"skipped {len(skipped_files)} file(s) that are not images or audio: {', '.join(skipped_files[:5])}"
            + (f", ... {len(skipped_files) - 5} more" if len(skipped_files) > 5 else ""),
            markup=False,
        )
    columns, how = bind_columns(df, cfg, name)
    binding = bind_encoders(columns, model)  # every auto setting resolved once, from the encoder reading it
    columns = binding.columns
    if console is not None:
        print_binding(df, cfg, name, how, binding, console)
    pre = TablePreprocessor(columns)

    labels_str = np.array(["" if is_missing(v) else str(v).strip() for v in df[cfg.label]], dtype=object)
    bad = [BadCell(int(i), cfg.label, "missing label") for i in np.flatnonzero(labels_str == "")]
    task, why = infer_task([t for t in labels_str if t], cfg.task, cfg.label, cfg.label_separator)
    if console is not None:
        console.print(f"task: {task} ({why})", markup=False, highlight=False)
    values = None
    if task == "regression":  # every label must be a finite number
        values = np.full(len(df), np.nan)
        for i, text in enumerate(labels_str):
            if not text:
                continue
            number = parse_number(text)
            if number is None:
                bad.append(BadCell(i, cfg.label, f"{text!r} is not a number (data.task regression)"))
            elif not np.isfinite(number):
                bad.append(BadCell(i, cfg.label, f"{text!r} is not a finite number (data.task regression)"))
            elif abs(number) > MAX_VALUE:
                bad.append(BadCell(i, cfg.label, f"{text!r} is too large to standardise (beyond ±{MAX_VALUE:g})"))
            else:
                values[i] = number
    sets = None
    if task == "multilabel":  # every non-empty cell must name at least one label
        sets = [parse_set(t, cfg.label_separator) if t else [] for t in labels_str]
        for i, text in enumerate(labels_str):
            if text and not sets[i]:
                bad.append(BadCell(i, cfg.label, f"empty label set {text!r} (data.task multilabel)"))
    cells, bad_cells = pre.check(df, base, name, console)
    present = cells.present
    bad += bad_cells
    if not pre.tab_cols:  # number columns are always present
        for i in sorted(set(range(len(df))) - {b.row for b in bad}):
            if not any(present[c][i] for c in columns):
                bad.append(BadCell(i, ", ".join(sorted(columns)), "every input of this row is empty"))
    bad += check_labels(df, labels_str, cfg, {b.row for b in bad}, task)

    keep = np.ones(len(df), dtype=bool)
    if bad:
        _refuse_or_skip(bad, keep, cfg, name, console)
    _check_target(labels_str, values, sets, keep, cfg)

    split = np.empty(len(df), dtype=object)
    if sets is not None:  # label sets: split at random
        groups = np.zeros(int(keep.sum()), dtype=object)
    elif values is not None:  # numbers: by quantile bins
        groups = strata(values[keep]).astype(str)
    else:
        groups = labels_str[keep]
    split[keep] = assign_splits(df[keep], groups, cfg, hold_out=hold_out, console=console, test=test)
    if sets is not None:  # the labels any kept row names; a row's labels as 0/1 over them
        classes = sorted({name for i in np.flatnonzero(keep) for name in sets[i]})
        label_ids = np.zeros((len(df), len(classes)), dtype=np.float32)
        where = {c: j for j, c in enumerate(classes)}
        for i in np.flatnonzero(keep):
            label_ids[i, [where[name] for name in sets[i]]] = 1.0
    elif values is None:
        classes = sorted(set(labels_str[keep & (split == "train")]))
        label_ids = np.array([classes.index(v) if v in classes else -1 for v in labels_str])
    else:
        classes, label_ids = [cfg.label], values.astype(np.float32)  # one output: the number

    if values is None and sets is None and len(classes) < 2:  # every class of the table is in train otherwise
        _refuse_one_class(labels_str[keep & (split == "train")], cfg, "the train split")
    if values is not None:
        _refuse_constant(values[keep & (split == "train")], cfg, "the train split")
    pre.fit(cells, np.flatnonzero(keep & (split == "train")))
    unreadable = pre.check_fitted(cells, np.flatnonzero(keep))  # numbers the train statistics cannot standardise
    if unreadable:
        _refuse_or_skip(unreadable, keep, cfg, name, console)
        bad += unreadable
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
    augment = {c: pre.modalities[c].augment for c, cfg in columns.items() if cfg.modality == "image" and cfg.augment}
    data = Dataset(
        Path(name).stem, classes, parts["train"], parts["val"], parts["test"], specs=pre.specs(), augment=augment
    )
    data.preprocessor = pre
    data.task = task
    data.columns, data.encoders = columns, binding.encoders
    data.preprocessing = {
        **pre.state(),
        "skipped_rows": [{"row": b.row, "column": b.column, "reason": b.reason, "file": b.file} for b in bad],
    }
    return data
