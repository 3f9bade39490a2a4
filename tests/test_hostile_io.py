"""Hostile model folders, weight files, disks and outputs (issue 19, failures 1, 7, 8 and 10).

No code from a model folder or a weight file ever runs, whatever stdin holds; a full disk, a refused pickle or a
bad environment variable is one ``error:`` line naming the file or variable; an output file appears whole or
not at all.
"""

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from mmtransfer.cli import app

runner = CliRunner()
FULL_DISK = 'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })'
DIGITS = {
    "data": {"dataset": "digits", "k_per_class": 5, "seed": 0},
    "model": {"embed_dim": 8, "encoders": {"image": {"type": "cnn", "channels": [4]}}},
    "train": {"epochs": 1, "batch_size": 32, "progress": False},
}


def one_error_line(stderr: str, *names: str) -> str:
    """The single error line of a CLI failure, checked to name each of ``names`` and carry no traceback."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in stderr, stderr
    assert "weights_only=False" not in stderr and "trust_remote_code=True" not in stderr  # never a library's advice
    for name in names:
        assert name in errors[0], (name, errors[0])
    return errors[0]


def evil_folder(folder: Path, marker: Path) -> Path:
    """A tiny BERT folder whose config.json asks, through auto_map, for its own modeling_evil.py, which would
    write ``marker`` when imported (its model_type is one transformers does not know, so transformers would ask
    on stdin whether to run it)."""
    from conftest import tiny_bert

    tiny_bert(folder)
    (folder / "modeling_evil.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n"
        "from transformers import BertConfig, BertModel\n\n\n"
        "class EvilConfig(BertConfig):\n    model_type = 'evil'\n\n\n"
        "class EvilModel(BertModel):\n    config_class = EvilConfig\n"
    )
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = "evil"
    config["auto_map"] = {"AutoConfig": "modeling_evil.EvilConfig", "AutoModel": "modeling_evil.EvilModel"}
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def run_cli(args: list[str], cwd: Path, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mmtransfer", *args], cwd=cwd, input=stdin, capture_output=True, text=True, timeout=240
    )


# ---------------------------------------------------------------- failure 1: code in a model folder


@pytest.mark.slow
def test_a_model_folder_asking_for_its_own_code_is_refused_even_when_stdin_says_yes(tmp_path):
    from conftest import tiny_bert, write_mixed_table

    marker = tmp_path / "MARKER"
    evil = evil_folder(tmp_path / "evil", marker)
    tokenizer = tiny_bert(tmp_path / "clean")  # a clean tokenizer: the encoder path itself is what is refused
    table = write_mixed_table(tmp_path, n=24)
    as_encoder = {
        "data": {
            "table": str(table),
            "columns": {"caption": {"modality": "text", "tokenizer": str(tokenizer), "max_length": 12}},
            "ignore": ["picture", "sound", "weight", "colour"],
        },
        "model": {"embed_dim": 8, "encoders": {"caption": {"type": "hf", "path": str(evil)}}},
        "train": {"epochs": 1, "progress": False},
    }
    as_source = {**DIGITS, "transfer": {"source": str(evil)}}
    for name, cfg in [("encoder", as_encoder), ("source", as_source)]:
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
        done = run_cli(["fit", f"{name}.yaml", "--out", f"run-{name}"], tmp_path, stdin="y\ny\ny\n")
        assert done.returncode == 2, done.stderr
        line = one_error_line(done.stderr, f"{evil / 'modeling_evil.py'}", "auto_map", "never runs code")
        assert "custom code" not in done.stdout + done.stderr  # transformers never asked
        assert not marker.exists(), (name, line)


def test_refuse_code_names_the_file_for_each_way_a_folder_asks_for_code(tmp_path):
    from mmtransfer.hub import ModelFolderError, refuse_code

    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "bert"}))
    refuse_code(str(folder), "hf encoder")  # a plain folder of a known model type loads
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"auto_map": {"AutoTokenizer": ["tokenization_odd.OddTokenizer", None]}})
    )
    with pytest.raises(ModelFolderError, match="tokenizer_config.json asks to run .*tokenization_odd.py"):
        refuse_code(str(folder), "text tokenizer")
    (folder / "tokenizer_config.json").unlink()
    (folder / "config.json").write_text(json.dumps({"model_type": "odd"}))
    (folder / "configuration_odd.py").write_text("raise SystemExit('ran')\n")
    with pytest.raises(ModelFolderError, match="model_type 'odd'.*configuration_odd.py; mmtransfer never runs"):
        refuse_code(str(folder), "hf encoder")


def test_transformers_is_never_allowed_to_run_folder_code_even_past_our_check(tmp_path, monkeypatch):
    """Belt and braces: with the folder check switched off, trust_remote_code=False still refuses, without the
    prompt on stdin and without transformers' advice to pass trust_remote_code=True."""
    from transformers import AutoConfig, AutoModel

    from mmtransfer import hub

    marker = tmp_path / "MARKER"
    evil = evil_folder(tmp_path / "evil", marker)
    monkeypatch.setattr(hub, "refuse_code", lambda name, what: None)
    monkeypatch.setattr("sys.stdin", __import__("io").StringIO("y\ny\n"))
    for loader in (AutoConfig, AutoModel):
        with pytest.raises(hub.ModelFolderError, match="it asks to run code of its own; mmtransfer never runs") as e:
            hub.from_pretrained(loader, str(evil), what="hf encoder")
        assert "trust_remote_code" not in str(e.value)
    assert not marker.exists()


# ---------------------------------------------------------------- failure 10: pickles, and a bad cache limit


def test_pickled_weights_are_one_line_in_our_words_and_nothing_in_them_runs(tmp_path):
    import torch
    from conftest import tiny_bert
    from safetensors.torch import load_file

    marker = tmp_path / "PICKLE_RAN"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    folder = tiny_bert(tmp_path / "binbert")  # weights only as pytorch_model.bin, a pickle with a payload
    state = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    torch.save({**state, "payload": Payload()}, folder / "pytorch_model.bin")
    torch.save({"weight": torch.zeros(2), "payload": Payload()}, tmp_path / "evil.pt")
    damaged = tiny_bert(tmp_path / "damaged")  # a cut-off model.safetensors: safetensors' own error, not an OSError
    (damaged / "model.safetensors").write_bytes((damaged / "model.safetensors").read_bytes()[:500])
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(DIGITS))
    for source, names in [
        (str(folder), [str(folder / "pytorch_model.bin"), "safe reader", "model.safetensors"]),
        (str(tmp_path / "evil.pt"), [str(tmp_path / "evil.pt"), "safe reader", "posix.system"]),
        (str(damaged), [f"{damaged / 'model.safetensors'} is not a readable safetensors file"]),
    ]:
        result = runner.invoke(app, ["graft", source, str(tmp_path / "cfg.yaml"), "--dry-run"])
        assert result.exit_code == 2, result.output
        one_error_line(result.stderr, *names)
    assert not marker.exists()


@pytest.mark.parametrize("value", ["abc", "nan", "1e400", "-1", "inf"])
def test_a_bad_cache_size_limit_is_one_line_naming_the_variable(tmp_path, monkeypatch, value):
    monkeypatch.setenv("MMTRANSFER_CACHE", str(tmp_path))
    monkeypatch.setenv("MMTRANSFER_CACHE_MAX_GB", value)
    result = runner.invoke(app, ["cache", "info"])
    assert result.exit_code == 2, result.output
    one_error_line(result.stderr, f"MMTRANSFER_CACHE_MAX_GB={value!r}", "number of gigabytes")


# ---------------------------------------------------------------- failure 7: a full disk


def full_disk(*args, **kwargs):
    from safetensors import SafetensorError

    raise SafetensorError(FULL_DISK)


def test_a_full_disk_while_saving_weights_is_an_oserror_naming_the_file_and_leaves_nothing(tmp_path, monkeypatch):
    import torch

    from mmtransfer import checkpoint

    monkeypatch.setattr(checkpoint, "save_file", full_disk)
    with pytest.raises(OSError, match="model.safetensors: no space left on device") as caught:
        checkpoint.save_weights({"w": torch.ones(3)}, tmp_path / "run" / "model.safetensors")
    assert caught.value.errno == errno.ENOSPC
    assert list((tmp_path / "run").iterdir()) == []  # no partial file, under the name or a temporary one


def test_a_full_disk_during_fit_and_graft_is_one_line_naming_the_path(tmp_path, monkeypatch):
    import torch
    from safetensors.torch import save_file

    from mmtransfer import checkpoint, resume

    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(DIGITS))
    save_file({"unrelated": torch.zeros(1)}, str(tmp_path / "source.safetensors"))
    monkeypatch.setattr(checkpoint, "save_file", full_disk)
    monkeypatch.setattr(resume, "save_file", full_disk)  # the per-epoch checkpoint
    out = tmp_path / "run"
    result = runner.invoke(app, ["fit", str(tmp_path / "cfg.yaml"), "--out", str(out)])
    assert result.exit_code == 2, result.output
    one_error_line(result.stderr, str(out), "no space left on device")
    assert not (out / "model.safetensors").exists()
    assert json.loads((out / "manifest.json").read_text())["complete"] is False  # the run never looks complete

    grafted = tmp_path / "grafted.safetensors"
    result = runner.invoke(
        app, ["graft", str(tmp_path / "source.safetensors"), str(tmp_path / "cfg.yaml"), "-o", str(grafted)]
    )
    assert result.exit_code == 2, result.output
    one_error_line(result.stderr, f"{grafted}: no space left on device")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cfg.yaml", "run", "source.safetensors"]


# ---------------------------------------------------------------- failure 8: predict's CSV, whole or not at all


@pytest.fixture(scope="module")
def table_run(tmp_path_factory):
    """A CNN run on a small mixed table (12 x 12 pictures), and its table."""
    from conftest import write_mixed_table

    from mmtransfer.config import validate
    from mmtransfer.display import make_console
    from mmtransfer.runs import fit_run

    root = tmp_path_factory.mktemp("table_run")
    table = write_mixed_table(root, n=24)
    cfg = validate(
        {
            "data": {
                "table": str(table),
                "columns": {"picture": {"modality": "image", "size": [12, 12], "channels": 3}},
                "ignore": ["sound", "caption", "weight", "colour"],
            },
            "model": {"embed_dim": 8, "encoders": {"picture": {"type": "cnn", "channels": [4]}}},
            "train": {"epochs": 1, "batch_size": 8, "progress": False},
        }
    )
    fit_run(cfg, root / "run", make_console(quiet=True))
    return root / "run", table


def test_a_predict_that_fails_midway_leaves_no_csv_under_its_name(table_run, tmp_path, monkeypatch):
    import csv

    run, table = table_run
    real_writer = csv.writer

    class FillsTheDisk:
        def __init__(self, f):
            self.rows, self.inner = 0, real_writer(f)

        def writerow(self, row):
            self.rows += 1
            if self.rows > 5:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            self.inner.writerow(row)

    out = tmp_path / "preds" / "predictions.csv"
    out.parent.mkdir()
    out.write_text("an older file\n")  # a failed predict keeps the user's earlier file as it was
    monkeypatch.setattr(csv, "writer", FillsTheDisk)
    result = runner.invoke(app, ["predict", str(run), str(table), "--out", str(out), "--batch-size", "4"])
    assert result.exit_code == 2, result.output
    one_error_line(result.stderr, f"{out}: no space left on device")
    assert out.read_text() == "an older file\n"
    assert [p.name for p in out.parent.iterdir()] == ["predictions.csv"]  # the partial file was removed


@pytest.mark.slow
def test_a_killed_predict_leaves_no_file_under_its_name(table_run, tmp_path):
    run, table = table_run
    out = tmp_path / "predictions.csv"
    script = (
        "import csv, os, signal, sys\n"
        "real = csv.writer\n"
        "class Killed:\n"
        "    def __init__(self, f):\n"
        "        self.inner, self.rows = real(f), 0\n"
        "    def writerow(self, row):\n"
        "        self.rows += 1\n"
        "        if self.rows > 5:\n"
        "            sys.stdout.flush()\n"
        "            os.kill(os.getpid(), signal.SIGKILL)\n"
        "        self.inner.writerow(row)\n"
        "csv.writer = Killed\n"
        "from mmtransfer.cli import main\n"
        "sys.argv = ['mmtransfer', 'predict', *sys.argv[1:]]\n"
        "main()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(run), str(table), "--out", str(out), "--batch-size", "4"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == -9, done.stderr
    assert not out.exists()
    left = [p.name for p in tmp_path.iterdir()]
    assert all(name.startswith(".predictions.") and name.endswith(".tmp.csv") for name in left), left


# ---------------------------------------------------------------- hostile inputs to predict, evaluate, export


def test_hostile_inputs_to_predict_evaluate_and_export_are_one_line(table_run, tmp_path):
    import pandas as pd

    run, table = table_run
    pd.read_csv(table).drop(columns=["picture"]).to_csv(tmp_path / "no_picture.csv", index=False)
    (tmp_path / "folder.csv").mkdir()
    (tmp_path / "image.csv").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    (tmp_path / "empty.csv").write_text("")
    cases = [
        (["predict", str(run), str(tmp_path / "no_picture.csv")], "no column 'picture'"),
        (["predict", str(run), str(tmp_path / "folder.csv")], "folder.csv"),
        (["predict", str(run), str(tmp_path / "image.csv")], "image.csv"),
        (["evaluate", str(run), str(tmp_path / "empty.csv")], "empty.csv"),
        (["predict", str(run), str(table), "--out", str(tmp_path / "folder.csv")], "folder.csv: is a folder"),
        (["evaluate", str(run), str(table), "--json", str(tmp_path / "folder.csv")], "folder.csv: is a folder"),
        (["export", str(run), "--data", str(tmp_path / "no_picture.csv")], "no column 'picture'"),
    ]
    for args, message in cases:
        result = runner.invoke(app, args, catch_exceptions=False)
        assert result.exit_code == 2, (args, result.output)
        one_error_line(result.stderr, message)
    assert not (tmp_path / "folder.csv" / "predictions.csv").exists()


def without_root() -> list[str] | None:
    """A command prefix under which folder permissions hold: none for a user, setpriv dropping root's right to
    ignore them where the tests run as root; None where neither works."""
    if not hasattr(os, "geteuid"):
        return None
    if os.geteuid() != 0:
        return []
    prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]
    try:
        works = subprocess.run([*prefix, "true"], capture_output=True, timeout=30).returncode == 0
    except OSError:
        return None
    return prefix if works else None


@pytest.mark.slow
def test_a_read_only_output_folder_is_one_line_naming_the_path(table_run, tmp_path):
    prefix = without_root()
    if prefix is None:
        pytest.skip("no way to make a folder read-only for this user")
    run, table = table_run
    locked = tmp_path / "locked"
    locked.mkdir()
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(DIGITS))
    commands = [
        (["predict", str(run), str(table), "--out", str(locked / "p.csv")], f"{locked / 'p.csv'}: permission denied"),
        (["fit", str(tmp_path / "cfg.yaml"), "--out", str(locked / "run")], f"{locked / 'run'}: permission denied"),
        (["export", str(run), "--out", str(locked / "m.onnx")], f"{locked / 'm.onnx'}: permission denied"),
    ]
    script = (  # one process runs the three commands: each start costs seconds of imports
        "import json, sys\nfrom typer.testing import CliRunner\nfrom mmtransfer.cli import app\n"
        "out = [(r.exit_code, r.stderr) for r in (CliRunner().invoke(app, a) for a in json.loads(sys.argv[1]))]\n"
        "print(json.dumps(out))\n"
    )
    locked.chmod(0o500)
    try:
        done = subprocess.run(
            [*prefix, sys.executable, "-c", script, json.dumps([args for args, _ in commands])],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert done.returncode == 0, done.stderr
        for (code, stderr), (args, message) in zip(json.loads(done.stdout), commands, strict=True):
            assert code == 2, (args, stderr)
            one_error_line(stderr, message)
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o700)
