"""The model: one encoder per input -> fusion -> classification head.

A batch is ``dict[str, Tensor]`` keyed by input name; encoders and fusion iterate it in sorted key order.
"""

from __future__ import annotations

import torch
from torch import nn

from mmtransfer.config import ModelConfig
from mmtransfer.encoders import ENCODERS


class ConcatFusion(nn.Module):
    """Late fusion: concatenate the embeddings in sorted key order."""

    def __init__(self, input_dims: dict[str, int]):
        super().__init__()
        self.keys = sorted(input_dims)
        self.output_dim = sum(input_dims.values())

    def forward(self, embeddings: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.cat([embeddings[k] for k in self.keys], dim=-1)


class ClassificationHead(nn.Module):
    """Linear head, or one hidden ReLU layer then linear; the output layer is always ``out``."""

    def __init__(self, in_dim: int, num_classes: int, hidden: int | None = None, dropout: float = 0.0):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.hidden = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU()) if hidden else None
        self.out = nn.Linear(hidden or in_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dropout(x)
        if self.hidden is not None:
            x = self.hidden(x)
        return self.out(x)


class Classifier(nn.Module):
    """encoders (a dict) -> fusion -> head. ``embed`` gives the fused embedding the head reads."""

    def __init__(self, encoders: dict[str, nn.Module], fusion: nn.Module, head: nn.Module):
        super().__init__()
        self.encoders = nn.ModuleDict(encoders)
        self.fusion = fusion
        self.head = head

    def embed(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.fusion({name: self.encoders[name](inputs[name]) for name in sorted(self.encoders)})

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.head(self.embed(inputs))


def build_model(
    cfg: ModelConfig, input_shapes: dict[str, tuple[int, ...]], num_classes: int, *, seed: int | None = None
) -> Classifier:
    """Build from a validated config; the encoder names must be the dataset's input names.

    With ``seed``, initialisation draws from its own generator state and leaves the global one untouched,
    so the same seed gives the same weights whatever ran before.
    """
    if seed is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return build_model(cfg, input_shapes, num_classes)
    missing = sorted(set(input_shapes) - set(cfg.encoders))
    unknown = sorted(set(cfg.encoders) - set(input_shapes))
    if missing or unknown:
        raise ValueError(
            f"model.encoders has {sorted(cfg.encoders)} but the data provides inputs {sorted(input_shapes)}"
            + (f"; no encoder for {missing}" if missing else "")
            + (f"; no input named {unknown}" if unknown else "")
        )
    encoders = {}
    for name, enc_cfg in sorted(cfg.encoders.items()):
        kwargs = enc_cfg.model_dump(exclude={"type"})
        try:
            encoders[name] = ENCODERS[enc_cfg.type](tuple(input_shapes[name]), cfg.embed_dim, **kwargs)
        except ValueError as err:
            raise ValueError(f"model.encoders.{name}: {err}") from None
    fusion = ConcatFusion({name: enc.output_dim for name, enc in encoders.items()})
    head = ClassificationHead(fusion.output_dim, num_classes, cfg.head_hidden, cfg.head_dropout)
    return Classifier(encoders, fusion, head)
