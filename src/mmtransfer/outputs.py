"""Output files a command writes (predictions, reports, plots, an ONNX export) appear whole or not at all.

Each is written to a temporary name beside its final one (``.NAME.PID.tmp.SUFFIX``: hidden, and with the
suffix matplotlib and onnx go by) and renamed over the final name only once complete, so a killed or failed
``predict`` never leaves a partial CSV under the name a user asked for. A write the disk refuses (full, read-only,
no permission) is one ``OSError`` naming the final file.

>>> with atomic_path("out/predictions.csv") as tmp:  # doctest: +SKIP
...     tmp.write_text("row,prediction\\n0,cat\\n")
"""

from __future__ import annotations

import errno
import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# What safetensors (a Rust library) says for the errors a disk gives; each becomes an OSError with that errno.
DISK_ERRORS = {
    "No space left on device": errno.ENOSPC,
    "Disk quota exceeded": errno.EDQUOT,
    "Permission denied": errno.EACCES,
    "Read-only file system": errno.EROFS,
}


TEMPORARY = re.compile(r"\.(?P<stem>.+)\.\d+\.tmp(?P<suffix>\.[^.]+)?")  # atomic_path's name for a file being written


def final_name(name: str) -> str | None:
    """The file a temporary name of :func:`atomic_path` was being written for (``.model.123.tmp.onnx`` ->
    ``model.onnx``), or None for any other name: what a killed write leaves beside its final file."""
    found = TEMPORARY.fullmatch(name)
    return f"{found['stem']}{found['suffix'] or ''}" if found else None


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path to write ``path``'s content to; renamed over ``path`` when the block ends without an
    error, removed otherwise. A disk error while writing it is an ``OSError`` naming ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")  # TEMPORARY matches it
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_dir():
            raise IsADirectoryError(f"{path}: is a folder, not a file to write")
    except OSError as err:
        raise write_error(path, err) from None
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as err:
        if err.filename in (None, str(tmp), str(path)):  # this file's write; an input's error names the input
            raise write_error(path, err) from None
        raise
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | Path, text: str) -> Path:
    """``text`` to ``path``, whole or not at all."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | Path, data) -> Path:
    return write_text(path, json.dumps(data, indent=1))


def save_figure(fig, path: str | Path, **kwargs) -> Path:
    """``fig.savefig(path)``, whole or not at all (the format follows ``path``'s suffix)."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=Path(path).suffix.lstrip(".").lower() or None, **kwargs)
    return Path(path)


def write_error(path: str | Path, err: Exception) -> Exception:
    """A failed write as one ``OSError`` naming ``path`` and the reason in a few words (``err`` itself where it is
    not about the disk)."""
    if isinstance(err, OSError) and err.errno is not None:
        reason = os.strerror(err.errno)
        code = err.errno
    else:
        found = [(words, code) for words, code in DISK_ERRORS.items() if words.lower() in str(err).lower()]
        if not found:
            return err if isinstance(err, OSError) else OSError(f"{path}: cannot write it ({err})")
        reason, code = found[0]
    error = OSError(f"{path}: {reason[0].lower()}{reason[1:]}")
    error.errno = code
    return error
