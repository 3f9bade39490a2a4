"""What :func:`mmtransfer.train.fit` shows and records each epoch: the history row, the progress bar's status,
one plain line per epoch for logs and pipes, and why training stopped."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from mmtransfer.config import TrainConfig
from mmtransfer.tasks import METRICS


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


def epoch_row(epoch: int, train_loss: float, n_trainable: int, optimizer, scheduler) -> dict:
    """The history's row of an epoch before validation: its train loss, the head's and every group's learning
    rate, the trainable parameter count."""
    lr_groups = {group["name"]: group["lr"] for group in optimizer.param_groups}
    return {
        "epoch": epoch,
        "train_loss": train_loss,
        "val_loss": None,
        "val_accuracy": None,
        "lr": lr_groups.get("head", scheduler.get_last_lr()[-1]),
        "trainable": n_trainable,
        "lr_groups": lr_groups,
    }


def epoch_status(row: dict, best_epoch: int) -> str:
    """The progress bar's status after an epoch."""
    if row["val_loss"] is None:
        return f"train loss {row['train_loss']:.3f}"
    name, value = _val_score(row)
    return f"val loss {row['val_loss']:.3f} {name} {value:.3f} (best ep {best_epoch})"


def epoch_line(row: dict, epochs: int, seconds: float, best: bool, desc: str = "fit") -> str:
    """One plain line per epoch, for logs and pipes: epoch, losses, validation accuracy, elapsed time. "(best)"
    follows what selects the best epoch, the validation loss."""
    line = f"{'' if desc == 'fit' else desc + ' '}epoch {row['epoch']}/{epochs}: train loss {row['train_loss']:.4f}"
    if row.get("val_loss") is not None:
        name, value = _val_score(row)
        line += f", val loss {row['val_loss']:.4f}{' (best)' if best else ''}, val {name} {value:.4f}"
    return line + f", {seconds:.1f} s"


def _val_score(row: dict) -> tuple[str, float]:
    """The validation score an epoch shows: accuracy, or the task's own (R² for regression, micro-F1 for
    multilabel), labelled as the metrics registry names it."""
    for name, metric in METRICS.items():
        if row.get(f"val_{name}") is not None:
            return metric.label, row[f"val_{name}"]
    return "score", float("nan")


def _eta(seconds: float, epoch: int, epochs: int) -> str:
    left = seconds / epoch * (epochs - epoch)
    return f"{left:.0f} s" if left < 120 else f"{left / 60:.1f} min"


def stop_reason(cfg: TrainConfig, epoch: int, bad_epochs: int, has_val: bool, seconds: float) -> str | None:
    """Why training ends after ``epoch`` before ``cfg.epochs``: "early stop", "time limit", or None."""
    if has_val and cfg.patience is not None and bad_epochs >= cfg.patience:
        return "early stop"
    if cfg.time_limit is not None and seconds >= cfg.time_limit and epoch < cfg.epochs:
        return "time limit"
    return None


def report_epoch(
    log: Console | None, say: Console | None, row: dict, cfg: TrainConfig, stop: str | None, best_epoch: int,
    seconds: float, desc: str,
) -> None:  # fmt: skip
    """The epoch's line on ``log`` (with an ETA while epochs are left), then why training stops, if it does:
    early stopping on ``log``, the time limit on ``say`` (the log, or the progress bar's console)."""
    epoch = row["epoch"]
    if log is not None:
        line = epoch_line(row, cfg.epochs, seconds, best_epoch == epoch, desc)
        if epoch < cfg.epochs and not stop:
            line += f", about {_eta(seconds, epoch, cfg.epochs)} left"
        log.print(line, highlight=False, markup=False, soft_wrap=True)
    if stop == "early stop" and log is not None:
        log.print(
            f"early stop: no validation loss better by more than train.min_delta {cfg.min_delta:g} for "
            f"{cfg.patience} epochs",
            markup=False,
        )
    elif stop == "time limit" and say is not None:
        say.print(
            f"time limit: training stopped after epoch {epoch} of {cfg.epochs}, {seconds:.1f} s passing "
            f"train.time_limit {cfg.time_limit:g} s; the weights of epoch {best_epoch} are kept",
            markup=False,
            highlight=False,
        )
