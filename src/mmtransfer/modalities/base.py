"""The modality contract. A modality turns one table cell into one example, and examples into a batch.

The contract (:class:`Modality`), in the order the table loader calls it:

1. ``load(value, base)``: one present cell -> one example (any Python object: a tensor, a string, a float).
   ``base`` is the table's folder, against which relative paths resolve. A bad value raises
   :class:`BadValue` with a short reason (``"file not found"``, ``"unreadable or corrupt audio: ..."``); the loader
   adds the row, column and file. Nothing is learned here.
2. ``fit(examples)``: learn preprocessing state from the *train* examples only (a vocabulary, a mean).
3. ``collate(examples)``: N examples -> one tensor ``[N, ...]`` (stack, pad, tokenise, standardise).
   ``placeholder()`` gives the example used where a cell is missing; the loader then sets the presence mask
   ``{name}.present`` to False, so fusion ignores it.
4. ``spec()``: what an encoder needs to know about the batch tensor (:class:`InputSpec`).
5. ``state()``: the learned state as JSON, saved beside a run's weights; ``from_state(name, cfg, state)``
   rebuilds the fitted modality from it, so new data is transformed as the train data was, never refitted.

``fit`` receives an iterable: for image and audio columns a stream that reads one file at a time, so fitting
on a large table does not hold it in memory. Image and audio cells are decoded again for every batch
(:mod:`mmtransfer.data.preprocess`).

"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from mmtransfer.errors import UserError


class DataError(UserError):
    """Bad input data or splits that cannot be drawn; the message names the rows, columns, files or split."""


@dataclass
class BadCell:
    """A cell found bad while checking a table: its row (the table's own number), column, reason and file."""

    row: int
    column: str
    reason: str
    file: str | None = None


class BadValue(UserError):
    """A cell that cannot be used; the message is the reason, the loader adds row, column and file."""

    def __init__(self, reason: str, file: str | None = None):
        super().__init__(reason)
        self.reason = reason
        self.file = file


@dataclass
class InputSpec:
    """What an encoder needs to know about one input.

    ``shape`` is one example's tensor shape (no batch axis). ``kind``: ``image`` [C, H, W], ``spectrogram``
    [1, n_mels, frames], ``waveform`` [1, samples], ``tokens`` [L] int64 (``vocab_size``, ``pad_id``; ``tokenizer``
    names a pretrained tokenizer folder when there is one), ``signal`` [C, L], ``tabular`` [F] float where the
    ``categorical`` entries (index -> number of categories) hold integer codes.
    """

    kind: str
    shape: tuple[int, ...]
    vocab_size: int | None = None
    pad_id: int = 0
    tokenizer: str | None = None
    sample_rate: int | None = None
    categorical: dict[int, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


class Modality(Protocol):
    name: str

    @classmethod
    def from_state(cls, name: str, cfg: Any, state: dict) -> Modality: ...

    def load(self, value: Any, base: Path) -> Any: ...

    def fit(self, examples: Iterable[Any]) -> None: ...

    def collate(self, examples: list[Any]) -> torch.Tensor: ...

    def placeholder(self) -> Any: ...

    def spec(self) -> InputSpec: ...

    def state(self) -> dict: ...


def is_missing(value: Any) -> bool:
    """An empty cell: None, NaN, pandas' NA or NaT."""
    if value is None:
        return True
    try:
        import pandas as pd  # here, on purpose: encoders import this module for InputSpec and need no pandas

        return bool(pd.isna(value)) if not isinstance(value, (str, bytes)) else False
    except (TypeError, ValueError):  # array-like values are not cells
        return False


def resolve_path(value: Any, base: Path) -> Path:
    """A cell holding a path, absolute or relative to the table's folder; raises BadValue if it is not a file."""
    if not isinstance(value, (str, Path)) or not str(value).strip():
        raise BadValue(f"expected a file path, got {value!r}")
    path = Path(str(value).strip()).expanduser()
    if not path.is_absolute():
        path = base / path
    if not path.is_file():
        raise BadValue("file not found", file=str(path))
    return path
