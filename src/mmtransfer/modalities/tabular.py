"""Table columns of numbers or categories. Each bound column is one feature of the ``tabular`` input [F]."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmtransfer import limits
from mmtransfer.config import TabularColumn
from mmtransfer.modalities.base import BadValue, InputSpec, is_missing

# Beyond this a number cannot be standardised in 64-bit floats: the squares that give a column's standard
# deviation (1e150 squared is 1e300) would overflow to inf once summed, and every row of the column with them.
MAX_VALUE = limits.MAX_VALUE
# A standardised value the model reads (in 32-bit floats) must stay far from overflow: its square, as a
# normalisation layer takes it, stays finite up to ~1.8e19.
MAX_STANDARDISED = 1e18


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
        if abs(number) > MAX_VALUE:
            raise BadValue(
                f"{value!r} is too large to standardise (beyond ±{MAX_VALUE:g}, the column's standard deviation "
                "overflows); check the value or its units"
            )
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

    def standardise_problem(self, example: Any) -> str | None:
        """Why a loaded number cannot be read once standardised with the fitted mean and std (it would be inf, or
        near it, in 32-bit floats), or None. A train row never is; a val, test or new row far outside the train
        range (``1e300`` where train held 0 to 10) can be."""
        if self.cfg.kind == "categorical" or example is MISSING:
            return None
        z = (example - self.mean) / self.std
        if math.isfinite(z) and abs(z) <= MAX_STANDARDISED:
            return None
        return (
            f"{example!r} is {abs(z):.3g} train standard deviations from the train mean (mean {self.mean:.4g}, std "
            f"{self.std:.4g}): too far to standardise in 32-bit floats; check the value or its units"
        )

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
