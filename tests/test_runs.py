"""runs.py: fit_run writes a run folder from a config; load_run rebuilds its model; evaluate_run scores exactly the
rows the run recorded, and refuses a table that changed or went away since; a folder is never written over."""

import numpy as np
import pandas as pd
import pytest
import torch

from mmtransfer.config import validate
from mmtransfer.display import make_console
from mmtransfer.runs import evaluate_run, fit_run, load_run


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """60 rows of two numbers, labelled by the sign of their sum; 3 epochs: (folder, table, what fit_run returned)."""
    folder = tmp_path_factory.mktemp("runs")
    x = np.random.default_rng(0).normal(size=(60, 2))
    table = folder / "t.csv"
    pd.DataFrame({"a": x[:, 0], "b": x[:, 1], "y": np.where(x.sum(1) > 0, "hi", "lo")}).to_csv(table, index=False)
    cfg = validate({"data": {"table": str(table), "label": "y"}, "train": {"epochs": 3, "progress": False}})
    result = fit_run(cfg, folder / "run", make_console(quiet=True))
    return folder / "run", table, result


def test_fit_run_trains_selects_and_scores_the_held_out_rows(run):
    _, _, result = run
    assert result["classes"] == ["hi", "lo"] and result["epochs_run"] == 3
    assert (result["val"]["n"], result["test"]["n"]) == (8, 12)  # 60 rows: 20 % test, then 10 % of the rest
    test = result["test"]
    assert np.sum(test["confusion"]) == 12 and test["accuracy"] == pytest.approx(np.trace(test["confusion"]) / 12)


def test_evaluate_run_scores_the_recorded_rows_again_identically(run):
    folder, _, result = run
    again = evaluate_run(folder)
    assert again["n"] == 12 and again["confusion"] == result["test"]["confusion"]
    assert again["accuracy"] == pytest.approx(result["test"]["accuracy"])
    assert evaluate_run(folder, "train")["n"] == 40 and evaluate_run(folder, "val")["n"] == 8
    with pytest.raises(ValueError, match="split must be train, val or test, got 'all'"):
        evaluate_run(folder, "all")


def test_load_run_rebuilds_the_model_with_its_weights(run):
    folder, _, _ = run
    cfg, model, classes = load_run(folder)
    assert classes == ["hi", "lo"] and cfg.data.label == "y" and cfg.train.epochs == 3
    again = load_run(folder)[1]
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values(), strict=True))


def test_a_changed_or_missing_table_is_refused_not_scored(run, tmp_path):
    folder, table, _ = run
    original = table.read_bytes()
    try:
        table.write_bytes(original.replace(b"hi", b"lo", 1))
        with pytest.raises(ValueError, match=r"the table .*t.csv changed since training \(its SHA-256 differs"):
            evaluate_run(folder)
        table.unlink()
        with pytest.raises(FileNotFoundError, match="is not there any more; give the data to score"):
            evaluate_run(folder)
    finally:
        table.write_bytes(original)
    assert evaluate_run(folder)["n"] == 12


def test_a_previous_run_or_another_folder_is_never_written_over(run, tmp_path):
    folder, table, _ = run
    cfg = validate({"data": {"table": str(table), "label": "y"}, "train": {"epochs": 1, "progress": False}})
    # artifact.ArtifactError: matched as any exception, as the renovation may give user errors another base class
    with pytest.raises(Exception, match=r"holds a previous run; --overwrite replaces it"):
        fit_run(cfg, folder, make_console(quiet=True))
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(Exception, match="not empty and not a run folder"):
        fit_run(cfg, tmp_path, make_console(quiet=True))
    assert (tmp_path / "notes.txt").read_text() == "mine"
