"""Weights on disk: safetensors only, written atomically; loading never runs code from the file.

A write that fails (a full disk, a folder without write permission, a read-only file system) is one ``OSError``
naming the file, e.g. ``run/model.safetensors: no space left on device``, and leaves nothing under that name:
safetensors reports these as its own ``SafetensorError``, which is not an ``OSError``.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from mmtransfer.errors import MissingFile, UserError
from mmtransfer.hub import refused_pickle
from mmtransfer.outputs import write_error
from mmtransfer.runfolder import RunFolder


def save_weights(state: Mapping[str, torch.Tensor] | nn.Module, path: str | Path) -> Path:
    """Write a state dict as safetensors via a temporary file and a rename, so a crash never leaves half a file."""
    if isinstance(state, nn.Module):
        state = state.state_dict()
    return save_tensors({k: v.detach().to("cpu").contiguous() for k, v in state.items()}, path)


def save_tensors(tensors: Mapping[str, torch.Tensor], path: str | Path, metadata: dict | None = None) -> Path:
    """Write ``tensors`` as safetensors to a temporary name beside ``path`` and rename it over ``path`` once
    complete; on any failure the temporary file is removed and the error is an ``OSError`` naming ``path``."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        save_file(dict(tensors), tmp, metadata=metadata)
        os.replace(tmp, path)
    except Exception as err:
        raise write_error(path, err) from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)
    return path


def load_state_file(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a PyTorch state-dict file (``.pt``/``.pth``/``.bin``/``.ckpt``), read with
    ``torch.load(weights_only=True)``: a pickle that holds more than tensors is refused, and nothing in it runs."""
    import pickle

    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:  # names what it refused, and advice we never repeat
        raise UserError(refused_pickle(path, err)) from None
    except OSError as err:
        raise OSError(f"{path}: cannot read it ({err.strerror or err})") from None
    except Exception:  # not a torch file at all: a zip or pickle error
        raise UserError(f"{path} is not a plain state dict of tensors (damaged, or another format)") from None
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]  # a training checkpoint: take its weights
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)} if isinstance(state, Mapping) else {}
    if not tensors:
        raise UserError(f"{path}: holds no tensors by name")
    return tensors


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file, or the ``model.safetensors`` of a run folder."""
    path = Path(path)
    if path.is_dir():
        path = RunFolder(path).weights
    if not path.is_file():
        raise MissingFile(f"no weights at {path}")
    if path.suffix != ".safetensors":
        raise UserError(f"{path}: expected a .safetensors file or a run folder")
    try:
        return load_file(str(path))
    except Exception as err:  # SafetensorError (truncated, corrupt header) derives from Exception directly
        raise UserError(f"{path}: not a readable safetensors file ({err})") from None


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
        raise UserError(
            f"{where} do not fit the model:"
            + (f"\n  missing: {missing}" if missing else "")
            + (f"\n  unexpected: {unexpected}" if unexpected else "")
            + (f"\n  shape: {mis_shaped}" if mis_shaped else "")
        )
    model.load_state_dict(state)
