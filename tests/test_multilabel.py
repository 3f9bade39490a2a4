"""Multi-label: label sets in a column, one sigmoid per label, thresholds chosen on validation, the metrics,
predict and the artifact, bad label sets named by row, a head grafted by label name."""

import json

import numpy as np
import pandas as pd
import pytest
from conftest import run_cli
from sklearn.metrics import accuracy_score, average_precision_score, f1_score

from mmtransfer import artifact
from mmtransfer.tasks import infer_task, multilabel_metrics, parse_set, tune_thresholds


def test_thresholds_are_chosen_per_label_on_validation():
    # label 0: positives score 0.62-0.9, negatives 0.1-0.55 -> every threshold in (0.55, 0.62] is perfect: 0.6
    # label 1: positives 0.2-0.3, negatives 0.05-0.15 -> (0.15, 0.2]: 0.2; label 2: no positive row -> 0.5
    probs = np.array([[0.9, 0.3, 0.1], [0.62, 0.2, 0.2], [0.55, 0.05, 0.3], [0.1, 0.15, 0.9]])
    true = np.array([[1, 1, 0], [1, 1, 0], [0, 0, 0], [0, 0, 0]])
    assert tune_thresholds(probs, true).tolist() == pytest.approx([0.6, 0.2, 0.5])
    # of equally good thresholds the one nearest 0.5: positives at 0.99, negatives at 0.01 -> 0.5
    assert tune_thresholds(np.array([[0.99], [0.01]]), np.array([[1], [0]])).tolist() == [0.5]


def test_metrics_equal_scikit_learn():
    rng = np.random.default_rng(0)
    true = (rng.random((50, 4)) < 0.4).astype(int)
    probs = np.clip(true * 0.5 + rng.random((50, 4)) * 0.6, 0, 1)
    thresholds = np.array([0.5, 0.4, 0.6, 0.5])
    pred = (probs >= thresholds).astype(int)
    m = multilabel_metrics(probs, true, thresholds)
    assert m["micro_f1"] == pytest.approx(f1_score(true, pred, average="micro"))
    assert m["macro_f1"] == pytest.approx(f1_score(true, pred, average="macro"))
    assert m["subset_accuracy"] == pytest.approx(accuracy_score(true, pred))  # exact match of the whole set
    assert m["map"] == pytest.approx(average_precision_score(true, probs, average="macro"))
    assert parse_set(" b; a;;b ", ";") == ["a", "b"]


def test_a_column_of_label_sets_is_inferred_as_multilabel():
    task, why = infer_task(["cat", "cat;dog", "owl"], "auto", "tags", ";")
    assert task == "multilabel" and "1 cell(s) of column 'tags' hold several labels separated by ';'" in why
    assert infer_task(["a|b", "c"], "auto", "tags", "|")[0] == "multilabel"
    assert infer_task(["a|b", "c"], "auto", "tags", ";")[0] == "classification"


def tag_table(folder, n: int = 300):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 4))
    tags = []
    for r in x:
        s = [name for name, on in (("red", r[0] > 0), ("round", r[1] > 0.3), ("big", r[2] + r[3] > 0)) if on]
        tags.append(";".join(s) or "plain")
    df = pd.DataFrame(x, columns=list("abcd"))
    df["tags"] = tags
    df.to_csv(folder / "tags.csv", index=False)
    return folder / "tags.csv"


def cli(*args, cwd):
    """``mmtransfer ARGS`` in this process (conftest.run_cli): returncode, stdout and stderr as a subprocess's."""
    return run_cli(*args, cwd=cwd)


FIT = ["--set", "data.table=tags.csv", "--set", "data.label=tags", "--set", "train.lr=0.01"]


def test_a_multilabel_run_learns_chooses_thresholds_and_predicts_label_sets(tmp_path):
    table = tag_table(tmp_path)
    result = cli("fit", *FIT, "--set", "train.epochs=60", "--out", tmp_path / "run", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "task: multilabel (inferred" in result.stdout and "thresholds chosen on 36 validation rows" in result.stdout
    run = tmp_path / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["classes"] == ["big", "plain", "red", "round"] and "calibration" not in metrics
    assert metrics["test"]["micro_f1"] > 0.85 and metrics["test"]["map"] > 0.9
    # the stored thresholds are the ones the validation rows choose
    target = json.loads((run / "task.json").read_text())
    assert target["task"] == "multilabel" and target["separator"] == ";"
    assert cli("predict", run, table, "--out", tmp_path / "p.csv", cwd=tmp_path).returncode == 0
    pred = pd.read_csv(tmp_path / "p.csv", keep_default_na=False)
    assert list(pred.columns) == ["row", "prediction", "p_big", "p_plain", "p_red", "p_round", "tags"]
    rows = json.loads((run / "splits.json").read_text())["rows"]
    probs = pred[["p_big", "p_plain", "p_red", "p_round"]].to_numpy()
    truth = np.array([[c in parse_set(t, ";") for c in metrics["classes"]] for t in pred["tags"]], dtype=int)
    assert tune_thresholds(probs[rows["val"]], truth[rows["val"]]) == pytest.approx(target["thresholds"], abs=1e-6)
    # a row's prediction is every label at or above its threshold
    for i in range(10):
        chosen = [c for c, p, t in zip(metrics["classes"], probs[i], target["thresholds"], strict=True) if p >= t]
        assert parse_set(pred["prediction"][i], ";") == chosen
    test = multilabel_metrics(probs[rows["test"]], truth[rows["test"]], np.array(target["thresholds"]))
    assert test["micro_f1"] == pytest.approx(metrics["test"]["micro_f1"], abs=1e-3)
    # save -> load -> predict: identical
    copy = artifact.copy_run(run, tmp_path / "copy")
    assert cli("predict", copy, table, "--out", tmp_path / "q.csv", cwd=tmp_path).returncode == 0
    assert pd.read_csv(tmp_path / "q.csv", keep_default_na=False).equals(pred)
    assert artifact.load(copy).model.thresholds == target["thresholds"]
    info = cli("info", run, cwd=tmp_path).stdout
    assert "task: multilabel of 'tags'" in info and "test micro-F1" in info


def test_an_empty_label_set_is_named_before_training(tmp_path):
    df = pd.read_csv(tag_table(tmp_path))
    df.loc[4, "tags"] = " ; "
    df.to_csv(tmp_path / "tags.csv", index=False)
    result = cli("fit", *FIT, "--out", tmp_path / "r", cwd=tmp_path)
    assert (
        result.returncode == 2 and "row 4, column 'tags': empty label set ';' (data.task multilabel)" in result.stderr
    )
    tag_table(tmp_path)  # the good table again
    refused = cli("fit", *FIT, "--set", "data.k_per_class=5", "--out", tmp_path / "r", cwd=tmp_path)
    assert refused.returncode == 2 and "give the budget as data.label_fraction" in refused.stderr


@pytest.mark.slow
def test_a_multilabel_head_is_grafted_by_label_name_from_a_classification_run(tmp_path):
    df = pd.read_csv(tag_table(tmp_path))
    df["first"] = [t.split(";")[0] for t in df["tags"]]
    df.drop(columns="tags").to_csv(tmp_path / "first.csv", index=False)
    source = cli("fit", "--set", "data.table=first.csv", "--set", "data.label=first", "--set", "train.epochs=3",
                 "--out", tmp_path / "src", cwd=tmp_path)  # fmt: skip
    assert source.returncode == 0, source.stderr
    target = cli("fit", *FIT, "--set", "train.epochs=2", "--set", f"transfer.source={tmp_path / 'src'}",
                 "--out", tmp_path / "dst", cwd=tmp_path)  # fmt: skip
    assert target.returncode == 0, target.stderr
    records = json.loads((tmp_path / "dst" / "transfer_report.json").read_text())["graft"]["records"]
    head = next(r for r in records if r["target"] == "head.out.weight")
    assert head["state"] in ("copied", "adapted") and "never grafted" not in head["reason"]


@pytest.mark.slow
def test_a_study_of_label_sets_ranks_by_micro_f1(tmp_path):
    import yaml

    tag_table(tmp_path)
    base = {"data": {"table": "tags.csv", "label": "tags"}, "train": {"epochs": 10, "lr": 0.01}}
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    spec = {"base": "base.yaml", "budgets": ["all"], "seeds": 2, "metric": "micro_f1",
            "arms": {"attention": {"model.fusion": "attention"}, "concat": {}}}  # fmt: skip
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(spec))
    result = cli("study", "study.yaml", "--out", tmp_path / "s", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    results = json.loads((tmp_path / "s" / "results.json").read_text())
    assert {c["status"] for c in results["cells"]} == {"ok"} and len(results["cells"]) == 4
    assert all(0.5 < c["test"]["micro_f1"] <= 1 and "map" in c["test"] for c in results["cells"])
    assert "micro_f1 on the test split (%)" in (tmp_path / "s" / "report.md").read_text()
