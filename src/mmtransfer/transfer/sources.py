"""Where source weights come from, as one state dict (and class names where the source knows them).

- an ``nn.Module`` or a mapping of tensors, in memory;
- a run folder of ours (``model.safetensors`` + ``labels.json``);
- a ``.safetensors`` file, or a PyTorch state-dict file (``.pt``/``.pth``/``.bin``) read with
  ``torch.load(weights_only=True)``, which refuses to run code from the file;
- a Hugging Face model folder or cached hub id (``hf:ID`` or a folder with ``config.json``), offline;
- a timm model (``timm:NAME``), where timm imports, from its local cache.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from mmtransfer.artifact import read_labels, verify
from mmtransfer.checkpoint import load_state_file, load_weights
from mmtransfer.encoders.hf import resolve_model_path
from mmtransfer.encoders.timm_backbone import build_timm
from mmtransfer.errors import MissingFile, MissingPackage, UserError
from mmtransfer.hub import ModelFolderError, from_pretrained, why_not_loaded
from mmtransfer.modalities.base import InputSpec
from mmtransfer.runfolder import CONFIG, LABELS, RunFolder


@dataclass
class Source:
    state: dict[str, torch.Tensor]
    name: str
    classes: list[str] | None = None


def load_source(source, *, local_files_only: bool = True) -> Source:
    if isinstance(source, Source):
        return source
    if isinstance(source, nn.Module):
        return Source(dict(source.state_dict()), type(source).__name__, getattr(source, "classes", None))
    if isinstance(source, Mapping):
        return Source(dict(source), "state dict")
    text = str(source)
    if text.startswith("timm:"):
        return _timm(text[5:], local_files_only)
    if text.startswith("hf:"):
        return _hf(text[3:], local_files_only)
    path = Path(text)
    folder = RunFolder(path)
    if path.is_dir() and folder.has(CONFIG):  # a run folder of ours (a Hugging Face folder has config.json)
        verify(path)  # a run folder's files match its manifest, and its fit finished
        classes = read_labels(folder.file(LABELS))  # every run folder lists one; names checked
        return Source(load_weights(folder.weights), str(path), classes)
    if path.is_dir() and (path / "config.json").is_file():
        return _hf(text, local_files_only)
    if path.is_file() and path.suffix == ".safetensors":
        return Source(load_weights(path), str(path))
    if path.is_file() and path.suffix in (".pt", ".pth", ".bin", ".ckpt"):
        return Source(load_state_file(path), str(path))
    if path.exists():
        raise UserError(f"{path}: not a run folder, Hugging Face folder, .safetensors or .pt/.pth/.bin file")
    raise MissingFile(f"graft source not found: {text} (use hf:ID for a cached hub id, timm:NAME for timm)")


def _hf(name: str, local_files_only: bool) -> Source:
    try:
        from transformers import AutoModel  # imported here: transformers takes seconds to import
    except ImportError:  # the hf extra is not installed
        raise MissingPackage(
            f"graft source hf:{name} needs transformers, which is not installed: pip install 'mmtransfer[hf]'"
        ) from None

    path = resolve_model_path(name)
    try:
        model = from_pretrained(AutoModel, path, what="graft source", local_files_only=local_files_only)
    except ModelFolderError:
        raise
    except (OSError, ValueError) as err:
        raise MissingFile(f"graft source hf:{name}: {why_not_loaded(path, err, local_files_only)}") from None
    return Source(dict(model.state_dict()), f"hf:{path}")


def _timm(name: str, local_files_only: bool) -> Source:
    encoder = build_timm(InputSpec("image", (3, 224, 224)), 1, name=name, local_files_only=local_files_only)
    return Source(dict(encoder.backbone.state_dict()), f"timm:{name}")
