"""What a request to ``serve`` holds, read as rows for the run's preprocessing.

A JSON body is ``{"rows": [ROW, ...]}``, a list of rows, or one row; a row maps every input column of the run to
its cell: text and numbers inline, an image or a recording as its file's bytes in base64, or ``{"path": P}``
for a file under the server's ``--data-root`` (no server file is read without one). ``null`` is an empty cell,
masked or filled as ``predict`` does. A multipart upload is one row: a field per column, files as file parts.

A row that cannot be read is answered with its own error (``row 2, column 'photo': ...``); the others are
predicted. Each file is written into a private temporary folder for the time of its batch, so the modalities read
it exactly as ``predict`` reads a table's files.
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from pathlib import Path

from mmtransfer.config import did_you_mean
from mmtransfer.errors import UserError

FILE_KINDS = ("image", "audio")  # modalities whose cells are files


class BadRequest(UserError):
    """The request as a whole cannot be read (HTTP 400); ``status`` may say otherwise (413, 415)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


class RowError(Exception):
    """One row that cannot be predicted: answered with this line, the other rows go on."""

    def __init__(self, row: int, column: str | None, reason: str):
        super().__init__(f"row {row}" + (f", column {column!r}" if column is not None else "") + f": {reason}")


def json_rows(body: bytes, columns: list[str]) -> list[dict]:
    """The rows of a JSON body (see the module's docstring)."""
    try:
        found = json.loads(body)
    except UnicodeDecodeError as err:
        raise BadRequest(f"malformed JSON: not UTF-8 text ({err.reason} at byte {err.start})") from None
    except json.JSONDecodeError as err:
        raise BadRequest(f"malformed JSON: {err.msg} at line {err.lineno}, column {err.colno}") from None
    if isinstance(found, dict) and "rows" in found and "rows" not in columns:
        found = found["rows"]
    elif isinstance(found, dict):
        found = [found]  # one row
    if not isinstance(found, list):
        raise BadRequest(f'expected {{"rows": [...]}}, a list of rows or one row (an object); got {_kind(found)}')
    if not found:
        raise BadRequest("no rows: nothing to predict")
    return found


def form_row(items: list[tuple[str, object]]) -> dict:
    """A multipart form's (field, value) pairs as one row: file parts as their bytes, other fields as text (a
    number column parses it as ``predict`` parses a table's cells)."""
    row = {}
    for key, value in items:
        if key in row:
            raise BadRequest(f"multipart field {key!r} given twice; a multipart request is one row")
        row[key] = value
    return row


class Reader:
    """Turns a request's rows into cells the run's preprocessing reads: ``cells(i, row, folder)``."""

    def __init__(self, kinds: dict[str, str], data_root: Path | None):
        self.kinds = kinds  # input column -> modality
        self.data_root = data_root.resolve() if data_root is not None else None

    def cells(self, i: int, row, folder: Path) -> dict:
        if not isinstance(row, dict):
            raise RowError(i, None, f"expected an object mapping each input column to its cell, got {_kind(row)}")
        missing = [c for c in self.kinds if c not in row]
        if missing:
            others = [k for k in row if k not in self.kinds]
            hint = did_you_mean(missing[0], others) if others else ""
            raise RowError(i, missing[0], f"missing; the model reads {list(self.kinds)} (null for an empty cell){hint}")
        return {col: self._cell(i, col, kind, row[col], folder) for col, kind in self.kinds.items()}

    def ignored(self, rows: list) -> list[str]:
        """The keys of the rows that are no input column (answered as ignored, as ``predict`` says of columns)."""
        return sorted({str(k) for row in rows if isinstance(row, dict) for k in row if k not in self.kinds})

    def _cell(self, i: int, col: str, kind: str, value, folder: Path):
        if value is None:
            return None
        if kind in FILE_KINDS:
            if isinstance(value, bytes):  # a multipart file part (JSON gives no bytes)
                return _write(folder, i, col, value)
            if isinstance(value, str):
                try:
                    data = base64.b64decode(value, validate=True)
                except (binascii.Error, ValueError) as err:
                    raise RowError(i, col, f"not base64 ({err}); send the {kind} file's bytes in base64, or "
                                           '{"path": ...} under the server\'s --data-root') from None  # fmt: skip
                return _write(folder, i, col, data)
            if isinstance(value, dict) and set(value) == {"path"}:
                return str(self._under_root(i, col, value["path"]))
            raise RowError(i, col, f'expected the {kind} in base64, or {{"path": ...}}; got {_kind(value)}')
        if isinstance(value, bytes):
            raise RowError(i, col, f"a file was uploaded for a {kind} column; send its value as a form field")
        if kind == "text" and not isinstance(value, str):
            raise RowError(i, col, f"expected text, got {_kind(value)}")
        if isinstance(value, (dict, list)):
            raise RowError(i, col, f"expected a number or a category, got {_kind(value)}")
        return value

    def _under_root(self, i: int, col: str, path) -> Path:
        """A file under ``--data-root`` (after every link is followed), or the row's error."""
        if self.data_root is None:
            raise RowError(i, col, "this server reads no file of its own (it was started without --data-root); "
                                   "send the file's bytes in base64")  # fmt: skip
        if not isinstance(path, str) or not path.strip():
            raise RowError(i, col, f'"path" must be a file name under the data root, got {_kind(path)}')
        relative = Path(path)
        if relative.is_absolute() or ".." in relative.parts:
            raise RowError(i, col, f"{path!r}: give a path relative to the data root, without '..'")
        full = (self.data_root / relative).resolve()  # links followed: one pointing out of the root is caught
        if not full.is_relative_to(self.data_root):
            raise RowError(i, col, f"{path!r} leads outside the data root")
        if not full.is_file():
            raise RowError(i, col, f"{path!r}: no such file under the data root")
        return full


def _write(folder: Path, i: int, col: str, data: bytes) -> str:
    if not data:
        raise RowError(i, col, "an empty file")
    path = folder / uuid.uuid4().hex  # rows of several requests share the batch's folder
    path.write_bytes(data)
    return str(path)


def _kind(value) -> str:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if value is None:
        return "null"
    return f"{type(value).__name__} {str(value)[:40]!r}"
