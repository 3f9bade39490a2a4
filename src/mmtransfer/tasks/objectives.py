"""What a batch's loss is for each task: the objectives a task hands to :func:`mmtransfer.train.fit`, and the
class weights. ``mmtransfer.train`` re-exports them under their old names."""

from __future__ import annotations

import torch
from torch import nn


class Objective:
    """What a batch's loss is: ``loss(model, inputs, targets)``. ``validates``: whether validation scores it
    (loss and accuracy) to select the best epoch. ``task``: the task whose metrics score validation (None:
    classification)."""

    validates = True
    task = None

    def loss(self, model: nn.Module, inputs: dict, targets: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class Classification(Objective):
    """Cross-entropy of the model's logits against integer labels; ``weight``: one loss weight per class."""

    def __init__(self, weight: torch.Tensor | None = None):
        self.weight = weight
        self.fn = nn.CrossEntropyLoss(weight=weight)

    def loss(self, model, inputs, targets):
        return self.fn(model(inputs), targets)


class Regression(Objective):
    """MSE (or Huber) between the model's output and the targets, both standardised with the train labels'
    mean and std; validation is scored the same way, with RMSE, MAE and R^2 in the target's units."""

    def __init__(self, mean: float, std: float, kind: str = "mse"):
        self.mean, self.std, self.kind = mean, std, kind
        self.fn = nn.HuberLoss(delta=1.0) if kind == "huber" else nn.MSELoss()

    def loss(self, model, inputs, targets):
        return self.fn((model(inputs) - self.mean) / self.std, (targets.float() - self.mean) / self.std)


class Multilabel(Objective):
    """Binary cross-entropy of one logit per label against 0/1 targets."""

    def __init__(self):
        self.fn = nn.BCEWithLogitsLoss()

    def loss(self, model, inputs, targets):
        return self.fn(model(inputs), targets.float())


def balanced_weights(labels: torch.Tensor, classes: int) -> torch.Tensor:
    """n / (classes present * count) per class (scikit-learn's 'balanced'); a class with no train example: 1."""
    counts = torch.bincount(labels.long().cpu(), minlength=classes).double()
    present = int((counts > 0).sum())
    weight = torch.where(counts > 0, counts.sum() / (present * counts.clamp(min=1)), torch.ones_like(counts))
    return weight.float()
