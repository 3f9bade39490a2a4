"""data.sources: one place decides what a source is (DataFrame, folder of class folders, table file), for training,
for new rows of a trained run and for Predictor's validation rows."""

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from mmtransfer.config import DataConfig
from mmtransfer.data.sources import open_source, read_source
from mmtransfer.inference import read_data
from mmtransfer.modalities.base import DataError


def photo_folder(root, splits=("train", "test")):
    """root/<split>/<class>/<n>.png: two classes, two photos each per split, and a notes.txt that is skipped."""
    for split in splits:
        for label in ("cat", "dog"):
            (root / split / label).mkdir(parents=True)
            for i in range(2):
                Image.fromarray(np.full((4, 4), 40 * i, np.uint8)).save(root / split / label / f"{i}.png")
    (root / splits[0] / "cat" / "notes.txt").write_text("not a photo")
    return root


def test_each_kind_of_source_is_named_and_read(tmp_path):
    frame = pd.DataFrame({"x": [1.0, 2.0, 3.0], "label": ["a", "b", "a"]}, index=[7, 8, 9])
    found = open_source(frame, DataConfig())
    assert (found.kind, found.name, list(found.df.index)) == ("frame", "DataFrame", [0, 1, 2])

    frame.to_csv(tmp_path / "t.csv", index=False)
    found = open_source(tmp_path / "t.csv", DataConfig())
    assert (found.kind, found.base, found.df["x"].tolist()) == ("file", tmp_path.resolve(), [1.0, 2.0, 3.0])

    folder = photo_folder(tmp_path / "photos")
    found = open_source(folder, DataConfig(label="animal"))
    assert found.kind == "folder"
    assert sorted(found.df.columns) == ["animal", "image", "split"]
    assert len(found.df) == 8 and found.df.attrs["skipped_files"] == ["train/cat/notes.txt"]


def test_the_config_names_the_source_when_none_is_given(tmp_path):
    folder = photo_folder(tmp_path / "photos")
    df, base, name, cfg = read_source(DataConfig(folder=str(folder)))
    assert (cfg.split_column, base, name) == ("split", folder.resolve(), str(folder))
    assert sorted(set(df["split"])) == ["test", "train"]
    with pytest.raises(DataError, match="a folder, not a table"):  # data.table is a table file, never a folder
        read_source(DataConfig(table=str(folder)))
    with pytest.raises(DataError, match="table not found"):
        read_source(DataConfig(table=str(tmp_path / "missing.csv")))


def test_new_rows_for_a_run_read_their_own_header_or_the_runs_names(tmp_path):
    run = DataConfig(sep="tab", header=False, names=["label", "text"])
    (tmp_path / "own.tsv").write_text("spam\tbuy now\nham\thello\n")
    df, _, _ = read_data(tmp_path / "own.tsv", run, ["text"])
    assert list(df.columns) == ["label", "text"] and df["text"].tolist() == ["buy now", "hello"]

    (tmp_path / "new.csv").write_text("text,other\nfree money,1\n")  # a header naming the run's columns
    df, _, _ = read_data(tmp_path / "new.csv", run, ["text"])
    assert list(df.columns) == ["text", "other"] and df["text"].tolist() == ["free money"]

    (tmp_path / "bare.tsv").write_text("win a prize\nsee you\n")  # headerless, without the label column
    df, _, _ = read_data(tmp_path / "bare.tsv", run, ["text"])
    assert list(df.columns) == ["text"] and len(df) == 2


def test_predictor_validation_rows_from_a_folder_drop_its_split_folders(tmp_path):
    from mmtransfer.config import RunConfig
    from mmtransfer.predictor import _table

    train, valid = photo_folder(tmp_path / "a", ("train",)), photo_folder(tmp_path / "b", ("test",))
    joined = _table(train, valid, RunConfig())
    assert list(joined["_split"].value_counts().sort_index().items()) == [("train", 4), ("val", 4)]
    assert "split" not in joined.columns


@pytest.mark.xfail(
    strict=True,
    reason="predictor._absolute_paths tests `dtype == object`; pandas 3 reads paths as its str dtype, so the paths "
    "of two folders stay relative (found while writing this test; predictor.py is not this change's to fix)",
)
def test_predictor_validation_rows_from_two_folders_get_absolute_paths(tmp_path):
    from mmtransfer.config import RunConfig
    from mmtransfer.predictor import _table

    train, valid = photo_folder(tmp_path / "a", ("train",)), photo_folder(tmp_path / "b", ("test",))
    joined = _table(train, valid, RunConfig())
    assert all(p.startswith(str(tmp_path.resolve())) for p in joined["image"])


def test_a_tables_split_column_of_train_and_test_splits_it_and_is_no_input(tmp_path):
    from mmtransfer.config import validate
    from mmtransfer.display import make_console
    from mmtransfer.runs import fit_run

    rng = np.random.default_rng(0)
    n = 60
    table = pd.DataFrame({"x": rng.normal(size=n), "y": rng.normal(size=n), "label": ["a", "b"] * (n // 2),
                          "split": ["test" if i % 5 == 0 else "Train" for i in range(n)]})  # fmt: skip
    table.to_csv(tmp_path / "t.csv", index=False)
    assert read_source(DataConfig(table=str(tmp_path / "t.csv")))[3].split_column == "split"
    cfg = validate({"data": {"table": str(tmp_path / "t.csv")}, "train": {"epochs": 1, "progress": False}})
    metrics = fit_run(cfg, tmp_path / "run", make_console(quiet=True))
    assert metrics["test"]["n"] == 12  # exactly the rows marked test
    assert "split" not in (tmp_path / "run" / "preprocessing.json").read_text()
    # a column named split that holds anything else is an input, as before; so is one the config names
    table["split"] = ["p", "q"] * (n // 2)
    table.to_csv(tmp_path / "t2.csv", index=False)
    assert read_source(DataConfig(table=str(tmp_path / "t2.csv")))[3].split_column is None
    named = DataConfig(table=str(tmp_path / "t.csv"), columns={"split": {"modality": "tabular"}})
    assert read_source(named)[3].split_column is None
