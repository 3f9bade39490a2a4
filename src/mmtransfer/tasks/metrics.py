"""The metrics of every task (``METRICS``, the registry of their names, directions and labels, is
:mod:`mmtransfer.metrics`: the study, the CLI and ``info`` read it without importing torch).

Regression: RMSE, MAE (original units) and R^2 = 1 - SS_res / SS_tot. Multi-label: micro- and macro-F1, subset
accuracy, mAP; each label's threshold is chosen on the validation split (the best F1 of 0.05 ... 0.95).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from sklearn.metrics import average_precision_score, confusion_matrix, f1_score, precision_recall_fscore_support

from mmtransfer.metrics import METRICS, Metric  # noqa: F401 (the registry, re-exported)


def balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """The mean of each class's recall, over the classes present in ``y_true``."""
    present = np.unique(y_true)
    return float(np.mean([(y_pred[y_true == c] == c).mean() for c in present]))


def classification_metrics(logits: np.ndarray, y_true: np.ndarray, loss: float, detail: bool = False) -> dict:
    """n, ``loss`` (as the caller averaged it), accuracy, macro-F1 and balanced accuracy of logits [N, C]; with
    ``detail`` the confusion matrix and each class's precision, recall, F1 and support."""
    y_pred, y_true = np.asarray(logits).argmax(-1), np.asarray(y_true)
    classes = np.arange(np.asarray(logits).shape[-1])
    out = {
        "n": int(len(y_true)),
        "loss": loss,
        "accuracy": float((y_pred == y_true).mean()),
        "macro_f1": float(f1_score(y_true, y_pred, labels=classes, average="macro", zero_division=0)),
        "balanced_accuracy": balanced_accuracy(y_true, y_pred),
    }
    if detail:
        out["confusion"] = confusion_matrix(y_true, y_pred, labels=classes).tolist()
        precision, recall, f1, support = precision_recall_fscore_support(
            y_true, y_pred, labels=classes, zero_division=0
        )
        out["f1_per_class"] = f1.tolist()
        out["precision_per_class"] = precision.tolist()
        out["recall_per_class"] = recall.tolist()
        out["support_per_class"] = support.tolist()
    return out


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
    import matplotlib  # lazily on purpose: only a regression run draws, and matplotlib takes a second to load

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


def multilabel_metrics(probs: np.ndarray, true: np.ndarray, thresholds: np.ndarray | float = 0.5) -> dict:
    """n, loss (mean binary cross-entropy), micro- and macro-F1, subset accuracy (every label right) and mean
    average precision (over the labels with a positive row) of probabilities [N, L] against 0/1 targets [N, L]."""
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
