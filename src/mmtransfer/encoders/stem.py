"""A first convolution for another number of input channels (timm's ``adapt_input_conv``).

Used where a pretrained encoder is built for grayscale or multi-channel inputs, and by grafting
(:mod:`mmtransfer.transfer.adapt`, the ``conv_channels`` adaptation).
"""

from __future__ import annotations

import math

import torch


def channels_adapted(weight: torch.Tensor, channels: int) -> tuple[torch.Tensor, str]:
    """A first convolution's kernel ``[out, in, ...]`` for another input channel count: summed into one channel
    (grayscale sees what RGB saw for a gray pixel), or repeated and scaled so the response keeps its size."""
    s, t = weight.shape[1], channels
    if t == 1:
        return weight.sum(dim=1, keepdim=True), f"{s} input channels summed into 1"
    repeat = math.ceil(t / s)
    out = weight.repeat(1, repeat, *([1] * (weight.dim() - 2)))[:, :t] * (s / t)
    return out, f"{s} input channels repeated to {t} and scaled by {s}/{t}"
