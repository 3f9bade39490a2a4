"""Training logs people already read: ``history.csv`` (one row per epoch), TensorBoard event files where the
``[tensorboard]`` extra is installed, and a learning-curve PNG (losses and validation accuracy per epoch)."""

from __future__ import annotations

import csv
from pathlib import Path

from mmtransfer.runfolder import RunFolder

COLUMNS = ["epoch", "train_loss", "val_loss", "val_accuracy", "lr", "trainable", "seconds"]


class RunLog:
    """Appends one row per epoch to ``history.csv`` and, if TensorBoard is installed, to ``tensorboard/``."""

    def __init__(self, folder: Path, *, resume: bool = False):
        self.folder = Path(folder)
        self.csv, self.curve, tensorboard = RunFolder(folder).log_files()
        if not resume or not self.csv.is_file():
            with self.csv.open("w", newline="") as f:
                csv.writer(f).writerow(COLUMNS)
        self.writer = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(tensorboard))
        except ImportError:  # the optional extra is not installed: CSV and PNG only
            pass

    def epoch(self, row: dict, seconds: float) -> None:
        with self.csv.open("a", newline="") as f:
            csv.writer(f).writerow([_cell(row.get(c)) for c in COLUMNS[:-1]] + [f"{seconds:.2f}"])
        if self.writer is not None:
            step = row["epoch"]
            self.writer.add_scalar("loss/train", row["train_loss"], step)
            if row.get("val_loss") is not None:
                self.writer.add_scalar("loss/val", row["val_loss"], step)
                if row.get("val_accuracy") is not None:
                    self.writer.add_scalar("accuracy/val", row["val_accuracy"], step)
                if row.get("val_r2") is not None:
                    self.writer.add_scalar("r2/val", row["val_r2"], step)
            self.writer.add_scalar("lr", row["lr"], step)
            self.writer.flush()

    def close(self, history: list[dict]) -> None:
        if self.writer is not None:
            self.writer.close()
        if history:
            plot_curves(history, self.curve)


def _cell(value) -> str:
    if value is None:
        return ""
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def plot_curves(history: list[dict], path: Path) -> None:
    """Train and validation loss (left axis) and validation accuracy (right axis) per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(6, 3.8))
    ax.plot(epochs, [h["train_loss"] for h in history], label="train loss", color="tab:blue")
    key, name = ("val_accuracy", "validation accuracy")
    if any(h.get("val_r2") is not None for h in history):
        key, name = ("val_r2", "validation R²")  # a regression run
    if any(h.get("val_micro_f1") is not None for h in history):
        key, name = ("val_micro_f1", "validation micro-F1")  # a multi-label run
    val = [(h["epoch"], h["val_loss"], h.get(key)) for h in history if h.get("val_loss") is not None]
    if val:
        ax.plot([v[0] for v in val], [v[1] for v in val], label="validation loss", color="tab:orange")
        right = ax.twinx()
        right.plot([v[0] for v in val], [v[2] for v in val], label=name, color="tab:green", ls="--")
        right.set_ylabel(name)
        right.set_ylim(min(0.0, min(v[2] for v in val)) if key == "val_r2" else 0, 1)
        right.legend(loc="center right", fontsize=8)
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title("learning curve", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
