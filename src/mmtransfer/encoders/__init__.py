"""Encoders: every one maps its input to [B, output_dim].

The contract is :class:`Encoder`; ``ENCODERS`` is the one registry, keyed by the ``type`` a user writes in YAML.
Builders are plain functions of the input's :class:`~mmtransfer.modalities.base.InputSpec` (kind and shape of
one example), the embedding size and the encoder's own keyword arguments. Token inputs (text) reach the
from-scratch families through a learned token embedding (:class:`TokenEncoder`).

Each registry entry is an :class:`~mmtransfer.encoders.info.EncoderInfo`: the builder (calling the entry builds,
``ENCODERS["cnn"](spec, 64)``) and what the rest of mmtransfer needs to know about the encoder type. Code outside
this package asks ``encoder_info(cfg)`` for it and never checks a config's type or class.

Adding a pretrained encoder (say ``aisfx``, an audio backbone) touches three places:

1. ``config.py``: its config class, ``type: Literal["aisfx"] = "aisfx"`` and its fields, in ``EncoderConfig``.
2. ``encoders/aisfx.py``: the builder ``build_aisfx(spec, output_dim, **fields) -> nn.Module`` (``output_dim``
   None: keep the backbone's own feature size; optional ``layer_groups()``, input side first, for gradual
   unfreezing and discriminative rates; ``tokens(x)`` for attention fusion over regions), and beside it
   ``INFO = EncoderInfo(build_aisfx, ...)`` filling in what applies:

   - ``backbone=True``: a pretrained architecture (own feature size; weights read, not drawn);
   - ``pretrained(cfg) -> bool``: whether this config starts from pretrained weights;
   - ``without_weights``: builder keywords that build the architecture alone (a run folder reloads it so);
   - ``describe(cfg) -> str``: its name in a column's note; ``weights_from(cfg) -> str``: where its weights come
     from, in words (``mmtransfer info``);
   - ``preprocessing(cfg) -> (settings, source) | None``: an image column's size, resize, crop_pct, mean and std
     the weights expect; ``tokenizer(cfg) -> str | None``: the tokenizer a text column must use;
   - ``save_assets(cfg, folder, what)`` and ``asset_files``: files besides the weights a run folder needs to
     rebuild it, and ``portable(cfg, folder) -> dict``: the config fields that point it at them (or that turn
     off downloading weights: the run's ``model.safetensors`` holds them);
   - ``presets``: :class:`~mmtransfer.encoders.info.Preset` s, what ``model.preset: auto`` picks for a column of
     a modality when the modules it ``requires`` are installed.
3. ``ENCODERS`` below: one line, ``"aisfx": aisfx.INFO``.

Import an optional heavy dependency (transformers, timm, ...) inside the builder, never at the top, with a
comment saying so: building the registry must stay cheap.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

import torch
from torch import nn

from mmtransfer.encoders import aisfx, efficientnet, hf, timm_backbone
from mmtransfer.encoders.attention import AttentionEncoder, AttentionPool
from mmtransfer.encoders.cnn import ConvEncoder
from mmtransfer.encoders.hf import build_hf
from mmtransfer.encoders.info import EncoderInfo, Preset
from mmtransfer.encoders.rnn import RecurrentEncoder, as_sequence, sequence_features
from mmtransfer.encoders.tabular import TabularMLP, TokenEncoder
from mmtransfer.errors import UserError
from mmtransfer.modalities.base import InputSpec


@runtime_checkable
class Encoder(Protocol):
    """An ``nn.Module`` with ``output_dim`` and ``forward(x) -> Tensor[B, output_dim]``.

    Optional: ``layer_groups()`` (input side first) for discriminative learning rates and gradual unfreezing;
    ``tokens(x) -> [B, T, output_dim]`` for attention fusion over regions; ``lora_module``, the name of the child
    module (a transformer) that strategy ``lora`` puts its adapters into.
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
        raise UserError(f"cnn encoder expects an input of shape (C, L) or (C, H, W), got {shape}")
    kernel = kwargs.get("kernel_size", 3)
    if kernel > min(shape[1:]):  # a kernel wider than the input sees mostly padding, at the cost of its square
        size = " x ".join(str(n) for n in shape[1:])
        raise UserError(f"kernel_size {kernel}: larger than the input ({size}); at most {min(shape[1:])}")
    if readout == "auto":  # where a stroke or a formant is matters in 2-D; 1-D inputs vary in length
        readout = "grid" if len(shape) == 3 else "mean"
    return ConvEncoder(shape[0], output_dim, dims=len(shape) - 1, readout=readout, input_size=shape[1:], **kwargs)


def _rnn(shape: tuple[int, ...], output_dim: int, **kwargs) -> RecurrentEncoder:
    _, features = sequence_features(shape)
    return RecurrentEncoder(features, output_dim, **kwargs)


def _attention(shape: tuple[int, ...], output_dim: int, **kwargs) -> AttentionEncoder:
    steps, features = sequence_features(shape)
    if steps > kwargs.get("max_len", 512):
        raise UserError(f"attention encoder: input has {steps} steps, more than max_len={kwargs['max_len']}")
    return AttentionEncoder(features, output_dim, **kwargs)


def build_cnn(spec: InputSpec, output_dim: int, **kwargs) -> nn.Module:
    """(C, H, W) gives a 2-D CNN, (C, L) a 1-D CNN; text gives a 1-D CNN over token embeddings."""
    if spec.kind == "tokens" and kwargs.get("kernel_size", 3) % 2 == 0:
        raise UserError("cnn over text needs an odd kernel_size, so that padding can be masked exactly")
    if spec.kind == "tokens" and kwargs.get("readout", "auto") == "grid":
        raise UserError("cnn over text needs readout max, mean or auto, so that padding is left out exactly")
    if spec.kind == "tokens" and kwargs.get("readout", "auto") == "auto":
        kwargs["readout"] = "max"  # did a phrase occur anywhere in the text
    return _with_tokens(spec, _cnn, output_dim, **kwargs)


def build_rnn(spec: InputSpec, output_dim: int, **kwargs) -> nn.Module:
    return _with_tokens(spec, _rnn, output_dim, **kwargs)


def build_attention(spec: InputSpec, output_dim: int, **kwargs) -> nn.Module:
    return _with_tokens(spec, _attention, output_dim, **kwargs)


def build_mlp(spec: InputSpec, output_dim: int, **kwargs) -> TabularMLP:
    if spec.kind != "tabular" or len(spec.shape) != 1:
        raise UserError(f"mlp encoder expects table columns (tabular [F]), got {spec.kind} {spec.shape}")
    return TabularMLP(spec.shape[0], output_dim, categorical=spec.categorical, **kwargs)


def _no_builder(spec: InputSpec, output_dim: int | None, **kwargs) -> nn.Module:
    raise UserError("an encoder of no registered type (custom) is a module only Python can supply")


# A network trained from scratch needs no metadata beyond its builder: the defaults of EncoderInfo describe it.
ENCODERS: dict[str, EncoderInfo] = {
    "cnn": EncoderInfo(build_cnn),
    "rnn": EncoderInfo(build_rnn),
    "attention": EncoderInfo(build_attention),
    "hf": hf.INFO,
    "timm": timm_backbone.INFO,
    "efficientnet_lite": efficientnet.INFO,
    "aisfx": aisfx.INFO,
    "mlp": EncoderInfo(build_mlp),
}

# An encoder config the registry does not know (``custom``: a module only Python can supply) has no metadata.
UNKNOWN = EncoderInfo(_no_builder)


def encoder_info(cfg) -> EncoderInfo:
    """The registry entry of an encoder config (``model.encoders.NAME``): what the rest of mmtransfer asks
    instead of checking the config's type. A config of no registered type (``custom``) gets ``UNKNOWN``."""
    return ENCODERS.get(getattr(cfg, "type", None), UNKNOWN)


def presets(modality: str) -> list[Preset]:
    """Every encoder ``model.preset: auto`` may pick for a table column of ``modality``, in registry order."""
    return [preset for info in ENCODERS.values() for preset in info.presets if preset.modality == modality]


__all__ = [
    "ENCODERS",
    "AttentionEncoder",
    "AttentionPool",
    "ConvEncoder",
    "Encoder",
    "EncoderInfo",
    "Preset",
    "RecurrentEncoder",
    "as_sequence",
    "build_attention",
    "build_cnn",
    "build_hf",
    "build_mlp",
    "build_rnn",
    "encoder_info",
    "presets",
    "sequence_features",
    "TabularMLP",
    "TokenEncoder",
]
