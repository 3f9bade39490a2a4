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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != self.dims + 2:
            raise ValueError(f"ConvEncoder(dims={self.dims}) expects [B, C, *{self.dims} sizes], got {list(x.shape)}")
        for block in self.blocks:
            x = block(x)
            # Pool only while there is something to pool, so deep stacks work on 8x8 inputs too.
            if self.pool and min(x.shape[2:]) >= 2:
                x = nn.functional.max_pool1d(x, 2) if self.dims == 1 else nn.functional.max_pool2d(x, 2)
        x = x.flatten(2).mean(-1)
        return self.proj(self.dropout(x))

    def layer_groups(self) -> list[nn.Module]:
        """Input side first: each conv block, then the projection."""
        return [*self.blocks, self.proj]
