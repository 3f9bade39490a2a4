"""Adaptations for grafting: each takes the source tensor, the target tensor and context, and returns the
new target tensor and a sentence saying how, or None when it does not apply. ``head_classes`` and ``vocab``
apply whenever the two sides' names differ, shapes equal or not; the others only where shapes differ.

- ``conv_channels``: the first convolution (of the model, or of each encoder) with another input-channel count
  (timm's ``adapt_input_conv``): one channel gets the sum of the source's kernels; more channels get them
  repeated and rescaled.
- ``head_classes``: a classifier with another class list (even of the same size, in another order) keeps the
  rows of classes whose names match.
- ``vocab``: a token-embedding table with another vocabulary (even of the same size) keeps the rows of shared
  tokens.
- ``positions``: a 2-D position table [length, dim] of another length is interpolated linearly along the
  positions. Tables with a class-token row over a 2-D patch grid (ViT, [1, 1 + N, D]) are not: they need a 2-D
  resampling this module does not do, and are skipped.
- ``partial``: (only when asked) the overlapping block is copied, the rest keeps the target's values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from mmtransfer.encoders.stem import channels_adapted

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
    first_convs: frozenset[str] = frozenset()  # the target's first conv weight of the model and of each encoder

    def classes_differ(self) -> bool:
        return None not in (self.source_classes, self.target_classes) and self.source_classes != self.target_classes

    def vocabs_differ(self) -> bool:
        return None not in (self.source_vocab, self.target_vocab) and self.source_vocab != self.target_vocab


EMBEDDING_ENDINGS = ("embedding.weight", "embeddings.weight", "embed_tokens.weight")
POSITION_ENDINGS = (
    "pos.weight",
    "pos_embed",
    "pos_embedding",
    "position_embeddings.weight",
    "position_embedding.weight",
    "position_embeddings",  # Hugging Face ViT: a parameter [1, 1 + n*n, dim]
)


def conv_channels(name: str, src: torch.Tensor, dst: torch.Tensor, ctx: Context):
    if name not in ctx.first_convs or src.dim() != dst.dim():
        return None
    if src.shape[0] != dst.shape[0] or src.shape[2:] != dst.shape[2:] or src.shape[1] == dst.shape[1]:
        return None
    return channels_adapted(src, dst.shape[1])


def head_classes(name: str, src: torch.Tensor, dst: torch.Tensor, ctx: Context):
    if not name.startswith(ctx.head_prefix) or not ctx.classes_differ():
        return None
    if src.shape[0] != len(ctx.source_classes) or dst.shape[0] != len(ctx.target_classes):
        return None
    if src.shape[1:] != dst.shape[1:]:
        return None
    out = dst.detach().clone()
    where = {c: i for i, c in enumerate(ctx.source_classes)}
    kept = [(j, where[c]) for j, c in enumerate(ctx.target_classes) if c in where]
    if not kept:
        return None
    for j, i in kept:
        out[j] = src[i].to(out)
    fresh = len(ctx.target_classes) - len(kept)
    return out, f"rows of {len(kept)} classes kept by label name, {fresh} newly initialised"


def vocab(name: str, src: torch.Tensor, dst: torch.Tensor, ctx: Context):
    if not name.endswith(EMBEDDING_ENDINGS) or not ctx.vocabs_differ():
        return None
    if src.dim() != 2 or src.shape[1] != dst.shape[1]:
        return None
    if src.shape[0] != len(ctx.source_vocab) or dst.shape[0] != len(ctx.target_vocab):
        return None
    where = {tok: i for i, tok in enumerate(ctx.source_vocab)}
    out = dst.detach().clone()
    shared = [(j, where[tok]) for j, tok in enumerate(ctx.target_vocab) if tok in where]
    if not shared:
        return None
    rows_t, rows_s = zip(*shared, strict=True)
    out[list(rows_t)] = src[list(rows_s)].to(out)
    return out, f"rows of {len(shared)} shared tokens copied, {dst.shape[0] - len(shared)} newly initialised"


def positions(name: str, src: torch.Tensor, dst: torch.Tensor, ctx: Context):
    """Tables whose name says they hold positions: an image transformer's grid of patch positions
    (``[1, extra + n*n, dim]``, or ``[extra + n*n, dim]`` in a vision / image model) is resampled as a 2-D grid,
    its class token(s) kept; any other ``[length, dim]`` table along its length."""
    if not name.endswith(POSITION_ENDINGS):
        return None
    grid = position_grid(name, src, dst)
    if grid is not None:
        return grid
    if src.dim() != 2 or dst.dim() != 2 or src.shape[1] != dst.shape[1] or src.shape[0] == dst.shape[0]:
        return None
    out = torch.nn.functional.interpolate(src.T[None].float(), size=dst.shape[0], mode="linear", align_corners=True)
    return out[0].T.to(dst.dtype), f"{src.shape[0]} positions interpolated to {dst.shape[0]}"


def grid_layout(length: int) -> tuple[int, int] | None:
    """(leading tokens, side) with ``length = leading + side * side``: a class token (ViT, CLIP), none (a
    pooled-by-mean ViT), or class + distillation tokens (DeiT); None where no square grid fits."""
    for extra in (1, 0, 2):
        side = math.isqrt(max(length - extra, 0))
        if side > 1 and side * side == length - extra:
            return extra, side
    return None


def position_grid(name: str, src: torch.Tensor, dst: torch.Tensor):
    """Patch positions of one grid size for another (another image size or patch size): the grid interpolated
    bicubically in 2-D, the leading class token(s) copied unchanged. None where the tables are not such grids."""
    if src.dim() == 3 and dst.dim() == 3 and src.shape[0] == dst.shape[0] == 1:
        s, d, batched = src[0], dst[0], True
    elif src.dim() == 2 and dst.dim() == 2 and any(w in name for w in ("vision", "image", "patch", "pos_embed")):
        s, d, batched = src, dst, False
    else:
        return None
    if s.shape[1] != d.shape[1] or s.shape[0] == d.shape[0]:
        return None
    a, b = grid_layout(s.shape[0]), grid_layout(d.shape[0])
    if a is None or b is None or a[0] != b[0]:
        return None
    (extra, n_src), (_, n_dst) = a, b
    cells = s[extra:].float().reshape(n_src, n_src, -1).permute(2, 0, 1)[None]  # [1, dim, n, n]
    resized = torch.nn.functional.interpolate(cells, size=(n_dst, n_dst), mode="bicubic", align_corners=False)
    out = torch.cat([s[:extra].float(), resized[0].permute(1, 2, 0).reshape(n_dst * n_dst, -1)]).to(dst.dtype)
    kept = {0: "", 1: ", class token kept"}.get(extra, f", {extra} leading tokens kept")
    how = f"{n_src}x{n_src} position grid interpolated to {n_dst}x{n_dst} (bicubic){kept}"
    return (out[None] if batched else out), how


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


BY_NAMES = ("head_classes", "vocab")  # rows follow label / token names, whatever the shapes


def adapt(name: str, src: torch.Tensor, dst: torch.Tensor, ctx: Context, keys: tuple[str, ...] = ADAPTATIONS):
    """The first enabled adaptation of ``keys`` that applies, in the order of ADAPTATIONS: (tensor, how) or None."""
    for key in keys:
        if key in ctx.enabled:
            result = FUNCTIONS[key](name, src, dst, ctx)
            if result is not None:
                return result
    return None
