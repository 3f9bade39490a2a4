"""The run folder's layout has one owner (mmtransfer.runfolder): it names every file, and nothing else in the
package spells those names."""

import ast
import json
from pathlib import Path

import pytest

import mmtransfer
from mmtransfer import runfolder
from mmtransfer.config import RunConfig
from mmtransfer.runfolder import ArtifactError, RunFolder

SRC = Path(mmtransfer.__file__).parent
NAMES = {
    value
    for key, value in vars(runfolder).items()
    if key.isupper() and isinstance(value, str) and "." in value  # the file names (ASSETS, TENSORBOARD are folders)
} | set(runfolder.OLD_TASK_FILES)


def test_the_layout_names_every_file_a_run_folder_holds():
    assert {"config.yaml", "model.safetensors", "labels.json", "inputs.json", "preprocessing.json", "task.json",
            "splits.json", "versions.json", "history.json", "history.csv", "learning_curve.png", "metrics.json",
            "transfer_report.json", "transfer_report.md", "manifest.json", "checkpoint.safetensors", "model.onnx",
            "model.json", "target.json", "calibration.json"} <= NAMES  # fmt: skip


# The same name for another folder's file: the demo's own summary, mmtransfer-demo/metrics.json (README).
NOT_A_RUN_FOLDER = {("demo.py", "metrics.json")}


def test_no_module_but_the_owner_spells_a_run_folder_file_name():
    found = []
    for path in SRC.rglob("*.py"):
        if path.name == "runfolder.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in NAMES:
                if (path.relative_to(SRC).as_posix(), node.value) not in NOT_A_RUN_FOLDER:
                    found.append(f"{path.relative_to(SRC)}:{node.lineno} {node.value}")
    assert found == []


def test_writers_and_readers_round_trip(tmp_path):
    folder = RunFolder(tmp_path)
    assert not folder.is_run() and folder.metrics() == {} and folder.transfer_record() is None
    folder.write_config(RunConfig())
    folder.write_labels(["cat", "dog"])
    folder.write_metrics({"test": {"accuracy": 0.5}})
    folder.write_task({"task": "classification", "label": "y"})
    folder.write_versions({"mmtransfer": "0"})
    folder.write_transfer({"source": "x"}, "# report")
    assert folder.is_run() and folder.read_config() == RunConfig()
    assert (tmp_path / "labels.json").read_text() == '["cat", "dog"]'  # one line, as before
    assert folder.metrics() == {"test": {"accuracy": 0.5}} and folder.task_state()["label"] == "y"
    assert folder.versions() == {"mmtransfer": "0"} and folder.transfer_record() == {"source": "x"}
    folder.copy_transfer_report(tmp_path / "copy")
    assert json.loads((tmp_path / "copy.json").read_text()) == {"source": "x"}
    assert (tmp_path / "copy.md").read_text() == "# report"
    assert folder.figure("reliability") == tmp_path / "reliability.png"
    assert [p.name for p in folder.log_files()] == ["history.csv", "learning_curve.png", "tensorboard"]
    assert not list(tmp_path.glob(".*"))  # no temporary file left behind


def test_a_bad_json_file_is_an_artifact_error_naming_it(tmp_path):
    (tmp_path / "versions.json").write_text("[1, 2]")
    with pytest.raises(ArtifactError, match=r"versions.json: expected a table of package versions"):
        RunFolder(tmp_path).versions()
    (tmp_path / "metrics.json").write_text("{not json")
    with pytest.raises(ArtifactError, match=r"metrics.json: not valid JSON"):
        RunFolder(tmp_path).metrics()
    with pytest.raises(ArtifactError, match=r"splits.json: missing from the run folder"):
        RunFolder(tmp_path).splits()
