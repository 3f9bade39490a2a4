"""What a batch's loss is: the objectives :func:`mmtransfer.train.fit` trains with, and the class weights."""

from __future__ import annotations

import torch
from torch import nn

from mmtransfer.errors import UserError


class TrainingError(UserError):
    """Training cannot go on (a loss that is not finite); the message names the epoch and step."""


class Objective:
    """What a batch's loss is: ``loss(model, inputs, targets)``. ``validates``: whether validation scores it
    (loss and accuracy) to select the best epoch."""

    validates = True

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


class FeatureMatch(Objective):
    """Mean squared error between the model's output and target vectors (feature distillation)."""

    validates = False

    def loss(self, model, inputs, targets):
        return nn.functional.mse_loss(model(inputs), targets)


def default_objective(model: nn.Module, labels: torch.Tensor, class_weights: str | None) -> Classification:
    """Classification, with ``balanced`` class weights from the train labels where asked for."""
    weight = None
    if class_weights == "balanced":
        weight = balanced_weights(labels, _num_outputs(model))
    return Classification(weight)


def place_objective(objective: Objective, device: torch.device) -> None:
    """Class weights live where the logits are."""
    if getattr(objective, "weight", None) is not None:
        objective.weight = objective.weight.to(device)
        objective.fn = nn.CrossEntropyLoss(weight=objective.weight)


def balanced_weights(labels: torch.Tensor, classes: int) -> torch.Tensor:
    """n / (classes present * count) per class (scikit-learn's 'balanced'); a class with no train example: 1."""
    counts = torch.bincount(labels.long().cpu(), minlength=classes).double()
    present = int((counts > 0).sum())
    weight = torch.where(counts > 0, counts.sum() / (present * counts.clamp(min=1)), torch.ones_like(counts))
    return weight.float()


def _num_outputs(model: nn.Module) -> int:
    classes = getattr(model, "classes", None)
    if classes:
        return len(classes)
    out = getattr(getattr(model, "head", None), "out", None)
    return int(out.out_features)


def selection_loss(objective: Objective) -> nn.Module:
    """The loss the validation split is scored with to pick the best epoch: the training criterion's own
    class weights where it has them."""
    weight = getattr(objective, "weight", None)
    return nn.CrossEntropyLoss(weight=weight)
