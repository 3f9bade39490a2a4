"""The training loop, read top to bottom: AdamW, warm-up + cosine, early stopping on validation loss.

Accelerate places the model and batches, so the same code runs on a CPU, a GPU or under ``accelerate launch``.
What trains in each epoch, and at what rate per layer group, is the fine-tuning strategy's
(:mod:`mmtransfer.transfer.strategies`).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support
from torch import nn

from mmtransfer.checkpoint import save_weights
from mmtransfer.config import TrainConfig
from mmtransfer.data import Examples, make_loader
from mmtransfer.transfer import strategies
from mmtransfer.transfer.freeze import count_parameters, is_frozen, trainable_names


@dataclass
class FitResult:
    best_epoch: int  # without validation: the last epoch, whose weights are kept
    best_val_loss: float | None  # None without validation
    epochs_run: int
    seconds: float
    history: list[dict] = field(default_factory=list)
    checkpoint: Path | None = None


def warmup_cosine(step: int, total: int, warmup: int) -> float:
    """Learning-rate factor: linear from 0 to 1 over ``warmup`` steps, then cosine down to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def train_mode(model: nn.Module) -> None:
    """Training mode, except for encoders that are wholly frozen: their dropout stays off and their
    BatchNorm statistics stay as they were, so a frozen encoder computes what it computed before training.
    Likewise every BatchNorm whose weight and bias are frozen (a frozen layer group) keeps its running statistics."""
    model.train()
    for encoder in getattr(model, "encoders", {}).values():
        if is_frozen(encoder):
            encoder.eval()
    for module in model.modules():
        # A BatchNorm without affine parameters has nothing to tell frozen from trained; it follows its encoder.
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.affine and is_frozen(module):
            module.eval()


def progress_bar(enabled: bool, console: Console | None = None) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[status]}"),
        console=console,
        disable=not enabled,
        transient=True,
    )


def _can_fuse(model: nn.Module) -> bool:
    """The fused AdamW kernel runs on the CPU from torch 2.4 on (before, only on CUDA-like devices)."""
    major, minor = (int(part) for part in torch.__version__.split(".")[:2])
    return (major, minor) >= (2, 4) and all(p.is_floating_point() for p in model.parameters())


def epoch_line(row: dict, epochs: int, seconds: float, best: bool) -> str:
    """One plain line per epoch, for logs and pipes: epoch, losses, validation accuracy, elapsed time."""
    line = f"epoch {row['epoch']}/{epochs}: train loss {row['train_loss']:.4f}"
    if row.get("val_loss") is not None:
        line += f", val loss {row['val_loss']:.4f}, val accuracy {row['val_accuracy']:.4f}"
        line += " (best)" if best else ""
    return line + f", {seconds:.1f} s"


def fit(
    model: nn.Module,
    train: Examples,
    val: Examples | None,
    cfg: TrainConfig,
    *,
    checkpoint: str | Path | None = None,
    desc: str = "fit",
    augment: dict[str, Callable[[torch.Tensor], torch.Tensor]] | None = None,
    console: Console | None = None,
    num_workers: int = 0,
) -> FitResult:
    """Train ``model`` in place; it ends holding the weights of the epoch with the lowest validation loss, or,
    when ``val`` is None (no labels to select with), those of the last epoch after exactly ``cfg.epochs``.

    Only parameters with ``requires_grad`` when ``fit`` starts may train; ``cfg.strategy`` decides which of them
    do in each epoch and at what peak rate per layer group. ``history`` records per epoch the trainable
    parameter count (``trainable``), the head's learning rate (``lr``) and every group's (``lr_groups``). When
    ``checkpoint`` is given, the best weights are written there (safetensors, atomically) each time the
    validation loss improves (every epoch without validation). ``augment`` maps input names to random transforms
    applied to training batches (never to validation). Progress: a bar when ``cfg.progress`` and the output is a
    terminal; otherwise, when a ``console`` is given, one plain line per epoch on it.
    """
    set_seed(cfg.seed)
    start = time.perf_counter()
    accelerator = Accelerator(cpu=cfg.cpu)
    main = accelerator.is_main_process
    show_bar = cfg.progress and main and (console or Console()).is_terminal
    log = console if (console is not None and main and not show_bar) else None
    train_loader = make_loader(train, cfg.batch_size, shuffle=True, seed=cfg.seed, num_workers=num_workers)
    val_loader = make_loader(val, max(cfg.batch_size, 256), num_workers=num_workers) if val is not None else None
    strategy = cfg.strategy
    strategies.prepare(model, strategy)  # lora: adapters into the HF backbones (a prepared model stays as it is)
    allowed = set(trainable_names(model))  # a strategy only freezes: what is frozen now stays frozen
    if not allowed:
        raise ValueError("fit: every parameter is frozen; nothing to train")
    if accelerator.num_processes > 1 and strategies.changes_over_epochs(strategy):
        # DDP registers the parameters that train when it wraps the model; one unfrozen later would not sync.
        raise ValueError(f"fit: strategy {strategy.name} changes what trains between epochs; run it on one process")
    # One optimizer for the whole run, holding every group, frozen ones too: AdamW skips a parameter without a
    # gradient (its weights and moments stay as they are), so a group unfrozen later simply starts training.
    # The fused kernel (CPU and CUDA) updates every tensor in one call: a third of the optimiser's time here.
    optimizer = torch.optim.AdamW(
        strategies.param_groups(model, strategy, cfg.lr, allowed),
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        fused=_can_fuse(model),
    )
    total = cfg.epochs * len(train_loader)
    warmup = int(cfg.warmup_fraction * total)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, total, warmup))
    model, optimizer, train_loader, scheduler = accelerator.prepare(model, optimizer, train_loader, scheduler)
    if val_loader is not None:
        val_loader = accelerator.prepare(val_loader)
    loss_fn = nn.CrossEntropyLoss()

    best_loss, best_epoch, best_state, bad_epochs = math.inf, 0, None, 0
    history: list[dict] = []
    with progress_bar(show_bar, console) as bar:
        task = bar.add_task(desc, total=cfg.epochs, status="")
        for epoch in range(1, cfg.epochs + 1):
            trainable = strategies.schedule(accelerator.unwrap_model(model), strategy, epoch, allowed)
            strategies.check_cached(trainable, train.names(), strategy, epoch)
            n_trainable, n_total = count_parameters(accelerator.unwrap_model(model))
            if epoch == 1 and (show_bar or log is not None):
                (log or bar.console).print(
                    strategies.describe(strategy, optimizer.param_groups, n_trainable, n_total), highlight=False
                )
            train_mode(accelerator.unwrap_model(model))
            train_loss, seen = 0.0, 0
            for inputs, labels in train_loader:
                if augment:
                    inputs = {**inputs, **{k: f(inputs[k]) for k, f in augment.items() if k in inputs}}
                loss = loss_fn(model(inputs), labels)
                optimizer.zero_grad(set_to_none=True)
                accelerator.backward(loss)
                optimizer.step()
                scheduler.step()
                train_loss += loss.item() * len(labels)
                seen += len(labels)
            lr_groups = {group["name"]: group["lr"] for group in optimizer.param_groups}
            row = {
                "epoch": epoch,
                "train_loss": train_loss / max(seen, 1),
                "val_loss": None,
                "val_accuracy": None,
                "lr": lr_groups.get("head", scheduler.get_last_lr()[-1]),
                "trainable": n_trainable,
                "lr_groups": lr_groups,
            }
            history.append(row)
            if val_loader is None:  # nothing selects: the latest weights are the result
                best_epoch = epoch
                if checkpoint is not None and main:
                    save_weights(accelerator.unwrap_model(model).state_dict(), checkpoint)
                status = f"train loss {row['train_loss']:.3f}"
            else:
                val_metrics = _evaluate_loader(model, val_loader, accelerator, loss_fn)
                row["val_loss"], row["val_accuracy"] = val_metrics["loss"], val_metrics["accuracy"]
                if val_metrics["loss"] < best_loss:
                    best_loss, best_epoch, bad_epochs = val_metrics["loss"], epoch, 0
                    best_state = copy.deepcopy(accelerator.unwrap_model(model).state_dict())
                    if checkpoint is not None and main:
                        save_weights(best_state, checkpoint)
                else:
                    bad_epochs += 1
                status = f"val loss {row['val_loss']:.3f} acc {row['val_accuracy']:.3f} (best ep {best_epoch})"
            bar.update(task, advance=1, status=status)
            if log is not None:
                seconds = time.perf_counter() - start
                line = epoch_line(row, cfg.epochs, seconds, best_epoch == epoch)
                log.print(line, highlight=False, markup=False, soft_wrap=True)
            if val_loader is not None and cfg.patience is not None and bad_epochs >= cfg.patience:
                if log is not None:
                    log.print(f"early stop: no better validation loss for {cfg.patience} epochs", markup=False)
                break
    model = accelerator.unwrap_model(model)
    if best_state is not None:
        model.load_state_dict(best_state)
    return FitResult(
        best_epoch=best_epoch,
        best_val_loss=best_loss if val_loader is not None else None,
        epochs_run=len(history),
        seconds=time.perf_counter() - start,
        history=history,
        checkpoint=Path(checkpoint) if checkpoint is not None else None,
    )


def evaluate(model: nn.Module, split: Examples, *, batch_size: int = 256, cpu: bool = False) -> dict:
    """Accuracy, macro-F1, mean cross-entropy, the confusion matrix (rows: true class, columns: predicted) and
    each class's precision, recall, F1 and support; ``classes`` names them where the model knows its names."""
    classes = getattr(model, "classes", None)
    accelerator = Accelerator(cpu=cpu)
    model, loader = accelerator.prepare(model, make_loader(split, batch_size))
    out = _evaluate_loader(model, loader, accelerator, nn.CrossEntropyLoss(), with_confusion=True)
    return {**out, "classes": classes} if classes is not None else out


@torch.no_grad()
def _evaluate_loader(model, loader, accelerator, loss_fn, with_confusion: bool = False) -> dict:
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
