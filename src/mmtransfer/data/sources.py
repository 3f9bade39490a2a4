"""Where rows come from: a CSV / TSV / Parquet file, a DataFrame, or a folder of class folders, read as a table.

:func:`open_source` is the one place that decides which a source is; training (:func:`read_source`), new rows for
a trained run (``inference.read_data``) and ``Predictor.fit`` with validation rows all read through it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from mmtransfer.config import DataConfig
from mmtransfer.headers import check_names, check_unique, first_row, quoting, table_columns, table_format
from mmtransfer.modalities.base import DataError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
AUDIO_SUFFIXES = {".wav", ".flac", ".ogg"}


@dataclass
class Source:
    """A source read as a table: ``df``, the folder its relative paths resolve against (``base``), a name for
    messages, and what it was (``kind``: ``frame``, ``folder`` or ``file``)."""

    df: pd.DataFrame
    base: Path
    name: str
    kind: str


def open_source(
    source, data: DataConfig, *, columns: Sequence[str] | None = None, encoding: str | None = None
) -> Source:
    """Read ``source`` (a DataFrame, a folder of class folders, a table file), or with ``source`` None the data the
    config names (``data.folder``, else ``data.table``: a folder there is refused, it is not a table).

    A folder's class folders are named in column ``data.label``. A file reads with the config's settings
    (``encoding`` or ``data.encoding``, sep, header, names); with ``columns`` (a trained run's input columns) it
    holds new rows for that run, read as :func:`read_new_rows` says."""
    if isinstance(source, pd.DataFrame):
        return Source(*read_table(source), "frame")
    encoding = encoding or data.encoding
    if source is None and data.folder is None:
        return Source(*read_table(data.table, encoding, sep=data.sep, header=data.header, names=data.names), "file")
    path = Path(data.folder if source is None else source)
    if source is None or path.is_dir():
        return Source(*read_folder(path, data.label), "folder")
    if columns is not None:
        return Source(*read_new_rows(path, data, columns, encoding), "file")
    return Source(*read_table(path, encoding, sep=data.sep, header=data.header, names=data.names), "file")


def read_new_rows(
    path: Path, data: DataConfig, columns: Sequence[str], encoding: str
) -> tuple[pd.DataFrame, Path, str]:
    """A table file of new rows for a run trained with ``data`` on input ``columns``.

    A text table is read as the run's data config says (sep, header, names) unless its first line names the
    run's input ``columns``: then it is a table with a header (in the run's separator, or its own suffix's). So
    the run's own headerless file reads as it trained, and a new table with a header reads as a person wrote it.
    A headerless table without the label column takes ``data.names`` less the label."""
    if not path.is_file():
        raise DataError(f"table not found: {path}")
    try:
        text = table_format(path, data.sep) == "text"
    except ValueError as err:
        raise DataError(str(err)) from None
    if not text:
        return read_table(path, encoding, names=data.names)
    own = DataConfig().separator(path)
    for sep in dict.fromkeys([data.separator(path), own]):
        try:
            header = first_row(path, sep, encoding)
        except (OSError, LookupError):
            break  # read_table says why
        if columns and set(columns) <= set(header):
            return read_table(path, encoding, sep=sep)
    names = data.names
    if names is not None and not data.header and data.label in names:
        found = len(first_row(path, data.separator(path), encoding))
        if found == len(names) - 1:  # new rows to predict, without the label column
            names = [n for n in names if n != data.label]
    return read_table(path, encoding, sep=data.sep, header=data.header, names=names)


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
    with it: a folder with split subfolders, or a table with a column ``split`` of train / val / test values,
    brings its own split column."""
    found = open_source(source, cfg)
    folder_splits = found.kind == "folder" and "split" in found.df.columns
    if cfg.split_column is None and (folder_splits or _names_splits(found.df, cfg)):
        cfg = cfg.model_copy(update={"split_column": "split"})  # the binding's lines say "split: the split column"
    return found.df, found.base, found.name, cfg


def _names_splits(df: pd.DataFrame, cfg: DataConfig) -> bool:
    """A table's column ``split`` that the config leaves alone holds only train / val / test: it splits the rows
    (as a folder's split subfolders do), and is not read as an input. Naming it in ``data.columns`` reads it."""
    if "split" not in df.columns or "split" in cfg.columns or "split" in cfg.ignore or cfg.label == "split":
        return False
    values = df["split"].astype(str).str.strip().str.lower()
    return bool(len(values)) and bool(values.isin({"train", "val", "valid", "validation", "test"}).all())
