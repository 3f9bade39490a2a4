"""``METRICS``: one registry of every metric a task's evaluation reports as one number, with its direction
("max": higher is better, "min": lower), its label for people, whether it is a fraction (shown in percent, gains
in percentage points), the bounds its values lie in and its format. The study, the CLI, ``info`` and the tasks
read it; it imports nothing, so a study file or a command line is checked without loading torch. A new task's
new metric is one line here (the task computes it: :mod:`mmtransfer.tasks`).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Metric:
    """A metric's ``direction`` ("max": higher is better, "min": lower), ``label`` for people, whether it is a
    ``fraction`` (shown in percent, gains in points), the ``bounds`` its values lie in, and its ``fmt``."""

    direction: str
    label: str
    fraction: bool = False
    bounds: tuple[float | None, float | None] = (0.0, 1.0)
    fmt: str = ".4g"


# Every metric a task's evaluation reports as one number, in the order tables show them.
METRICS: dict[str, Metric] = {
    "accuracy": Metric("max", "accuracy", fraction=True),
    "macro_f1": Metric("max", "macro-F1", fraction=True),
    "balanced_accuracy": Metric("max", "balanced accuracy", fraction=True),
    "micro_f1": Metric("max", "micro-F1", fraction=True),
    "subset_accuracy": Metric("max", "subset accuracy", fraction=True),
    "map": Metric("max", "mAP", fraction=True),
    "r2": Metric("max", "R²", bounds=(None, 1.0), fmt=".3f"),
    "rmse": Metric("min", "RMSE", bounds=(0.0, None)),
    "mae": Metric("min", "MAE", bounds=(0.0, None)),
}
