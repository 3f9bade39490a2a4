"""Hostile and degenerate data (issue 19, failures 4, 12 and 14): non-finite audio, numbers that overflow when
standardised, a validation loss or logits that are not finite, one-class and constant labels, a header naming a
column twice, an MP3 renamed .wav. Each is refused in one line (CLI) naming the row, column and file."""

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import run_cli

from mmtransfer.calibration import CalibrationError, fit_temperature
from mmtransfer.config import DataConfig
from mmtransfer.data import Split, load_dataset
from mmtransfer.modalities.base import DataError
from mmtransfer.tables import load_table_dataset
from mmtransfer.transfer.probe import solve_probe


def write_table(folder, n: int = 24, bad_wav: int | None = None, sample=np.nan, labels="ab"):
    """``n`` rows: a short tone (``sound``), a number (``x``) and a label (``y``); row ``bad_wav``'s WAV (32-bit
    float, which can hold NaN and inf) has ``sample`` at sample 10."""
    import soundfile as sf

    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        k = i % len(labels)
        tone = (0.5 * np.sin(2 * np.pi * (300 + 200 * k) * np.arange(1600) / 8000)).astype(np.float32)
        if i == bad_wav:
            tone[10] = sample
        sf.write(folder / f"{i}.wav", tone, 8000, subtype="FLOAT")
        rows.append({"sound": str(folder / f"{i}.wav"), "x": float(i) + 0.5, "y": labels[k]})
    return pd.DataFrame(rows)


def cli(*args, cwd):
    """``mmtransfer fit`` (in this process): (exit code, stderr)."""
    env = {"MMTRANSFER_CACHE": str(cwd / "cache")}
    done = run_cli("fit", *args, "--out", cwd / "run", "--set", "train.epochs=1", cwd=cwd, env=env)
    return done.returncode, done.stderr


def one_error_line(code: int, stderr: str) -> str:
    assert code == 2, stderr
    assert "Traceback" not in stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stderr
    return stderr


# ---------------------------------------------------------------- failure 4: non-finite data is a bad cell


@pytest.mark.parametrize("sample", [np.nan, np.inf])
def test_a_wav_holding_nan_or_inf_is_a_bad_cell_named_by_row_and_file(tmp_path, sample):
    write_table(tmp_path, bad_wav=5, sample=sample).to_csv(tmp_path / "t.csv", index=False)
    stderr = one_error_line(*cli("--data", "t.csv", "--label", "y", cwd=tmp_path))
    assert "row 5, column 'sound': 1 of 1600 samples are NaN or infinite (the first at sample 10" in stderr
    assert str(tmp_path / "5.wav") in stderr


def test_a_wav_holding_nan_in_a_folder_dataset_is_named(tmp_path):
    import soundfile as sf

    for cls in "ab":
        (tmp_path / cls).mkdir()
        for i in range(4):
            sf.write(tmp_path / cls / f"{i}.wav", np.full(800, 0.1 * (i + 1), np.float32), 8000, subtype="FLOAT")
    sf.write(tmp_path / "b" / "2.wav", np.full(800, np.nan, np.float32), 8000, subtype="FLOAT")
    with pytest.raises(DataError, match=r"column 'audio': 800 of 800 samples are NaN or infinite.*b/2\.wav"):
        load_table_dataset(DataConfig(folder=str(tmp_path)))


def test_a_number_too_large_to_standardise_is_a_bad_cell(tmp_path):
    df = write_table(tmp_path)
    df["x"] = df["x"].astype(object)
    df.loc[3, "x"] = "1e308"  # its square, and the column's standard deviation with it, overflow to inf
    df.to_csv(tmp_path / "t.csv", index=False)
    stderr = one_error_line(*cli("--data", "t.csv", "--label", "y", cwd=tmp_path))
    assert "row 3, column 'x': 1e+308 is too large to standardise" in stderr


def test_a_val_number_far_outside_the_train_range_is_a_bad_cell(tmp_path):
    df = write_table(tmp_path, n=12)
    df["split"] = ["train"] * 6 + ["val"] * 3 + ["test"] * 3
    df.loc[7, "x"] = 1e100  # fine in 64 bits, but 1e99 train standard deviations out: inf in 32-bit floats
    cfg = DataConfig(label="y", split_column="split", columns={"x": {"modality": "tabular"}}, infer=False)
    with pytest.raises(DataError, match=r"1 bad cell.*\n  row 7, column 'x': 1e\+100 is 5.86e\+99 train standard dev"):
        load_table_dataset(cfg, df)
    data = load_table_dataset(cfg.model_copy(update={"on_bad_rows": "skip"}), df)  # skip: the row goes
    assert len(data.val) == 2 and 7 not in data.val.row_ids
    assert [r["row"] for r in data.preprocessing["skipped_rows"]] == [7]
    assert torch.isfinite(data.val.batch(range(2))["tabular"]).all()


def test_a_new_row_far_outside_the_train_range_is_a_bad_cell_for_a_fitted_preprocessor(tmp_path):
    from mmtransfer.preprocess import TablePreprocessor

    cfg = DataConfig(label="y", columns={"x": {"modality": "tabular"}}, infer=False)
    data = load_table_dataset(cfg, write_table(tmp_path, n=12))
    pre = TablePreprocessor.from_state(data.preprocessing)  # as predict and evaluate rebuild it from a run
    new = pd.DataFrame({"x": [1.0, 1e100, 2.0]})
    cells, bad = pre.check(new, tmp_path, "new.csv")
    assert [(b.row, b.column) for b in bad] == [(1, "x")] and "train standard deviations" in bad[0].reason
    assert list(cells.present["x"]) == [True, False, True]


def test_a_validation_loss_that_is_not_finite_stops_the_run(small_run):
    from mmtransfer.model import build_model
    from mmtransfer.train import TrainingError, fit

    data = load_dataset(small_run.data)
    model = build_model(small_run.model, data.input_shapes, len(data.classes), seed=0)
    val = Split({k: torch.full_like(v, float("inf")) for k, v in data.val.inputs.items()}, data.val.labels)
    with pytest.raises(TrainingError, match=r"the validation loss became nan in epoch 1 \(the training loss was"):
        fit(model, data.train, val, small_run.train)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_no_temperature_is_fitted_on_logits_that_are_not_finite(value):
    logits = torch.randn(40, 3, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(40) % 3
    assert fit_temperature(logits, labels) != 1.0  # finite logits: a temperature is fitted
    logits[7, 1] = value
    with pytest.raises(CalibrationError, match=r"1 of 40 rows of the validation split .* NaN or infinite .*row 7"):
        fit_temperature(logits, labels)


def test_the_solved_probe_refuses_features_that_are_not_finite():
    features = torch.randn(30, 4, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(30) % 2
    features[4, 2] = float("nan")
    with pytest.raises(ValueError, match=r"linear probe: the embeddings of 1 of 30 labelled rows .*table row 104"):
        solve_probe(features, labels, row_ids=np.arange(100, 130))
    features[4, 2] = float("inf")
    with pytest.raises(ValueError, match=r"NaN or infinite \(the first: row 4\)"):
        solve_probe(features, labels.float(), task="regression")


# ---------------------------------------------------------------- failure 12: a label needs something to learn


def test_a_label_column_with_one_class_is_refused(tmp_path):
    df = write_table(tmp_path, labels="a")
    with pytest.raises(DataError, match=r"^data.label 'y': one class \('a'\) in 24 rows .*needs at least two$"):
        load_table_dataset(DataConfig(label="y"), df)
    df["y"] = "a;a"
    with pytest.raises(DataError, match=r"data.label 'y': one label \('a'\) in 24 rows.*at least two labels"):
        load_table_dataset(DataConfig(label="y", task="multilabel"), df)


def test_a_constant_regression_target_is_refused(tmp_path):
    df = write_table(tmp_path)
    df["y"] = 3.5
    with pytest.raises(DataError, match=r"data.label 'y': every one of the 24 rows .* holds 3.5.*deviation is 0"):
        load_table_dataset(DataConfig(label="y", task="regression"), df)
    df = df.head(12).copy()
    df["y"] = [1.0] * 6 + [2.0] * 6  # the train split alone constant
    df["split"] = ["train"] * 4 + ["val", "test"] * 4
    with pytest.raises(DataError, match=r"every one of the 4 rows of the train split holds 1"):
        load_table_dataset(DataConfig(label="y", task="regression", split_column="split"), df)


# ---------------------------------------------------------------- failure 14: messages that say what is wrong


def test_a_column_named_twice_in_the_header_is_reported_as_such(tmp_path):
    df = write_table(tmp_path)
    df.insert(2, "note", "a")
    df["note2"] = "b"
    text = df.to_csv(index=False).replace("note2", "note", 1)
    (tmp_path / "t.csv").write_text(text)
    stderr = one_error_line(*cli("--data", "t.csv", "--label", "y", cwd=tmp_path))
    assert "column 'note' appears twice in the header (columns 3 and 5, counting from 1)" in stderr
    assert "note.1" not in stderr
    with pytest.raises(DataError, match=r"column 'note' appears twice in the header"):
        load_table_dataset(DataConfig(label="y", table=str(tmp_path / "t.csv")))


def test_mp3_bytes_renamed_wav_are_named_for_what_they_are(tmp_path):
    write_table(tmp_path).to_csv(tmp_path / "t.csv", index=False)
    (tmp_path / "6.wav").write_bytes(b"\xff\xfb\x90\x00" + bytes(4000))  # an MPEG frame header, then nothing
    stderr = one_error_line(*cli("--data", "t.csv", "--label", "y", cwd=tmp_path))
    assert "row 6, column 'sound': unreadable or corrupt audio: a .wav file whose bytes begin like MP3" in stderr
    assert str(tmp_path / "6.wav") in stderr
    assert "does not exist" not in stderr and "Note:" not in stderr  # nor libsndfile's or mpg123's words
