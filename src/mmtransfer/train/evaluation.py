"""Scoring a model: ``evaluate`` (every metric of its task), ``logits_of``, and the eval-mode context."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from mmtransfer.data import Examples, make_loader
from mmtransfer.tasks import Task, get_task
from mmtransfer.train.objectives import Objective, TrainingError
from mmtransfer.train.setup import make_accelerator

EVAL_BATCH = 32  # a batch of 32 photos runs as fast per photo as 256 on a CPU, in an eighth of the memory


def scalar_metrics(metrics: dict) -> dict:
    """The numbers of an evaluation (accuracy, loss, n, ...), without its lists and names."""
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


@contextmanager
def inference(model: nn.Module, inference_mode: bool = True) -> Iterator[nn.Module]:
    """The model in eval mode under ``torch.inference_mode`` (``torch.no_grad`` without ``inference_mode``: what
    a model that DDP wraps needs), its convolution weights channels-last (1.5x faster on a CPU; the convolutions
    then run channels-last whatever the input's layout); left as it was afterwards."""
    was_training = model.training
    convolutions = any(p.dim() == 4 for p in model.parameters())
    if convolutions:
        model.to(memory_format=torch.channels_last)
    model.eval()
    try:
        with torch.inference_mode() if inference_mode else torch.no_grad():
            yield model
    finally:
        if convolutions:  # outside inference mode: the weights stay ordinary tensors
            model.to(memory_format=torch.contiguous_format)
        model.train(was_training)


def task_of(holder) -> Task:
    """The task of a model or an objective (classification where it has none)."""
    return getattr(holder, "task", None) or get_task()


def logits_of(model: nn.Module, split: Examples, *, batch_size: int = EVAL_BATCH, cpu: bool = False) -> tuple:
    """(outputs [N, ...] before any calibration, labels [N]) of ``split``, in eval mode, in row order."""
    accelerator = make_accelerator(cpu)
    task = task_of(model)  # read before prepare wraps the model (DDP)
    with inference(model, inference_mode=False):  # prepare may wrap it in DDP, which needs ordinary tensors
        outputs, labels, _ = _gathered(*accelerator.prepare(model, make_loader(split, batch_size)), accelerator)
    return task.raw(outputs), labels


def evaluate(model: nn.Module, split: Examples, *, batch_size: int = EVAL_BATCH, cpu: bool = False) -> dict:
    """Every metric of the model's task: for classification accuracy, macro-F1, mean cross-entropy, the confusion
    matrix (rows: true class, columns: predicted) and each class's precision, recall, F1 and support; ``classes``
    names them where the model knows its names."""
    classes, task = getattr(model, "classes", None), task_of(model)  # read before prepare wraps the model (DDP)
    accelerator = make_accelerator(cpu)
    with inference(model, inference_mode=False):  # prepare may wrap it in DDP, which needs ordinary tensors
        model, loader = accelerator.prepare(model, make_loader(split, batch_size))
        outputs, labels, loss = _gathered(model, loader, accelerator, task.batch_loss())
    out = task.metrics(outputs, labels, loss=loss, detail=True)
    return {**out, "classes": classes} if classes is not None and task.lists_classes else out


def validate(model, loader, accelerator, objective: Objective, row: dict) -> float:
    """Score the validation split after an epoch into its history ``row`` (``val_loss``, ``val_accuracy``, and
    the task's shown metric, e.g. ``val_r2``) and return the loss that selects the best epoch. A loss that is
    not finite stops the run: nan is never below the best, so no epoch would be chosen."""
    task = task_of(objective)
    outputs, labels, loss = _gathered(model, loader, accelerator, task.batch_loss(objective))
    val_metrics = task.metrics(outputs, labels, loss=loss, objective=objective)
    if task.shown != "accuracy":
        row[f"val_{task.shown}"] = val_metrics[task.shown]
    row["val_loss"], row["val_accuracy"] = val_metrics["loss"], val_metrics.get("accuracy")
    if not math.isfinite(val_metrics["loss"]):
        raise TrainingError(
            f"the validation loss became {val_metrics['loss']} in epoch {row['epoch']} (the training loss "
            f"was {row['train_loss']:.4g}); the run stopped (the last checkpoint is kept). Check the "
            "validation inputs for values unlike the training ones, or lower train.lr"
        )
    return val_metrics["loss"]


@torch.no_grad()
def _gathered(model, loader, accelerator, loss_fn: nn.Module | None = None) -> tuple:
    """(outputs, labels, mean loss) of every batch of ``loader``, gathered from every process, in eval mode, on
    the CPU; the loss is ``loss_fn``'s batch by batch, weighted by the batch's rows (None without one)."""
    model.eval()
    outs, labels, losses = [], [], []
    for inputs, y in loader:
        out, y = accelerator.gather_for_metrics((model(inputs), y))
        if loss_fn is not None:
            losses.append(loss_fn(out, y).item() * len(y))
        outs.append(out.float().cpu())
        labels.append(y.cpu())
    labels = torch.cat(labels)
    return torch.cat(outs), labels, float(sum(losses) / len(labels)) if loss_fn is not None else None
