"""Regression: one number per row. The targets are standardised with the train labels' mean and std (kept in
``task.json``); the model's output is in the original units (the head's value * std + mean), so ``predict``
and the export give values a person can read. Loss: MSE (or Huber) of the standardised values."""

from __future__ import annotations

import numpy as np
from torch import nn

from mmtransfer import limits
from mmtransfer.tasks.base import Task, TaskStateError, finite
from mmtransfer.tasks.infer import parse_number
from mmtransfer.tasks.metrics import plot_predicted_vs_true, regression_metrics
from mmtransfer.tasks.objectives import Regression as StandardisedLoss


class Regression(Task):
    name = "regression"
    score = selection = shown = "r2"
    head_kind = "values"
    probe = "ridge"
    plot_kind = "predicted_vs_true"
    lists_classes = False
    probabilities = "a regression run predicts numbers, not probabilities: use predict"
    fields = ("task", "label", "mean", "std", "loss", "fitted_on")

    def __init__(self, label="label", mean=0.0, std=1.0, loss="mse", fitted_on=None, **_):
        super().__init__(label)
        self.mean, self.std, self.loss, self.fitted_on = float(mean), float(std), loss, fitted_on

    def fit(self, data, cfg):
        """Standardised with the labels that train; the output stays in the units."""
        train_y = data.train.labels.double()
        std = float(train_y.std()) if len(train_y) > 1 and float(train_y.std()) > 0 else 1.0
        self.__init__(cfg.data.label, float(train_y.mean()), std, cfg.train.regression_loss,
                      f"{len(train_y)} train labels")  # fmt: skip

    def objective(self, labels, width, class_weights):
        objective = StandardisedLoss(self.mean, self.std, self.loss)
        objective.task = self
        return objective

    def output(self, logits):
        return logits[..., 0] * self.std + self.mean

    def decode(self, outputs):
        return outputs.float()  # the predicted numbers, [B]

    def metrics(self, outputs, labels, *, loss=None, objective=None, detail=False):
        """n, loss (the objective's where given, else MSE, on standardised values), RMSE, MAE and R^2 in the
        target's units."""
        pred, true = outputs, labels.float()
        fn = objective.fn if objective is not None else nn.MSELoss()
        out = regression_metrics(pred.numpy(), true.numpy(), self.std)
        out["loss"] = float(fn((pred - self.mean) / self.std, (true - self.mean) / self.std))
        return out

    def after_fit(self, outputs_of, data, cfg, out, console, write):
        pred, true = outputs_of(data.test)  # every process: the outputs are gathered
        if write:
            plot_predicted_vs_true(
                pred.numpy(), true.numpy(), out.figure("predicted_vs_true"), f"{out.path.name}: test"
            )
        return {}

    def columns(self, classes):
        return []

    def rows(self, decoded, classes):
        return [[f"{float(v):.6g}"] for v in decoded]  # the value in the target's units

    def answers(self, decoded, classes):
        """The number in the target's units (those of the label column it trained on, named)."""
        return [{"prediction": float(v), "target": self.label} for v in np.asarray(decoded).reshape(-1)]

    def predictions(self, decoded, classes):
        return np.asarray(decoded).reshape(-1)

    def probe_to_head(self, weight, bias):
        return weight / self.std, (bias - self.mean) / self.std

    @classmethod
    def read_table_labels(cls, texts, column, separator):
        values, bad = np.full(len(texts), np.nan), []  # every label must be a finite number within range
        for i, text in enumerate(texts):
            if not text:
                continue
            number = parse_number(text)
            if number is None:
                bad.append((i, f"{text!r} is not a number (data.task regression)"))
            elif not np.isfinite(number):
                bad.append((i, f"{text!r} is not a finite number (data.task regression)"))
            elif abs(number) > limits.MAX_VALUE:
                bad.append((i, f"{text!r} is too large to standardise (beyond ±{limits.MAX_VALUE:g})"))
            else:
                values[i] = number
        return values, None, bad

    def parse_labels(self, texts, classes):
        labels, bad = np.full(len(texts), np.nan, dtype=np.float32), []
        for i, text in enumerate(texts):
            text = text.strip()
            number = parse_number(text) if text else None
            if number is not None and np.isfinite(number):
                labels[i] = number
            else:
                reason = "missing label" if not text else f"{text!r} is not a finite number (a regression target)"
                bad.append((i, reason))
        return labels, bad

    def info(self, classes):
        return (f"task: regression of {self.label!r} (train mean {self.mean:.4g}, std {self.std:.4g}; loss "
                f"{self.loss}); predictions are in its units")  # fmt: skip

    def summary(self, test):
        return f"test RMSE {test['rmse']:.4g}, MAE {test['mae']:.4g}, R² {test['r2']:.4f} (n={test.get('n')})"

    def describe(self, classes):
        outputs = [{"name": "logits", "shape": ["batch"], "meaning": f"predicted {classes[0]}"}]
        return {**super().describe(classes), "outputs": outputs}  # one value per row, in the target's units

    def state(self):
        return {**super().state(), "mean": self.mean, "std": self.std, "loss": self.loss, "fitted_on": self.fitted_on}

    @classmethod
    def from_state(cls, state, classes):
        cls.check_fields(state)
        mean, std = finite(state.get("mean")), finite(state.get("std"))
        if mean is None:
            raise TaskStateError(f"mean is {state.get('mean')!r:.60}; expected a finite number")
        if std is None or std <= 0:
            raise TaskStateError(f"std is {state.get('std')!r:.60}; expected a finite number above 0")
        loss = state.get("loss", "mse")
        if loss not in ("mse", "huber"):
            raise TaskStateError(f"loss is {loss!r:.60}; expected mse or huber")
        return cls(state.get("label", "label"), mean, std, loss, state.get("fitted_on"))
