"""Recurrent encoders: the plain recurrence, LSTM and GRU, over a sequence.

The plain cell is h_t = tanh(W_xh x_t + b_xh + W_hh h_{t-1} + b_hh) (torch's ``nn.RNN``; its two biases
add up to the b_h of the textbook formula).
"""

from __future__ import annotations

import torch
from torch import nn

from mmtransfer.errors import UserError

_CELLS = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}


def as_sequence(x: torch.Tensor) -> torch.Tensor:
    """Channels-first input as a sequence [B, T, F].

    An image [B, C, H, W] is read row by row: T = H steps of F = C * W features (the seed's CNN-to-RNN view).
    A signal [B, C, L] gives T = L steps of F = C features. A [B, T, F] sequence would be ambiguous with a
    signal, so sequence encoders take channels-first inputs only.
    """
    if x.dim() == 4:
        b, c, h, w = x.shape
        return x.permute(0, 2, 1, 3).reshape(b, h, c * w)
    if x.dim() == 3:
        return x.transpose(1, 2)
    raise ValueError(f"sequence encoders expect [B, C, L] or [B, C, H, W], got {list(x.shape)}")


def sequence_features(input_shape: tuple[int, ...]) -> tuple[int, int]:
    """(steps, features per step) that :func:`as_sequence` makes of one example of ``input_shape``."""
    if len(input_shape) == 3:
        c, h, w = input_shape
        return h, c * w
    if len(input_shape) == 2:
        c, length = input_shape
        return length, c
    raise UserError(f"sequence encoders expect an input of shape (C, L) or (C, H, W), got {input_shape}")


class RecurrentEncoder(nn.Module):
    """RNN / LSTM / GRU; the last hidden state of the top layer (both directions) projected to ``output_dim``.

    >>> enc = RecurrentEncoder(input_size=8, output_dim=16, cell="gru")
    >>> enc(torch.zeros(4, 1, 8, 8)).shape   # an 8x8 image read as 8 rows of 8
    torch.Size([4, 16])
    """

    def __init__(
        self,
        input_size: int,
        output_dim: int,
        *,
        cell: str = "gru",
        hidden_size: int = 64,
        num_layers: int = 1,
        bidirectional: bool = False,
        dropout: float = 0.0,
    ):
        super().__init__()
        if cell not in _CELLS:
            raise UserError(f"RecurrentEncoder: cell must be one of {sorted(_CELLS)}, got {cell!r}")
        self.cell = cell
        self.rnn = _CELLS[cell](
            input_size,
            hidden_size,
            num_layers=num_layers,
            batch_first=True,
            bidirectional=bidirectional,
            dropout=dropout if num_layers > 1 else 0.0,
        )
        self.directions = 2 if bidirectional else 1
        self.proj = nn.Linear(hidden_size * self.directions, output_dim)
        self.output_dim = output_dim

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``mask`` [B, T]: True at real steps, which come first; the state is read after each row's last real
        step (and the backward direction starts there), whatever padding follows."""
        seq = as_sequence(x)
        if mask is not None:
            lengths = mask.sum(1).clamp(min=1).cpu()
            seq = nn.utils.rnn.pack_padded_sequence(seq, lengths, batch_first=True, enforce_sorted=False)
        _, h = self.rnn(seq)
        if self.cell == "lstm":
            h = h[0]  # (h_n, c_n): the hidden state, not the cell state
        last = h[-self.directions :]  # [directions, B, H] of the top layer
        return self.proj(last.transpose(0, 1).reshape(x.shape[0], -1))

    def layer_groups(self) -> list[nn.Module]:
        return [self.rnn, self.proj]
