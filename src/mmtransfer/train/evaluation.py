"""Scoring a model: ``evaluate`` (every metric of its task), ``logits_of``, and the eval-mode context."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support
from torch import nn

from mmtransfer.data import Examples, make_loader
from mmtransfer.tasks import multilabel_metrics, regression_metrics
from mmtransfer.train.objectives import Multilabel, Objective, Regression, TrainingError, selection_loss
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


def logits_of(model: nn.Module, split: Examples, *, batch_size: int = EVAL_BATCH, cpu: bool = False) -> tuple:
    """(logits [N, C] before any temperature, labels [N]) of ``split``, in eval mode, in row order."""
    accelerator = make_accelerator(cpu)
    temperature = getattr(model, "temperature", 1.0)  # read before prepare wraps the model (DDP)
    with inference(model, inference_mode=False):  # prepare may wrap it in DDP, which needs ordinary tensors
        outputs, labels = _gathered(*accelerator.prepare(model, make_loader(split, batch_size)), accelerator)
    return outputs * temperature, labels


def evaluate(model: nn.Module, split: Examples, *, batch_size: int = EVAL_BATCH, cpu: bool = False) -> dict:
    """Accuracy, macro-F1, mean cross-entropy, the confusion matrix (rows: true class, columns: predicted) and
    each class's precision, recall, F1 and support; ``classes`` names them where the model knows its names."""
    classes, task = getattr(model, "classes", None), getattr(model, "task", "classification")
    objective = Regression(model.target_mean, model.target_std) if task == "regression" else None
    thresholds = getattr(model, "thresholds", None)  # read before prepare wraps the model (DDP)
    accelerator = make_accelerator(cpu)
    with inference(model, inference_mode=False):  # prepare may wrap it in DDP, which needs ordinary tensors
        model, loader = accelerator.prepare(model, make_loader(split, batch_size))
        if task == "regression":
            return evaluate_regression(model, loader, accelerator, objective)
        if task == "multilabel":
            out = evaluate_multilabel(model, loader, accelerator, thresholds)
        else:
            out = evaluate_classification(model, loader, accelerator, nn.CrossEntropyLoss(), with_confusion=True)
    return {**out, "classes": classes} if classes is not None else out


def validate(model, loader, accelerator, objective: Objective, row: dict) -> float:
    """Score the validation split after an epoch into its history ``row`` (``val_loss``, ``val_accuracy``, and
    ``val_r2`` or ``val_micro_f1``) and return the loss that selects the best epoch. A loss that is not finite
    stops the run: nan is never below the best, so no epoch would be chosen."""
    if isinstance(objective, Regression):
        val_metrics = evaluate_regression(model, loader, accelerator, objective)
        row["val_r2"] = val_metrics["r2"]
    elif isinstance(objective, Multilabel):
        val_metrics = evaluate_multilabel(model, loader, accelerator)
        row["val_micro_f1"] = val_metrics["micro_f1"]
    else:
        val_metrics = evaluate_classification(model, loader, accelerator, selection_loss(objective))
    row["val_loss"], row["val_accuracy"] = val_metrics["loss"], val_metrics.get("accuracy")
    if not math.isfinite(val_metrics["loss"]):
        raise TrainingError(
            f"the validation loss became {val_metrics['loss']} in epoch {row['epoch']} (the training loss "
            f"was {row['train_loss']:.4g}); the run stopped (the last checkpoint is kept). Check the "
            "validation inputs for values unlike the training ones, or lower train.lr"
        )
    return val_metrics["loss"]


@torch.no_grad()
def _gathered(model, loader, accelerator) -> tuple[torch.Tensor, torch.Tensor]:
    """(outputs, labels) of every batch of ``loader``, gathered from every process, in eval mode, on the CPU."""
    model.eval()
    outs, labels = [], []
    for inputs, y in loader:
        out, y = accelerator.gather_for_metrics((model(inputs), y))
        outs.append(out.float().cpu())
        labels.append(y.cpu())
    return torch.cat(outs), torch.cat(labels)


@torch.no_grad()
def evaluate_regression(model, loader, accelerator, objective: Regression) -> dict:
    """n, loss (the objective's, on standardised values), RMSE, MAE and R^2 in the target's units."""
    pred, true = _gathered(model, loader, accelerator)
    true = true.float()
    out = regression_metrics(pred.numpy(), true.numpy(), objective.std)
    out["loss"] = float(objective.fn((pred - objective.mean) / objective.std, (true - objective.mean) / objective.std))
    return out


@torch.no_grad()
def evaluate_multilabel(model, loader, accelerator, thresholds=None) -> dict:
    """Multi-label metrics at ``thresholds`` (0.5 where none): micro- and macro-F1, subset accuracy, mAP, BCE."""
    logits, labels = _gathered(model, loader, accelerator)
    return multilabel_metrics(torch.sigmoid(logits).numpy(), labels.numpy(), 0.5 if thresholds is None
                              else np.asarray(thresholds))  # fmt: skip


def _balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """The mean of each class's recall, over the classes present in ``y_true``."""
    present = np.unique(y_true)
    return float(np.mean([(y_pred[y_true == c] == c).mean() for c in present]))


@torch.no_grad()
def evaluate_classification(model, loader, accelerator, loss_fn, with_confusion: bool = False) -> dict:
    """n, mean loss, accuracy, macro-F1 and balanced accuracy; with ``with_confusion`` the confusion matrix and
    each class's precision, recall, F1 and support."""
    model.eval()
    losses, preds, targets = [], [], []
    for inputs, labels in loader:
        logits = model(inputs)
        logits, labels = accelerator.gather_for_metrics((logits, labels))
        losses.append(loss_fn(logits, labels).item() * len(labels))
        preds.append(logits.argmax(-1).cpu().numpy())
        targets.append(labels.cpu().numpy())
    y_pred, y_true = np.concatenate(preds), np.concatenate(targets)
    classes = np.arange(logits.shape[-1])
    out = {
        "n": int(len(y_true)),
        "loss": float(sum(losses) / len(y_true)),
        "accuracy": float((y_pred == y_true).mean()),
        "macro_f1": float(f1_score(y_true, y_pred, labels=classes, average="macro", zero_division=0)),
        "balanced_accuracy": _balanced_accuracy(y_true, y_pred),
    }
    if with_confusion:
        out["confusion"] = confusion_matrix(y_true, y_pred, labels=classes).tolist()
        precision, recall, f1, support = precision_recall_fscore_support(
            y_true, y_pred, labels=classes, zero_division=0
        )
        out["f1_per_class"] = f1.tolist()
        out["precision_per_class"] = precision.tolist()
        out["recall_per_class"] = recall.tolist()
        out["support_per_class"] = support.tolist()
    return out
