"""timm image backbones as encoders, where timm imports (it needs torchvision; an optional extra).

Weights come from a local file (``weights``: .safetensors, or a PyTorch state dict of tensors only, loaded by
timm) or timm's Hugging Face cache; nothing is downloaded unless ``local_files_only`` is off. timm adapts the first
convolution to the image's channel count (summing the RGB kernels for grayscale) and drops the classifier.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from mmtransfer.checkpoint import load_state_file
from mmtransfer.config import TimmConfig
from mmtransfer.encoders.info import NO_WEIGHTS, EncoderInfo, per_channel, pretrained_or_file
from mmtransfer.errors import MissingFile, UserError
from mmtransfer.hub import offline
from mmtransfer.modalities.base import InputSpec


class TimmEncoder(nn.Module):
    """A timm model without its classifier (pooled features [B, num_features]) and a projection."""

    def __init__(self, backbone: nn.Module, output_dim: int | None):
        super().__init__()
        self.backbone = backbone
        hidden = backbone.num_features
        output_dim = output_dim or hidden  # None: the backbone's own feature size (model.embed_dim auto)
        self.proj = nn.Identity() if hidden == output_dim else nn.Linear(hidden, output_dim)
        self.output_dim = output_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.backbone(x))

    def layer_groups(self) -> list[nn.Module]:
        """The backbone's top-level children in order (stem first), then the projection."""
        return [*self.backbone.children(), self.proj]


def build_timm(
    spec: InputSpec,
    output_dim: int | None,
    *,
    name: str,
    pretrained: bool = True,
    weights: str | None = None,
    local_files_only: bool = True,
) -> TimmEncoder:
    try:
        import timm  # an optional extra, imported where used (it imports torchvision: seconds)
    except Exception as err:  # ImportError, or torchvision failing to load beside this torch
        raise UserError(
            f"timm encoder: timm does not import here ({type(err).__name__}: {err}); "
            "install the timm extra with a torchvision that matches torch, or use type: cnn or hf"
        ) from None
    if spec.kind not in ("image", "spectrogram"):
        raise UserError(f"timm encoder: expects images [C, H, W], got {spec.kind} {spec.shape}")
    kwargs: dict = {"num_classes": 0, "in_chans": spec.shape[0]}
    if weights is not None:
        if not Path(weights).is_file():
            raise MissingFile(f"timm encoder: no weights file {weights}")
        if Path(weights).suffix != ".safetensors":  # read it safely first: timm's own reader may unpickle anything
            load_state_file(weights)
        kwargs["pretrained_cfg_overlay"] = {"file": str(weights)}
    try:
        with offline(local_files_only):
            backbone = timm.create_model(name, pretrained=pretrained or weights is not None, **kwargs)
    except RuntimeError as err:
        if "Unknown model" in str(err):
            raise UserError(f"timm encoder: unknown model {name!r}") from None
        raise
    except OSError as err:
        raise MissingFile(
            f"timm encoder: no local weights for {name!r} (local_files_only is on, nothing is downloaded); "
            f"give weights: a file, or pretrained: false ({err})"
        ) from None
    return TimmEncoder(backbone, output_dim)


def image_settings(cfg: TimmConfig) -> tuple[dict, str] | None:
    """An image column's settings from timm's pretrained config of the model; None where timm does not import
    or knows no such config."""
    if not pretrained_or_file(cfg):
        return None
    try:
        import timm  # an optional extra, imported where used
    except Exception:  # timm does not import here: the encoder reports it when it is built
        return None
    try:
        pc = timm.get_pretrained_cfg(cfg.name)
    except Exception:
        return None
    if pc is None:
        return None
    pc = pc.to_dict() if hasattr(pc, "to_dict") else dict(pc)
    _, h, w = pc.get("input_size", (3, 224, 224))
    return {
        "size": (int(h), int(w)),
        "resize": "crop",
        "crop_pct": round(float(pc.get("crop_pct", 0.875)), 4),
        "mean": per_channel(pc.get("mean", (0.485, 0.456, 0.406))),
        "std": per_channel(pc.get("std", (0.229, 0.224, 0.225))),
    }, f"timm {cfg.name}'s pretrained config"


INFO = EncoderInfo(
    build_timm,
    backbone=True,
    pretrained=pretrained_or_file,
    without_weights=NO_WEIGHTS,
    weights_from=lambda cfg: f"timm {cfg.name} ({cfg.weights or 'its pretrained weights, from timm'})",
    preprocessing=image_settings,
    portable=lambda cfg, folder: dict(NO_WEIGHTS),  # timm builds the architecture; the weights are the run's
)
