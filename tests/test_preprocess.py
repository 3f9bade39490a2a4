"""preprocess.py: a table's cells checked once, fitted on the train rows only, transformed batch by batch; the
fitted state saved and rebuilt without a refit; row splits that subset, join and key their rows."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from pydantic import TypeAdapter

from mmtransfer.config import ColumnConfig
from mmtransfer.modalities.base import DataError
from mmtransfer.preprocess import TablePreprocessor

COLUMNS = {"x": {"modality": "tabular"}, "colour": {"modality": "tabular", "kind": "categorical"}}


def preprocessor(columns=None) -> TablePreprocessor:
    adapter = TypeAdapter(ColumnConfig)
    return TablePreprocessor({c: adapter.validate_python(v) for c, v in (columns or COLUMNS).items()})


def table() -> pd.DataFrame:
    return pd.DataFrame(
        {"x": [0.0, 1.0, 2.0, 3.0, np.nan, 10.0], "colour": ["red", "blue", "red", "blue", "green", None]}
    )


def test_numbers_and_categories_are_fitted_on_the_train_rows_only():
    pre = preprocessor()
    cells, bad = pre.check(table(), Path("."), "t.csv")
    assert bad == [] and cells.present["x"].tolist() == [True] * 6  # an empty number is allowed (missing: mean)
    pre.fit(cells, np.array([0, 1, 2, 3]))
    assert pre.fitted and pre.tab_cols == ["colour", "x"]  # sorted: the order of the tabular input's columns
    x = pre.modalities["x"]
    assert x.mean == pytest.approx(1.5) and x.std == pytest.approx(np.sqrt(1.25))  # not 10 (a non-train row)
    assert pre.modalities["colour"].categories == ["blue", "red"]  # green is in no train row
    batch = pre.transform(cells, [1, 4, 5])
    assert list(batch) == ["tabular"] and batch["tabular"].shape == (3, 2)
    # colour: blue is code 1, green (unseen) and the empty cell 0; x: (1 - 1.5) / 1.118, the mean for NaN, 10
    expected = [[1.0, -0.5 / np.sqrt(1.25)], [0.0, 0.0], [0.0, 8.5 / np.sqrt(1.25)]]
    torch.testing.assert_close(batch["tabular"], torch.tensor(expected, dtype=torch.float32))
    spec = pre.specs()["tabular"]
    assert spec.shape == (2,) and spec.categorical == {0: 3}  # two categories and the unseen code


def test_bad_cells_are_collected_by_row_and_column_not_stopped_at():
    pre = preprocessor({"x": {"modality": "tabular", "missing": "error"}})
    df = pd.DataFrame({"x": ["1", "two", "3", None]}, index=[10, 11, 12, 13])
    cells, bad = pre.check(df, Path("."), "t.csv")
    assert [(b.row, b.column) for b in bad] == [(11, "x"), (13, "x")]  # the table's own row numbers
    assert "not a number: 'two'" in bad[0].reason and "NaN in a numeric column" in bad[1].reason
    assert cells.present["x"].tolist() == [True, False, True, False]
    with pytest.raises(DataError, match=r"t.csv: no column 'x', which the model reads"):
        pre.check(pd.DataFrame({"y": [1]}), Path("."), "t.csv")


def test_the_saved_state_rebuilds_the_same_transform_without_a_refit():
    pre = preprocessor()
    cells, _ = pre.check(table(), Path("."), "t.csv")
    pre.fit(cells, np.array([0, 1, 2, 3]))
    again = TablePreprocessor.from_state(pre.state())
    assert again.fitted and again.state() == pre.state()
    new, bad = again.check(pd.DataFrame({"x": [2.5, 1e100], "colour": ["red", "blue"]}), Path("."), "new.csv")
    assert len(bad) == 1 and bad[0].row == 1 and "train standard deviations from the train mean" in bad[0].reason
    assert again.transform(new, [0])["tabular"].tolist() == [[2.0, pytest.approx(1.0 / np.sqrt(1.25))]]


def test_a_row_split_subsets_joins_and_keys_its_rows():
    pre = preprocessor()
    cells, _ = pre.check(table(), Path("."), "t.csv")
    pre.fit(cells, np.arange(4))
    split = pre.split(cells, np.arange(6), torch.tensor([0, 1, 0, 1, 0, 1]))
    assert len(split) == 6 and split.labels.dtype == torch.long and not split.reads_files
    part = split.subset([5, 0])
    assert part.row_ids.tolist() == [5, 0] and part.labels.tolist() == [1, 0]
    joined = part.concat(split.subset([1]))
    assert joined.row_ids.tolist() == [5, 0, 1]
    torch.testing.assert_close(joined.batch([2])["tabular"], split.batch([1])["tabular"])
    keys = split.example_keys("tabular")
    assert len(set(keys)) == 6 and split.subset([2]).example_keys("tabular") == [keys[2]]  # same row, same key
    other = preprocessor()
    other_cells, _ = other.check(table(), Path("."), "t.csv")
    with pytest.raises(ValueError, match="different tables"):
        split.concat(other.split(other_cells, np.arange(2), torch.zeros(2)))
    cached = split.with_features("tabular", torch.ones(6, 4))
    assert cached.names() == ["tabular.features"] and cached.batch([0, 1])["tabular.features"].shape == (2, 4)
    assert split.with_labels(torch.ones(6)).labels.dtype == torch.float32  # numbers stay floats
