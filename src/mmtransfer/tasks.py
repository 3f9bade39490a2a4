"""What a run predicts: one class per row (classification) or a number (regression).

``data.task: auto`` reads the label column: numbers with more than ``MANY`` distinct values are a regression
target, anything else names classes. The guess is printed with the column binding, so it can be overridden.

Regression: the targets are standardised with the train labels' mean and std (recorded in the run folder's
``target.json``); the model's output is in the original units (the head's value * std + mean), so ``predict``
and the export give values a person can read. Metrics: RMSE, MAE (original units) and R^2 = 1 - SS_res / SS_tot.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

MANY = 20  # a number column with more distinct values than this is read as a regression target


def parse_number(text: str) -> float | None:
    """The number a label cell holds (None when it is not a number)."""
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def infer_task(labels: list[str], task: str, label: str) -> tuple[str, str]:
    """(task, why) for the non-empty label cells ``labels``: the configured one, or the guess for ``auto``."""
    if task != "auto":
        return task, f"data.task {task}"
    numbers = [parse_number(t) for t in labels]
    distinct = len(set(labels))
    if labels and all(n is not None for n in numbers) and distinct > MANY:
        return "regression", (
            f"inferred: column {label!r} holds numbers with {distinct} distinct values; set data.task: "
            "classification to read them as classes"
        )
    return "classification", (
        f"inferred: column {label!r} holds {distinct} distinct value(s)"
        + ("; set data.task: regression to predict them as numbers" if all(n is not None for n in numbers) else "")
    )


def strata(values: np.ndarray, bins: int = 5) -> np.ndarray:
    """Groups for stratified splitting: integer class ids as they are; numbers in quantile bins (at most
    ``bins``, and about 10 rows each at least), so every split spans the target's range."""
    values = np.asarray(values)
    if not np.issubdtype(values.dtype, np.floating):
        return values
    q = max(1, min(bins, len(values) // 10))
    if q == 1:
        return np.zeros(len(values), dtype=np.int64)
    edges = np.quantile(values, np.linspace(0, 1, q + 1)[1:-1])
    return np.searchsorted(edges, values, side="right").astype(np.int64)


def regression_metrics(pred: np.ndarray, true: np.ndarray, std: float = 1.0) -> dict:
    """n, loss (MSE of the standardised values, what training minimises), RMSE, MAE and R^2 in original units."""
    pred, true = np.asarray(pred, dtype=np.float64), np.asarray(true, dtype=np.float64)
    err = pred - true
    ss_tot = float(np.sum((true - true.mean()) ** 2))
    return {
        "n": int(len(true)),
        "loss": float(np.mean(err**2) / std**2),
        "rmse": float(math.sqrt(np.mean(err**2))),
        "mae": float(np.mean(np.abs(err))),
        "r2": float(1 - np.sum(err**2) / ss_tot) if ss_tot > 0 else float("nan"),
    }


def plot_predicted_vs_true(pred, true, path: str | Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pred, true = np.asarray(pred, dtype=float), np.asarray(true, dtype=float)
    m = regression_metrics(pred, true)
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(true, pred, s=10, alpha=0.6, color="#4c72b0")
    low, high = float(min(true.min(), pred.min())), float(max(true.max(), pred.max()))
    ax.plot([low, high], [low, high], color="black", lw=0.8, ls="--", label="predicted = true")
    ax.set_xlabel("true")
    ax.set_ylabel("predicted")
    ax.set_title(f"{title}\nn={m['n']}, RMSE {m['rmse']:.4g}, MAE {m['mae']:.4g}, R² {m['r2']:.3f}", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
