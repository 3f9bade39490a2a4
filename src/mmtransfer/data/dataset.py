"""What a loaded dataset is: its splits, what each input is, how it was preprocessed, and how many labels trained
and selected the model."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from mmtransfer.data.splits import Examples
from mmtransfer.modalities.base import InputSpec
from mmtransfer.tasks import DEFAULT


@dataclass
class LabelUse:
    """How many labelled examples trained the model and how many selected it (early stopping, best epoch).

    ``budget`` is the label budget as configured (``k_per_class=10``, ``label_fraction=0.05``) or None;
    ``validation`` says where the selection labels came from: ``budget`` (a stratified part of the budget),
    ``split`` (the validation split), or ``none`` (no selection: a fixed number of epochs).
    """

    train: int
    selection: int
    validation: str
    budget: str | None = None
    note: str = ""

    @property
    def total(self) -> int:
        return self.train + self.selection

    def sentence(self) -> str:
        where = {
            "budget": "out of the same budget",
            "split": "the validation split",
            "none": "none: no early stopping, the last epoch's weights are kept",
        }[self.validation]
        head = f"labels: {self.train} train the model, {self.selection} select it ({where})"
        if self.budget:
            head += f"; {self.total} labelled examples in all, budget {self.budget}"
        return head + (f"; {self.note}" if self.note else "")

    def to_dict(self) -> dict:
        return {**asdict(self), "total": self.total}


@dataclass
class Dataset:
    """Splits plus what encoders need to know about each input (``specs``); ``preprocessing`` records how a
    table was bound and what the modalities learned on train; ``augment`` maps inputs to the random
    transform ``fit`` applies to their training batches; ``train_pool`` is the whole train split before
    a label budget kept a few labelled examples (its inputs serve as unlabelled data); ``val`` is None when no
    labels select the model; ``labels`` counts the labels used for training and for selection."""

    name: str
    classes: list[str]
    train: Examples
    val: Examples | None
    test: Examples
    specs: dict[str, InputSpec] = field(default_factory=dict)
    preprocessing: dict = field(default_factory=dict)
    augment: dict[str, Callable[[torch.Tensor], torch.Tensor]] = field(default_factory=dict)
    train_pool: Examples | None = None
    labels: LabelUse | None = None
    task: str = DEFAULT  # regression: labels are the numbers; multilabel: labels are 0/1 [N, labels]
    preprocessor: Any = None  # tables: the fitted TablePreprocessor, which new rows go through
    columns: dict = field(default_factory=dict)  # tables: every input column as bound, no setting left auto
    encoders: dict = field(default_factory=dict)  # tables: the encoder model.preset chose for a column, by input
    paired: Any = None  # a Pairing's teacher column: its cells by table row, and where relative paths resolve
    ignored: list[str] | None = None  # data.ignore as applied, where a Pairing added columns to it

    @property
    def input_shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: s.shape for k, s in self.specs.items()}
