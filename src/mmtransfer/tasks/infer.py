"""Reading a label column: which task it is (``data.task: auto``), its cells as numbers or label sets, and the
strata a stratified split draws from.

``data.task: auto`` reads the label column: cells holding the separator are label sets; numbers with more than
``MANY`` distinct values are a regression target; anything else names classes. The guess is printed with the
column binding, so it can be overridden.
"""

from __future__ import annotations

import numpy as np

MANY = 20  # a number column with more distinct values than this is read as a regression target


def parse_number(text: str) -> float | None:
    """The number a label cell holds (None when it is not a number)."""
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def infer_task(labels: list[str], task: str, label: str, separator: str = ";") -> tuple[str, str]:
    """(task, why) for the non-empty label cells ``labels``: the configured one, or the guess for ``auto``."""
    if task != "auto":
        return task, f"data.task {task}"
    sets = sum(separator in t for t in labels)
    if sets:
        return "multilabel", (
            f"inferred: {sets} cell(s) of column {label!r} hold several labels separated by {separator!r} "
            "(data.label_separator); set data.task: classification to read each cell as one class"
        )
    numbers = [parse_number(t) for t in labels]
    distinct = len(set(labels))
    if labels and all(n is not None for n in numbers) and distinct > MANY:
        return "regression", (
            f"inferred: column {label!r} holds numbers with {distinct} distinct values; set data.task: "
            "classification to read them as classes"
        )
    return "classification", (
        f"inferred: column {label!r} holds {distinct} distinct value(s)"
        + ("; set data.task: regression to predict them as numbers" if all(n is not None for n in numbers) else "")
    )


def strata(values: np.ndarray, bins: int = 5) -> np.ndarray:
    """Groups for stratified splitting: integer class ids as they are; numbers in quantile bins (at most
    ``bins``, and about 10 rows each at least), so every split spans the target's range."""
    values = np.asarray(values)
    if values.ndim == 2:  # label sets: one stratum (no stratification)
        return np.zeros(len(values), dtype=np.int64)
    if not np.issubdtype(values.dtype, np.floating):
        return values
    q = max(1, min(bins, len(values) // 10))
    if q == 1:
        return np.zeros(len(values), dtype=np.int64)
    edges = np.quantile(values, np.linspace(0, 1, q + 1)[1:-1])
    return np.searchsorted(edges, values, side="right").astype(np.int64)


def parse_set(text: str, separator: str) -> list[str]:
    """The labels of a multi-label cell: split on ``separator``, stripped, empty parts dropped, sorted, unique."""
    return sorted({part.strip() for part in str(text).split(separator) if part.strip()})
