"""Weights on disk: safetensors only, written atomically; loading never runs code from the file."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn


def save_weights(state: Mapping[str, torch.Tensor] | nn.Module, path: str | Path) -> Path:
    """Write a state dict as safetensors via a temporary file and a rename, so a crash never leaves half a file."""
    if isinstance(state, nn.Module):
        state = state.state_dict()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file, or the ``model.safetensors`` of a run folder."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"no weights at {path}")
    if path.suffix != ".safetensors":
        raise ValueError(f"{path}: expected a .safetensors file or a run folder")
    try:
        return load_file(str(path))
    except Exception as err:  # SafetensorError (truncated, corrupt header) derives from Exception directly
        raise ValueError(f"{path}: not a readable safetensors file ({err})") from None


def load_into(model: nn.Module, state: Mapping[str, torch.Tensor], where: str = "weights") -> None:
    """Load a full state dict, naming every missing, unexpected or mis-shaped tensor instead of ignoring it."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mis_shaped = [
        f"{k}: file {list(state[k].shape)} vs model {list(own[k].shape)}"
        for k in sorted(set(own) & set(state))
        if state[k].shape != own[k].shape
    ]
    if missing or unexpected or mis_shaped:
        raise ValueError(
            f"{where} do not fit the model:"
            + (f"\n  missing: {missing}" if missing else "")
            + (f"\n  unexpected: {unexpected}" if unexpected else "")
            + (f"\n  shape: {mis_shaped}" if mis_shaped else "")
        )
    model.load_state_dict(state)
