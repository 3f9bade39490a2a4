"""Imbalanced classes and calibrated probabilities: class weights, balanced accuracy, temperature scaling, ECE."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import balanced_accuracy_score

from mmtransfer import artifact
from mmtransfer import calibration as cal
from mmtransfer.config import validate
from mmtransfer.display import make_console
from mmtransfer.runs import fit_run
from mmtransfer.train import balanced_weights, logits_of


def test_temperature_scaling_lowers_the_nll_of_an_over_confident_model_and_keeps_its_classes():
    g = torch.Generator().manual_seed(0)
    true_logits = torch.randn(2000, 5, generator=g) * 1.5
    labels = torch.multinomial(torch.softmax(true_logits, -1), 1, generator=g).squeeze(1)  # drawn from them
    confident = 4.0 * true_logits  # the same ranking, four times too sure
    t = cal.fit_temperature(confident, labels)
    assert t == pytest.approx(4.0, rel=0.1)  # it finds the factor back
    assert cal.nll(confident, labels, t) < cal.nll(confident, labels) - 0.5
    before, after = cal.softmax(confident), cal.softmax(confident, t)
    assert (before.argmax(1) == after.argmax(1)).all()  # the predicted classes do not change
    assert cal.ece(after, labels.numpy()) < cal.ece(before, labels.numpy()) / 3
    # a model that is already calibrated keeps T = 1 within a few per cent
    assert cal.fit_temperature(true_logits, labels) == pytest.approx(1.0, rel=0.1)
    # every row right: the NLL falls towards 0 as T -> 0, no finite best, so no temperature (T = 1)
    assert cal.fit_temperature(true_logits, true_logits.argmax(1)) == 1.0


def test_ece_equals_a_hand_computation():
    # 2 bins: (0, 0.5] and (0.5, 1]. Confidences 0.4 (right), 0.45 (wrong), 0.8 (right), 0.9 (wrong), 0.95 (right)
    probs = np.array([[0.4, 0.3, 0.3], [0.45, 0.35, 0.2], [0.8, 0.1, 0.1], [0.05, 0.9, 0.05], [0.95, 0.05, 0.0]])
    labels = np.array([0, 1, 0, 0, 0])
    r = cal.reliability(probs, labels, bins=2)
    assert r["count"] == [2, 3]
    assert r["accuracy"] == pytest.approx([0.5, 2 / 3])
    assert r["confidence"] == pytest.approx([0.425, (0.8 + 0.9 + 0.95) / 3])
    hand = 2 / 5 * abs(0.5 - 0.425) + 3 / 5 * abs(2 / 3 - 2.65 / 3)
    assert r["ece"] == pytest.approx(hand) and hand == pytest.approx(0.16)


def test_balanced_class_weights_are_the_inverse_frequencies():
    labels = torch.tensor([0] * 6 + [1] * 3 + [2] * 1)
    w = balanced_weights(labels, 4)  # class 3 has no train example: weight 1
    assert w.tolist() == pytest.approx([10 / (3 * 6), 10 / (3 * 3), 10 / (3 * 1), 1.0])
    assert float(w[labels].sum()) == pytest.approx(3 * 10 / 3)  # each present class weighs the same in all


def test_balanced_accuracy_is_the_mean_recall(small_run):
    from mmtransfer.data import load_dataset
    from mmtransfer.model import build_model
    from mmtransfer.train import evaluate

    data = load_dataset(small_run.data)
    model = build_model(small_run.model, data.specs, data.classes, seed=0)  # untrained: uneven recalls
    m = evaluate(model, data.test)
    logits, labels = logits_of(model, data.test)
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(labels.numpy(), logits.argmax(1).numpy()))
    assert m["balanced_accuracy"] == pytest.approx(np.mean(m["recall_per_class"]))


def imbalanced_table(folder, n_major: int = 90, n_minor: int = 18):
    """Two classes of number rows; the rare class is 1 in 6."""
    rng = np.random.default_rng(0)
    n = n_major + n_minor
    y = np.array(["common"] * n_major + ["rare"] * n_minor)
    x = rng.normal(size=(n, 3)) + (y == "rare")[:, None] * 1.0
    df = pd.DataFrame({"a": x[:, 0], "b": x[:, 1], "c": x[:, 2], "label": y})
    path = folder / "imbalanced.csv"
    df.to_csv(path, index=False)
    return path


def test_fit_weights_the_loss_and_calibrates_and_the_artifact_applies_the_temperature(tmp_path, monkeypatch):
    from mmtransfer import train

    seen = []
    original = train.Classification.__init__

    def spy(self, weight=None):
        seen.append(weight)
        original(self, weight)

    monkeypatch.setattr(train.Classification, "__init__", spy)
    table = imbalanced_table(tmp_path)
    cfg = validate({"data": {"table": str(table)},
                    "train": {"epochs": 30, "batch_size": 16, "lr": 0.05, "class_weights": "balanced",
                              "progress": False}})  # fmt: skip
    metrics = fit_run(cfg, tmp_path / "run", make_console(quiet=True))
    # the train split's counts give the weights
    from mmtransfer.data import load_dataset

    data = load_dataset(cfg.data)
    counts = np.bincount(data.train.labels.numpy())
    assert seen[0].tolist() == pytest.approx((counts.sum() / (2 * counts)).tolist(), rel=1e-6)
    assert metrics["test"]["balanced_accuracy"] == pytest.approx(np.mean(metrics["test"]["recall_per_class"]))

    c = json.loads((tmp_path / "run" / "task.json").read_text())["calibration"]
    assert c == metrics["calibration"] and c["fitted_on"] == "val" and c["n_val"] == len(data.val)
    assert c["val"]["nll_after"] <= c["val"]["nll_before"] + 1e-12
    assert (tmp_path / "run" / "reliability.png").stat().st_size > 10_000
    # loading the run applies the temperature: its logits are the raw logits / T
    run = artifact.load(tmp_path / "run")
    assert run.model.temperature == pytest.approx(c["temperature"]) and c["temperature"] != 1.0
    raw, labels = logits_of(run.model, data.test)  # logits_of undoes the temperature
    scaled = run.model(data.test.batch(list(range(len(data.test))))).detach()
    assert torch.allclose(scaled, raw / c["temperature"], atol=1e-5)
    # predict writes the calibrated probabilities
    from mmtransfer.inference import predict

    predict(run, table, tmp_path / "pred.csv", progress=False)
    pred = pd.read_csv(tmp_path / "pred.csv")
    test_rows = json.loads((tmp_path / "run" / "splits.json").read_text())["rows"]["test"]
    p = pred.set_index(pred.columns[0]).loc[test_rows, ["p_common", "p_rare"]].to_numpy()
    np.testing.assert_allclose(p, cal.softmax(raw, c["temperature"]), atol=1e-5)
    assert not np.allclose(p, cal.softmax(raw), atol=1e-3)


def test_export_carries_the_temperature(tmp_path):
    pytest.importorskip("onnxruntime")
    import onnxruntime as ort

    from mmtransfer.export import export_onnx, sample_batch

    cfg = validate({"data": {"table": str(imbalanced_table(tmp_path))},
                    "train": {"epochs": 20, "batch_size": 16, "lr": 0.05, "progress": False}})  # fmt: skip
    fit_run(cfg, tmp_path / "run", make_console(quiet=True))
    run = artifact.load(tmp_path / "run")
    t = run.model.temperature
    assert t != 1.0
    export_onnx(run, tmp_path / "m.onnx")
    batch = sample_batch(run)
    got = ort.InferenceSession(str(tmp_path / "m.onnx")).run(None, {k: v.numpy() for k, v in batch.items()})[0]
    run.model.temperature = 1.0
    raw = run.model(batch).detach().numpy()
    np.testing.assert_allclose(got, raw / t, atol=1e-4)


def test_no_calibration_when_off_or_without_a_validation_split(tmp_path, small_run):
    off = small_run.model_copy(update={"train": small_run.train.model_copy(update={"calibrate": False})})
    assert "calibration" not in fit_run(off, tmp_path / "off", make_console(quiet=True))
    assert "calibration" not in json.loads((tmp_path / "off" / "task.json").read_text())
    assert artifact.load(tmp_path / "off").model.temperature == 1.0
    console = make_console(record=True, width=200)
    none = small_run.model_copy(update={"train": small_run.train.model_copy(update={"validation": "none"})})
    assert "calibration" not in fit_run(none, tmp_path / "none", console)
    assert "calibration: skipped (no validation split" in console.export_text()


def test_a_study_can_rank_arms_by_balanced_accuracy():
    from mmtransfer.study import StudyConfig

    spec = StudyConfig(base={}, arms={"a": {}, "b": {"train.class_weights": "balanced"}}, metric="balanced_accuracy")
    assert spec.metric == "balanced_accuracy"
    with pytest.raises(ValueError, match="metric"):
        StudyConfig(base={}, arms={"a": {}}, metric="recall")
