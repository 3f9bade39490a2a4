"""``mmtransfer study``: label budgets x seeds x arms, each cell a ``fit`` + ``evaluate`` on the same test split.

By concern: :mod:`~mmtransfer.study.plan` (the study file, its cells, sources and placeholders),
:mod:`~mmtransfer.study.engine` (the scheduler and its executors: serial, processes, Ray),
:mod:`~mmtransfer.study.stats` (intervals, paired differences), :mod:`~mmtransfer.study.report` (Markdown, HTML,
plots) and :mod:`~mmtransfer.study.auto` (``--auto``). The names below are the package's public face, as
``from mmtransfer import study`` has always offered them.
"""

from mmtransfer.study.auto import AUTO_STRATEGIES, auto_study, recommend
from mmtransfer.study.engine import QUIET_ENV, Study, _quiet_libraries, describe, environment, run_cell
from mmtransfer.study.plan import (
    FRACTIONS,
    LOWER_BETTER,
    METRICS,
    PLACEHOLDER,
    Budget,
    StudyConfig,
    _placeholders,
    budget_label,
    budget_name,
    cell_config,
    cell_id,
    cells_of,
    fill,
    load_study,
    source_cells,
)
from mmtransfer.study.report import print_summary
from mmtransfer.study.stats import (
    BOUNDS,
    GAIN_BOUNDS,
    STATS_METHOD,
    mean_interval,
    metric_intervals,
    paired_interval,
    summarise,
)

__all__ = [
    "AUTO_STRATEGIES",
    "BOUNDS",
    "FRACTIONS",
    "GAIN_BOUNDS",
    "LOWER_BETTER",
    "METRICS",
    "PLACEHOLDER",
    "QUIET_ENV",
    "STATS_METHOD",
    "Budget",
    "Study",
    "StudyConfig",
    "_placeholders",
    "_quiet_libraries",
    "auto_study",
    "budget_label",
    "budget_name",
    "cell_config",
    "cell_id",
    "cells_of",
    "describe",
    "environment",
    "fill",
    "load_study",
    "mean_interval",
    "metric_intervals",
    "paired_interval",
    "print_summary",
    "recommend",
    "run_cell",
    "source_cells",
    "summarise",
]
