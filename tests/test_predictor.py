"""The estimator API: fit returns self, predict / predict_proba / evaluate / embed, save and load round-trip."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from mmtransfer import Predictor


@pytest.fixture(scope="module")
def frame(tmp_path_factory):
    from conftest import write_mixed_table

    table = write_mixed_table(tmp_path_factory.mktemp("predictor"))
    df = pd.read_csv(table)
    for col in ("picture", "sound"):
        df[col] = [str(table.parent / p) for p in df[col]]
    return df[["picture", "caption", "weight", "label"]]


SMALL = {"columns": {"picture": {"modality": "image", "size": [12, 12]}}, "test_fraction": 0.25}


def test_fit_predict_save_load_round_trip(frame, tmp_path):
    predictor = Predictor(label="label", data=SMALL, train={"epochs": 2, "batch_size": 8}, model__embed_dim=16)
    assert predictor.fit(frame) is predictor
    assert predictor.classes_ == ["cat", "dog", "owl"]
    probs = predictor.predict_proba(frame.drop(columns=["label"]))
    assert list(probs.columns) == ["cat", "dog", "owl"] and probs.index.tolist() == list(range(36))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    labels = predictor.predict(frame)
    assert labels.tolist() == [predictor.classes_[i] for i in probs.to_numpy().argmax(1)]
    metrics = predictor.evaluate(frame)
    assert metrics["n"] == 36 and metrics["accuracy"] == predictor.score(frame)
    assert predictor.embed(frame.head(5)).shape == (5, 48)  # concat fusion: 3 inputs x 16

    saved = predictor.save(tmp_path / "saved")
    again = Predictor.load(saved)
    assert torch.equal(torch.tensor(again.predict_proba(frame).to_numpy()), torch.tensor(probs.to_numpy()))


def test_a_validation_table_and_a_builtin_name(frame):
    predictor = Predictor(data=SMALL, train__epochs=1)
    predictor.fit(frame.iloc[:27], valid=frame.iloc[27:])
    labels = predictor.run_.cfg.data
    assert labels.split_column == "_split"
    metrics = predictor.run_.path / "metrics.json"

    recorded = json.loads(metrics.read_text())
    assert recorded["val"]["n"] == 9 and recorded["labels"]["selection"] == 9  # the valid rows select
    digits = Predictor(train={"epochs": 2}).fit("digits")
    assert digits.evaluate("digits")["n"] == 360


class TwoNumbers(nn.Module):
    """A user's own encoder for the table's number columns: a single linear layer."""

    def __init__(self):
        super().__init__()
        self.output_dim = 8
        self.linear = nn.Linear(1, 8)

    def forward(self, x):
        return self.linear(x)


def test_your_own_module_as_an_encoder(frame, tmp_path):
    table = frame[["weight", "label"]]
    predictor = Predictor(encoders={"tabular": TwoNumbers()}, data={"test_fraction": 0.25}, train__epochs=2)
    predictor.fit(table)
    assert predictor.run_.cfg.model.encoders["tabular"].name == "test_predictor.TwoNumbers"
    assert isinstance(predictor.run_.model.encoders["tabular"], TwoNumbers)
    saved = predictor.save(tmp_path / "mine")
    with pytest.raises(ValueError, match=r"a custom module \(test_predictor.TwoNumbers\)"):
        Predictor.load(saved)
    again = Predictor.load(saved, encoders={"tabular": TwoNumbers()})
    np.testing.assert_array_equal(again.predict_proba(table).to_numpy(), predictor.predict_proba(table).to_numpy())
    with pytest.raises(ValueError, match="needs an int output_dim"):
        Predictor(encoders={"tabular": nn.Linear(1, 8)}).fit(table)


def test_fit_trains_and_selects_on_every_row_it_is_given_and_prints_the_binding(frame, tmp_path, capsys):

    predictor = Predictor(label="label", data=SMALL, train={"epochs": 1}, model__embed_dim=8, path=tmp_path / "run")
    predictor.fit(frame)
    printed = capsys.readouterr().out
    assert "columns of DataFrame" in printed and "picture" in printed and "image (3x12x12" in printed  # the binding
    assert "no rows held out for test" in printed
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["labels"]["total"] == 36 == len(frame)  # no hidden test split: every row trains or selects
    assert metrics["labels"]["selection"] == metrics["test"]["n"] > 0  # the selection rows, scored as "test" ...
    assert metrics["scored"].startswith("no test rows were held out")  # ... and labelled so
    splits = json.loads((tmp_path / "run" / "splits.json").read_text())["rows"]
    assert set(splits) == {"train", "val"} and sorted(splits["train"] + splits["val"]) == list(range(36))
    assert predictor.evaluate(frame.iloc[:10])["n"] == 10  # evaluate scores the data it is given

    quiet = Predictor(label="label", data=SMALL, train={"epochs": 1}, model__embed_dim=8, verbose=False)
    quiet.fit(frame, valid=frame.iloc[:9])
    assert capsys.readouterr().out == ""
    recorded = json.loads((quiet.path / "metrics.json").read_text())
    assert recorded["labels"] == {**recorded["labels"], "train": 36, "selection": 9}  # valid rows select


def test_a_table_path_holds_no_test_rows_out_and_evaluate_run_says_so(frame, tmp_path):
    from mmtransfer.runs import evaluate_run

    table = tmp_path / "t.csv"
    frame[["weight", "label"]].to_csv(table, index=False)
    predictor = Predictor(train={"epochs": 1}, model__embed_dim=8, verbose=False).fit(str(table))
    assert predictor.run_.cfg.data.table == str(table.resolve())
    with pytest.raises(ValueError, match="no test rows were held out of its data"):
        evaluate_run(predictor.path)
    assert evaluate_run(predictor.path, "val")["n"] == json.loads((predictor.path / "metrics.json").read_text())[
        "labels"]["selection"]  # fmt: skip
    pytest.importorskip("onnxruntime")
    from mmtransfer.export import export_onnx

    assert export_onnx(predictor.run_, tmp_path / "m.onnx")  # checked on the run's own rows: train, with no test
