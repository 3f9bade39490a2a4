"""Self-attention encoder: a transformer over the sequence, pooled to one embedding."""

from __future__ import annotations

import math

import torch
from torch import nn

from mmtransfer.encoders.rnn import as_sequence
from mmtransfer.errors import UserError


class AttentionPool(nn.Module):
    """Pool [B, T, D] to [B, D].

    - ``attention``: a_ij = softmax_j(h_i . h_j / sqrt(D)), c_i = sum_j a_ij h_j, pooled = mean_i c_i;
    - ``query``: a_j = softmax_j(q . h_j / sqrt(D)) with a learned query q, pooled = sum_j a_j h_j;
    - ``mean``: the mean over steps.
    """

    def __init__(self, dim: int, mode: str = "query"):
        super().__init__()
        if mode not in ("attention", "query", "mean"):
            raise UserError(f"AttentionPool: mode must be attention, query or mean, got {mode!r}")
        self.mode = mode
        self.scale = 1.0 / math.sqrt(dim)
        self.query = nn.Parameter(torch.zeros(dim)) if mode == "query" else None

    def forward(self, h: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``mask`` [B, T]: True at real steps; padded steps are neither attended to nor averaged."""
        real = torch.ones(h.shape[:2], dtype=torch.bool, device=h.device) if mask is None else mask
        share = real.float() / real.sum(1, keepdim=True).clamp(min=1)  # mean over real steps
        if self.mode == "mean":
            return (share.unsqueeze(-1) * h).sum(1)
        if self.mode == "attention":
            scores = (h @ h.transpose(1, 2) * self.scale).masked_fill(~real[:, None, :], float("-inf"))
            context = torch.softmax(scores, dim=-1) @ h  # [B, T, D]
            return (share.unsqueeze(-1) * context).sum(1)
        scores = (h @ self.query * self.scale).masked_fill(~real, float("-inf"))
        return (torch.softmax(scores, dim=-1).unsqueeze(-1) * h).sum(1)


class AttentionEncoder(nn.Module):
    """Linear input projection + learned positions, pre-norm transformer layers, attention pooling.

    >>> enc = AttentionEncoder(input_size=8, output_dim=16, d_model=32, num_heads=4)
    >>> enc(torch.zeros(4, 1, 8, 8)).shape
    torch.Size([4, 16])
    """

    def __init__(
        self,
        input_size: int,
        output_dim: int,
        *,
        d_model: int = 64,
        num_heads: int = 4,
        num_layers: int = 2,
        ff_dim: int = 128,
        dropout: float = 0.1,
        pool: str = "query",
        max_len: int = 512,
    ):
        super().__init__()
        if d_model % num_heads:
            raise UserError(f"AttentionEncoder: d_model={d_model} is not divisible by num_heads={num_heads}")
        self.input_proj = nn.Linear(input_size, d_model)
        self.pos = nn.Embedding(max_len, d_model)  # learned positions
        nn.init.normal_(self.pos.weight, std=0.02)
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(
                d_model, num_heads, ff_dim, dropout, batch_first=True, norm_first=True, activation="gelu"
            )
            for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(d_model)
        self.pool = AttentionPool(d_model, pool)
        self.proj = nn.Linear(d_model, output_dim)
        self.output_dim = output_dim

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``mask`` [B, T]: True at real steps; padding is masked out of attention and pooling."""
        seq = as_sequence(x)
        steps = seq.shape[1]
        if steps > self.pos.num_embeddings:
            raise ValueError(f"AttentionEncoder: sequence of {steps} steps exceeds max_len={self.pos.num_embeddings}")
        h = self.input_proj(seq) + self.pos.weight[:steps]
        padding = None if mask is None else ~mask
        for layer in self.layers:
            h = layer(h, src_key_padding_mask=padding)
        return self.proj(self.pool(self.norm(h), mask))

    def layer_groups(self) -> list[nn.Module]:
        head = nn.ModuleList([self.norm, self.pool, self.proj])
        return [nn.ModuleList([self.input_proj, self.pos]), *self.layers, head]
