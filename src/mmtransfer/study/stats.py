"""A study's statistics: per budget and arm, the mean and sample std over seeds; the gain over the reference
arm is the mean of the per-seed differences (same budget, same seed: the same labels and splits), with a 95 %
Student t interval on n - 1 degrees of freedom (mean ± t * sd / sqrt(n)).
"""

from __future__ import annotations

import math

import numpy as np

from mmtransfer.metrics import METRICS as REGISTERED
from mmtransfer.study.plan import FRACTIONS, METRICS, StudyConfig, budget_name

# Where each metric can lie: an interval is clipped to it (a mean of accuracies near 1 with a wide t interval
# would otherwise reach past 100 %); a difference of fractions lies in [-1, 1].
BOUNDS = {name: metric.bounds for name, metric in REGISTERED.items()}
GAIN_BOUNDS = {m: (-1.0, 1.0) for m in FRACTIONS}

STATS_METHOD = (
    "mean ± sample std over seeds; the gain over the reference arm is the mean of the per-seed differences "
    "(same budget and seed: the same labels and splits) with a {level} % Student t interval, "
    "mean ± t(n-1) * sd / sqrt(n), clipped to where the metric can lie (a mean accuracy to [0, 1], a difference "
    "of accuracies to [-1, 1])"
)


def paired_interval(a, b, confidence: float = 0.95, bounds: tuple | None = None) -> dict:
    """Mean of a - b (paired) with its Student t interval; no interval for fewer than 2 pairs."""
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    return mean_interval(d, confidence, bounds)


def mean_interval(values, confidence: float = 0.95, bounds: tuple | None = None) -> dict:
    """n, mean, sample std and the Student t interval of the mean; ``bounds`` (low, high; None: open) clip the
    interval to where the quantity can lie (an accuracy's to [0, 1])."""
    from scipy import stats  # about 2 s to import: not before a study has something to summarise

    v = np.asarray(values, dtype=float)
    n = len(v)
    out = {"n": n, "mean": float(v.mean()) if n else float("nan"), "std": float(v.std(ddof=1)) if n > 1 else 0.0}
    if n > 1:
        half = float(stats.t.ppf((1 + confidence) / 2, n - 1) * out["std"] / math.sqrt(n))
        low, high = out["mean"] - half, out["mean"] + half
        if bounds is not None:
            low = low if bounds[0] is None else max(low, bounds[0])
            high = high if bounds[1] is None else min(high, bounds[1])
        out.update(low=low, high=high)
    else:
        out.update(low=None, high=None)
    return out


def metric_intervals(scores: list[dict], confidence: float = 0.95) -> dict:
    """Each metric of METRICS that every one of ``scores`` holds: its mean and interval over them, clipped to
    the metric's range (an older record may hold fewer metrics)."""
    return {m: mean_interval([s[m] for s in scores], confidence, BOUNDS.get(m))
            for m in METRICS if all(m in s for s in scores)}  # fmt: skip


def summarise(records: list[dict], study: StudyConfig) -> dict:
    """Per budget: each arm's metrics over seeds, its wall time, its gain over the reference and its ablation."""
    ref = study.reference_arm
    out: dict = {}
    for b in study.budgets:
        name = budget_name(b)
        by_arm = {arm: {r["seed"]: r for r in records if r["arm"] == arm and r["budget_name"] == name}
                  for arm in study.arms}  # fmt: skip
        section: dict = {}
        for arm, runs in by_arm.items():
            if not runs:
                continue
            seeds = sorted(runs)
            entry = {
                "seeds": seeds,
                "labels_per_class": float(np.mean([r["labels"]["total"] / len(r["classes"]) for r in runs.values()])),
                "seconds": mean_interval([runs[s]["seconds"] for s in seeds], study.confidence),
            }
            entry |= metric_intervals([runs[s]["test"] for s in seeds], study.confidence)
            have = [m for m in METRICS if m in entry]
            paired = [s for s in seeds if s in by_arm.get(ref, {})]
            if arm != ref and paired:
                entry["gain"] = {
                    m: paired_interval([runs[s]["test"][m] for s in paired],
                                       [by_arm[ref][s]["test"][m] for s in paired], study.confidence,
                                       GAIN_BOUNDS.get(m))
                    for m in have if all(m in by_arm[ref][s]["test"] for s in paired)
                }  # fmt: skip
            before = [runs[s]["before_training"] for s in seeds if runs[s].get("before_training")]
            if len(before) == len(seeds):  # transfer.score_before_training: the model before and after training
                entry["before_training"] = metric_intervals(before, study.confidence)
                entry["training_gain"] = {
                    m: paired_interval([runs[s]["test"][m] for s in seeds], [b[m] for b in before], study.confidence,
                                       GAIN_BOUNDS.get(m))
                    for m in have if all(m in b for b in before)
                }  # fmt: skip
            ablated = [s for s in seeds if runs[s].get("ablation")]
            if ablated:
                metric = study.metric
                entry["ablation"] = {
                    inp: metric_intervals([runs[s]["ablation"][inp] for s in ablated], study.confidence)
                    | {"drop": mean_interval([runs[s]["test"][metric] - runs[s]["ablation"][inp][metric]
                                             for s in ablated], study.confidence)}
                    for inp in runs[ablated[0]]["ablation"]
                }  # fmt: skip
            section[arm] = entry
        out[name] = section
    return out
