"""The estimator API: fit returns self, predict / predict_proba / evaluate / embed, save and load round-trip."""

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
    import json

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
