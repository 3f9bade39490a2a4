"""Features of frozen encoders, computed once per example and cached on disk.

An encoder whose parameters are all frozen maps the same input to the same embedding every epoch, so it is
run once per example and its output stored beside the input as ``name.features``; the model then reads those
instead of running the encoder. Features are keyed per example: by the encoder (its class, every setting of its
modules such as stride, pooling or padding id, its weights) and by the example (a table cell's value, its file's
resolved path, size and modification time, and the column's preprocessing; an in-memory row's bytes), so another
seed's, budget's or study cell's subset of the same table computes only the rows not seen before, and a change to
any of them computes anew. Files are safetensors under ``$MMTRANSFER_CACHE`` (default
``~/.cache/mmtransfer/features``), one per computation: the rows' keys and features, with the row count and a
checksum; a damaged file is deleted with a warning and its rows computed again, never used. The cache stays
under ``MMTRANSFER_CACHE_MAX_GB`` (default 10): the least recently used files go first. ``mmtransfer cache info``
/ ``cache clear`` show and free it. On purpose, this module imports torch, safetensors and the modules that need
torch (data, train, transfer.freeze) inside the functions that compute or read features: ``import mmtransfer.cache``
stays free of torch, so those two commands answer at once.
"""

from __future__ import annotations

import glob
import hashlib
import math
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from mmtransfer.errors import UserError
from mmtransfer.outputs import write_error

if TYPE_CHECKING:
    import torch
    from rich.console import Console
    from torch import nn

    from mmtransfer.data import Examples
    from mmtransfer.model import Classifier

BATCH = 32  # images per forward: larger batches buy no speed on a CPU and cost memory (activations)
KEY_BYTES = 16  # a key is the first 128 bits of a sha256
MAX_GB = 1e6  # a petabyte: any larger limit is a typo


def cache_dir() -> Path:
    return Path(os.environ.get("MMTRANSFER_CACHE", Path.home() / ".cache" / "mmtransfer" / "features"))


def frozen_encoders(model: Classifier) -> list[str]:
    """Names of encoders none of whose parameters train (and whose output is one pooled vector: region tokens
    are computed each time, not cached)."""
    from mmtransfer.transfer.freeze import is_frozen

    regions = getattr(model, "uses_regions", lambda name: False)
    return [name for name, enc in sorted(model.encoders.items()) if is_frozen(enc) and not regions(name)]


def _digest(*tensors: torch.Tensor, extra: str = "") -> str:
    import torch

    h = hashlib.sha256(extra.encode())
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(str((t.dtype, tuple(t.shape))).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:32]


def _settings(module: nn.Module) -> str:
    """Every plain setting of a module and its submodules (stride, pooling, readout, padding id, ...): what
    changes an encoder's output without changing its weights' shapes."""
    parts = []
    for name, sub in module.named_modules():
        plain = {
            k: v
            for k, v in vars(sub).items()
            if not k.startswith("_") and k != "training" and isinstance(v, (int, float, str, bool, tuple, type(None)))
        }
        parts.append(f"{name}:{type(sub).__qualname__}:{sorted(plain.items(), key=lambda kv: kv[0])!r}")
    return "\n".join(parts)


def encoder_key(encoder: nn.Module) -> str:
    """A hash of the encoder's class, every setting of its modules and its weights and buffers."""
    state = encoder.state_dict()
    return _digest(*[state[k] for k in sorted(state)], extra=_settings(encoder) + repr(sorted(state)))


def compute_features(encoder: nn.Module, x: torch.Tensor | Examples, name: str | None = None, batch_size: int = BATCH):
    """The encoder's output on ``x`` in eval mode, on the device Accelerate would use (a GPU where present).

    ``x`` is the input tensor, or a split whose input ``name`` alone is read batch by batch (a table's split
    decodes its files as it goes, ``batch_size`` at a time: the activations of a large batch of images cost
    gigabytes and buy no speed on a CPU)."""
    import numpy as np
    import torch

    from mmtransfer.data import ahead
    from mmtransfer.train import inference, process_state

    device = process_state().device
    encoder.to(device)
    if isinstance(x, torch.Tensor):
        chunks = (x[i : i + batch_size] for i in range(0, len(x), batch_size))
    else:
        starts = range(0, len(x), batch_size)
        chunks = ahead(x.batch(np.arange(i, min(i + batch_size, len(x))), names=[name])[name] for i in starts)
    with inference(encoder):
        out = [encoder(chunk.to(device)).cpu() for chunk in chunks]
    return torch.cat(out).clone()  # a normal tensor again (inference tensors refuse autograd's bookkeeping)


def _order(splits: dict) -> list[str]:
    """Train first, then validation, then the rest (test): training can start before the test features exist."""
    first = [k for k in ("train", "val") if k in splits]
    return first + [k for k in splits if k not in first]


def add_cached_features(
    model: Classifier,
    splits: dict[str, Examples],
    *,
    directory: str | Path | None = None,
    console: Console | None = None,
) -> dict[str, Examples]:
    """Return the splits with ``name.features`` added for every frozen encoder; the splits given are not changed.

    Each example's features are read from the cache where an earlier call computed them (for any split, subset
    or run of the same table), and only the others are computed (train first, then validation, then test) and
    stored."""
    import torch

    from mmtransfer.train import process_state

    names = frozen_encoders(model)
    if not names:
        return splits
    directory = Path(directory) if directory is not None else cache_dir()
    out = dict(splits)
    state = process_state()
    show = console is not None and state.is_main_process
    for name in names:
        encoder = model.encoders[name]
        enc_key = encoder_key(encoder)
        # several processes: one per machine computes, the others on that machine then read its files
        with state.local_main_process_first():
            index = _Index(directory, f"{name}-{enc_key}", console)
            for key in _order(out):
                split = out[key]
                start = time.perf_counter()
                keys = split.example_keys(name)
                todo: dict[str, int] = {}  # key -> its first row; a photo in two rows is computed once
                for i, features in enumerate(index.lookup(keys)):
                    if features is None:
                        todo.setdefault(keys[i], i)
                if todo:
                    if show:
                        console.print(
                            f"frozen encoder {name}: computing {key} features of {len(todo)} rows once ...",
                            style="dim", markup=False, highlight=False,
                        )  # fmt: skip
                    index.add(list(todo), compute_features(encoder, split.subset(list(todo.values())), name))
                found = index.lookup(keys)  # every file it reads is in memory now
                features = torch.stack(found) if found else torch.zeros(0, encoder.output_dim)
                out[key] = split.with_features(name, features)
                if show:
                    how = _how(len(keys), len(todo))
                    console.print(
                        f"frozen encoder {name}: {key} features {list(features.shape)} {how} "
                        f"in {time.perf_counter() - start:.1f} s",
                        style="dim", markup=False, highlight=False,
                    )  # fmt: skip
            evict(directory, keep=index.used)
    return out


def _how(rows: int, computed: int) -> str:
    if computed == 0:
        return "read from cache"
    if computed == rows:
        return "computed"
    return f"computed for {computed} new examples, the other {rows - computed} read from cache"


class _Index:
    """The cached features of one encoder: every file whose name starts with ``prefix``, key by key."""

    def __init__(self, directory: Path, prefix: str, console: Console | None):
        self.directory, self.prefix, self.console = directory, prefix, console
        self.where: dict[str, tuple[Path, int]] = {}  # example key -> (file, row)
        self.loaded: dict[Path, torch.Tensor] = {}  # files whose features were read and checked
        self.used: set[Path] = set()
        for path in sorted(directory.glob(f"{glob.escape(prefix)}-*.safetensors")) if directory.is_dir() else []:
            keys = self._keys(path)
            if keys is not None:
                self.where.update({k: (path, i) for i, k in enumerate(keys)})

    def lookup(self, keys: list[str]) -> list[torch.Tensor | None]:
        """Each key's features, or None where they are not cached (or their file turns out damaged)."""
        out = []
        for key in keys:
            hit = self.where.get(key)
            features = self._features(hit[0]) if hit is not None else None
            out.append(None if features is None else features[hit[1]])
        return out

    def add(self, keys: list[str], features: torch.Tensor) -> None:
        """Store new rows as one file (named by a hash of its keys and features)."""
        path = self.directory / f"{self.prefix}-{_digest(features, extra=''.join(keys))}.safetensors"
        _write(path, keys, features)
        self.loaded[path] = features
        self.used.add(path)
        self.where.update({k: (path, i) for i, k in enumerate(keys)})

    def _keys(self, path: Path) -> list[str] | None:
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                if "keys" not in f.keys():  # an entry of the cache before it was per example: left to eviction
                    return None
                return [bytes(row).hex() for row in f.get_tensor("keys").numpy()]
        except Exception as err:  # truncated, not safetensors
            self._damaged(path, f"unreadable ({err})")
            return None

    def _features(self, path: Path) -> torch.Tensor | None:
        if path not in self.loaded:
            features = _read(path)
            if isinstance(features, str):
                self._damaged(path, features)
                self.where = {k: v for k, v in self.where.items() if v[0] != path}
                return None
            self.loaded[path] = features
            self.used.add(path)
            os.utime(path)  # recently used: the last to be evicted
        return self.loaded[path]

    def _damaged(self, path: Path, problem: str) -> None:
        if self.console is not None:
            self.console.print(
                f"warning: cache file {path} is damaged ({problem}); computing its features again", markup=False
            )
        path.unlink(missing_ok=True)


def _key_tensor(keys: list[str]) -> torch.Tensor:
    import numpy as np
    import torch

    raw = b"".join(bytes.fromhex(k[: 2 * KEY_BYTES]) for k in keys)
    return torch.from_numpy(np.frombuffer(raw, dtype=np.uint8).reshape(len(keys), KEY_BYTES).copy())


def _write(path: Path, keys: list[str], features: torch.Tensor) -> None:
    """Keys and features with their row count and checksum in the file's metadata, so a damaged file is
    recognised; written to a temporary name and renamed, so a killed write leaves no partial entry."""
    from safetensors.torch import save_file

    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # machines sharing a cache folder never collide
    key_tensor = _key_tensor(keys)
    meta = {"rows": str(len(features)), "sha256": _digest(key_tensor, features)}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({"keys": key_tensor, "features": features.contiguous()}, str(tmp), metadata=meta)
        tmp.replace(path)
    except Exception as err:  # a full disk is safetensors' own error, not an OSError: one naming the file
        tmp.unlink(missing_ok=True)
        raise write_error(path, err) from None


def _read(path: Path) -> torch.Tensor | str:
    """The file's features, or what is wrong with it."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            keys, features = f.get_tensor("keys"), f.get_tensor("features")
    except Exception as err:  # truncated, not safetensors, no "features"
        return f"unreadable ({err})"
    if not len(features) == len(keys) == int(meta.get("rows", -1)):
        return f"{len(features)} rows of features for {len(keys)} keys"
    if meta.get("sha256") != _digest(keys, features):
        return "its checksum does not match"
    return features


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
