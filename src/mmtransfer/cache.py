"""Features of frozen encoders, computed once and cached on disk.

An encoder whose parameters are all frozen maps the same input to the same embedding every epoch, so it is
run once per split and its output stored beside the input as ``name.features``; the model then reads those
instead of running the encoder. The cache key is a hash of the encoder's weights, its class and the input
tensors, so a change to any of them computes anew. Files are safetensors under ``$MMTRANSFER_CACHE``
(default ``~/.cache/mmtransfer/features``).
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import torch
from accelerate import PartialState
from rich.console import Console
from safetensors.torch import load_file
from torch import nn

from mmtransfer.checkpoint import save_weights
from mmtransfer.data import Examples, batches
from mmtransfer.model import Classifier
from mmtransfer.transfer.freeze import is_frozen


def cache_dir() -> Path:
    return Path(os.environ.get("MMTRANSFER_CACHE", Path.home() / ".cache" / "mmtransfer" / "features"))


def frozen_encoders(model: Classifier) -> list[str]:
    """Names of encoders none of whose parameters train."""
    return [name for name, enc in sorted(model.encoders.items()) if is_frozen(enc)]


def _digest(*tensors: torch.Tensor, extra: str = "") -> str:
    h = hashlib.sha256(extra.encode())
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(str((t.dtype, tuple(t.shape))).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:32]


def encoder_key(encoder: nn.Module) -> str:
    state = encoder.state_dict()
    return _digest(*[state[k] for k in sorted(state)], extra=type(encoder).__qualname__ + repr(sorted(state)))


@torch.no_grad()
def compute_features(encoder: nn.Module, x: torch.Tensor | Examples, name: str | None = None, batch_size: int = 256):
    """The encoder's output on ``x`` in eval mode, on the device Accelerate would use (a GPU where present).

    ``x`` is the input tensor, or a split whose input ``name`` is read batch by batch (a table's split decodes
    its files as it goes)."""
    was_training = encoder.training
    encoder.eval()
    device = PartialState().device
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
    state = PartialState()
    for name in names:
        encoder = model.encoders[name]
        enc_key = encoder_key(encoder)
        for key, split in out.items():
            path = directory / f"{name}-{enc_key}-{split.fingerprint(name)}.safetensors"
            start = time.perf_counter()
            with state.main_process_first():  # under `accelerate launch`, one process computes, the rest read
                if path.is_file():
                    features, how = load_file(str(path))["features"], "read from cache"
                else:
                    features, how = compute_features(encoder, split, name), "computed"
                    save_weights({"features": features}, path)
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
