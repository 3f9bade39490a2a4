"""Where the study's report used to live; it is :mod:`mmtransfer.study.report` now. This module stays so that
``from mmtransfer import study_report`` (tests, older scripts) keeps working: nothing patches these names, they are
read, so re-exporting them is enough."""

from mmtransfer.study.report import (
    budget_phrase,
    conclusions,
    confusion_figure,
    learning_curve_figure,
    markdown,
    print_summary,
    settings,
    tables,
    to_html,
    verdict,
    write_plots,
)

__all__ = [
    "budget_phrase",
    "conclusions",
    "confusion_figure",
    "learning_curve_figure",
    "markdown",
    "print_summary",
    "settings",
    "tables",
    "to_html",
    "verdict",
    "write_plots",
]
