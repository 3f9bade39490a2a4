"""A resumable training checkpoint: one safetensors file, written atomically, nothing pickled.

The tensors (the model's weights, the best weights so far, the optimizer's moments, every RNG state) are
safetensors entries; everything else (epoch and step, best score, the early-stopping counter, the history, the
optimizer's and scheduler's settings) is JSON in the file's own metadata. A write goes to a temporary file that
is fsynced and then renamed over the last checkpoint, so a kill at any moment leaves the previous checkpoint
whole; a leftover temporary file from such a kill is removed when training starts again. A finished fit removes
the checkpoint only after its final manifest is written (a kill in between leaves a complete run folder, whose
verification ignores that one file), so a fit killed at any moment is either complete or resumable.

The strategy needs no state of its own: what trains in an epoch follows from the strategy and the epoch.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from mmtransfer.errors import UserError
from mmtransfer.outputs import write_error
from mmtransfer.runfolder import CHECKPOINT as CHECKPOINT  # one name: the run folder's layout is runfolder's


def rng_state() -> tuple[dict[str, torch.Tensor], dict]:
    """Python's, NumPy's and torch's (CPU and CUDA) random states, as (tensors, JSON)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    tensors = {
        "rng.torch": torch.get_rng_state(),
        "rng.numpy": torch.from_numpy(np.asarray(keys, dtype=np.uint32).view(np.int32).copy()),
    }
    if torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = state
    version, internal, gauss = random.getstate()
    meta = {"python": [version, list(internal), gauss], "numpy": [kind, int(pos), int(has_gauss), float(cached)]}
    return tensors, meta


def set_rng_state(tensors: Mapping[str, torch.Tensor], meta: dict) -> None:
    version, internal, gauss = meta["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, pos, has_gauss, cached = meta["numpy"]
    keys = tensors["rng.numpy"].numpy().view(np.uint32)
    np.random.set_state((kind, keys, pos, has_gauss, cached))
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng.cuda."))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


def optimizer_state(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """An optimizer's state dict as (tensors keyed ``optimizer.<param>.<name>``, JSON of the rest)."""
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, entry in state["state"].items():
        for name, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{index}.{name}"] = value
    groups = [{k: v for k, v in g.items()} for g in state["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def load_optimizer_state(optimizer: torch.optim.Optimizer, tensors: Mapping[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    for key, value in meta["scalars"].items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save(path: Path, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    """Write atomically: a temporary file, fsynced, renamed over ``path``; the folder entry fsynced too."""
    tmp = path.with_name(f".{path.name}.tmp")
    clean = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(clean, str(tmp), metadata={"state": json.dumps(meta)})
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except Exception as err:  # a full disk (safetensors' own error) or a refused write: one OSError naming the file
        tmp.unlink(missing_ok=True)
        raise write_error(path, err) from None
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def load(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, metadata) of a checkpoint; a damaged file is a ValueError naming it."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {})["state"])
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:  # SafetensorError, a missing "state", bad JSON
        raise UserError(f"{path}: not a readable training checkpoint ({err})") from None
    return tensors, meta


def clean_leftovers(folder: Path) -> list[Path]:
    """Remove temporary files a killed write left in ``folder``; return them."""
    left = [p for p in folder.glob(".*.tmp") if p.is_file()] if folder.is_dir() else []
    for p in left:
        p.unlink()
    return left
