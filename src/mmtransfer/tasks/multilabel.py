"""Multi-label: a set of labels per row (cells like ``cat;dog``, split on ``data.label_separator``); one sigmoid
output per label and binary cross-entropy. After training each label's threshold is chosen on the validation
split (the best F1 of 0.05 ... 0.95), kept in ``task.json`` and used by ``predict``."""

from __future__ import annotations

import numpy as np
import torch

from mmtransfer.tasks.base import Task, TaskStateError, finite
from mmtransfer.tasks.infer import parse_set
from mmtransfer.tasks.metrics import multilabel_metrics, tune_thresholds
from mmtransfer.tasks.objectives import Multilabel as BinaryCrossEntropy


class Multilabel(Task):
    name = "multilabel"
    score = "subset_accuracy"
    selection = shown = "micro_f1"
    fields = ("task", "label", "separator", "labels", "thresholds", "thresholds_chosen_on")

    def __init__(self, label="label", separator=";", labels=None, thresholds=None, thresholds_chosen_on=None, **_):
        super().__init__(label)
        self.separator, self.labels = separator, list(labels) if labels is not None else None
        if thresholds is None and labels is not None:
            thresholds = [0.5] * len(labels)
        self.thresholds = [float(t) for t in thresholds] if thresholds is not None else None
        self.thresholds_chosen_on = thresholds_chosen_on

    def fit(self, data, cfg):
        self.__init__(cfg.data.label, cfg.data.label_separator, data.classes)

    def objective(self, labels, width, class_weights):
        objective = BinaryCrossEntropy()
        objective.task = self
        return objective

    def decode(self, outputs):
        return torch.sigmoid(outputs.float())  # one probability per label

    def _at(self) -> np.ndarray | float:
        return 0.5 if self.thresholds is None else np.asarray(self.thresholds)

    def metrics(self, outputs, labels, *, loss=None, objective=None, detail=False):
        """At the thresholds (0.5 in validation): micro- and macro-F1, subset accuracy, mAP, BCE."""
        at = 0.5 if objective is not None else self._at()
        return multilabel_metrics(torch.sigmoid(outputs).numpy(), labels.numpy(), at)

    def after_fit(self, outputs_of, data, cfg, out, console, write):
        """Each label's threshold: the best F1 on the validation split (0.5 without one)."""
        if data.val is None:
            console.print("thresholds: 0.5 for every label (no validation split to choose them on)", markup=False)
            return {}
        logits, labels = outputs_of(data.val)
        thresholds = tune_thresholds(torch.sigmoid(logits).numpy(), labels.numpy())
        self.thresholds = [float(t) for t in thresholds]
        self.thresholds_chosen_on = f"{len(labels)} validation rows"
        shown = ", ".join(f"{c} {t:.2f}" for c, t in zip(data.classes[:12], thresholds, strict=False))
        console.print(f"thresholds chosen on {len(labels)} validation rows (best F1 per label): {shown}"
                      + (" ..." if len(data.classes) > 12 else ""), markup=False, highlight=False)  # fmt: skip
        return {}

    def chosen(self, probs: np.ndarray, classes: list[str]) -> list[list[str]]:
        """Per row, every label at or above its threshold."""
        on = probs >= np.asarray(self.thresholds or [0.5] * len(classes))
        return [[c for c, hit in zip(classes, row, strict=True) if hit] for row in on]

    def rows(self, decoded, classes):
        sets = self.chosen(decoded, classes)
        return [[self.separator.join(s), *[f"{v:.6g}" for v in p.tolist()]] for s, p in zip(sets, decoded, strict=True)]

    def answers(self, decoded, classes):
        return [
            {"prediction": chosen, "probabilities": dict(zip(classes, map(float, p.tolist()), strict=True))}
            for chosen, p in zip(self.chosen(decoded, classes), decoded, strict=True)
        ]

    def predictions(self, decoded, classes):
        sets = np.empty(len(decoded), dtype=object)  # one list per row, whatever their lengths
        for i, chosen in enumerate(self.chosen(decoded, classes)):
            sets[i] = chosen
        return sets

    @classmethod
    def read_table_labels(cls, texts, column, separator):
        sets = [parse_set(t, separator) if t else [] for t in texts]  # a non-empty cell names at least one label
        bad = [(i, f"empty label set {t!r} (data.task multilabel)") for i, t in enumerate(texts) if t and not sets[i]]
        return None, sets, bad

    def parse_labels(self, texts, classes):
        labels, bad = np.zeros((len(texts), len(classes)), dtype=np.float32), []
        where = {c: j for j, c in enumerate(classes)}
        for i, text in enumerate(texts):
            names = parse_set(text, self.separator) if text else []
            unknown = [n for n in names if n not in where]
            if names and not unknown:
                labels[i, [where[n] for n in names]] = 1.0
            else:
                reason = f"label {unknown[0]!r} is not one of the run's labels" if unknown else "missing label set"
                bad.append((i, reason))
        return labels, bad

    def info(self, classes):
        shown = ", ".join(f"{c} ({th:.2f})" for c, th in zip(classes, self.thresholds, strict=True))
        return (f"task: multilabel of {self.label!r}, labels separated by {self.separator!r}; {len(classes)} labels "
                f"(threshold): {shown}")  # fmt: skip

    def summary(self, test):
        return (f"test micro-F1 {test['micro_f1']:.4f}, macro-F1 {test['macro_f1']:.4f}, subset accuracy "
                f"{test['subset_accuracy']:.4f}, mAP {test['map']:.4f} (n={test.get('n')})")  # fmt: skip

    def describe(self, classes):
        return {**super().describe(classes), "thresholds": self.thresholds}  # sigmoid(logit) >= threshold, per label

    def state(self):
        state = {**super().state(), "separator": self.separator, "labels": self.labels, "thresholds": self.thresholds}
        return state | ({"thresholds_chosen_on": self.thresholds_chosen_on} if self.thresholds_chosen_on else {})

    @classmethod
    def from_state(cls, state, classes):
        cls.check_fields(state)
        thresholds = state.get("thresholds")
        if not isinstance(thresholds, list) or len(thresholds) != len(classes):
            count = len(thresholds) if isinstance(thresholds, list) else thresholds
            raise TaskStateError(f"thresholds: {count!r:.60}; expected one per label ({len(classes)})")
        for name, value in zip(classes, thresholds, strict=True):
            number = finite(value)
            if number is None or not 0 <= number <= 1:
                raise TaskStateError(f"thresholds: {value!r:.60} for {name!r}; expected a number in [0, 1]")
        if "labels" in state and state["labels"] != classes:
            raise TaskStateError("labels differ from labels.json")
        separator = state.get("separator", ";")
        if not isinstance(separator, str) or not separator:
            raise TaskStateError(f"separator is {separator!r:.60}; expected a non-empty string")
        return cls(state.get("label", "label"), separator, classes, thresholds, state.get("thresholds_chosen_on"))
