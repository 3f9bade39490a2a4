"""Table columns of numbers or categories. Each bound column is one feature of the ``tabular`` input [F]."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmtransfer.config import TabularColumn
from mmtransfer.modalities.base import BadValue, InputSpec, is_missing


class _Missing:
    """An empty cell that ``missing: mean`` allows (the train mean, or the unseen-category code, in collate).
    A singleton that stays one across DataLoader worker processes: it pickles as a reference to ``MISSING``."""

    def __reduce__(self) -> str:
        return "MISSING"

    def __repr__(self) -> str:
        return "MISSING"


MISSING = _Missing()


class TabularModality:
    """One column. Numeric: standardised with the train mean and std. Categorical: an integer code per
    category seen in train, 0 for an unseen one (so the embedding table has ``len(categories) + 1`` rows)."""

    def __init__(self, name: str, cfg: TabularColumn | None = None):
        self.name = name
        self.cfg = cfg or TabularColumn()
        self.mean, self.std = 0.0, 1.0
        self.categories: list[str] = []
        self._codes: dict[str, int] = {}

    @classmethod
    def from_state(cls, name: str, cfg: TabularColumn | None, state: dict) -> TabularModality:
        column = cls(name, cfg)
        column.mean, column.std = float(state.get("mean", 0.0)), float(state.get("std", 1.0))
        column.categories = list(state.get("categories", []))
        column._codes = {c: i + 1 for i, c in enumerate(column.categories)}
        return column

    def load(self, value: Any, base: Path) -> Any:
        if is_missing(value):
            if self.cfg.missing == "mean":
                return MISSING  # numeric: the train mean; categorical: the unseen-category code
            raise BadValue(
                "empty category (missing: error refuses it; missing: mean gives it the unseen-category code)"
                if self.cfg.kind == "categorical"
                else "NaN in a numeric column (missing: error refuses it; missing: mean fills in the train mean)"
            )
        if self.cfg.kind == "categorical":
            # 2 and 2.0 are one category: a column with a gap is read as floats, one without as integers
            if isinstance(value, (float, np.floating)) and float(value).is_integer():
                value = int(value)
            return str(value)
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise BadValue(f"not a number: {value!r}") from None
        if math.isnan(number):
            raise BadValue(f"not a number: {value!r}")
        if math.isinf(number):
            raise BadValue(f"infinite value {value!r}")
        return number

    def fit(self, examples: list[Any]) -> None:
        if self.cfg.kind == "categorical":
            self.categories = sorted({e for e in examples if e is not MISSING})
            self._codes = {c: i + 1 for i, c in enumerate(self.categories)}
            return
        values = torch.tensor([v for v in examples if v is not MISSING], dtype=torch.float64)
        if len(values):
            self.mean = float(values.mean())
            self.std = float(values.std(unbiased=False)) or 1.0

    def placeholder(self) -> Any:
        return MISSING if self.cfg.kind == "numeric" else None

    def encode(self, example: Any) -> float:
        if self.cfg.kind == "categorical":
            return float(self._codes.get(example, 0))
        if example is MISSING:
            return 0.0  # the train mean, standardised
        return (example - self.mean) / self.std

    def collate(self, examples: list[Any]) -> torch.Tensor:
        return torch.tensor([[self.encode(e)] for e in examples], dtype=torch.float32)

    def spec(self) -> InputSpec:
        categorical = {0: len(self.categories) + 1} if self.cfg.kind == "categorical" else {}
        return InputSpec("tabular", (1,), categorical=categorical)

    def state(self) -> dict:
        return {"mean": self.mean, "std": self.std, "categories": self.categories}
