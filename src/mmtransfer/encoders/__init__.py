"""Encoders: every one maps its input to [B, output_dim].

The contract is :class:`Encoder`; ``ENCODERS`` is the one registry, keyed by the ``type`` a user writes in YAML.
Builders are plain functions of the example's input shape (without the batch axis), the embedding size and
the encoder's own keyword arguments.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

import torch
from torch import nn

from mmtransfer.encoders.attention import AttentionEncoder, AttentionPool
from mmtransfer.encoders.cnn import ConvEncoder
from mmtransfer.encoders.rnn import RecurrentEncoder, as_sequence, sequence_features


@runtime_checkable
class Encoder(Protocol):
    """An ``nn.Module`` with ``output_dim`` and ``forward(x) -> Tensor[B, output_dim]``.

    Optional: ``layer_groups()`` (input side first) for discriminative learning rates and gradual unfreezing.
    """

    output_dim: int

    def forward(self, x: torch.Tensor) -> torch.Tensor: ...


def build_cnn(input_shape: tuple[int, ...], output_dim: int, **kwargs) -> ConvEncoder:
    """(C, H, W) gives a 2-D CNN, (C, L) a 1-D CNN."""
    if len(input_shape) not in (2, 3):
        raise ValueError(f"cnn encoder expects an input of shape (C, L) or (C, H, W), got {input_shape}")
    return ConvEncoder(input_shape[0], output_dim, dims=len(input_shape) - 1, **kwargs)


def build_rnn(input_shape: tuple[int, ...], output_dim: int, **kwargs) -> RecurrentEncoder:
    _, features = sequence_features(input_shape)
    return RecurrentEncoder(features, output_dim, **kwargs)


def build_attention(input_shape: tuple[int, ...], output_dim: int, **kwargs) -> AttentionEncoder:
    steps, features = sequence_features(input_shape)
    if steps > kwargs.get("max_len", 512):
        raise ValueError(f"attention encoder: input has {steps} steps, more than max_len={kwargs['max_len']}")
    return AttentionEncoder(features, output_dim, **kwargs)


ENCODERS: dict[str, Callable[..., nn.Module]] = {
    "cnn": build_cnn,
    "rnn": build_rnn,
    "attention": build_attention,
}

__all__ = [
    "ENCODERS",
    "AttentionEncoder",
    "AttentionPool",
    "ConvEncoder",
    "Encoder",
    "RecurrentEncoder",
    "as_sequence",
    "build_attention",
    "build_cnn",
    "build_rnn",
    "sequence_features",
]
