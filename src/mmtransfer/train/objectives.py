"""What a batch's loss is: the objectives :func:`mmtransfer.train.fit` trains with. Each task's own is its
task's (:mod:`mmtransfer.tasks`), re-exported here; feature matching (distillation) is training's own."""

from __future__ import annotations

import torch
from torch import nn

from mmtransfer.errors import UserError
from mmtransfer.tasks import get_task
from mmtransfer.tasks.objectives import Classification, Multilabel, Objective, Regression, balanced_weights

__all__ = [
    "Classification",
    "FeatureMatch",
    "Multilabel",
    "Objective",
    "Regression",
    "SoftTargets",
    "TrainingError",
    "balanced_weights",
    "default_objective",
    "place_objective",
    "selection_loss",
]


class TrainingError(UserError):
    """Training cannot go on (a loss that is not finite); the message names the epoch and step."""


class FeatureMatch(Objective):
    """Mean squared error between the model's output and target vectors (feature distillation)."""

    validates = False

    def loss(self, model, inputs, targets):
        return nn.functional.mse_loss(model(inputs), targets)


class SoftTargets(Objective):
    """Distillation from a teacher's outputs (Hinton, Vinyals & Dean 2015): the KL divergence from the teacher's
    temperature-softened class probabilities (the first ``classes`` values of each target row) to the student's,
    scaled by T^2 so that its gradients keep their size whatever T; where the rows hold more (``embedding``), the
    rest is the teacher's embedding, matched by mean squared error against the rest of the student's output."""

    validates = False

    def __init__(self, temperature: float, classes: int, embedding: bool = False):
        self.temperature, self.classes, self.embedding = temperature, classes, embedding

    def loss(self, model, inputs, targets):
        out, c, t = model(inputs), self.classes, self.temperature
        loss = out.new_zeros(())
        if c:
            log_student = nn.functional.log_softmax(out[:, :c] / t, dim=-1)
            loss = nn.functional.kl_div(log_student, targets[:, :c], reduction="batchmean") * t * t
        if self.embedding:
            loss = loss + nn.functional.mse_loss(out[:, c:], targets[:, c:])
        return loss


def default_objective(model: nn.Module, labels: torch.Tensor, class_weights: str | None) -> Objective:
    """The model's task's loss (classification for a model without one), with ``balanced`` class weights from
    the train labels where asked for and the task has one class per row."""
    task = getattr(model, "task", None) or get_task()
    return task.objective(labels, _num_outputs(model), class_weights)


def place_objective(objective: Objective, device: torch.device) -> None:
    """Class weights live where the logits are."""
    if getattr(objective, "weight", None) is not None:
        objective.weight = objective.weight.to(device)
        objective.fn = nn.CrossEntropyLoss(weight=objective.weight)


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
