"""Convolutional encoder: 2-D for images [B, C, H, W], 1-D for signals [B, C, L]."""

from __future__ import annotations

import torch
from torch import nn

from mmtransfer.errors import UserError


class ConvEncoder(nn.Module):
    """Conv -> BatchNorm -> ReLU (-> max-pool) blocks, a readout, a projection to ``output_dim``.

    The readout is a global average (``mean``: where a feature fired is lost) or a coarse grid (``grid``: the last
    map average-pooled to at most ``grid`` cells per side and flattened, so the projection sees where features
    are, as the seed's Flatten -> Dense did). ``grid`` needs ``input_size`` (the spatial size) to size the
    projection.

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
        channels: tuple[int, ...] | list[int] = (16, 32),
        kernel_size: int = 3,
        stride: int = 2,
        pool: bool = False,
        readout: str = "mean",
        grid: int = 7,
        input_size: tuple[int, ...] | None = None,
        dropout: float = 0.0,
    ):
        super().__init__()
        if dims not in (1, 2):
            raise UserError(f"ConvEncoder: dims must be 1 or 2, got {dims}")
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
        if readout not in ("mean", "max", "grid"):
            raise UserError(f"ConvEncoder: readout must be mean, max or grid, got {readout!r}")
        self.readout = readout
        self.cells: tuple[int, ...] = ()
        features = c
        if readout == "grid":
            if input_size is None or len(input_size) != dims:
                raise UserError(f"ConvEncoder: readout grid needs the input's {dims} spatial size(s)")
            size = self.output_size(input_size)
            self.cells = tuple(min(grid, n) for n in size)
            features = c * int(torch.Size(self.cells).numel())
            # Adaptive average pooling as one matrix per axis: the same numbers, and it exports to ONNX for any
            # sizes (ONNX's own pooling needs the grid to divide the map). Not saved: it follows from the sizes.
            for axis, (n, cells) in enumerate(zip(size, self.cells, strict=True)):
                self.register_buffer(f"pool{axis}", _pool_matrix(n, cells), persistent=False)
        self.dropout = nn.Dropout(dropout)
        self.proj = nn.Linear(features, output_dim)
        self.output_dim = output_dim

    def output_size(self, size: tuple[int, ...]) -> tuple[int, ...]:
        """The spatial size of the last feature map for an input of spatial ``size``."""
        size = tuple(size)
        k, pad = self.kernel_size, self.kernel_size // 2
        for _ in self.blocks:
            size = tuple((n + 2 * pad - k) // self.stride + 1 for n in size)
            if self.pool and min(size) >= 2:
                size = tuple(n // 2 for n in size)
        return size

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``mask`` [B, L] (1-D only): True at real steps; padding is zeroed after every block and left out of
        the mean, so in eval mode the result does not depend on how much padding follows. In training,
        BatchNorm's batch statistics still count the zeroed padding steps."""
        if x.dim() != self.dims + 2:
            raise ValueError(f"ConvEncoder(dims={self.dims}) expects [B, C, *{self.dims} sizes], got {list(x.shape)}")
        if mask is not None and (self.dims != 1 or self.kernel_size % 2 == 0 or self.readout == "grid"):
            raise ValueError("ConvEncoder: a mask needs a 1-D CNN with an odd kernel_size and a mean or max readout")
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
        if self.readout == "grid":
            if tuple(x.shape[2:]) == self.cells:
                pass  # the map already is the grid
            elif self.dims == 2:
                x = torch.einsum("bchw,hi,wj->bcij", x, self.pool0, self.pool1)
            else:
                x = torch.einsum("bcl,li->bci", x, self.pool0)
            x = x.flatten(1)
        elif self.readout == "max":  # ReLU outputs are >= 0, so zeroed padding never changes a maximum
            x = x.flatten(2).amax(-1)
        elif keep is None:
            x = x.flatten(2).mean(-1)
        else:
            x = (x * keep).sum(-1) / keep.sum(-1).clamp(min=1)
        return self.proj(self.dropout(x))

    def layer_groups(self) -> list[nn.Module]:
        """Input side first: each conv block, then the projection."""
        return [*self.blocks, self.proj]


def _pool_matrix(n: int, cells: int) -> torch.Tensor:
    """[n, cells]: column i averages the inputs that adaptive average pooling gives cell i
    (from floor(i n / cells) to ceil((i + 1) n / cells))."""
    out = torch.zeros(n, cells)
    for i in range(cells):
        start, end = (i * n) // cells, -((-(i + 1) * n) // cells)
        out[start:end, i] = 1.0 / (end - start)
    return out
