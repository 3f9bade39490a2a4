"""The task registry: every registered task round-trips its state, and a fourth task is one class and one
registry line (a test-only ordinal task, fitted, predicted and described through the ordinary paths)."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import run_cli

from mmtransfer import artifact, config
from mmtransfer.display import make_console
from mmtransfer.runs import fit_run
from mmtransfer.tasks import (
    METRICS,
    TASKS,
    Classification,
    Task,
    TaskStateError,
    get_task,
    register,
    task_from_state,
    unregister,
)
from mmtransfer.tasks.metrics import classification_metrics
from mmtransfer.tasks.objectives import Classification as CrossEntropy

LEVELS = ["high", "low", "mid"]  # labels.json order (sorted); the order of the levels is the task's own


class Ordinal(Task):
    """A toy task: classes with an order; cross-entropy, and the mean distance in levels as its MAE."""

    name = "ordinal"
    fields = ("task", "label", "order")

    def __init__(self, label="label", order=None, **_):
        super().__init__(label)
        self.order = order or ["low", "mid", "high"]

    def objective(self, labels, width, class_weights):
        objective = CrossEntropy()
        objective.task = self
        return objective

    def batch_loss(self, objective=None):
        return torch.nn.CrossEntropyLoss()

    def metrics(self, outputs, labels, *, loss=None, objective=None, detail=False):
        out = classification_metrics(outputs.numpy(), labels.numpy(), loss)
        rank = np.array([self.order.index(c) for c in LEVELS])
        out["mae"] = float(np.abs(rank[outputs.numpy().argmax(-1)] - rank[labels.numpy()]).mean())
        return out

    def info(self, classes):
        return f"task: ordinal of {self.label!r}; levels {' < '.join(self.order)}"

    def summary(self, test):
        return f"test accuracy {test['accuracy']:.4f}, MAE {test['mae']:.4f} levels (n={test['n']})"

    def state(self):
        return {**super().state(), "order": self.order}


@pytest.fixture
def ordinal():
    register(Ordinal)  # the one line a new task needs (data.task accepts it from then on)
    yield Ordinal
    unregister("ordinal")


def _table(folder):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(150, 2))
    y = np.where(x[:, 0] < -0.4, "low", np.where(x[:, 0] < 0.4, "mid", "high"))
    path = folder / "levels.csv"
    pd.DataFrame({"a": x[:, 0], "b": x[:, 1], "y": y}).to_csv(path, index=False)
    return path


def test_a_fourth_task_is_one_class_and_one_registry_line(ordinal, tmp_path):
    table = _table(tmp_path)
    cfg = config.validate({"data": {"table": str(table), "label": "y", "task": "ordinal"},
                           "train": {"epochs": 30, "lr": 0.05, "batch_size": 16, "progress": False}})  # fmt: skip
    metrics = fit_run(cfg, tmp_path / "run", make_console(quiet=True))
    assert metrics["classes"] == LEVELS and metrics["test"]["accuracy"] > 0.8 and metrics["test"]["mae"] < 0.3
    assert json.loads((tmp_path / "run" / "task.json").read_text()) == {
        "task": "ordinal", "label": "y", "order": ["low", "mid", "high"]}  # fmt: skip
    run = artifact.load(tmp_path / "run")
    assert isinstance(run.model.task, Ordinal) and run.model.task == "ordinal"
    result = run_cli("predict", tmp_path / "run", table, "--out", tmp_path / "p.csv", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    pred = pd.read_csv(tmp_path / "p.csv")
    assert list(pred.columns) == ["row", "prediction", "p_high", "p_low", "p_mid", "y"]
    assert (pred["prediction"] == pred["y"]).mean() > 0.8
    info = run_cli("info", tmp_path / "run", cwd=tmp_path)
    assert info.returncode == 0, info.stderr
    assert "task: ordinal of 'y'; levels low < mid < high" in info.stdout and "MAE" in info.stdout


@pytest.mark.parametrize("name", ["classification", "regression", "multilabel"])
def test_every_task_round_trips_its_state(name):
    classes = ["a", "b"] if name != "regression" else ["y"]
    task = get_task(name, label="y", **({"labels": classes} if name == "multilabel" else {}))
    again = task_from_state(json.loads(json.dumps(task.state())), classes)
    assert type(again) is TASKS[name] and again.state() == task.state() and again == name
    assert task.score in METRICS and task.selection in METRICS and task.shown in METRICS


def test_the_model_output_step_is_the_tasks():
    logits = torch.tensor([[2.0, 0.0], [0.0, 4.0]])
    calibrated = Classification("y", {"temperature": 2.0})
    assert torch.equal(calibrated.output(logits), logits / 2) and torch.equal(calibrated.raw(logits / 2), logits)
    regression = get_task("regression", mean=10.0, std=2.0)
    assert regression.output(logits).tolist() == [14.0, 10.0]
    assert get_task("multilabel", labels=["a", "b"]).rows(np.array([[0.7, 0.2]]), ["a", "b"]) == [["a", "0.7", "0.2"]]


def test_an_unknown_task_or_field_is_named():
    with pytest.raises(TaskStateError, match="task is 'nonsense'; expected one of classification, regression"):
        task_from_state({"task": "nonsense"}, ["a"])
    with pytest.raises(TaskStateError, match="extra: not a field of a classification task"):
        task_from_state({"task": "classification", "extra": 1}, ["a"])
    with pytest.raises(ValueError, match="task 'ordinal': expected one of"):
        get_task("ordinal")


def test_data_task_accepts_the_registered_tasks_and_names_a_wrong_one():
    assert config.TASK_NAMES == list(TASKS)  # the names a config is checked against are the registry's
    with pytest.raises(config.ConfigError, match=r"data.task.*expected auto or one of classification, regression"):
        config.validate({"data": {"task": "ordinal"}})
    register(Ordinal)
    try:
        assert config.validate({"data": {"task": "ordinal"}}).data.task == "ordinal"
    finally:
        unregister("ordinal")
    assert "ordinal" not in config.TASK_NAMES
