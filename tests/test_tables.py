"""Tables in: inference of modalities, loading every cell, masks for missing values, errors for bad ones."""

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
from PIL import Image
from rich.console import Console

from mmtransfer.config import DataConfig, ModelConfig, TabularColumn
from mmtransfer.model import build_model
from mmtransfer.tables import DataError, load_table_dataset

N = 30  # rows; 3 classes of 10


def write_files(folder, n=N):
    """Images, audio and a table whose paths are relative to the table's folder."""
    (folder / "img").mkdir()
    (folder / "wav").mkdir()
    rows = []
    rng = np.random.default_rng(0)
    for i in range(n):
        label = ["cat", "dog", "owl"][i % 3]
        pixels = (rng.random((12, 10)) * 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / "img" / f"{i}.png")
        tone = np.sin(2 * np.pi * (300 + 200 * (i % 3)) * np.arange(4000) / 8000).astype(np.float32)
        sf.write(folder / "wav" / f"{i}.wav", tone * 0.5, 8000)
        rows.append(
            {
                "picture": f"img/{i}.png",
                "sound": f"wav/{i}.wav",
                "caption": f"a {label} number {i} sits here",
                "weight": float(i % 3) + 0.1 * i,
                "colour": ["red", "green"][i % 2],
                "label": label,
            }
        )
    return pd.DataFrame(rows)


@pytest.fixture
def table(tmp_path):
    df = write_files(tmp_path)
    # a missing value in every modality, each in a different row
    df.loc[1, "picture"] = None
    df.loc[2, "sound"] = None
    df.loc[4, "caption"] = None
    df.loc[5, "weight"] = np.nan
    path = tmp_path / "data.csv"
    df.to_csv(path, index=False)
    return path


def config(path, **kw):
    base = {
        "table": str(path),
        "test_fraction": 0.2,
        "val_fraction": 0.2,
        "columns": {"weight": TabularColumn(kind="numeric", missing="mean")},
    }
    return DataConfig(**{**base, **kw})


def test_mixed_table_with_missing_values_loads_and_trains(table):
    console = Console(record=True, width=150)
    data = load_table_dataset(config(table), console=console)
    text = console.export_text()
    for col, kind in [("picture", "image"), ("sound", "audio"), ("caption", "text"), ("colour", "tabular")]:
        assert col in text and kind in text
    assert "inferred: paths to audio files" in text and "configured" in text
    assert data.classes == ["cat", "dog", "owl"]
    assert len(data.train) + len(data.val) + len(data.test) == N
    assert data.specs["picture"].shape == (3, 32, 32)
    assert data.specs["tabular"].shape == (2,)  # colour (categorical) and weight (numeric), sorted by name
    assert data.specs["tabular"].categorical == {0: 3}  # two colours + unseen
    assert data.specs["caption"].kind == "tokens"
    splits = {s: getattr(data, s).to_memory() for s in ("train", "val", "test")}  # small: load every row
    everything = {k: torch.cat([split.inputs[k] for split in splits.values()]) for k in splits["train"].inputs}
    for col in ("picture", "sound", "caption"):
        assert int((~everything[f"{col}.present"]).sum()) == 1, col
    assert "tabular.present" not in everything  # numbers are always there (NaN -> train mean)
    assert torch.isfinite(everything["tabular"]).all()

    for fusion in ("concat", "attention", "gated"):
        model = build_model(ModelConfig(fusion=fusion, embed_dim=16), data.specs, 3, seed=0)
        logits = model(splits["train"].inputs)
        assert logits.shape == (len(data.train), 3) and torch.isfinite(logits).all()
        logits.sum().backward()


def test_parquet_and_dataframe_give_the_same_data(table, tmp_path):
    df = pd.read_csv(table)
    df.to_parquet(tmp_path / "data.parquet")
    a = load_table_dataset(config(table))
    b = load_table_dataset(config(tmp_path / "data.parquet"))
    assert torch.equal(a.train.to_memory().inputs["picture"], b.train.to_memory().inputs["picture"])
    assert torch.equal(a.test.labels, b.test.labels)
    with pytest.raises(DataError, match="file not found"):
        # a DataFrame's relative paths resolve against the working directory, not the table's folder
        load_table_dataset(config(None), source=df)


def test_split_column_and_skip(tmp_path):
    df = write_files(tmp_path)
    df["part"] = ["train"] * 20 + ["validation"] * 5 + ["test"] * 5
    df.to_csv(tmp_path / "t.csv", index=False)
    data = load_table_dataset(config(tmp_path / "t.csv", split_column="part"))
    assert (len(data.train), len(data.val), len(data.test)) == (20, 5, 5)


def bad_table(tmp_path, change):
    df = write_files(tmp_path)
    change(df, tmp_path)
    path = tmp_path / "bad.csv"
    df.to_csv(path, index=False)
    return path


@pytest.mark.parametrize(
    "change,message",
    [
        (
            lambda df, d: df.__setitem__("picture", df["picture"].replace("img/3.png", "img/nope.png")),
            r"row 3, column 'picture': file not found \(.*img/nope.png\)",
        ),
        (
            lambda df, d: (d / "img" / "7.png").write_bytes(b"not a png"),
            r"row 7, column 'picture': unreadable or corrupt image",
        ),
        (
            lambda df, d: (d / "wav" / "8.wav").write_text("hello"),
            r"row 8, column 'sound': unreadable or corrupt audio.*wav/8.wav",
        ),
        (
            lambda df, d: df.__setitem__("caption", df["caption"].replace(df["caption"][6], "   ")),
            r"row 6, column 'caption': empty text",
        ),
        (
            lambda df, d: df.__setitem__("weight", df["weight"].replace(df["weight"][9], np.inf)),
            r"row 9, column 'weight': infinite value",
        ),
        (
            lambda df, d: df.__setitem__("label", df["label"].replace("owl", None)),
            r"row 2, column 'label': missing label",
        ),
    ],
)
def test_each_bad_input_names_row_column_and_file(tmp_path, change, message):
    path = bad_table(tmp_path, change)
    cfg = DataConfig(table=str(path), test_fraction=0.2, val_fraction=0.2)
    with pytest.raises(DataError, match=message) as err:
        load_table_dataset(cfg)
    assert "nothing was trained" in str(err.value) and str(path) in str(err.value)


def test_unknown_label_in_test_split(tmp_path):
    df = write_files(tmp_path)
    df["part"] = ["train"] * 20 + ["val"] * 5 + ["test"] * 5
    df.loc[27, "label"] = "emu"
    df.to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(DataError, match=r"row 27, column 'label': label 'emu' never occurs in the train split"):
        load_table_dataset(DataConfig(table=str(tmp_path / "t.csv"), split_column="part"))


def test_skip_bad_rows_counts_them(tmp_path):
    def change(df, d):
        (d / "img" / "7.png").write_bytes(b"not a png")
        df.loc[3, "picture"] = "img/nope.png"
        df.loc[6, "caption"] = "  "

    path = bad_table(tmp_path, change)
    console = Console(record=True, width=200)
    data = load_table_dataset(
        DataConfig(table=str(path), on_bad_rows="skip", test_fraction=0.2, val_fraction=0.2), console=console
    )
    assert len(data.train) + len(data.val) + len(data.test) == N - 3
    text = console.export_text()
    assert "skipped 3 of 30 rows" in text
    assert "1 x picture: file not found" in text and "1 x caption: empty text" in text
    assert [r["row"] for r in data.preprocessing["skipped_rows"]] == [3, 6, 7]


def test_config_errors_name_the_column(tmp_path, table):
    with pytest.raises(DataError, match=r"no label column 'target' \(data.label\); its columns: picture, sound"):
        load_table_dataset(config(table, label="target"))
    with pytest.raises(DataError, match=r"no column 'wieght' \(data.columns.wieght\); did you mean weight\?"):
        load_table_dataset(config(table, columns={"wieght": TabularColumn()}))
    with pytest.raises(DataError, match=r"no label column 'Label' \(data.label\); did you mean label\?"):
        load_table_dataset(config(table, label="Label"))
    with pytest.raises(DataError, match=r"no split column 'split' \(data.split_column\)"):
        load_table_dataset(config(table, split_column="split"))
    with pytest.raises(DataError, match="table not found"):
        load_table_dataset(config(tmp_path / "nope.csv"))


def test_image_augmentation_shifts_within_an_eighth():
    from mmtransfer.config import ImageColumn
    from mmtransfer.modalities.image import ImageModality

    mod = ImageModality("img", ImageColumn(size=(16, 16), channels=1))
    batch = torch.zeros(200, 1, 16, 16)
    batch[:, 0, 8, 8] = 1.0
    out = mod.augment(batch, torch.Generator().manual_seed(0))
    assert out.shape == batch.shape and torch.equal(out.sum((1, 2, 3)), batch.sum((1, 2, 3)))
    where = out[:, 0].flatten(1).argmax(1)
    dy, dx = where // 16 - 8, where % 16 - 8
    assert dy.abs().max() == 2 and dx.abs().max() == 2  # 16 / 8 = 2 pixels at most, and all shifts occur
    assert len(set(zip(dy.tolist(), dx.tolist(), strict=True))) == 25


def test_fit_applies_augmentation_to_training_batches_only(table):
    from mmtransfer.config import TrainConfig
    from mmtransfer.train import fit

    data = load_table_dataset(config(table))
    assert set(data.augment) == {"picture"}
    seen = []
    augment = {"picture": lambda x: seen.append(len(x)) or x}
    model = build_model(ModelConfig(embed_dim=8), data.specs, 3, seed=0)
    fit(model, data.train, data.val, TrainConfig(epochs=2, batch_size=8, progress=False), augment=augment)
    assert sum(seen) == 2 * len(data.train)  # every training example, each epoch; no validation batch


def test_rare_label_and_bad_split_value_name_the_original_rows(tmp_path):
    df = write_files(tmp_path)
    df.loc[4, "label"] = "emu"  # the only emu: no stratified split can hold it
    df.to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(DataError, match=r"row 4, column 'label': label 'emu' has 1 row\(s\); a class needs 3"):
        load_table_dataset(DataConfig(table=str(tmp_path / "t.csv")))

    (tmp_path / "b").mkdir()
    df = write_files(tmp_path / "b")
    df["part"] = ["train"] * 20 + ["val"] * 5 + ["test"] * 5
    df.loc[3, "picture"] = "img/nope.png"  # skipped first: must not shift the row numbers after it
    df.loc[10, "part"] = "tset"
    df.loc[27, "label"] = "emu"
    df.to_csv(tmp_path / "b" / "t.csv", index=False)
    console = Console(record=True, width=200)
    cfg = DataConfig(table=str(tmp_path / "b" / "t.csv"), split_column="part", on_bad_rows="skip")
    data = load_table_dataset(cfg, console=console)
    assert [(r["row"], r["column"]) for r in data.preprocessing["skipped_rows"]] == [
        (3, "picture"),
        (10, "part"),
        (27, "label"),
    ]
    assert "1 x label: label 'emu' never occurs in the train split" in console.export_text()
    assert len(data.train) + len(data.val) + len(data.test) == N - 3


def test_na_words_are_values_and_nullable_numbers_are_missing(tmp_path):
    df = write_files(tmp_path)
    df["colour"] = ["NA", "None"] * (N // 2)  # words, not missing values
    df.to_csv(tmp_path / "t.csv", index=False)
    data = load_table_dataset(DataConfig(table=str(tmp_path / "t.csv")))
    assert data.preprocessing["state"]["colour"]["categories"] == ["NA", "None"]

    df = pd.read_csv(tmp_path / "t.csv").convert_dtypes()  # nullable Float64: a missing value is pd.NA
    df.loc[5, "weight"] = pd.NA
    df[["picture", "sound"]] = df[["picture", "sound"]].map(lambda p: str(tmp_path / p))
    cfg = DataConfig(columns={"weight": TabularColumn(missing="mean")})
    assert torch.isfinite(load_table_dataset(cfg, source=df).train.to_memory().inputs["tabular"]).all()
    with pytest.raises(DataError, match=r"row 5, column 'weight': NaN in a numeric column"):
        load_table_dataset(DataConfig(columns={"weight": TabularColumn(missing="error")}), source=df)
    # by default an empty number cell is a missing value: filled with the train mean
    data = load_table_dataset(DataConfig(), source=df)
    assert len(data.train) + len(data.val) + len(data.test) == len(df)


def test_dotted_column_names_are_refused(tmp_path):
    df = write_files(tmp_path).rename(columns={"caption": "caption.en"})
    with pytest.raises(DataError, match=r"column names may not contain '.': \['caption.en'\]"):
        load_table_dataset(DataConfig(), source=df)


def test_a_label_budget_on_a_table_selects_with_its_own_labels(table):
    from mmtransfer.data import load_dataset

    data = load_dataset(config(table, k_per_class=4))  # 3 classes: 3 train + 1 selects, per class
    assert (len(data.train), len(data.val)) == (9, 3)
    assert data.labels.to_dict()["budget"] == "k_per_class=4" and data.labels.validation == "budget"
    assert data.val.batch([0])["picture"].shape[1:] == data.train.batch([0, 1])["picture"].shape[1:]
    assert len(data.train_pool) == N - 6  # every row outside the test split (20 % of 30) is in the pool
    none = load_dataset(config(table, k_per_class=4), validation="none")
    assert none.val is None and len(none.train) == 12


# ---------------------------------------------------------------- headerless and tab-separated tables


def texts(n=30):
    """Short texts of three classes, some opening with a quote they do not close, as the SMS Spam Collection's."""
    words = {"cat": "purr meow whiskers", "dog": "bark woof fetch", "owl": "hoot night feathers"}
    rows = []
    for i in range(n):
        label = ["cat", "dog", "owl"][i % 3]
        text = f"{words[label]} {i}"
        if i % 5 == 0:
            text = f'"{words[label]}" she said, {i} times'  # a quote opens the cell but is no CSV quoting
        elif i % 7 == 0:
            text = f'{words[label]} "{i}'  # a lone quote
        rows.append((label, text))
    return rows


def test_a_headerless_tab_separated_file_reads_with_its_quotes_as_written(tmp_path):
    from mmtransfer.tables import read_table

    rows = texts()
    path = tmp_path / "messages"  # no suffix, no header: label<TAB>text, as the SMS Spam Collection
    path.write_text("".join(f"{label}\t{text}\n" for label, text in rows))
    cfg = DataConfig(table=str(path), sep="tab", header=False, names=["label", "text"])
    df, _, _, _ = __import__("mmtransfer.tables").tables.read_source(cfg)
    assert list(df.columns) == ["label", "text"]
    assert len(df) == 30 and list(zip(df["label"], df["text"], strict=True)) == rows  # every quote kept
    data = load_table_dataset(cfg)
    assert data.classes == ["cat", "dog", "owl"] and len(data.train) + len(data.val) + len(data.test) == 30
    # without names the columns are numbered; with too many names the counts are named
    assert list(read_table(path, sep="\t", header=False)[0].columns) == ["0", "1"]
    with pytest.raises(DataError, match=r"data.names gives 3 name\(s\) \(a, b, c\) but the table has 2 column"):
        read_table(path, sep="tab", header=False, names=["a", "b", "c"])
    with pytest.raises(DataError, match=r"messages: not a table: .*data.sep"):
        read_table(path)  # no suffix, no sep: not guessed


def test_a_quoted_tsv_and_a_headerless_csv_read_as_pandas_wrote_them(tmp_path):
    from mmtransfer.tables import read_table

    df = pd.DataFrame({"text": ['say "hi"\tthere', "two\nlines", "plain"], "label": ["a", "b", "a"]})
    df.to_csv(tmp_path / "q.tsv", sep="\t", index=False)  # quoted cells: a tab, a newline, quotes inside
    assert read_table(tmp_path / "q.tsv")[0].equals(df)
    df.to_csv(tmp_path / "q.csv", index=False, header=False)  # AG News: class,title,description, no header
    back = read_table(tmp_path / "q.csv", header=False, names=["body", "y"])[0]
    assert list(back.columns) == ["body", "y"] and back["body"].tolist() == df["text"].tolist()
    renamed = read_table(tmp_path / "q.tsv", names=["body", "y"])[0]  # with a header, names rename its columns
    assert list(renamed.columns) == ["body", "y"] and len(renamed) == 3
    df.to_csv(tmp_path / "semi.txt", sep=";", index=False)
    assert read_table(tmp_path / "semi.txt", sep="semicolon")[0].equals(df)


def test_the_config_names_a_separator_and_reads_its_defaults_by_suffix():
    assert DataConfig(sep="tab").sep == DataConfig(sep="\\t").sep == DataConfig(sep="\t").sep == "\t"
    assert DataConfig().separator("a.tsv") == "\t" and DataConfig().separator("a.csv") == ","
    assert DataConfig(sep=";").separator("a.tsv") == ";"
    from mmtransfer.config import ConfigError, validate

    with pytest.raises(ConfigError, match=r"data.sep: expected one character, or tab"):
        validate({"data": {"sep": "tabs"}})
    with pytest.raises(ConfigError, match=r"data.names: each column needs its own name; named twice: a"):
        validate({"data": {"names": ["a", "b", "a"]}})


def test_new_rows_read_as_the_run_read_its_table_unless_their_header_names_its_columns(tmp_path):
    from mmtransfer.inference import read_data

    cfg = DataConfig(sep="tab", header=False, names=["label", "text"])
    rows = texts(6)
    (tmp_path / "same").write_text("".join(f"{label}\t{text}\n" for label, text in rows))
    df = read_data(tmp_path / "same", cfg, ["text"])[0]  # the run's own headerless file
    assert list(df.columns) == ["label", "text"] and len(df) == 6
    (tmp_path / "new").write_text("".join(f"{text}\n" for _, text in rows))  # texts only: no label column
    df = read_data(tmp_path / "new", cfg, ["text"])[0]
    assert list(df.columns) == ["text"] and df["text"].tolist() == [t for _, t in rows]
    (tmp_path / "new.csv").write_text("id,text\n1,hello\n2,bye\n")  # a header naming the run's column
    df = read_data(tmp_path / "new.csv", cfg, ["text"])[0]
    assert list(df.columns) == ["id", "text"] and len(df) == 2


def test_a_split_columns_val_rows_joining_training_is_said(tmp_path):
    df = write_files(tmp_path)
    df["part"] = ["train"] * 20 + ["val"] * 5 + ["test"] * 5
    df.to_csv(tmp_path / "t.csv", index=False)
    cfg = DataConfig(table=str(tmp_path / "t.csv"), split_column="part")
    console = Console(record=True, width=300)
    data = load_table_dataset(cfg, console=console, hold_out=False)
    assert (len(data.train), data.val, len(data.test)) == (25, None, 5)
    assert (
        "note: the 5 val row(s) of split column 'part' join the train rows: train.validation is none, so nothing "
        "selects the epoch (the last one is kept)" in console.export_text()
    )
    console = Console(record=True, width=300)
    load_table_dataset(cfg, console=console)  # the val rows select: nothing to say
    assert "join the train rows" not in console.export_text()
