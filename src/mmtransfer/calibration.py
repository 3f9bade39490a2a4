"""Calibrated probabilities: temperature scaling (Guo et al., 2017) and the expected calibration error.

After training, one scalar T is fitted on the validation split: the temperature that minimises the negative
log-likelihood of softmax(logits / T). Dividing every logit by the same T > 0 never changes which class is
largest, so the predicted classes (and accuracy, F1) stay exactly as they were; only the probabilities move.
The run folder records T in ``task.json`` (its calibration section); loading the run applies it, so ``predict``,
``evaluate`` and ``export`` all give the calibrated probabilities.

ECE: the predictions are put into ``bins`` equal-width bins by their confidence (the largest probability);
ECE = sum over bins of (rows in the bin / all rows) * |accuracy in the bin - mean confidence in the bin|.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from mmtransfer.errors import UserError

BINS = 15
TEMPERATURE_RANGE = (0.05, 20.0)  # where fit_temperature searches; a loaded temperature must lie in it


def nll(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of softmax(logits / temperature)."""
    return float(torch.nn.functional.cross_entropy(logits.double() / temperature, labels.long()))


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The temperature in [0.05, 20] that minimises the NLL of ``labels`` (bounded search over log T); logits
    that are not finite are refused (:class:`CalibrationError`)."""
    from scipy.optimize import minimize_scalar

    logits, labels = logits.detach().double().cpu(), labels.detach().long().cpu()
    check_finite(logits, "the validation")
    result = minimize_scalar(
        lambda log_t: nll(logits, labels, math.exp(log_t)),
        bounds=(math.log(TEMPERATURE_RANGE[0]), math.log(TEMPERATURE_RANGE[1])),
        method="bounded",
        options={"xatol": 1e-6},
    )
    best = math.exp(float(result.x))
    if not 0.051 < best < 19.9:  # at a bound: no finite best (e.g. every validation row right, NLL -> 0 as T -> 0)
        return 1.0
    return best if nll(logits, labels, best) < nll(logits, labels, 1.0) else 1.0  # never worse than none


class CalibrationError(UserError):
    """A temperature cannot be fitted (the logits it would be fitted on are not finite)."""


def check_finite(logits: torch.Tensor, split: str = "the") -> None:
    """Refuse logits holding NaN or inf: the NLL over them is NaN at every temperature, and the search would
    return a meaningless one."""
    bad = ~torch.isfinite(logits).all(dim=-1)
    if bool(bad.any()):
        rows = torch.nonzero(bad).flatten().tolist()
        raise CalibrationError(
            f"calibration: {len(rows)} of {len(logits)} rows of {split} split have logits that are NaN or infinite "
            f"(the first: row {rows[0]} of the split); no temperature is fitted on them. Check those rows' inputs, "
            "or lower train.lr"
        )


def reliability(probs: np.ndarray, labels: np.ndarray, bins: int = BINS) -> dict:
    """Per-bin counts, accuracy and mean confidence, and the ECE over them."""
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels)
    confidence, predicted = probs.max(axis=1), probs.argmax(axis=1)
    correct = (predicted == labels).astype(np.float64)
    # bin b holds confidence in (b / bins, (b + 1) / bins]; a confidence of exactly 0 goes in the first
    which = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    count = np.bincount(which, minlength=bins)
    acc = np.bincount(which, weights=correct, minlength=bins) / np.maximum(count, 1)
    conf = np.bincount(which, weights=confidence, minlength=bins) / np.maximum(count, 1)
    ece = float(np.sum(count / max(len(labels), 1) * np.abs(acc - conf)))
    return {"ece": ece, "bins": bins, "count": count.tolist(), "accuracy": acc.tolist(), "confidence": conf.tolist()}


def ece(probs: np.ndarray, labels: np.ndarray, bins: int = BINS) -> float:
    return reliability(probs, labels, bins)["ece"]


def softmax(logits: torch.Tensor, temperature: float = 1.0) -> np.ndarray:
    return torch.softmax(logits.double() / temperature, dim=-1).numpy()


def plot_reliability(before: dict, after: dict, temperature: float, split: str, path: Path) -> Path:
    """A reliability diagram: accuracy against confidence per bin, before and after scaling, with the diagonal."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 4.2), sharey=True)
    for ax, r, title in ((axes[0], before, "before (T = 1)"), (axes[1], after, f"after (T = {temperature:.3f})")):
        edges = np.linspace(0, 1, r["bins"] + 1)
        centres, width = (edges[:-1] + edges[1:]) / 2, 1 / r["bins"]
        count = np.asarray(r["count"])
        acc = np.where(count > 0, r["accuracy"], np.nan)
        conf = np.where(count > 0, r["confidence"], np.nan)
        ax.bar(centres, acc, width=width * 0.95, color="#4c72b0", alpha=0.8, label="accuracy in the bin")
        ax.bar(centres, np.abs(conf - acc), bottom=np.fmin(acc, conf), width=width * 0.95, facecolor="none",
               edgecolor="#c44e52", hatch="///", lw=0.8, label="gap to the mean confidence")  # fmt: skip
        ax.plot([0, 1], [0, 1], color="black", lw=0.8, ls="--")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence (largest probability)")
        ax.set_title(f"{title}: ECE {100 * r['ece']:.2f} %", fontsize=10)
    axes[0].set_ylabel("accuracy")
    axes[0].legend(fontsize=8, loc="upper left")
    fig.suptitle(f"reliability on the {split} split ({sum(before['count'])} rows, {before['bins']} bins)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
