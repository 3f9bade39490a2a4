"""Fusion: combine one embedding [B, D] per input into one vector, ignoring inputs missing in a row.

``present[name]`` is a bool [B] (True where the row has that input); ``None`` means present everywhere.
Every fusion iterates inputs in sorted name order. A row must have at least one input present.
"""

from __future__ import annotations

import torch
from torch import nn

from mmtransfer.errors import UserError

Masks = dict[str, torch.Tensor | None]


def _present(embeddings: dict[str, torch.Tensor], present: Masks | None, keys: list[str]) -> torch.Tensor:
    """[B, M] float mask in ``keys`` order."""
    first = embeddings[keys[0]].flatten(1)[:, 0]  # [B], whether the input is one token [B, D] or several [B, T, D]
    cols = []
    for k in keys:
        m = (present or {}).get(k)
        # ones_like keeps the batch size a tensor's, so an ONNX export keeps its batch axis dynamic
        cols.append(torch.ones_like(first) if m is None else m.to(first.device).to(first.dtype))
    return torch.stack(cols, dim=1)


class ConcatFusion(nn.Module):
    """Late fusion: concatenate in sorted order; a missing input contributes zeros."""

    def __init__(self, input_dims: dict[str, int]):
        super().__init__()
        self.keys = sorted(input_dims)
        self.output_dim = sum(input_dims.values())

    def forward(self, embeddings: dict[str, torch.Tensor], present: Masks | None = None) -> torch.Tensor:
        mask = _present(embeddings, present, self.keys)
        return torch.cat([embeddings[k] * mask[:, i : i + 1] for i, k in enumerate(self.keys)], dim=-1)


class AttentionFusion(nn.Module):
    """A small transformer over the inputs' tokens (plus a learned input-type embedding) and a [CLS] token;
    missing inputs are masked out of attention. Output: the [CLS] state [B, D]. An input is one token [B, D],
    or several [B, T, D] (a backbone's regions, ``model.tokens: regions``); a missing input hides all of its."""

    def __init__(self, input_dims: dict[str, int], num_heads: int = 4, num_layers: int = 1, dropout: float = 0.1):
        super().__init__()
        dims = set(input_dims.values())
        if len(dims) != 1:
            raise UserError(f"attention fusion needs equal embedding sizes, got {input_dims}")
        dim = dims.pop()
        heads = num_heads if dim % num_heads == 0 else 1
        self.keys = sorted(input_dims)
        self.type_embedding = nn.Parameter(torch.randn(len(self.keys), dim) * 0.02)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        layer = nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout, batch_first=True, norm_first=True)
        self.layers = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.output_dim = dim

    def forward(self, embeddings: dict[str, torch.Tensor], present: Masks | None = None) -> torch.Tensor:
        mask = _present(embeddings, present, self.keys).bool()
        parts, keeps = [], []
        for i, k in enumerate(self.keys):
            e = embeddings[k] if embeddings[k].dim() == 3 else embeddings[k].unsqueeze(1)  # [B, T, D]
            parts.append(e + self.type_embedding[i])
            keeps.append(mask[:, i : i + 1].expand(-1, e.shape[1]))
        tokens = torch.cat(parts, dim=1)
        tokens = torch.cat([self.cls + torch.zeros_like(tokens[:, :1]), tokens], dim=1)  # [CLS] for each row
        keep = torch.cat([torch.ones_like(mask[:, :1]), *keeps], dim=1)  # [CLS] is always there
        return self.norm(self.layers(tokens, src_key_padding_mask=~keep)[:, 0])


class GatedFusion(nn.Module):
    """Gated sum (as in gated multimodal units): h_m = tanh(W_m e_m), weights z = softmax_m(g_m . e_m) over the
    inputs present in the row, output sum_m z_m h_m."""

    def __init__(self, input_dims: dict[str, int]):
        super().__init__()
        dims = set(input_dims.values())
        if len(dims) != 1:
            raise UserError(f"gated fusion needs equal embedding sizes, got {input_dims}")
        dim = dims.pop()
        self.keys = sorted(input_dims)
        self.transforms = nn.ModuleDict({k: nn.Linear(dim, dim) for k in self.keys})
        self.gates = nn.ModuleDict({k: nn.Linear(dim, 1) for k in self.keys})
        self.output_dim = dim

    def forward(self, embeddings: dict[str, torch.Tensor], present: Masks | None = None) -> torch.Tensor:
        mask = _present(embeddings, present, self.keys).bool()
        logits = torch.cat([self.gates[k](embeddings[k]) for k in self.keys], dim=1)  # [B, M]
        weights = torch.softmax(logits.masked_fill(~mask, float("-inf")), dim=1)
        hidden = torch.stack([torch.tanh(self.transforms[k](embeddings[k])) for k in self.keys], dim=1)
        return (weights.unsqueeze(-1) * hidden).sum(1)


FUSIONS = {"concat": ConcatFusion, "attention": AttentionFusion, "gated": GatedFusion}


def drop_inputs(present: Masks, keys: list[str], p: float, batch: int, device: torch.device) -> Masks:
    """Modality dropout: mark each input of each row missing with probability ``p``, never all of a row's."""
    if p <= 0 or len(keys) < 2:
        return present
    ones = torch.ones(batch, dtype=torch.bool, device=device)
    base = torch.stack([ones if present.get(k) is None else present[k].bool() for k in keys], 1)
    drop = torch.rand(base.shape, device=device) < p
    kept = base & ~drop
    empty = kept.sum(1) == 0
    if empty.any():  # a row that would lose everything keeps one of its inputs, drawn at random
        scores = torch.rand(base.shape, device=device).masked_fill(~base, -1.0)
        one = torch.zeros_like(base).scatter_(1, scores.argmax(1, keepdim=True), True) & base
        kept[empty] = one[empty]
    return {k: kept[:, i] for i, k in enumerate(keys)}
