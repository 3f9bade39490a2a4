"""One base class for a user's mistakes; anything else the command line meets is a bug, said as one."""

import ast
import re
import sys
from pathlib import Path

import pytest
import torch
from conftest import run_cli

import mmtransfer
from mmtransfer import artifact, cache, calibration, cli, config, hub, resume, runlock
from mmtransfer.errors import BadArgument, MissingFile, MissingPackage, UserError, report_bug
from mmtransfer.modalities import base
from mmtransfer.train import objectives, state
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


# ------------------------------------------------------- every plain raise left in src is one a user cannot cause

PLAIN = {"ValueError", "RuntimeError", "KeyError", "TypeError", "FileNotFoundError", "ImportError"}
SRC = Path(mmtransfer.__file__).parent

# "file:function" -> why no user input reaches it. A new plain raise on a user's path fails
# test_every_plain_raise_is_one_a_user_cannot_cause: raise a UserError subclass there, or add it here with the reason.
NOT_A_USERS_MISTAKE = {
    "encoders/aisfx.py:AisfxEncoder.__init__": "pool and hop come from AisfxConfig, which allows no other value",
    "demo.py:run_demo": "failed demo runs are a bug or the machine (each cell's log says which), not the user's input",
    "config/base.py:_count_or_auto.check": "a pydantic validator: pydantic turns its ValueError into a ConfigError",
    "data/preprocess.py:RowSplit.concat": "our code joins splits of one table; two tables is a mistake in the caller",
    "data/splits.py:Split.concat": "our code joins splits of one dataset; other inputs is a mistake in the caller",
    "data/builtin.py:_builtin": "the config's Literal allows only the built-in names; validated before it gets here",
    "data/load.py:load_dataset": "validation comes from our own callers (auto, none or split), never from a config",
    "encoders/__init__.py:_with_tokens": "the text modality gives every token input its vocab_size",
    "encoders/rnn.py:as_sequence": "the encoder is built from the input's spec: a batch of another rank is a bug",
    "encoders/cnn.py:ConvEncoder.forward": "built from the input's spec and checked at build (odd kernel, readout)",
    "encoders/attention.py:AttentionEncoder.forward": "max_len is checked against the input's length at build",
    "transfer/probe.py:put_in_head": "the probe is solved on this model's own embeddings: another shape is a bug",
    # the lead's files, being reshaped now; each is listed in the errors branch's report with what it should become
}

VALIDATORS = ("field_validator", "model_validator")  # pydantic turns their ValueError into a ConfigError


def plain_raises() -> dict[str, list[str]]:
    """``file:function`` -> the plain exception classes raised in it, for every module of src/mmtransfer outside
    pydantic validators."""
    found: dict[str, list[str]] = {}

    def visit(node, rel: str, names: list[str]) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                if any(ast.unparse(d).split("(")[0].endswith(VALIDATORS) for d in child.decorator_list):
                    continue
                visit(child, rel, [*names, child.name])
            elif isinstance(child, ast.ClassDef):
                visit(child, rel, [*names, child.name])
            else:
                if isinstance(child, ast.Raise) and child.exc is not None:
                    exc = child.exc.func if isinstance(child.exc, ast.Call) else child.exc
                    if isinstance(exc, ast.Name) and exc.id in PLAIN:
                        found.setdefault(f"{rel}:{'.'.join(names) or '<module>'}", []).append(exc.id)
                visit(child, rel, names)

    for path in sorted(SRC.rglob("*.py")):
        visit(ast.parse(path.read_text()), path.relative_to(SRC).as_posix(), [])
    return found


def test_every_plain_raise_is_one_a_user_cannot_cause():
    found = plain_raises()
    unlisted = sorted(set(found) - set(NOT_A_USERS_MISTAKE))
    assert not unlisted, (
        f"plain raises in {unlisted}: a user's input or machine can cause it -> raise a UserError subclass "
        "(mmtransfer.errors); only a bug can -> add it to NOT_A_USERS_MISTAKE with the reason"
    )
    gone = sorted(set(NOT_A_USERS_MISTAKE) - set(found))
    assert not gone, f"{gone} raise no plain exception any more: take them out of NOT_A_USERS_MISTAKE"


def test_the_scan_sees_a_plain_raise_and_skips_validators(tmp_path, monkeypatch):
    (tmp_path / "m.py").write_text(
        "from pydantic import field_validator\n"
        "class C:\n"
        "    @field_validator('x')\n"
        "    def _x(cls, v):\n"
        "        raise ValueError('a validator')\n"
        "    def read(self):\n"
        "        raise FileNotFoundError('missing')\n"
        "def f():\n"
        "    raise UserError('fine')\n"
    )
    monkeypatch.setattr(sys.modules[__name__], "SRC", tmp_path)
    assert plain_raises() == {"m.py:C.read": ["FileNotFoundError"]}


def test_the_new_classes_still_are_what_callers_caught():
    assert issubclass(MissingFile, FileNotFoundError) and issubclass(MissingFile, UserError)
    assert issubclass(MissingPackage, ImportError) and issubclass(MissingPackage, UserError)
    assert issubclass(BadArgument, TypeError) and issubclass(BadArgument, UserError)


# --------------------------------------------------------------- converted user paths still exit 2 on the CLI


def test_a_weights_file_that_is_not_safetensors_is_exit_2_naming_it(tmp_path):
    (tmp_path / "w.safetensors").write_bytes(b"\x00" * 40)
    (tmp_path / "c.yaml").write_text("data: {dataset: digits}\ntransfer: {source: w.safetensors}\n")
    result = run_cli("fit", "c.yaml", "--out", "r", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "w.safetensors" in lines[0]


def test_a_missing_optional_package_is_exit_2_with_the_pip_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError, as where Ray is not installed
    (tmp_path / "base.yaml").write_text("data: {dataset: digits}\ntrain: {epochs: 1}\n")
    (tmp_path / "s.yaml").write_text("base: base.yaml\nbudgets: [5]\nseeds: 1\narms: {scratch: {}}\n")
    result = run_cli("study", "s.yaml", "--out", "st", "--backend", "ray", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error:") and "pip install 'mmtransfer[ray]'" in result.stderr


def test_a_train_budget_larger_than_the_rows_is_exit_2_naming_the_field(tmp_path):
    (tmp_path / "c.yaml").write_text("data: {dataset: digits, k_per_class: 5}\ntrain: {epochs: 1, batch_size: 512}\n")
    result = run_cli("fit", "c.yaml", "--out", "r", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error:") and "train.batch_size 512" in result.stderr


def test_a_bad_cache_size_limit_through_the_python_api_is_a_user_error(monkeypatch):
    monkeypatch.setenv("MMTRANSFER_CACHE_MAX_GB", "-1")
    with pytest.raises(UserError, match="MMTRANSFER_CACHE_MAX_GB='-1'"):
        cache.max_bytes()


def test_a_missing_transformers_is_exit_2_with_the_pip_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # as where the hf extra is not installed
    (tmp_path / "c.yaml").write_text(
        "data: {dataset: digits}\nmodel: {encoders: {image: {type: hf, path: some-model}}}\ntrain: {epochs: 1}\n"
    )
    result = run_cli("fit", "c.yaml", "--out", "r", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error:") and "pip install 'mmtransfer[hf]'" in result.stderr


def test_a_checkpoint_without_its_fields_is_a_user_error_naming_the_file(tmp_path):
    resume.save(tmp_path / resume.CHECKPOINT, {"x": torch.zeros(1)}, {"epoch": 1})
    with pytest.raises(
        UserError, match=r"checkpoint.safetensors: not a training checkpoint this version can resume \(no "
    ):
        state.start_state(state.FitState(), tmp_path, True, True, None, None, None, None, [])
