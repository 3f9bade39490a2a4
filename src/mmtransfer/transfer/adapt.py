"""Shape adaptations for grafting: each takes the source tensor, the target tensor and context, and returns the
new target tensor and a sentence saying how, or None when it does not apply.

- ``conv_channels``: a first convolution with another input-channel count (timm's ``adapt_input_conv``):
  one channel gets the sum of the source's kernels; more channels get them repeated and rescaled.
- ``head_classes``: a classifier with another class set keeps the rows of classes whose names match.
- ``vocab``: an embedding table with another vocabulary keeps the rows of shared tokens.
- ``positions``: a position table of another length is interpolated linearly along the positions.
- ``partial``: (only when asked) the overlapping block is copied, the rest keeps the target's values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

ADAPTATIONS = ("conv_channels", "head_classes", "vocab", "positions", "partial")
DEFAULT_ADAPT = ("conv_channels", "head_classes", "vocab", "positions")


@dataclass
class Context:
    """What some adaptations need beyond the tensors: class names and vocabularies of both sides."""

    source_classes: list[str] | None = None
    target_classes: list[str] | None = None
    source_vocab: list[str] | None = None
    target_vocab: list[str] | None = None
    enabled: tuple[str, ...] = DEFAULT_ADAPT
    head_prefix: str = "head.out."
    extra: dict = field(default_factory=dict)


def conv_channels(name: str, src: torch.Tensor, dst: torch.Tensor, ctx: Context):
    if src.dim() not in (3, 4) or src.dim() != dst.dim() or not name.endswith("weight"):
        return None
    if src.shape[0] != dst.shape[0] or src.shape[2:] != dst.shape[2:] or src.shape[1] == dst.shape[1]:
        return None
    s, t = src.shape[1], dst.shape[1]
    if t == 1:
        return src.sum(dim=1, keepdim=True), f"{s} input channels summed into 1"
    repeat = math.ceil(t / s)
    out = src.repeat(1, repeat, *([1] * (src.dim() - 2)))[:, :t] * (s / t)
    return out, f"{s} input channels repeated to {t} and scaled by {s}/{t}"


def head_classes(name: str, src: torch.Tensor, dst: torch.Tensor, ctx: Context):
    if not name.startswith(ctx.head_prefix) or ctx.source_classes is None or ctx.target_classes is None:
        return None
    if src.shape[0] != len(ctx.source_classes) or dst.shape[0] != len(ctx.target_classes):
        return None
    if src.shape[1:] != dst.shape[1:]:
        return None
    out = dst.detach().clone()
    where = {c: i for i, c in enumerate(ctx.source_classes)}
    kept = [(j, where[c]) for j, c in enumerate(ctx.target_classes) if c in where]
    for j, i in kept:
        out[j] = src[i]
    if not kept:
        return None
    fresh = len(ctx.target_classes) - len(kept)
    return out, f"rows of {len(kept)} classes kept by label name, {fresh} newly initialised"


def vocab(name: str, src: torch.Tensor, dst: torch.Tensor, ctx: Context):
    if src.dim() != 2 or ctx.source_vocab is None or ctx.target_vocab is None or src.shape[1] != dst.shape[1]:
        return None
    if src.shape[0] != len(ctx.source_vocab) or dst.shape[0] != len(ctx.target_vocab):
        return None
    where = {tok: i for i, tok in enumerate(ctx.source_vocab)}
    out = dst.detach().clone()
    shared = [(j, where[tok]) for j, tok in enumerate(ctx.target_vocab) if tok in where]
    if not shared:
        return None
    rows_t, rows_s = zip(*shared, strict=True)
    out[list(rows_t)] = src[list(rows_s)]
    return out, f"rows of {len(shared)} shared tokens copied, {dst.shape[0] - len(shared)} newly initialised"


def positions(name: str, src: torch.Tensor, dst: torch.Tensor, ctx: Context):
    """[length, dim] or [1, length, dim] tables whose name says they hold positions."""
    if not any(key in name for key in ("pos", "position")):
        return None
    squeeze = src.dim() == 3 and dst.dim() == 3 and src.shape[0] == dst.shape[0] == 1
    s, d = (src[0], dst[0]) if squeeze else (src, dst)
    if s.dim() != 2 or d.dim() != 2 or s.shape[1] != d.shape[1] or s.shape[0] == d.shape[0]:
        return None
    out = torch.nn.functional.interpolate(s.T[None], size=d.shape[0], mode="linear", align_corners=True)[0].T
    out = out.to(dst.dtype)
    return (out[None] if squeeze else out), f"{s.shape[0]} positions interpolated to {d.shape[0]}"


def partial(name: str, src: torch.Tensor, dst: torch.Tensor, ctx: Context):
    if src.dim() != dst.dim():
        return None
    out = dst.detach().clone()
    block = tuple(slice(0, min(a, b)) for a, b in zip(src.shape, dst.shape, strict=True))
    out[block] = src[block]
    return out, f"overlap {[min(a, b) for a, b in zip(src.shape, dst.shape, strict=True)]} copied (partial)"


FUNCTIONS = {
    "conv_channels": conv_channels,
    "head_classes": head_classes,
    "vocab": vocab,
    "positions": positions,
    "partial": partial,
}


def adapt(name: str, src: torch.Tensor, dst: torch.Tensor, ctx: Context):
    """The first enabled adaptation that applies, in the order of ADAPTATIONS: (tensor, how) or None."""
    for key in ADAPTATIONS:
        if key in ctx.enabled:
            result = FUNCTIONS[key](name, src, dst, ctx)
            if result is not None:
                return result
    return None
