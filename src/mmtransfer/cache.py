"""Features of frozen encoders, computed once and cached on disk.

An encoder whose parameters are all frozen maps the same input to the same embedding every epoch, so it is
run once per split and its output stored beside the input as ``name.features``; the model then reads those
instead of running the encoder. The cache key is a hash of the encoder (its class, every setting of its modules
such as stride, pooling or padding id, its weights) and of the inputs (their tensor, or a table's cells, files
and preprocessing state), so a change to any of them computes anew. Files are safetensors under ``$MMTRANSFER_CACHE``
(default ``~/.cache/mmtransfer/features``), each with its row count and checksum: a damaged or mismatched file
is recomputed, with a warning, never used. The cache stays under ``MMTRANSFER_CACHE_MAX_GB`` (default 10):
the least recently used entries go first. ``mmtransfer cache info`` / ``cache clear`` show and free it.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import torch
from rich.console import Console
from torch import nn

from mmtransfer.data import Examples, batches
from mmtransfer.model import Classifier
from mmtransfer.train import process_state
from mmtransfer.transfer.freeze import is_frozen


def cache_dir() -> Path:
    return Path(os.environ.get("MMTRANSFER_CACHE", Path.home() / ".cache" / "mmtransfer" / "features"))


def frozen_encoders(model: Classifier) -> list[str]:
    """Names of encoders none of whose parameters train (and whose output is one pooled vector: region tokens
    are computed each time, not cached)."""
    regions = getattr(model, "uses_regions", lambda name: False)
    return [name for name, enc in sorted(model.encoders.items()) if is_frozen(enc) and not regions(name)]


def _digest(*tensors: torch.Tensor, extra: str = "") -> str:
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


@torch.no_grad()
def compute_features(encoder: nn.Module, x: torch.Tensor | Examples, name: str | None = None, batch_size: int = 256):
    """The encoder's output on ``x`` in eval mode, on the device Accelerate would use (a GPU where present).

    ``x`` is the input tensor, or a split whose input ``name`` is read batch by batch (a table's split decodes
    its files as it goes)."""
    was_training = encoder.training
    encoder.eval()
    device = process_state().device
    encoder.to(device)
    if isinstance(x, torch.Tensor):
        chunks = (x[i : i + batch_size] for i in range(0, len(x), batch_size))
    else:
        chunks = (inputs[name] for _, inputs in batches(x, batch_size))
    out = torch.cat([encoder(chunk.to(device)).cpu() for chunk in chunks])
    encoder.train(was_training)
    return out


def add_cached_features(
    model: Classifier,
    splits: dict[str, Examples],
    *,
    directory: str | Path | None = None,
    console: Console | None = None,
) -> dict[str, Examples]:
    """Return the splits with ``name.features`` added for every frozen encoder (cached on disk); the splits
    given are not changed. The key of a split's features is its fingerprint of that input (its tensor, or for
    a table its cells, files and preprocessing state)."""
    names = frozen_encoders(model)
    if not names:
        return splits
    directory = Path(directory) if directory is not None else cache_dir()
    out = dict(splits)
    state = process_state()
    for name in names:
        encoder = model.encoders[name]
        enc_key = encoder_key(encoder)
        for key, split in out.items():
            path = directory / f"{name}-{enc_key}-{split.fingerprint(name)}.safetensors"
            start = time.perf_counter()
            # several processes: one per machine computes, the others on that machine then read its file
            with state.local_main_process_first():
                features, how = (_read(path, len(split), console) if path.is_file() else None), "read from cache"
                if features is None:
                    if console is not None and state.is_main_process:
                        console.print(
                            f"frozen encoder {name}: computing {key} features of {len(split)} rows once ...",
                            style="dim", markup=False, highlight=False,
                        )  # fmt: skip
                    features, how = compute_features(encoder, split, name), "computed"
                    _write(path, features)
                    evict(directory, keep=path)
            out[key] = split = split.with_features(name, features)
            if console is not None and state.is_main_process:
                console.print(
                    f"frozen encoder {name}: {key} features {list(features.shape)} {how} "
                    f"in {time.perf_counter() - start:.1f} s ({path.name})",
                    style="dim",
                    markup=False,
                    highlight=False,
                )
    return out


def _write(path: Path, features: torch.Tensor) -> None:
    """Features with their row count and checksum in the file's metadata, so a damaged file is recognised."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # machines sharing a cache folder never collide
    meta = {"rows": str(len(features)), "sha256": _digest(features)}
    save_file({"features": features.contiguous()}, str(tmp), metadata=meta)
    tmp.replace(path)


def _read(path: Path, rows: int, console: Console | None) -> torch.Tensor | None:
    """The cached features, or None (with a warning) when the file is damaged or does not fit the split."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            features = f.get_tensor("features")
        problem = None
        if len(features) != rows or meta.get("rows") != str(rows):
            problem = f"{len(features)} rows for a split of {rows}"
        elif meta.get("sha256") != _digest(features):
            problem = "its checksum does not match"
    except Exception as err:  # truncated, not safetensors, no "features"
        problem, features = f"unreadable ({err})", None
    if problem is None:
        os.utime(path)  # recently used: the last to be evicted
        return features
    if console is not None:
        console.print(f"warning: cache file {path} is damaged ({problem}); computing the features again", markup=False)
    path.unlink(missing_ok=True)
    return None


def max_bytes() -> int:
    """The cache's size limit: MMTRANSFER_CACHE_MAX_GB gigabytes (default 10)."""
    return int(float(os.environ.get("MMTRANSFER_CACHE_MAX_GB", "10")) * 1e9)


def entries(directory: Path | None = None) -> list[Path]:
    directory = Path(directory) if directory is not None else cache_dir()
    return sorted(directory.glob("*.safetensors"), key=lambda p: p.stat().st_mtime) if directory.is_dir() else []


def evict(directory: Path, keep: Path | None = None) -> list[Path]:
    """Remove the least recently used entries until the cache is within :func:`max_bytes`; return them."""
    for stale in leftovers(directory, older_than=3600):  # a killed write's partial file
        stale.unlink(missing_ok=True)
    files = entries(directory)
    total, limit, removed = sum(p.stat().st_size for p in files), max_bytes(), []
    for path in files:
        if total <= limit:
            break
        if path == keep:
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
