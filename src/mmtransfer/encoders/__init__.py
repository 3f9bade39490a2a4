"""Encoders: every one maps its input to [B, output_dim].

The contract is :class:`Encoder`; ``ENCODERS`` is the one registry, keyed by the ``type`` a user writes in YAML.
Builders are plain functions of the input's :class:`~mmtransfer.modalities.base.InputSpec` (kind and shape of
one example), the embedding size and the encoder's own keyword arguments. Token inputs (text) reach the
from-scratch families through a learned token embedding (:class:`TokenEncoder`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

import torch
from torch import nn

from mmtransfer.encoders.attention import AttentionEncoder, AttentionPool
from mmtransfer.encoders.cnn import ConvEncoder
from mmtransfer.encoders.rnn import RecurrentEncoder, as_sequence, sequence_features
from mmtransfer.encoders.tabular import TabularMLP, TokenEncoder
from mmtransfer.modalities.base import InputSpec


@runtime_checkable
class Encoder(Protocol):
    """An ``nn.Module`` with ``output_dim`` and ``forward(x) -> Tensor[B, output_dim]``.

    Optional: ``layer_groups()`` (input side first) for discriminative learning rates and gradual unfreezing.
    """

    output_dim: int

    def forward(self, x: torch.Tensor) -> torch.Tensor: ...


TOKEN_DIM = 64  # width of the learned token embedding in front of a from-scratch text encoder


def _with_tokens(spec: InputSpec, build: Callable[..., nn.Module], output_dim: int, **kwargs) -> nn.Module:
    """Text ids go through a token embedding first; every other input goes straight in."""
    if spec.kind != "tokens":
        return build(tuple(spec.shape), output_dim, **kwargs)
    if spec.vocab_size is None:
        raise ValueError("a token input needs a vocab_size")
    inner = build((TOKEN_DIM, spec.shape[0]), output_dim, **kwargs)
    return TokenEncoder(spec.vocab_size, TOKEN_DIM, inner, pad_id=spec.pad_id)


def _cnn(shape: tuple[int, ...], output_dim: int, readout: str = "auto", **kwargs) -> ConvEncoder:
    if len(shape) not in (2, 3):
        raise ValueError(f"cnn encoder expects an input of shape (C, L) or (C, H, W), got {shape}")
    kernel = kwargs.get("kernel_size", 3)
    if kernel > min(shape[1:]):  # a kernel wider than the input sees mostly padding, at the cost of its square
        size = " x ".join(str(n) for n in shape[1:])
        raise ValueError(f"kernel_size {kernel}: larger than the input ({size}); at most {min(shape[1:])}")
    if readout == "auto":  # where a stroke or a formant is matters in 2-D; 1-D inputs vary in length
        readout = "grid" if len(shape) == 3 else "mean"
    return ConvEncoder(shape[0], output_dim, dims=len(shape) - 1, readout=readout, input_size=shape[1:], **kwargs)


def _rnn(shape: tuple[int, ...], output_dim: int, **kwargs) -> RecurrentEncoder:
    _, features = sequence_features(shape)
    return RecurrentEncoder(features, output_dim, **kwargs)


def _attention(shape: tuple[int, ...], output_dim: int, **kwargs) -> AttentionEncoder:
    steps, features = sequence_features(shape)
    if steps > kwargs.get("max_len", 512):
        raise ValueError(f"attention encoder: input has {steps} steps, more than max_len={kwargs['max_len']}")
    return AttentionEncoder(features, output_dim, **kwargs)


def build_cnn(spec: InputSpec, output_dim: int, **kwargs) -> nn.Module:
    """(C, H, W) gives a 2-D CNN, (C, L) a 1-D CNN; text gives a 1-D CNN over token embeddings."""
    if spec.kind == "tokens" and kwargs.get("kernel_size", 3) % 2 == 0:
        raise ValueError("cnn over text needs an odd kernel_size, so that padding can be masked exactly")
    if spec.kind == "tokens" and kwargs.get("readout", "auto") == "grid":
        raise ValueError("cnn over text needs readout max, mean or auto, so that padding is left out exactly")
    if spec.kind == "tokens" and kwargs.get("readout", "auto") == "auto":
        kwargs["readout"] = "max"  # did a phrase occur anywhere in the text
    return _with_tokens(spec, _cnn, output_dim, **kwargs)


def build_rnn(spec: InputSpec, output_dim: int, **kwargs) -> nn.Module:
    return _with_tokens(spec, _rnn, output_dim, **kwargs)


def build_attention(spec: InputSpec, output_dim: int, **kwargs) -> nn.Module:
    return _with_tokens(spec, _attention, output_dim, **kwargs)


def build_mlp(spec: InputSpec, output_dim: int, **kwargs) -> TabularMLP:
    if spec.kind != "tabular" or len(spec.shape) != 1:
        raise ValueError(f"mlp encoder expects table columns (tabular [F]), got {spec.kind} {spec.shape}")
    return TabularMLP(spec.shape[0], output_dim, categorical=spec.categorical, **kwargs)


def build_hf(spec: InputSpec, output_dim: int, **kwargs) -> nn.Module:
    from mmtransfer.encoders.hf import build_hf as build  # transformers is imported only when asked for

    return build(spec, output_dim, **kwargs)


def build_timm(spec: InputSpec, output_dim: int, **kwargs) -> nn.Module:
    from mmtransfer.encoders.timm_backbone import build_timm as build  # timm is imported only when asked for

    return build(spec, output_dim, **kwargs)


def build_efficientnet_lite(spec: InputSpec, output_dim: int, **kwargs) -> nn.Module:
    from mmtransfer.encoders.efficientnet import build_efficientnet_lite as build  # an optional extra

    return build(spec, output_dim, **kwargs)


ENCODERS: dict[str, Callable[..., nn.Module]] = {
    "cnn": build_cnn,
    "rnn": build_rnn,
    "attention": build_attention,
    "hf": build_hf,
    "timm": build_timm,
    "efficientnet_lite": build_efficientnet_lite,
    "mlp": build_mlp,
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
    "build_hf",
    "build_mlp",
    "build_rnn",
    "sequence_features",
    "TabularMLP",
    "TokenEncoder",
]
