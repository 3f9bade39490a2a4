"""A run folder is a self-contained, verified artifact: reload and predict identically, refuse tampering."""

import json
import os

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from mmtransfer import artifact
from mmtransfer.cli import app
from mmtransfer.inference import predict, probabilities, read_rows

MODELS = ["cnn", "gru", "attention", "bert", "fused"]
runner = CliRunner()


def probs(run, table):
    split = read_rows(run, table).split
    return torch.cat([p for _, p in probabilities(run.model, split)])


@pytest.mark.parametrize("name", MODELS)
def test_fit_save_load_predict_gives_the_same_probabilities(fitted_runs, name, tmp_path):
    run_dir, table = fitted_runs[name], fitted_runs["_table"]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["complete"] and "model.safetensors" in manifest["files"]
    loaded = artifact.load(run_dir)
    # the metrics written at training time are those of the reloaded model on the recorded test rows
    recorded = json.loads((run_dir / "metrics.json").read_text())["test"]
    from mmtransfer.runs import evaluate_run

    again = evaluate_run(run_dir)
    assert again["accuracy"] == recorded["accuracy"] and again["confusion"] == recorded["confusion"]
    assert again["loss"] == pytest.approx(recorded["loss"], abs=1e-6)
    # a copy elsewhere predicts identically
    copy = artifact.copy_run(run_dir, tmp_path / "copy")
    a, b = probs(loaded, table), probs(artifact.load(copy), table)
    assert torch.equal(a, b) and a.shape == (36, 3)
    modes = {oct(os.stat(p).st_mode & 0o777) for p in run_dir.rglob("*") if p.is_file()}
    assert len(modes) == 1  # every file the same permissions


def test_a_copied_artifact_loads_without_the_original_backbone_folder(fitted_runs, tmp_path):
    run_dir, bert, table = fitted_runs["bert"], fitted_runs["_bert"], fitted_runs["_table"]
    before = probs(artifact.load(run_dir), table)
    copy = artifact.copy_run(run_dir, tmp_path / "moved")
    assert (copy / "assets" / "encoders" / "caption" / "config.json").is_file()
    assert (copy / "assets" / "tokenizers" / "caption" / "tokenizer_config.json").is_file()
    hidden = bert.with_name("bert-renamed-away")
    bert.rename(hidden)
    try:
        after = probs(artifact.load(copy), table)
    finally:
        hidden.rename(bert)
    assert torch.equal(before, after)


def test_a_flipped_byte_an_edited_manifest_and_a_missing_file_are_refused(fitted_runs, tmp_path):
    copy = artifact.copy_run(fitted_runs["cnn"], tmp_path / "run")
    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    result = runner.invoke(app, ["predict", str(copy), str(fitted_runs["_table"])])
    assert result.exit_code == 2
    assert result.output.startswith(f"error: {weights}: changed since the run was written")

    copy = artifact.copy_run(fitted_runs["cnn"], tmp_path / "run2")
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["files"]["labels.json"]["size"] += 1
    (copy / "manifest.json").write_text(json.dumps(manifest))
    result = runner.invoke(app, ["evaluate", str(copy)])
    assert result.exit_code == 2
    assert f"error: {copy / 'manifest.json'}: edited or damaged" in result.output

    copy = artifact.copy_run(fitted_runs["cnn"], tmp_path / "run3")
    (copy / "inputs.json").unlink()
    result = runner.invoke(app, ["info", str(copy)])
    assert "FAILED" in result.output and "inputs.json: missing" in result.output

    copy = artifact.copy_run(fitted_runs["cnn"], tmp_path / "run4")
    (copy / "model.safetensors").write_bytes(b"\x10\x00")  # truncated, and the manifest updated to match
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["files"]["model.safetensors"] = {"size": 2, "sha256": artifact._sha256(copy / "model.safetensors")}
    manifest["digest"] = artifact._digest(manifest)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=r"model.safetensors: not a readable safetensors file"):
        artifact.load(copy)


def test_an_unfinished_run_is_refused_unless_asked(fitted_runs, tmp_path):
    copy = artifact.copy_run(fitted_runs["cnn"], tmp_path / "run")
    unfinished = {"complete": False, "files": {}}  # what a fit that was killed leaves
    (copy / "manifest.json").write_text(json.dumps({**unfinished, "digest": artifact._digest(unfinished)}))
    result = runner.invoke(app, ["predict", str(copy), str(fitted_runs["_table"]), "--out", str(tmp_path / "p.csv")])
    assert result.exit_code == 2 and "this run did not finish" in result.output
    result = runner.invoke(
        app,
        ["predict", str(copy), str(fitted_runs["_table"]), "--out", str(tmp_path / "p.csv"), "--allow-unfinished"],
    )
    assert result.exit_code == 0, result.output


def test_evaluate_scores_the_recorded_rows_or_refuses_a_changed_table(fitted_runs, tmp_path):
    run_dir, table = fitted_runs["cnn"], fitted_runs["_table"]
    record = json.loads((run_dir / "splits.json").read_text())
    assert sorted(record["rows"]) == ["test", "train", "val"]
    assert len(record["rows"]["test"]) == 9 and not set(record["rows"]["test"]) & set(record["rows"]["train"])
    # the same table, rows shuffled: refused, not scored on other rows
    copy = artifact.copy_run(run_dir, tmp_path / "run")
    shuffled = tmp_path / "shuffled.csv"
    df = pd.read_csv(table).sample(frac=1.0, random_state=1)
    df["picture"] = [str(table.parent / p) for p in df["picture"]]
    df["sound"] = [str(table.parent / p) for p in df["sound"]]
    df.to_csv(shuffled, index=False)
    record["table"], record["table_sha256"] = str(shuffled), "0" * 64
    (copy / "splits.json").write_text(json.dumps(record))
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["files"]["splits.json"] = {
        "size": (copy / "splits.json").stat().st_size,
        "sha256": artifact._sha256(copy / "splits.json"),
    }
    manifest["digest"] = artifact._digest(manifest)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    result = runner.invoke(app, ["evaluate", str(copy)])
    assert result.exit_code == 2 and "changed since training" in result.output
    # as new data, the shuffled table is scored through the fitted preprocessing: all 36 rows
    result = runner.invoke(app, ["evaluate", str(run_dir), str(shuffled), "--png", str(tmp_path / "cm.png")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "cm.png").stat().st_size > 1000
    flat = " ".join(result.output.split())
    assert "n 36" in flat and "true \\ predicted cat dog owl" in flat


def test_predict_without_labels_and_with_rejected_rows(fitted_runs, tmp_path):
    run_dir, table = fitted_runs["fused"], fitted_runs["_table"]
    df = pd.read_csv(table).drop(columns=["label"])
    for col in ("picture", "sound"):
        df[col] = [str(table.parent / p) for p in df[col]]
    df.loc[4, "picture"] = str(tmp_path / "gone.png")
    df.loc[7, "sound"] = str(tmp_path / "gone.wav")
    df["id"] = [f"item-{i}" for i in range(len(df))]
    df.to_csv(tmp_path / "new.csv", index=False)
    out = tmp_path / "pred.csv"
    result = runner.invoke(app, ["predict", str(run_dir), str(tmp_path / "new.csv"), "--out", str(out)])
    assert result.exit_code == 2
    assert "row 4, column 'picture': file not found" in result.output
    assert "row 7, column 'sound': file not found" in result.output
    assert not out.exists()  # nothing written before every cell was checked

    result = runner.invoke(
        app,
        [
            "predict",
            str(run_dir),
            str(tmp_path / "new.csv"),
            "--out",
            str(out),
            "--on-bad-rows",
            "skip",
            "--id-column",
            "id",
        ],
    )
    assert result.exit_code == 0, result.output
    predicted = pd.read_csv(out)
    assert list(predicted.columns) == ["id", "prediction", "p_cat", "p_dog", "p_owl"]
    assert len(predicted) == 34 and "item-4" not in set(predicted["id"])
    np.testing.assert_allclose(predicted[["p_cat", "p_dog", "p_owl"]].sum(axis=1), 1.0, atol=1e-5)
    rejected = pd.read_csv(tmp_path / "pred.rejected.csv")
    assert rejected["row"].tolist() == [4, 7] and rejected["reason"].tolist() == ["file not found"] * 2
    assert rejected["id"].tolist() == ["item-4", "item-7"]  # named as the predictions are
    assert "34 row(s)" in result.output and "2 row(s) set aside" in result.output

    # a clean run into the same file removes the old rejected file, and says none was set aside
    clean = df.drop(index=[4, 7])
    clean.to_csv(tmp_path / "clean.csv", index=False)
    result = runner.invoke(
        app, ["predict", str(run_dir), str(tmp_path / "clean.csv"), "--out", str(out), "--on-bad-rows", "skip"]
    )
    assert result.exit_code == 0 and "no row set aside" in result.output
    assert not (tmp_path / "pred.rejected.csv").exists()

    # the Python path gives the same probabilities as the CSV
    run = artifact.load(run_dir)
    done = predict(run, tmp_path / "new.csv", tmp_path / "again.csv", on_bad_rows="skip")
    assert done["rows"] == 34
    again = pd.read_csv(tmp_path / "again.csv")
    np.testing.assert_allclose(again[["p_cat", "p_dog", "p_owl"]], predicted[["p_cat", "p_dog", "p_owl"]])


def test_predict_bad_input_is_one_error_line(fitted_runs, tmp_path):
    run_dir, table = fitted_runs["cnn"], fitted_runs["_table"]
    df = pd.read_csv(table)
    df[["caption", "label"]].to_csv(tmp_path / "no_picture.csv", index=False)
    result = runner.invoke(app, ["predict", str(run_dir), str(tmp_path / "no_picture.csv")])
    assert result.exit_code == 2
    assert result.output.startswith(f"error: {tmp_path / 'no_picture.csv'}: no column 'picture', which the model reads")

    from PIL import Image

    bomb = tmp_path / "bomb.png"
    Image.new("L", (1, 1)).save(bomb)
    Image.MAX_IMAGE_PIXELS, before = 0, Image.MAX_IMAGE_PIXELS  # every image counts as a bomb
    try:
        pd.DataFrame({"picture": [str(bomb)]}).to_csv(tmp_path / "bomb.csv", index=False)
        result = runner.invoke(app, ["predict", str(run_dir), str(tmp_path / "bomb.csv")])
    finally:
        Image.MAX_IMAGE_PIXELS = before
    assert result.exit_code == 2
    assert "row 0, column 'picture': image too large to decode safely" in " ".join(result.output.split())

    latin = tmp_path / "latin.csv"
    latin.write_bytes(b"picture,note\n" + f"{table.parent / 'img' / '0.png'},caf\xe9\n".encode("latin-1"))
    result = runner.invoke(app, ["predict", str(run_dir), str(latin)])
    assert result.exit_code == 2 and "line 2: not utf-8 text" in result.output
    result = runner.invoke(
        app, ["predict", str(run_dir), str(latin), "--encoding", "latin-1", "--out", str(tmp_path / "l.csv")]
    )
    assert result.exit_code == 0, result.output
    assert "columns the model does not read, ignored: note" in result.output


def test_info_tells_what_the_run_holds(fitted_runs):
    result = runner.invoke(app, ["info", str(fitted_runs["bert"])])
    assert result.exit_code == 0, result.output
    out = " ".join(result.output.split())
    assert "manifest ok: every file matches manifest.json" in out
    digest = json.loads((fitted_runs["bert"] / "manifest.json").read_text())["digest"]
    assert f"(digest {digest})" in out  # to compare with the one recorded when the run was made
    assert "caption tokens [12]" in out and " hf " in out
    assert "classes (3): cat, dog, owl" in out and "written with mmtransfer" in out
    assert "transferred from the Hugging Face model" in out  # the tiny BERT's weights are what it started from


def test_a_version_difference_is_reported(fitted_runs, tmp_path):
    copy = artifact.copy_run(fitted_runs["cnn"], tmp_path / "run")
    (copy / "versions.json").write_text(json.dumps({**artifact.versions(), "torch": "1.0.0"}))
    assert artifact.version_differences(copy) == [f"torch: run 1.0.0, here {torch.__version__}"]


def test_a_folder_of_class_folders_with_split_folders(tmp_path):
    from PIL import Image

    from mmtransfer.config import DataConfig
    from mmtransfer.data import load_dataset

    for split, n in (("train", 6), ("test", 3)):
        for k, cls in enumerate(("ant", "bee")):
            (tmp_path / "photos" / split / cls).mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (9, 7), (200 * k, 30 * i, 0)).save(tmp_path / "photos" / split / cls / f"{i}.jpg")
    data = load_dataset(DataConfig(folder=str(tmp_path / "photos")))
    assert data.classes == ["ant", "bee"]
    assert len(data.test) == 6 and data.test.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert len(data.train) + len(data.val) == 12
    assert data.preprocessing["columns"]["image"]["modality"] == "image"

    def files(split):
        return [split.cells.values["image"][r] for r in split.rows]

    assert all(f.startswith("test/") for f in files(data.test))
    assert all(f.startswith("train/") for f in files(data.train) + files(data.val))
    assert [f.split("/")[1] for f in files(data.test)] == ["ant"] * 3 + ["bee"] * 3  # label = class folder


def test_a_run_folder_is_never_written_over_without_being_asked(fitted_runs, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"data: {{table: {fitted_runs['_table']}, ignore: [sound, caption, weight, colour]}}\n"
        "train: {epochs: 1, progress: false}\n"
    )
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "script.sh").write_text("echo hi\n")
    result = runner.invoke(app, ["fit", str(cfg), "--out", str(tmp_path / "mine")])
    assert result.exit_code == 2 and "not empty and not a run folder" in result.output
    copy = artifact.copy_run(fitted_runs["cnn"], tmp_path / "old")
    (copy / "transfer_report.json").write_text("{}")  # a stale file of the previous run
    result = runner.invoke(app, ["fit", str(cfg), "--out", str(copy)])
    assert result.exit_code == 2 and "holds a previous run; --overwrite replaces it" in result.output
    result = runner.invoke(app, ["fit", str(cfg), "--out", str(copy), "--overwrite"])
    assert result.exit_code == 0, result.output
    assert not (copy / "transfer_report.json").exists()
    artifact.verify(copy)


def test_a_tampered_run_folder_is_refused_as_a_graft_source_and_info_says_so(fitted_runs, tmp_path):
    copy = artifact.copy_run(fitted_runs["cnn"], tmp_path / "run")
    (copy / "labels.json").write_text('["cat", "dog", "emu"]')
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data: {{table: {fitted_runs['_table']}, ignore: [sound, caption, weight, colour]}}\n")
    result = runner.invoke(app, ["graft", str(copy), str(cfg), "--dry-run"])
    assert result.exit_code == 2 and "labels.json: " in result.output and "changed since" in result.output
    result = runner.invoke(app, ["info", str(copy)])
    assert result.exit_code == 2  # the report is printed, and the exit code says it cannot be trusted
    assert "manifest FAILED" in result.output and "classes (3)" in result.output
    assert result.output.strip().splitlines()[-1].startswith("error: ")


def test_a_folder_run_names_rows_by_file_and_skips_other_files_aloud(tmp_path):
    from PIL import Image

    for k, cls in enumerate(("ant", "bee")):
        (tmp_path / "photos" / cls).mkdir(parents=True)
        for i in range(9):
            Image.new("RGB", (9, 7), (200 * k, 20 * i, 0)).save(tmp_path / "photos" / cls / f"{i}.png")
    (tmp_path / "photos" / "bee" / "Thumbs.db").write_bytes(b"\x00\x01")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "data: {folder: photos, columns: {image: {modality: image, size: [8, 8]}}}\n"
        "train: {epochs: 1, progress: false}\n"
    )
    result = runner.invoke(app, ["fit", str(cfg), "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert "skipped 1 file(s) that are not images or audio: bee/Thumbs.db" in result.output
    assert "dataset: null" in (tmp_path / "run" / "config.yaml").read_text()  # no built-in data beside a folder
    result = runner.invoke(app, ["evaluate", str(tmp_path / "run")])  # its own held-out rows, found again
    assert result.exit_code == 0, result.output
    result = runner.invoke(
        app, ["predict", str(tmp_path / "run"), str(tmp_path / "photos"), "--out", str(tmp_path / "p.csv")]
    )
    assert result.exit_code == 0, result.output
    predicted = pd.read_csv(tmp_path / "p.csv")
    assert predicted.columns[0] == "image" and predicted["image"].iloc[0] == "ant/0.png"
    assert "label" in predicted.columns and len(predicted) == 18


def test_usage_mistakes_are_one_error_line(tmp_path):
    from conftest import run_cli  # the console entry point (cli.main), in this process

    for args, message in [
        (["predict", "--batch-size", "0", "x", "y"], "error: Invalid value for '--batch-size'"),
        (["fit", "--nope"], "error: No such option: --nope (see: mmtransfer fit --help)"),
    ]:
        done = run_cli(*args, cwd=tmp_path)
        assert done.returncode == 2 and done.stderr.startswith(message), done.stderr
        assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_more_bad_input(fitted_runs, tmp_path):
    from mmtransfer import Predictor

    run_dir = fitted_runs["cnn"]
    (tmp_path / "header.csv").write_text("picture,label\n")
    result = runner.invoke(app, ["predict", str(run_dir), str(tmp_path / "header.csv")])
    assert result.exit_code == 2 and "no rows (only a header?)" in result.output
    (tmp_path / "empty.csv").write_text("")
    result = runner.invoke(app, ["predict", str(run_dir), str(tmp_path / "empty.csv")])
    assert result.exit_code == 2 and "empty file: no header, no rows" in result.output
    df = pd.read_csv(fitted_runs["_table"])[["weight", "colour", "label"]]
    df["colour"] = [1 if c == "red" else 2 for c in df["colour"]]
    df["colour"] = df["colour"].astype("category")
    predictor = Predictor(
        data={"test_fraction": 0.25, "columns": {"colour": {"modality": "tabular", "kind": "categorical"}}},
        train__epochs=1,
    ).fit(df)
    # the same category read as a float (a column with a gap) keeps its code
    floats = df.assign(colour=df["colour"].astype(float))
    np.testing.assert_allclose(predictor.predict_proba(floats).to_numpy(), predictor.predict_proba(df).to_numpy())
    with pytest.raises(ValueError, match="valid rows are given, but with train.validation none"):
        Predictor(train={"validation": "none", "epochs": 1}).fit(df, valid=df)
    result = runner.invoke(app, ["export", str(predictor.path)])
    assert result.exit_code == 2 and "trained on a DataFrame given in Python; give --data TABLE" in result.output
