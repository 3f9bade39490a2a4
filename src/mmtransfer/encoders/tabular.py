"""MLP over table columns: standardised numbers as they are, categories through embeddings."""

from __future__ import annotations

import torch
from torch import nn


class TabularMLP(nn.Module):
    """Input [B, F]; the entries listed in ``categorical`` (index -> number of categories) hold integer codes.

    >>> enc = TabularMLP(3, 8, categorical={2: 5})
    >>> enc(torch.tensor([[0.5, -1.0, 3.0]])).shape
    torch.Size([1, 8])
    """

    def __init__(
        self,
        num_features: int,
        output_dim: int,
        *,
        categorical: dict[int, int] | None = None,
        hidden: list[int] | tuple[int, ...] = (64,),
        category_dim: int = 8,
        dropout: float = 0.0,
    ):
        super().__init__()
        categorical = dict(sorted((categorical or {}).items()))
        self.categorical_index = list(categorical)
        self.numeric_index = [i for i in range(num_features) if i not in categorical]
        self.embeddings = nn.ModuleList(nn.Embedding(n, category_dim) for n in categorical.values())
        layers: list[nn.Module] = []
        width = len(self.numeric_index) + category_dim * len(categorical)
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU(), nn.Dropout(dropout)]
            width = h
        self.mlp = nn.Sequential(*layers)
        self.proj = nn.Linear(width, output_dim)
        self.output_dim = output_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = [x[:, self.numeric_index]]
        parts += [emb(x[:, i].long()) for i, emb in zip(self.categorical_index, self.embeddings, strict=True)]
        return self.proj(self.mlp(torch.cat(parts, dim=-1)))

    def layer_groups(self) -> list[nn.Module]:
        return [nn.ModuleList([self.embeddings, self.mlp]), self.proj]


class TokenEncoder(nn.Module):
    """Token ids [B, L] -> embeddings [B, token_dim, L] (channels first) -> any sequence encoder, which gets
    ``mask`` (True at real tokens) so that padding changes nothing. A row of padding only (a missing text)
    keeps its first position, so pooling is defined; fusion masks such rows out anyway.
    """

    def __init__(self, vocab_size: int, token_dim: int, inner: nn.Module, pad_id: int = 0):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, token_dim, padding_idx=pad_id)
        self.pad_id = pad_id
        self.inner = inner
        self.output_dim = inner.output_dim

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        mask = ids != self.pad_id
        # an all-padding text (a missing one) keeps its first step, so pooling has something; out of place: ONNX
        mask = torch.cat([mask[:, :1] | ~mask.any(1, keepdim=True), mask[:, 1:]], dim=1)
        return self.inner(self.embedding(ids).transpose(1, 2), mask=mask)

    def layer_groups(self) -> list[nn.Module]:
        inner = self.inner.layer_groups() if hasattr(self.inner, "layer_groups") else [self.inner]
        return [self.embedding, *inner]
