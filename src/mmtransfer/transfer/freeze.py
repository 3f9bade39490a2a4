"""Declarative freezing: fnmatch name patterns resolve to the exact set of trainable parameters."""

from __future__ import annotations

import fnmatch

from torch import nn

from mmtransfer.errors import UserError


def freeze(model: nn.Module, patterns: list[str]) -> list[str]:
    """Freeze every parameter whose name matches a pattern; return the sorted trainable names.

    A pattern that matches nothing is an error: a typo must not silently train everything.

    >>> freeze(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1)), ["0.*"])
    ['1.bias', '1.weight']
    """
    names = [n for n, _ in model.named_parameters()]
    for pattern in patterns:
        if not any(fnmatch.fnmatchcase(n, pattern) for n in names):
            roots = sorted({n.rsplit(".", 1)[0] for n in names})
            raise UserError(f"freeze pattern {pattern!r} matches no parameter; modules with parameters: {roots}")
    for name, param in model.named_parameters():
        if any(fnmatch.fnmatchcase(name, p) for p in patterns):
            param.requires_grad_(False)
    return trainable_names(model)


def is_frozen(module: nn.Module) -> bool:
    """True when none of the module's parameters trains."""
    return all(not p.requires_grad for p in module.parameters())


def trainable_names(model: nn.Module) -> list[str]:
    return sorted(n for n, p in model.named_parameters() if p.requires_grad)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    return sum(p.numel() for p in model.parameters() if p.requires_grad), total
