"""The on-disk cache's folder and its bound, shared by what is cached: frozen encoders' features
(:mod:`mmtransfer.cache`) and decoded audio clips (an audio column's ``cache``). Files are safetensors under
``$MMTRANSFER_CACHE`` (default ``~/.cache/mmtransfer/features``); together they stay under
``MMTRANSFER_CACHE_MAX_GB`` (default 10), the least recently used going first. ``mmtransfer cache info`` / ``clear``
show and free them. This module imports nothing heavy (only the errors): every layer above the errors may use it.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

from mmtransfer.errors import UserError

MAX_GB = 1e6  # a petabyte: any larger limit is a typo


def cache_dir() -> Path:
    return Path(os.environ.get("MMTRANSFER_CACHE", Path.home() / ".cache" / "mmtransfer" / "features"))


def max_bytes() -> int:
    """The cache's size limit: MMTRANSFER_CACHE_MAX_GB gigabytes (default 10), a number from 0 to 1e6."""
    text = os.environ.get("MMTRANSFER_CACHE_MAX_GB", "10")
    try:
        gigabytes = float(text)
    except ValueError:
        gigabytes = math.nan
    if not 0 <= gigabytes <= MAX_GB:  # also nan and inf
        raise UserError(
            f"MMTRANSFER_CACHE_MAX_GB={text!r}: the feature cache's size limit must be a number of gigabytes "
            f"from 0 to {MAX_GB:,.0f} (default 10)"
        )
    return int(gigabytes * 1e9)


def entries(directory: Path | None = None) -> list[Path]:
    directory = Path(directory) if directory is not None else cache_dir()
    return sorted(directory.glob("*.safetensors"), key=lambda p: p.stat().st_mtime) if directory.is_dir() else []


def evict(directory: Path, keep: Path | set[Path] | None = None) -> list[Path]:
    """Remove the least recently used entries until the cache is within :func:`max_bytes` (never those in
    ``keep``: the ones a run reads now); return them."""
    keep = {keep} if isinstance(keep, Path) else set(keep or ())
    for stale in leftovers(directory, older_than=3600):  # a killed write's partial file
        stale.unlink(missing_ok=True)
    files = entries(directory)
    total, limit, removed = sum(p.stat().st_size for p in files), max_bytes(), []
    for path in files:
        if total <= limit:
            break
        if path in keep:
            continue
        total -= path.stat().st_size
        path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def leftovers(directory: Path | None = None, older_than: float = 0.0) -> list[Path]:
    """Partial files of writes that were killed (none of them is ever read), older than ``older_than`` seconds."""
    directory = Path(directory) if directory is not None else cache_dir()
    if not directory.is_dir():
        return []
    now = time.time()
    return [p for p in directory.glob(".*.tmp") if now - p.stat().st_mtime >= older_than]


def clear(directory: Path | None = None) -> tuple[int, int]:
    """Remove every cached entry, and leftovers of killed writes: (files, bytes) freed."""
    files = entries(directory) + leftovers(directory)
    size = sum(p.stat().st_size for p in files)
    for path in files:
        path.unlink(missing_ok=True)
    return len(files), size
