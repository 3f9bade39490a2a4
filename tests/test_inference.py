"""inference.py: a trained run on new data: rows checked against the run's columns (bad ones listed or set
aside, never dropped silently), one CSV row per input row with the class and its probabilities, metrics on a
new labelled table. The run is conftest's CNN on the mixed table (36 rows: cat, dog, owl)."""

import numpy as np
import pandas as pd
import pytest

from mmtransfer import artifact
from mmtransfer.inference import evaluate_data, plot_confusion, predict, read_data, read_rows
from mmtransfer.modalities.base import DataError

CLASSES = ["cat", "dog", "owl"]


@pytest.fixture(scope="module")
def cnn(fitted_runs):
    return artifact.load(fitted_runs["cnn"]), fitted_runs["_table"]


def absolute(table) -> pd.DataFrame:
    """The mixed table with its pictures as absolute paths, to write elsewhere."""
    df = pd.read_csv(table)
    df["picture"] = [str(table.parent / p) for p in df["picture"]]
    return df


def test_a_table_a_dataframe_or_nothing(cnn, tmp_path):
    _, table = cnn
    df, base, name = read_data(table)
    assert len(df) == 36 and base == table.parent and "table.csv" in name
    again, _, _ = read_data(df)
    assert again["label"].tolist() == df["label"].tolist()
    with pytest.raises(DataError, match="table not found"):
        read_data(tmp_path / "absent.csv")


def test_rows_are_checked_against_the_runs_columns(cnn, tmp_path):
    run, table = cnn
    rows = read_rows(run, table)
    assert rows.has_labels and len(rows.split) == 36 and rows.ids == list(range(36)) and rows.rejected == []
    assert rows.split.labels.tolist() == [i % 3 for i in range(36)]  # cat, dog, owl in turn
    some = read_rows(run, table, rows=[4, 7])
    assert some.ids == [4, 7] and some.split.labels.tolist() == [1, 1]
    with pytest.raises(DataError, match="has 36 rows, the run recorded row 99"):
        read_rows(run, table, rows=[99])
    absolute(table).drop(columns="label").to_csv(tmp_path / "new.csv", index=False)
    assert not read_rows(run, tmp_path / "new.csv").has_labels
    with pytest.raises(DataError, match="no label column 'label' to evaluate against"):
        read_rows(run, tmp_path / "new.csv", need_labels=True)
    absolute(table).rename(columns={"picture": "photo"}).to_csv(tmp_path / "renamed.csv", index=False)
    with pytest.raises(DataError, match="no column 'picture', which the model reads"):
        read_rows(run, tmp_path / "renamed.csv")


def test_bad_rows_are_listed_or_set_aside_with_their_reason(cnn, tmp_path):
    run, table = cnn
    df = absolute(table)
    df.loc[5, "picture"] = str(tmp_path / "gone.png")
    df.loc[8, "label"] = "emu"
    df.to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(DataError, match=r"bad.csv: 2 bad cell\(s\) in 2 row\(s\)") as err:
        read_rows(run, tmp_path / "bad.csv", need_labels=True)
    assert "row 8, column 'label': label 'emu' is not one of the run's classes" in str(err.value)
    kept = read_rows(run, tmp_path / "bad.csv", need_labels=True, on_bad_rows="skip")
    assert len(kept.split) == 34 and [(b.row, b.column) for b in kept.rejected] == [(5, "picture"), (8, "label")]
    done = predict(run, tmp_path / "bad.csv", tmp_path / "p.csv", on_bad_rows="skip")
    assert done["rows"] == 35 and done["rejected_rows"] == 1  # predicting needs no label: only row 5 is bad
    rejected = pd.read_csv(done["rejected"])
    assert rejected["row"].tolist() == [5] and rejected["column"].tolist() == ["picture"]


def test_predict_writes_one_row_per_input_row_with_the_most_probable_class(cnn, tmp_path):
    run, table = cnn
    done = predict(run, table, tmp_path / "p.csv", batch_size=5)
    assert done == {"rows": 36, "rejected_rows": 0, "out": str(tmp_path / "p.csv"), "rejected": None}
    out = pd.read_csv(tmp_path / "p.csv")
    assert list(out.columns) == ["row", "prediction", "p_cat", "p_dog", "p_owl", "label"]
    probs = out[["p_cat", "p_dog", "p_owl"]].to_numpy()
    np.testing.assert_allclose(probs.sum(1), 1, atol=1e-5)
    assert out["prediction"].tolist() == [CLASSES[i] for i in probs.argmax(1)]
    assert out["row"].tolist() == list(range(36)) and [p.name for p in tmp_path.iterdir()] == ["p.csv"]
    metrics = evaluate_data(run, table, png=tmp_path / "c.png")
    assert metrics["n"] == 36 and metrics["accuracy"] == pytest.approx((out["prediction"] == out["label"]).mean())
    assert np.sum(metrics["confusion"]) == 36 and (tmp_path / "c.png").stat().st_size > 1000


def test_a_confusion_matrix_is_drawn_to_a_png(tmp_path):
    plot_confusion([[3, 1], [0, 4]], ["a", "b"], tmp_path / "m.png", "two classes")
    assert (tmp_path / "m.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
