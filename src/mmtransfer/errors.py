"""The one base class of the mistakes a user can make, and what the command line does with anything else.

:class:`UserError` is a mistake in what the user gave: a config, a table or one of its cells, a file, a model
folder, a run folder. The command line prints its message as one ``error:`` line and exits with code 2. Every
error class of mmtransfer derives from it (``ConfigError``, ``DataError``, ``ArtifactError``, ``GraftError``,
``TrainingError``, ...), and it is a ``ValueError``, so code that caught those still does.

An exception that is not a user's mistake is a bug: :func:`report_bug` writes its traceback to a file and
says so in one line, and the command exits with code 1 (``MMTRANSFER_DEBUG=1`` shows the traceback instead).
This module imports nothing of mmtransfer: every layer may use it.
"""

from __future__ import annotations

import os
import tempfile
import time
import traceback
from pathlib import Path


class UserError(ValueError):
    """A mistake in what the user gave; the message names the file, row, column or field."""


class MissingFile(UserError, FileNotFoundError):
    """A file or folder the user named is not there; still a ``FileNotFoundError`` for code that caught one."""


class MissingPackage(UserError, ImportError):
    """An optional package the user's config asks for is not installed; the message gives the pip install line."""


class BadArgument(UserError, TypeError):
    """A Python caller gave an argument of the wrong kind; still a ``TypeError`` for code that caught one."""


def report_bug(err: BaseException) -> str:
    """Write ``err``'s traceback to a new file in the temporary folder; return the one line that tells of it."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = Path(tempfile.gettempdir()) / f"mmtransfer-bug-{stamp}-{os.getpid()}.txt"
    text = "".join(traceback.format_exception(type(err), err, err.__traceback__))
    try:
        path.write_text(text)
        where = f"the full traceback is in {path}"
    except OSError:  # nowhere to write it: the last frame at least
        frame = traceback.extract_tb(err.__traceback__)[-1] if err.__traceback__ else None
        where = f"at {frame.filename}:{frame.lineno}" if frame else "no traceback could be written"
    first = str(err).splitlines()[0] if str(err) else ""
    return (
        f"a bug in mmtransfer, not a mistake of yours ({type(err).__name__}: {first[:200]}); {where}; please report it"
    )
