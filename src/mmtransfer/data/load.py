"""One entry to any data: a table, a DataFrame, a folder of class folders or a built-in dataset, split, with the
label budget applied and the labels that select the model chosen."""

from __future__ import annotations

import numpy as np
from rich.console import Console

from mmtransfer.config import DataConfig
from mmtransfer.data.builtin import _builtin
from mmtransfer.data.columns import Binder
from mmtransfer.data.dataset import Dataset, LabelUse
from mmtransfer.data.splits import (
    Examples,
    k_per_class,
    label_fraction,
    split_budget,
    stratified_halves,
    stratified_split,
)
from mmtransfer.data.table import Pairing, load_table_dataset
from mmtransfer.modalities.base import DataError
from mmtransfer.tasks import strata, task_class


def load_dataset(
    cfg: DataConfig,
    console: Console | None = None,
    *,
    validation: str = "auto",
    source=None,
    binder: Binder | None = None,
    test: bool = True,
    paired: Pairing | None = None,
) -> Dataset:
    """Load the table of ``cfg.table`` or a built-in dataset, with seeded splits, the label budget applied
    (``k_per_class`` or ``label_fraction``) and the selection labels chosen as ``validation`` says
    (``train.validation``: auto, none or split); ``data.labels`` counts both.

    Without a budget, ``auto`` (and ``split``) hold a validation split out of the rows that are not test rows;
    ``none`` holds nothing out: every such row trains. Under a budget, the labelled examples are drawn from
    every row that is not a test row; with ``auto`` a stratified part of them (``val_fraction`` of each class,
    at least one) selects the model, so the labels that choose the best epoch come out of the same budget;
    ``none`` selects with nothing; ``split`` holds the validation split out first and selects with it.
    ``source`` is a table given directly (a DataFrame, or a path) instead of ``cfg.table``. ``binder``
    (:func:`mmtransfer.backbones.binder` of the run's model config) binds each table column to the encoder that
    will read it, and so resolves the settings left auto (an image column's size under a pretrained backbone);
    without it the modalities' own defaults apply. ``paired`` (a table's) names a teacher's column, never an
    input here (:class:`~mmtransfer.data.table.Pairing`); ``k_per_class=0`` then leaves no labelled row.
    Without ``test`` a table holds no test rows out (``data.test`` is None unless its split column names some);
    a built-in dataset keeps its test split.
    """
    if validation not in ("auto", "none", "split"):
        raise ValueError(f"validation must be auto, none or split, got {validation!r}")
    budget = None
    if cfg.k_per_class is not None:
        budget = f"k_per_class={cfg.k_per_class}"
    elif cfg.label_fraction is not None:
        budget = f"label_fraction={cfg.label_fraction:g}"
    hold_out = validation == "split" or (validation == "auto" and budget is None)
    halved = cfg.pool != "all"  # halve every non-test row first, then hold out validation within the half
    if cfg.table is not None or cfg.folder is not None or source is not None:
        data = load_table_dataset(
            cfg, source, console=console, hold_out=hold_out and not halved, binder=binder, test=test, paired=paired
        )
    else:
        data = _builtin(cfg, hold_out=hold_out and not halved)
    data.train_pool = data.train  # every input of it serves as unlabelled data (distillation)
    if halved:
        data.train, data.val = _half(data.train, cfg, hold_out)
    note, used = "", "split" if hold_out else "none"
    one_class = task_class(data.task).one_class_per_row
    if not one_class and cfg.k_per_class is not None:
        raise DataError(
            f"data.k_per_class={cfg.k_per_class}: a {data.task} target has no single class per row to draw k of; "
            "give the budget as data.label_fraction"
        )
    if cfg.k_per_class == 0:  # no label: what a teacher taught is the model (cross-modal distillation)
        data.train, data.val, used = data.train.subset([]), None, "none"
        note = "no label trains or selects the model: the teacher's outputs on the paired column taught it"
    elif budget is not None:
        if cfg.k_per_class is not None:
            labelled = k_per_class(data.train, cfg.k_per_class, seed=cfg.seed, classes=data.classes)
        else:
            labelled = label_fraction(data.train, cfg.label_fraction, seed=cfg.seed, classes=data.classes)
        data.train = labelled
        if validation == "auto":
            parts = split_budget(labelled, cfg.val_fraction, seed=cfg.seed)
            if parts is None:
                note = "a class has a single label in the budget, so none is left to select with"
            else:
                used, (data.train, data.val) = "budget", parts
                if one_class:
                    per_class = np.bincount(data.val.labels.numpy(), minlength=len(data.classes))
                    note = _per_class_note(per_class, f"data.val_fraction={cfg.val_fraction:g} of each class's labels")
                else:
                    note = f"data.val_fraction={cfg.val_fraction:g} of them, across the target's range"
    data.labels = LabelUse(len(data.train), 0 if data.val is None else len(data.val), used, budget, note)
    return data


def _half(rows: Examples, cfg: DataConfig, hold_out: bool) -> tuple[Examples, Examples | None]:
    """``data.pool``: one of two stratified halves of the non-test rows; with ``hold_out`` its validation part."""
    counts = np.bincount(strata(rows.labels.numpy()))
    if counts[counts > 0].min() < 2:
        raise DataError(f"data.pool={cfg.pool}: a class has a single row that is not a test row; it cannot be halved")
    first, second = stratified_halves(rows, 0.5, seed=cfg.seed)
    half = first if cfg.pool == "first_half" else second
    if not hold_out:
        return half, None
    train, val = stratified_split(
        np.arange(len(half)), strata(half.labels.numpy()), cfg.val_fraction, cfg.seed, what="validation",
        field="data.val_fraction", of=f"data.pool={cfg.pool}",
    )  # fmt: skip
    return half.subset(train), half.subset(val)


def _per_class_note(per_class: np.ndarray, why: str) -> str:
    low, high = int(per_class.min()), int(per_class.max())
    return f"{low if low == high else f'{low}-{high}'} per class select it ({why})"
