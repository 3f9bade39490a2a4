"""Convolutional encoder: 2-D for images [B, C, H, W], 1-D for signals [B, C, L]."""

from __future__ import annotations

import torch
from torch import nn


class ConvEncoder(nn.Module):
    """Conv -> BatchNorm -> ReLU (-> max-pool) blocks, global average pooling, a projection to ``output_dim``.

    >>> enc = ConvEncoder(in_channels=1, output_dim=16, dims=2)
    >>> enc(torch.zeros(4, 1, 8, 8)).shape
    torch.Size([4, 16])
    """

    def __init__(
        self,
        in_channels: int,
        output_dim: int,
        *,
        dims: int = 2,
        channels: tuple[int, ...] | list[int] = (32, 64),
        kernel_size: int = 3,
        stride: int = 1,
        pool: bool = True,
        dropout: float = 0.0,
    ):
        super().__init__()
        if dims not in (1, 2):
            raise ValueError(f"ConvEncoder: dims must be 1 or 2, got {dims}")
        conv, norm = (nn.Conv1d, nn.BatchNorm1d) if dims == 1 else (nn.Conv2d, nn.BatchNorm2d)
        self.dims = dims
        self.pool = pool
        self.stride = stride
        self.kernel_size = kernel_size
        self.blocks = nn.ModuleList()
        c = in_channels
        for out in channels:
            self.blocks.append(
                nn.Sequential(
                    conv(c, out, kernel_size, stride=stride, padding=kernel_size // 2, bias=False),
                    norm(out),
                    nn.ReLU(inplace=True),
                )
            )
            c = out
        self.dropout = nn.Dropout(dropout)
        self.proj = nn.Linear(c, output_dim)
        self.output_dim = output_dim

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``mask`` [B, L] (1-D only): True at real steps; padding is zeroed after every block and left out of
        the mean, so in eval mode the result does not depend on how much padding follows. In training,
        BatchNorm's batch statistics still count the zeroed padding steps."""
        if x.dim() != self.dims + 2:
            raise ValueError(f"ConvEncoder(dims={self.dims}) expects [B, C, *{self.dims} sizes], got {list(x.shape)}")
        if mask is not None and (self.dims != 1 or self.kernel_size % 2 == 0):
            raise ValueError("ConvEncoder: a mask needs a 1-D CNN with an odd kernel_size")
        keep = None if mask is None else mask[:, None].float()
        for block in self.blocks:
            x = block(x if keep is None else x * keep)
            if keep is not None:
                keep = keep[..., :: self.stride]  # output step i is centred on input step i * stride
                x = x * keep  # padding back to 0 (ReLU output is >= 0, so 0 never wins a max-pool)
            # Pool only while there is something to pool, so deep stacks work on 8x8 inputs too.
            if self.pool and min(x.shape[2:]) >= 2:
                if self.dims == 2:
                    x = nn.functional.max_pool2d(x, 2)
                else:  # ceil_mode with a mask: no real step is dropped, whatever the padded length
                    x = nn.functional.max_pool1d(x, 2, ceil_mode=keep is not None)
                    if keep is not None:
                        keep = nn.functional.max_pool1d(keep, 2, ceil_mode=True)
        if keep is None:
            x = x.flatten(2).mean(-1)
        else:
            x = (x * keep).sum(-1) / keep.sum(-1).clamp(min=1)
        return self.proj(self.dropout(x))

    def layer_groups(self) -> list[nn.Module]:
        """Input side first: each conv block, then the projection."""
        return [*self.blocks, self.proj]
