"""Regression: the task inferred from the label column, standardised targets, RMSE / MAE / R², predict and
export in the target's units, bad labels named by row, grafting never across tasks, studies."""

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import run_cli
from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

from mmtransfer import artifact
from mmtransfer.tasks import infer_task, regression_metrics, strata


def test_metrics_equal_scikit_learn_on_a_fixed_prediction():
    true = np.array([3.0, -0.5, 2.0, 7.0, 4.2])
    pred = np.array([2.5, 0.0, 2.0, 8.0, 3.9])
    m = regression_metrics(pred, true, std=2.0)
    assert m["rmse"] == pytest.approx(np.sqrt(mean_squared_error(true, pred)))
    assert m["mae"] == pytest.approx(mean_absolute_error(true, pred))
    assert m["r2"] == pytest.approx(r2_score(true, pred))
    assert m["loss"] == pytest.approx(mean_squared_error(true, pred) / 4) and m["n"] == 5


@pytest.mark.parametrize(
    "values, task",
    [
        ([f"{x:.2f}" for x in np.linspace(0, 10, 50)], "regression"),  # numbers, 50 distinct values
        ([str(i % 10) for i in range(200)], "classification"),  # digits 0-9: classes
        (["cat", "dog"] * 30, "classification"),
        ([str(i) for i in range(15)] * 3, "classification"),  # 15 distinct numbers: few enough to be classes
        (["1.5", "x"] + [str(i) for i in range(40)], "classification"),  # one cell is not a number
    ],
)
def test_the_task_is_inferred_from_typical_label_columns(values, task):
    got, why = infer_task(values, "auto", "y")
    assert got == task and "inferred" in why
    assert infer_task(values, "classification", "y")[0] == "classification"  # a set task is kept


def test_numbers_are_stratified_by_quantile_bins():
    values = np.arange(100, dtype=np.float64)
    groups = strata(values)
    assert sorted(np.bincount(groups).tolist()) == [20] * 5 and (np.diff(groups) >= 0).all()
    assert strata(np.array([0, 1, 1])).tolist() == [0, 1, 1]  # class ids as they are


def regression_table(folder, n: int = 240, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3))
    y = 100 + 30 * x[:, 0] - 20 * x[:, 1] + rng.normal(scale=3, size=n)  # a price, say: mean 100, std ~36
    df = pd.DataFrame({"a": x[:, 0], "b": x[:, 1], "c": x[:, 2], "price": np.round(y, 3)})
    path = folder / "prices.csv"
    df.to_csv(path, index=False)
    return path


def cli(*args, cwd):
    """``mmtransfer ARGS`` in this process (conftest.run_cli): returncode, stdout and stderr as a subprocess's."""
    return run_cli(*args, cwd=cwd)


@pytest.fixture(scope="module")
def regression_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("regression")
    table = regression_table(folder)
    cfg = folder / "c.yaml"
    train = {"epochs": 80, "lr": 0.01, "patience": 20, "progress": False}
    cfg.write_text(yaml.safe_dump({"data": {"table": "prices.csv", "label": "price"}, "train": train}))
    result = cli("fit", cfg, "--out", folder / "run", cwd=folder)
    assert result.returncode == 0, result.stderr
    return folder, table, folder / "run", result.stdout


def test_a_regression_run_learns_and_reports_in_the_targets_units(regression_run):
    folder, table, run, out = regression_run
    assert "task: regression (inferred: column 'price' holds numbers with 240 distinct values" in out
    metrics = json.loads((run / "metrics.json").read_text())
    test = metrics["test"]
    assert test["r2"] > 0.9 and test["rmse"] < 12 and set(test) >= {"n", "rmse", "mae", "r2", "loss"}
    assert "accuracy" not in test and metrics["classes"] == ["price"] and "calibration" not in metrics
    target = json.loads((run / "task.json").read_text())
    train_rows = json.loads((run / "splits.json").read_text())["rows"]["train"]
    y = pd.read_csv(table)["price"].to_numpy()
    assert target["mean"] == pytest.approx(y[train_rows].mean()) and target["std"] == pytest.approx(
        y[train_rows].std(ddof=1), rel=1e-6
    )  # fitted on the train labels only
    assert (run / "predicted_vs_true.png").stat().st_size > 10_000
    assert "rmse" in out and "r2" in out
    assert yaml.safe_load((run / "config.yaml").read_text())["data"]["task"] == "regression"  # as resolved


def test_save_load_predict_gives_the_same_values_in_the_targets_units(regression_run, tmp_path):
    folder, table, run, _ = regression_run
    result = cli("predict", run, table, "--out", tmp_path / "p.csv", cwd=folder)
    assert result.returncode == 0, result.stderr
    pred = pd.read_csv(tmp_path / "p.csv")
    assert list(pred.columns) == ["row", "prediction", "price"]
    test_rows = json.loads((run / "splits.json").read_text())["rows"]["test"]
    p, y = pred["prediction"].to_numpy()[test_rows], pred["price"].to_numpy()[test_rows]
    assert regression_metrics(p, y)["rmse"] == pytest.approx(
        json.loads((run / "metrics.json").read_text())["test"]["rmse"], rel=1e-4
    )  # the loaded run predicts what the trained one scored
    copy = artifact.copy_run(run, tmp_path / "copy")  # save -> load -> predict: identical
    assert cli("predict", copy, table, "--out", tmp_path / "q.csv", cwd=folder).returncode == 0
    assert pd.read_csv(tmp_path / "q.csv").equals(pred)
    evaluated = cli("evaluate", run, table, "--png", tmp_path / "e.png", "--json", tmp_path / "e.json", cwd=folder)
    assert evaluated.returncode == 0 and (tmp_path / "e.png").is_file()
    assert json.loads((tmp_path / "e.json").read_text())["n"] == 240
    info = cli("info", run, cwd=folder)
    assert "task: regression of 'price'" in info.stdout and "test RMSE" in info.stdout


def test_export_gives_the_value_in_the_targets_units(regression_run, tmp_path):
    pytest.importorskip("onnxruntime")
    import onnxruntime as ort

    from mmtransfer.export import export_onnx, sample_batch

    loaded = artifact.load(regression_run[2])
    described = export_onnx(loaded, tmp_path / "m.onnx")
    assert described["task"] == "regression" and described["outputs"][0]["shape"] == ["batch"]
    batch = sample_batch(loaded)
    got = ort.InferenceSession(str(tmp_path / "m.onnx")).run(None, {k: v.numpy() for k, v in batch.items()})[0]
    np.testing.assert_allclose(got, loaded.model(batch).detach().numpy(), rtol=1e-4, atol=1e-3)
    assert 30 < float(np.mean(got)) < 170  # prices, not standardised values


@pytest.mark.parametrize(
    "change, message",
    [
        ({5: "expensive"}, "row 5, column 'price': 'expensive' is not a number (data.task regression)"),
        ({7: "inf"}, "row 7, column 'price': 'inf' is not a finite number"),
        ({3: ""}, "row 3, column 'price': missing label"),
    ],
)
def test_a_bad_regression_target_is_named_before_training(tmp_path, change, message):
    df = pd.read_csv(regression_table(tmp_path)).astype({"price": object})
    for row, value in change.items():
        df.loc[row, "price"] = value
    df.to_csv(tmp_path / "bad.csv", index=False)
    args = ["fit", "--set", "data.table=bad.csv", "--set", "data.label=price", "--set", "data.task=regression"]
    result = cli(*args, "--out", tmp_path / "r", cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.startswith("error:") and message in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "r" / "model.safetensors").exists()
    skipped = cli(*args, "--set", "data.on_bad_rows=skip", "--set", "train.epochs=2", "--out", tmp_path / "s",
                  cwd=tmp_path)  # fmt: skip
    assert skipped.returncode == 0, skipped.stderr
    assert "skipped 1 of 240 rows" in skipped.stdout


def test_k_per_class_is_refused_for_a_regression_target(tmp_path):
    regression_table(tmp_path)
    result = cli("fit", "--set", "data.table=prices.csv", "--set", "data.label=price", "--set", "data.k_per_class=5",
                 "--out", tmp_path / "r", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 2 and "give the budget as data.label_fraction" in result.stderr


@pytest.mark.slow
def test_a_regression_head_is_never_grafted_from_a_classification_head(tmp_path):
    df = pd.read_csv(regression_table(tmp_path))
    df["kind"] = np.where(df["price"] > 100, "dear", "cheap")
    df.drop(columns="price").to_csv(tmp_path / "kinds.csv", index=False)
    source = cli("fit", "--set", "data.table=kinds.csv", "--set", "data.label=kind", "--set", "train.epochs=2",
                 "--out", tmp_path / "src", cwd=tmp_path)  # fmt: skip
    assert source.returncode == 0, source.stderr
    target = cli("fit", "--set", "data.table=prices.csv", "--set", "data.label=price", "--set", "train.epochs=2",
                 "--set", f"transfer.source={tmp_path / 'src'}", "--out", tmp_path / "dst", cwd=tmp_path)  # fmt: skip
    assert target.returncode == 0, target.stderr
    records = json.loads((tmp_path / "dst" / "transfer_report.json").read_text())["graft"]["records"]
    state = {r["target"]: (r["state"], r["reason"]) for r in records}
    assert state["head.out.weight"] == (
        "skipped",
        "a regression head is never grafted from a classification head: newly initialised",
    )
    assert sum(s == "copied" for s, _ in state.values()) >= 2  # the encoder moved


@pytest.mark.slow
def test_a_study_of_a_regression_target_ranks_by_r2(tmp_path):
    regression_table(tmp_path)
    base = {"data": {"table": "prices.csv", "label": "price"}, "train": {"epochs": 15, "lr": 0.01}}
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    spec = {"base": "base.yaml", "budgets": [0.3, "all"], "seeds": 2, "metric": "r2",
            "arms": {"mse": {}, "huber": {"train.regression_loss": "huber"}}}  # fmt: skip
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(spec))
    result = cli("study", "study.yaml", "--out", tmp_path / "s", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    results = json.loads((tmp_path / "s" / "results.json").read_text())
    assert {c["status"] for c in results["cells"]} == {"ok"} and len(results["cells"]) == 8
    assert all(0 < c["test"]["r2"] <= 1 and "confusion" not in c["test"] for c in results["cells"])
    md = (tmp_path / "s" / "report.md").read_text()
    assert "r2 on the test split, mean ± std" in md and "difference in r2" in md
    assert (tmp_path / "s" / "learning_curves.png").is_file() and not list((tmp_path / "s").glob("confusion_*"))
    assert results["cells"][0]["labels"]["total"] < results["cells"][-1]["labels"]["total"]


def test_the_python_predictor_predicts_numbers(tmp_path):
    from mmtransfer import Predictor

    table = regression_table(tmp_path)
    predictor = Predictor(label="price", train={"epochs": 40, "lr": 0.01, "progress": False}).fit(str(table))
    values = predictor.predict(pd.read_csv(table).drop(columns="price").head(5))
    assert values.shape == (5,) and values.dtype.kind == "f" and 30 < values.mean() < 170
    with pytest.raises(ValueError, match="use predict"):
        predictor.predict_proba(pd.read_csv(table).head(2))


@pytest.mark.slow
def test_regression_with_a_frozen_encoder_caches_features_and_two_processes_train_one_run(tmp_path):
    regression_table(tmp_path)
    probe = cli("fit", "--set", "data.table=prices.csv", "--set", "data.label=price", "--set", "train.epochs=5",
                "--set", "train.strategy.name=linear_probe", "--out", tmp_path / "probe", cwd=tmp_path)  # fmt: skip
    assert probe.returncode == 0, probe.stderr
    assert "features" in probe.stdout and "r2" in probe.stdout  # the frozen encoder's features, cached
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "mmtransfer", "fit"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    two = subprocess.run([*torchrun, "--set", "data.table=prices.csv", "--set", "data.label=price", "--set",
                          "train.epochs=5", "--set", "train.progress=false", "--out", str(tmp_path / "two")],
                         cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)  # fmt: skip
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("run folder:") == 1
    metrics = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert metrics["test"]["n"] == 48 and np.isfinite(metrics["test"]["r2"])  # every test row scored once
