"""What a run predicts: one class per row (classification), a number (regression), or a set of labels
(multilabel: cells like ``cat;dog``, split on ``data.label_separator``).

``data.task: auto`` reads the label column: cells holding the separator are label sets; numbers with more than
``MANY`` distinct values are a regression target; anything else names classes. The guess is printed with the
column binding, so it can be overridden.

Multi-label: one sigmoid output per label and binary cross-entropy; after training each label's threshold is
chosen on the validation split (the best F1 of 0.05 ... 0.95), kept in ``target.json`` and used by ``predict``.

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


def infer_task(labels: list[str], task: str, label: str, separator: str = ";") -> tuple[str, str]:
    """(task, why) for the non-empty label cells ``labels``: the configured one, or the guess for ``auto``."""
    if task != "auto":
        return task, f"data.task {task}"
    sets = sum(separator in t for t in labels)
    if sets:
        return "multilabel", (
            f"inferred: {sets} cell(s) of column {label!r} hold several labels separated by {separator!r} "
            "(data.label_separator); set data.task: classification to read each cell as one class"
        )
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
    if values.ndim == 2:  # label sets: one stratum (no stratification)
        return np.zeros(len(values), dtype=np.int64)
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


def parse_set(text: str, separator: str) -> list[str]:
    """The labels of a multi-label cell: split on ``separator``, stripped, empty parts dropped, sorted, unique."""
    return sorted({part.strip() for part in str(text).split(separator) if part.strip()})


def multilabel_metrics(probs: np.ndarray, true: np.ndarray, thresholds: np.ndarray | float = 0.5) -> dict:
    """n, loss (mean binary cross-entropy), micro- and macro-F1, subset accuracy (every label right) and mean
    average precision (over the labels with a positive row) of probabilities [N, L] against 0/1 targets [N, L]."""
    from sklearn.metrics import average_precision_score, f1_score

    probs, true = np.asarray(probs, dtype=np.float64), np.asarray(true, dtype=np.int64)
    pred = (probs >= np.asarray(thresholds)).astype(np.int64)
    eps = 1e-12
    loss = -np.mean(true * np.log(np.clip(probs, eps, 1)) + (1 - true) * np.log(np.clip(1 - probs, eps, 1)))
    with_positive = true.sum(0) > 0
    ap = [average_precision_score(true[:, j], probs[:, j]) for j in np.flatnonzero(with_positive)]
    return {
        "n": int(len(true)),
        "loss": float(loss),
        "micro_f1": float(f1_score(true, pred, average="micro", zero_division=0)),
        "macro_f1": float(f1_score(true, pred, average="macro", zero_division=0)),
        "subset_accuracy": float((pred == true).all(axis=1).mean()),
        "map": float(np.mean(ap)) if ap else float("nan"),
        "f1_per_label": f1_score(true, pred, average=None, zero_division=0).tolist(),
        "support_per_label": true.sum(0).tolist(),
    }


def tune_thresholds(probs: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Per label, the threshold in 0.05 ... 0.95 with the best F1 on these rows (of equals, the one nearest
    0.5); 0.5 for a label with no positive row."""
    probs, true = np.asarray(probs, dtype=np.float64), np.asarray(true, dtype=np.int64)
    grid = np.round(np.arange(0.05, 0.951, 0.05), 2)
    out = np.full(true.shape[1], 0.5)
    for j in range(true.shape[1]):
        if true[:, j].sum() == 0:
            continue
        pred = probs[:, j][None, :] >= grid[:, None]  # [thresholds, rows]
        tp = (pred & (true[:, j] == 1)).sum(1)
        f1 = 2 * tp / np.maximum(pred.sum(1) + true[:, j].sum(), 1)
        best = grid[np.isclose(f1, f1.max())]
        out[j] = best[np.argmin(np.abs(best - 0.5))]  # of equally good thresholds, the one nearest 0.5
    return out
