"""One base class for a user's mistakes; anything else the command line meets is a bug, said as one."""

import re
from pathlib import Path

import pytest
from conftest import run_cli

from mmtransfer import artifact, calibration, cli, config, hub, runlock
from mmtransfer.errors import UserError, report_bug
from mmtransfer.modalities import base
from mmtransfer.train import objectives
from mmtransfer.transfer import graft


@pytest.mark.parametrize(
    "cls",
    [config.ConfigError, base.DataError, base.BadValue, artifact.ArtifactError, graft.GraftError,
     objectives.TrainingError, runlock.LockError, calibration.CalibrationError, hub.ModelFolderError],
)  # fmt: skip
def test_every_error_class_is_a_user_error_and_still_a_value_error(cls):
    assert issubclass(cls, UserError) and issubclass(cls, ValueError)


def test_a_bug_is_exit_code_1_and_one_line_naming_the_file_with_its_traceback(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise TypeError("unsupported operand type(s) for +: 'int' and 'str'")

    monkeypatch.setattr(cli.fitting, "load_config", broken)  # the fit command's module
    monkeypatch.delenv("MMTRANSFER_DEBUG", raising=False)
    (tmp_path / "c.yaml").write_text("data: {dataset: digits}\n")
    result = run_cli("fit", "c.yaml", "--out", "r", cwd=tmp_path)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: a bug in mmtransfer, not a mistake of yours (TypeError: ")
    assert "Traceback" not in result.stderr and "please report it" in lines[0]
    written = Path(re.search(r"the full traceback is in (\S+);", lines[0]).group(1))
    text = written.read_text()
    assert text.startswith("Traceback") and "in broken" in text and "TypeError: unsupported operand" in text
    written.unlink()


def test_a_users_mistake_is_still_code_2_and_debug_shows_a_bugs_traceback(tmp_path, monkeypatch):
    result = run_cli("fit", "missing.yaml", "--out", "r", cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.startswith("error:") and "missing.yaml" in result.stderr

    def broken(*args, **kwargs):
        raise TypeError("boom")

    monkeypatch.setattr(cli.fitting, "load_config", broken)  # the fit command's module
    monkeypatch.setenv("MMTRANSFER_DEBUG", "1")
    (tmp_path / "c.yaml").write_text("data: {dataset: digits}\n")
    with pytest.raises(TypeError, match="boom"):
        run_cli("fit", "c.yaml", "--out", "r", cwd=tmp_path)


def test_report_bug_says_where_it_stopped_when_nothing_can_be_written(monkeypatch, tmp_path):
    monkeypatch.setattr("tempfile.gettempdir", lambda: str(tmp_path / "no" / "such"))
    try:
        raise KeyError("x")
    except KeyError as err:
        line = report_bug(err)
    assert line.startswith("a bug in mmtransfer, not a mistake of yours (KeyError: 'x'); at ")
    assert "test_errors.py:" in line
