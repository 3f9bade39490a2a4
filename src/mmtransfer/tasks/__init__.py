"""What a run predicts, as a component: one class per row (classification), a number (regression), or a set of
labels (multilabel). ``TASKS`` is the registry (the key is what ``data.task`` says); each task is a
:class:`Task` that owns its fitted state (``task.json`` in a run folder), loss, metrics, post-fit step,
decoding and what ``info`` says of it. ``METRICS`` names every metric with its direction and label.

A new task is one file with a :class:`Task` subclass and one line here (or :func:`register`)::

    from mmtransfer.tasks import register
    register(MyTask)  # MyTask.name is what data.task says
"""

from __future__ import annotations

from mmtransfer.config import TASK_NAMES
from mmtransfer.errors import UserError
from mmtransfer.tasks.base import Task, TaskStateError
from mmtransfer.tasks.classification import Classification
from mmtransfer.tasks.infer import MANY, infer_task, parse_number, parse_set, strata
from mmtransfer.tasks.metrics import (
    METRICS,
    Metric,
    multilabel_metrics,
    plot_predicted_vs_true,
    regression_metrics,
    tune_thresholds,
)
from mmtransfer.tasks.multilabel import Multilabel
from mmtransfer.tasks.regression import Regression

TASKS: dict[str, type[Task]] = {
    "classification": Classification,
    "regression": Regression,
    "multilabel": Multilabel,
}


def register(task: type[Task]) -> type[Task]:
    """Add a task to the registry under its ``name`` (usable as a class decorator)."""
    TASKS[task.name] = task
    if task.name not in TASK_NAMES:  # data.task accepts it
        TASK_NAMES.append(task.name)
    return task


def unregister(name: str) -> None:
    """Take a registered task out again (a test's own task)."""
    TASKS.pop(name, None)
    if name in TASK_NAMES:
        TASK_NAMES.remove(name)


def task_class(name: str) -> type[Task]:
    """The registered task ``name`` (a ValueError naming the registered ones otherwise)."""
    if name not in TASKS:
        raise UserError(f"task {name!r:.60}: expected one of {', '.join(TASKS)}")
    return TASKS[name]


DEFAULT = "classification"  # what a model built without a task predicts


def get_task(name: str = DEFAULT, **state) -> Task:
    """A new task ``name`` with ``state`` (defaults where not given); a model built without one classifies."""
    return task_class(name)(**state)


def task_from_state(state: dict, classes: list[str]) -> Task:
    """The task a ``task.json`` describes, every value checked (:class:`TaskStateError` names the field)."""
    name = state.get("task") if isinstance(state, dict) else None
    if not isinstance(name, str) or name not in TASKS:
        raise TaskStateError(f"task is {name!r:.60}; expected one of {', '.join(TASKS)}")
    return TASKS[name].from_state(state, classes)


__all__ = [
    "MANY",
    "METRICS",
    "TASKS",
    "Classification",
    "Metric",
    "Multilabel",
    "Regression",
    "Task",
    "TaskStateError",
    "get_task",
    "infer_task",
    "multilabel_metrics",
    "parse_number",
    "parse_set",
    "plot_predicted_vs_true",
    "register",
    "unregister",
    "regression_metrics",
    "strata",
    "task_class",
    "task_from_state",
    "tune_thresholds",
]
