"""The contract every task follows: :class:`Task`. A task is what a run predicts; it owns its fitted state (kept
in the run folder's ``task.json``), its loss, its metrics, the post-fit step, and how the model's outputs are
decoded for ``predict``, ``export``, ``info`` and scikit-learn's ``score``."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from mmtransfer.errors import UserError
from mmtransfer.tasks.objectives import Objective


class TaskStateError(UserError):
    """A task's saved state (``task.json``) that cannot be used; the message names the field."""


def finite(value) -> float | None:
    """``value`` as a finite float, or None (a bool, a string, NaN, an infinity)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


class Task:
    """What a run predicts. Subclasses set the class attributes and override what differs from one class per
    row read by softmax (see :class:`mmtransfer.tasks.classification.Classification`).

    ``name``: the registry key (``data.task``); a task compares equal to it (``model.task == "regression"``).
    ``score``: the metric scikit-learn's ``score`` returns. ``selection``: the metric that compares a solved
    probe with LP-FT (higher is better). ``shown``: the validation metric each epoch's line shows.
    ``head_kind``: heads graft only between tasks of the same kind. ``probe``: the solved probe's kind
    ("logistic", "ridge") or None. ``plot_kind``: what ``evaluate --png`` draws (None: nothing).
    ``one_class_per_row``: class weights apply. ``lists_classes``: evaluation names the classes.
    ``probabilities``: None where the outputs are probabilities, else why ``predict_proba`` has none.
    """

    name: ClassVar[str]
    score: ClassVar[str] = "accuracy"
    selection: ClassVar[str] = "accuracy"
    shown: ClassVar[str] = "accuracy"
    head_kind: ClassVar[str] = "labels"
    probe: ClassVar[str | None] = None
    plot_kind: ClassVar[str | None] = None
    one_class_per_row: ClassVar[bool] = False
    lists_classes: ClassVar[bool] = True
    probabilities: ClassVar[str | None] = None
    fields: ClassVar[tuple[str, ...]] = ("task", "label")  # what task.json may hold

    def __init__(self, label: str = "label", **_):
        self.label = label

    def __eq__(self, other) -> bool:
        if isinstance(other, str):
            return self.name == other
        return NotImplemented

    __hash__ = object.__hash__

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.state()})"

    # -------------------------------------------------------- fitting

    def fit(self, data, cfg) -> None:
        """Fit the state the train rows give (before training): nothing by default."""

    def objective(self, labels: torch.Tensor, width: int, class_weights: str | None) -> Objective:
        """The loss training minimises; ``labels``: the rows it trains on, ``width``: the head's outputs."""
        raise NotImplementedError

    def batch_loss(self, objective: Objective | None = None) -> nn.Module | None:
        """A loss evaluation averages batch by batch (None: :meth:`metrics` computes its own over every row)."""
        return None

    def after_fit(self, outputs_of: Callable, data, cfg, out, console, write: bool) -> dict:
        """The post-fit step (on the validation split); returns what goes into metrics.json. ``outputs_of(split)``
        gives (outputs before calibration, labels); ``out`` is the run's :class:`~mmtransfer.runfolder.RunFolder`
        (``out.figure(kind)`` names a figure's file); ``write``: this process writes files into it."""
        return {}

    # -------------------------------------------------------- the model's outputs

    def output(self, logits: torch.Tensor) -> torch.Tensor:
        """The model's output from the head's: forward's last step (kept in an exported graph)."""
        return logits

    def raw(self, outputs: torch.Tensor) -> torch.Tensor:
        """The outputs before any calibration the task applies."""
        return outputs

    def decode(self, outputs: torch.Tensor) -> torch.Tensor:
        """What ``predict`` reads from the model's outputs: probabilities, or numbers in the target's units."""
        return torch.softmax(outputs.float(), dim=-1)

    def metrics(
        self, outputs: torch.Tensor, labels: torch.Tensor, *, loss=None, objective=None, detail: bool = False
    ) -> dict:
        """Every metric of this task on gathered ``outputs`` and ``labels``: ``loss`` is :meth:`batch_loss`
        averaged over the batches, ``objective`` what validation scores with (None: evaluation), ``detail`` the
        per-class tables."""
        raise NotImplementedError

    def columns(self, classes: list[str]) -> list[str]:
        """predict's CSV columns after ``prediction``."""
        return [f"p_{c}" for c in classes]

    def rows(self, decoded: np.ndarray, classes: list[str]) -> list[list]:
        """predict's CSV cells per row: the prediction, then :meth:`columns`."""
        best = decoded.argmax(-1).tolist()
        return [[classes[b], *[f"{v:.6g}" for v in p.tolist()]] for b, p in zip(best, decoded, strict=True)]

    def answers(self, decoded: np.ndarray, classes: list[str]) -> list[dict]:
        """``serve``'s answer per row, as JSON: the predicted class and each class's (calibrated) probability."""
        best = decoded.argmax(-1).tolist()
        return [
            {"prediction": classes[b], "probabilities": dict(zip(classes, map(float, p.tolist()), strict=True))}
            for b, p in zip(best, decoded, strict=True)
        ]

    def predictions(self, decoded: np.ndarray, classes: list[str]) -> np.ndarray:
        """``Predictor.predict``'s values from decoded outputs [N, ...]."""
        return np.asarray(classes, dtype=object)[decoded.argmax(1)] if len(decoded) else np.zeros(0, dtype=object)

    def probe_to_head(self, weight: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A solved probe's weights in the labels' units, as the head's (which :meth:`output` reads)."""
        return weight, bias

    # -------------------------------------------------------- labels

    @classmethod
    def read_table_labels(
        cls, texts: np.ndarray, column: str, separator: str
    ) -> tuple[np.ndarray | None, list | None, list[tuple[int, str]]]:
        """A training table's label cells (stripped; '' where missing) as this task reads them: (the numbers, or
        None; the label sets, or None; (row, reason) for each non-empty cell that cannot be used). One class per
        row reads the cells as class names: nothing to parse."""
        return None, None, []

    def parse_labels(self, texts: list[str], classes: list[str]) -> tuple[np.ndarray, list[tuple[int, str]]]:
        """A labelled table's label cells (stripped strings, "" for empty) as the targets the model is scored
        against, and (position, reason) for each cell that is none."""
        where = {c: i for i, c in enumerate(classes)}
        labels, bad = np.full(len(texts), -1), []
        for i, text in enumerate(texts):
            text = text.strip()
            if text in where:
                labels[i] = where[text]
            else:
                bad.append((i, "missing label" if not text else f"label {text!r} is not one of the run's classes"))
        return labels, bad

    # -------------------------------------------------------- what it says about itself

    def info(self, classes: list[str]) -> str:
        """``info``'s task line."""
        raise NotImplementedError

    def notes(self) -> list[str]:
        """``info``'s lines on the post-fit step."""
        return []

    def summary(self, test: dict) -> str:
        """``info``'s scores at training time, from metrics.json's test entry."""
        raise NotImplementedError

    def describe(self, classes: list[str]) -> dict:
        """What an export's model.json says of the outputs."""
        return {
            "outputs": [{"name": "logits", "shape": ["batch", len(classes)]}],
            "task": self.name,
            "temperature": 1.0,
            "thresholds": None,
        }

    # -------------------------------------------------------- task.json

    def state(self) -> dict:
        """The fitted state as task.json keeps it."""
        return {"task": self.name, "label": self.label}

    @classmethod
    def from_state(cls, state: dict, classes: list[str]) -> Task:
        """The task of a run folder, every value checked (:class:`TaskStateError` names the field)."""
        cls.check_fields(state)
        return cls(**{k: v for k, v in state.items() if k != "task"})

    @classmethod
    def check_fields(cls, state: dict) -> None:
        for key in state:
            if key in cls.fields:
                continue
            if key in ("calibration", "temperature"):
                raise TaskStateError(f"{key}: a temperature in a {cls.name} run, which has none (added?)")
            raise TaskStateError(f"{key}: not a field of a {cls.name} task ({', '.join(cls.fields)})")
