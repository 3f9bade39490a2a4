"""A run folder trusts only what it wrote (issue 19): an unlisted file or a symlink is refused, every loaded value is
range-checked, the lock is atomic (two processes raced many times), a fit killed at any stage resumes to the same
weights or is complete, and a manifest nested too deeply is one error line."""

import json
import multiprocessing
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from mmtransfer import artifact
from mmtransfer.checkpoint import load_weights
from mmtransfer.cli import app
from mmtransfer.runlock import LockError

runner = CliRunner()
# tests/test_resume.py's config on a fifth of the digits: 11 steps an epoch, a checkpoint every 7 steps
CONFIG = (
    "data: {dataset: digits, seed: 0, k_per_class: 20}\n"
    "model: {embed_dim: 32, encoders: {image: {type: cnn, channels: [16, 32], dropout: 0.2}}}\n"
    "train: {epochs: 3, batch_size: 16, progress: false, checkpoint_every: 7}\n"
)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished classification run folder (one epoch), to copy and tamper with."""
    from rich.console import Console

    from mmtransfer.config import load_config
    from mmtransfer.runs import fit_run

    folder = tmp_path_factory.mktemp("hostile")
    (folder / "c.yaml").write_text(CONFIG)
    cfg = load_config(folder / "c.yaml", ["train.epochs=1"])
    fit_run(cfg, folder / "run", Console(quiet=True))
    return folder / "run"


@pytest.fixture
def run(finished, tmp_path):
    return Path(shutil.copytree(finished, tmp_path / "run"))


def _refused(args: list[str], *names: str) -> str:
    """The command exits 2 with exactly one error line, naming each of ``names``, and no traceback."""
    result = runner.invoke(app, [str(a) for a in args])
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit) and "Traceback" not in result.stderr, result.stderr
    assert len(errors) == 1, result.stderr
    for name in names:
        assert name in errors[0], errors[0]
    return errors[0]


def _redigest(run: Path) -> None:
    """Rewrite the manifest over the folder as it now is (what someone editing files can do: integrity only)."""
    artifact.finish(run)


# ---------------------------------------------------------------- failure 2 and 13: the folder is its manifest


def test_an_unlisted_target_json_is_refused_by_predict_info_and_export(run, tmp_path):
    (run / "target.json").write_text(json.dumps({"task": "regression", "label": "y", "mean": 5.0, "std": 2.0}))
    rows = tmp_path / "rows.csv"
    rows.write_text("x\n1\n")
    _refused(["predict", run, rows, "--out", tmp_path / "p.csv"], "target.json")
    _refused(["info", run], "target.json")
    _refused(["export", run], "target.json")
    assert not (tmp_path / "p.csv").exists() and not (run / "model.onnx").exists()
    # re-digested with it: still refused, a classification run has no target
    _redigest(run)
    _refused(["export", run], "target.json", "classification run")


@pytest.mark.parametrize("where", ["notes.txt", "tensorboard/extra.bin", "deep/er/preprocessing.json"])
def test_any_unlisted_file_anywhere_is_refused(run, where):
    (run / where).parent.mkdir(parents=True, exist_ok=True)
    (run / where).write_text("{}")
    with pytest.raises(artifact.ArtifactError, match=re.escape(f"{run / where}: not listed in")):
        artifact.verify(run)


def test_what_commands_write_later_and_a_leftover_checkpoint_are_allowed(run):
    for name in ("model.onnx", "model.json", "checkpoint.safetensors", ".lock"):
        (run / name).write_bytes(b"x")
    assert artifact.verify(run)["complete"]
    assert artifact.load(run).classes == [str(i) for i in range(10)]


def test_a_symlinked_file_or_folder_is_refused(run, tmp_path):
    outside = tmp_path / "outside.safetensors"
    shutil.copy(run / "model.safetensors", outside)
    (run / "model.safetensors").unlink()
    (run / "model.safetensors").symlink_to(outside)  # identical bytes: the digest alone would accept it
    _refused(["predict", run, tmp_path / "rows.csv"], f"{run / 'model.safetensors'}: a symbolic link")
    (run / "model.safetensors").unlink()
    shutil.copy(outside, run / "model.safetensors")
    artifact.verify(run)
    shutil.move(run / "tensorboard", tmp_path / "tb")
    (run / "tensorboard").symlink_to(tmp_path / "tb", target_is_directory=True)
    with pytest.raises(artifact.ArtifactError, match="tensorboard: a symbolic link"):
        artifact.verify(run)


# ---------------------------------------------------------------- failure 9: every loaded value in its range


@pytest.mark.parametrize(
    "file,value,field",
    [
        ("task.json", 0, "temperature is 0"),
        ("task.json", float("nan"), "temperature is nan"),
        ("task.json", 1e9, "temperature is 1000000000.0"),
        ("task.json", "2", "temperature is '2'"),
        ("labels.json", ["0", "1", "2", "3", "4", "5", "6", "7", "8", "8"], "'8' is given twice"),
        ("labels.json", ["0", "1", "2", "3", "4", "5", "6", "7", "8", ""], "name 9 is ''"),
    ],
)
def test_an_edited_and_redigested_value_out_of_range_is_refused(run, tmp_path, file, value, field):
    if file == "task.json":
        record = json.loads((run / file).read_text())
        record["calibration"]["temperature"] = value
        (run / file).write_text(json.dumps(record))
    else:
        (run / file).write_text(json.dumps(value))
    _redigest(run)
    _refused(["predict", run, tmp_path / "rows.csv"], file, field)


@pytest.mark.parametrize(
    "task,target,field",
    [
        ("regression", {"task": "regression", "mean": 1.0, "std": 0.0}, "std is 0.0"),
        ("regression", {"task": "regression", "mean": float("inf"), "std": 1.0}, "mean is inf"),
        ("regression", {"task": "regression", "mean": 1.0}, "std is None"),
        ("regression", {"task": "multilabel", "thresholds": [0.5, 0.5]}, "task is multilabel, but config.yaml"),
        ("regression", {"task": "nonsense", "mean": 1.0, "std": 1.0}, "task is 'nonsense'"),
        ("multilabel", {"task": "multilabel", "thresholds": [0.5]}, "thresholds: 1; expected one per label (2)"),
        ("multilabel", {"task": "multilabel", "thresholds": [0.5, 1.5]}, "thresholds: 1.5 for 'b'"),
        ("multilabel", {"task": "multilabel", "thresholds": [float("nan"), 0.5]}, "thresholds: nan for 'a'"),
        ("multilabel", {"task": "multilabel", "thresholds": [0.5, 0.5], "labels": ["b", "a"]}, "labels differ"),
    ],
)
def test_a_target_out_of_range_is_refused(tmp_path, task, target, field):
    (tmp_path / "task.json").write_text(json.dumps(target))
    with pytest.raises(artifact.ArtifactError, match="task.json: ") as err:
        artifact.read_task(tmp_path, task, ["a", "b"])
    assert field in str(err.value)


def test_a_target_json_missing_from_a_regression_run_is_refused(tmp_path):
    with pytest.raises(artifact.ArtifactError, match="task.json: missing; this run folder was made by an older"):
        artifact.read_task(tmp_path, "regression", ["y"])
    (tmp_path / "task.json").write_text(json.dumps({"task": "regression", "mean": 1.0, "std": 2.0}))
    assert artifact.read_task(tmp_path, "regression", ["y"]).std == 2.0
    state = {"task": "regression", "mean": 1.0, "std": 2.0, "calibration": {"temperature": 1.5}}
    (tmp_path / "task.json").write_text(json.dumps(state))
    with pytest.raises(artifact.ArtifactError, match="a temperature in a regression run"):
        artifact.read_task(tmp_path, "regression", ["y"])


# ---------------------------------------------------------------- failure 10: a manifest nested too deeply


def test_a_manifest_nested_too_deeply_is_one_error_line(run, tmp_path):
    (run / "manifest.json").write_text("[" * 200_000 + "]" * 200_000)
    _refused(["info", run], "manifest.json: not valid JSON (nested too deeply)")
    _refused(["predict", run, tmp_path / "rows.csv"], "manifest.json: not valid JSON (nested too deeply)")


# ---------------------------------------------------------------- failure 3: the lock


def _race(folder: Path, trials: int, barrier, counter, results, index: int) -> None:
    held = refused = overlaps = failed = 0
    for trial in range(trials):
        target = folder / ("shared" if trial % 2 else f"fresh{trial}")  # a fresh folder: made and removed too
        barrier.wait(timeout=30)
        inside = False
        try:
            with artifact.locked(target):
                with counter.get_lock():
                    counter.value += 1
                    inside = True
                    overlaps += counter.value > 1
                time.sleep(0.002)  # long enough for the other process to try while this one holds it
                held += 1
        except LockError:
            refused += 1
        except OSError:  # anything else (a lock removed under its holder's feet) is a failure too
            failed += 1
        finally:
            if inside:
                with counter.get_lock():
                    counter.value -= 1
    results[index * 4 : index * 4 + 4] = [held, refused, overlaps, failed]


@pytest.mark.slow
def test_two_processes_racing_for_the_lock_never_both_hold_it(tmp_path):
    trials = 240
    ctx = multiprocessing.get_context("fork")
    barrier, counter, results = ctx.Barrier(2), ctx.Value("i", 0), ctx.Array("i", 8)
    workers = [ctx.Process(target=_race, args=(tmp_path, trials, barrier, counter, results, i)) for i in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=60)
        assert w.exitcode == 0
    held, refused, overlaps, failed = (results[i] + results[i + 4] for i in range(4))
    assert (overlaps, failed) == (0, 0)
    assert held >= trials and held + refused == 2 * trials and refused > 0  # they did meet
    assert not (tmp_path / "shared" / ".lock").exists()
    assert not [p for p in tmp_path.rglob(".lock*")]  # no lock, nor a lock being put in place, left behind


def _dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


@pytest.mark.parametrize(
    "text,message",
    [
        ("", "a lock with no owner (empty); if no fit is writing"),
        ("garbage here now", "a lock with no owner (no process id in it)"),
        ("4242 another-host", "is locked by process 4242 on host another-host"),
    ],
)
def test_a_lock_that_cannot_be_judged_stale_is_not_taken_over(tmp_path, text, message):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / ".lock").write_text(text)
    with pytest.raises(LockError, match=re.escape(message)) as err, artifact.locked(tmp_path / "run"):
        pass
    assert f"remove {tmp_path / 'run' / '.lock'}" in str(err.value)
    assert (tmp_path / "run" / ".lock").read_text() == text


def test_a_lock_of_a_dead_process_of_this_host_is_taken_over(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / ".lock").write_text(f"{_dead_pid()} {socket.gethostname()}\n")
    with artifact.locked(tmp_path / "run"):
        assert (tmp_path / "run" / ".lock").read_text() == f"{os.getpid()} {socket.gethostname()}\n"
    assert not (tmp_path / "run" / ".lock").exists()


# ---------------------------------------------------------------- failure 6: a kill at every stage


def _kill():
    os.kill(os.getpid(), signal.SIGKILL)


def _arm(stage: str) -> None:
    """Make this process kill itself with SIGKILL at ``stage`` of a fit."""
    import mmtransfer.resume
    import mmtransfer.runs
    import mmtransfer.tasks.classification
    import mmtransfer.train

    if stage == "data checks":
        mmtransfer.runs.load_dataset = lambda *a, **k: _kill()
    elif stage == "run folder written":
        artifact.write_splits = lambda *a, **k: _kill()
    elif stage == "mid-epoch checkpoint":
        save = mmtransfer.resume.save
        mmtransfer.resume.save = lambda *a, **k: (save(*a, **k), _kill())
    elif stage.startswith("end of epoch"):
        epoch, log = int(stage[-1]), mmtransfer.train.RunLog.epoch
        mmtransfer.train.RunLog.epoch = lambda self, row, s: _kill() if row["epoch"] == epoch else log(self, row, s)
    elif stage == "checkpoint write":  # the third write, torn: half a temporary file
        calls, save_file = [], mmtransfer.resume.save_file

        def torn(tensors, path, metadata=None):
            calls.append(path)
            if len(calls) < 3:
                return save_file(tensors, path, metadata=metadata)
            Path(path).write_bytes(b"\0" * 100)
            _kill()

        mmtransfer.resume.save_file = torn
    elif stage == "calibration":
        mmtransfer.tasks.classification.calibrate = lambda *a, **k: _kill()
    elif stage == "manifest write":  # the final manifest, half written to its temporary file
        write = artifact._write_json

        def torn(path, data):
            if path.name == artifact.MANIFEST and data["complete"]:
                path.with_name(f".{path.name}.tmp").write_text(json.dumps(data)[:50])
                _kill()
            write(path, data)

        artifact._write_json = torn
    elif stage == "after the manifest":  # the manifest written, the checkpoint not yet removed
        finish = artifact.finish
        artifact.finish = lambda run_dir: (finish(run_dir), _kill())
    else:
        raise ValueError(stage)


STAGES = ["data checks", "run folder written", "mid-epoch checkpoint", "end of epoch 1", "end of epoch 2",
          "end of epoch 3", "checkpoint write", "calibration", "manifest write", "after the manifest"]  # fmt: skip


def _in_child(job) -> int:
    """Run ``job`` in a forked child; its exit status (-9: killed)."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            torch.set_num_threads(1)  # on 2 shared cores, one thread per fit is twice as fast
            job()
            code = 0
        except BaseException:
            import traceback

            traceback.print_exc()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def drive_kills(folder: str) -> None:
    """In a fresh process: an uninterrupted fit, then for each stage a fit killed there and, unless the folder is
    complete, its resume; each in a forked child (this process only imports torch, so forking is safe and every
    fit runs in the same setting). Writes what happened to ``folder/stages.json``."""
    from rich.console import Console

    from mmtransfer.config import load_config
    from mmtransfer.runs import fit_run

    for name in ("torch.utils.tensorboard", "matplotlib.pyplot", "scipy.optimize", "torch._dynamo"):
        __import__(name)  # once here, not in every child (3 s each)
    folder = Path(folder)
    cfg = load_config(folder / "c.yaml")
    quiet = Console(quiet=True)
    record = {"whole": _in_child(lambda: fit_run(cfg, folder / "whole", quiet))}
    for i, stage in enumerate(STAGES):
        out = folder / f"stage{i}"
        killed = _in_child(lambda stage=stage, out=out: (_arm(stage), fit_run(cfg, out, quiet)))
        try:
            artifact.verify(out)
            state = "complete"
        except artifact.ArtifactError as err:
            state = str(err)
        entry = {"stage": stage, "killed": killed, "after kill": state, "left": sorted(os.listdir(out))}
        if state != "complete":
            entry["resumed"] = _in_child(lambda out=out: fit_run(cfg, out, quiet, resume=True))
        record[str(i)] = entry
    (folder / "stages.json").write_text(json.dumps(record, indent=1))


@pytest.mark.slow
def test_a_fit_killed_at_any_of_ten_stages_resumes_to_the_same_weights_or_is_complete(tmp_path):
    (tmp_path / "c.yaml").write_text(CONFIG)
    env = {**os.environ, "MMTRANSFER_CACHE": str(tmp_path / "cache")}
    code = f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import test_hostile_runs as t; "
    code += f"t.drive_kills({str(tmp_path)!r})"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads((tmp_path / "stages.json").read_text())
    assert record["whole"] == 0, done.stderr[-3000:]
    whole = load_weights(tmp_path / "whole")
    temperature = json.loads((tmp_path / "whole" / "task.json").read_text())["calibration"]["temperature"]
    for i, stage in enumerate(STAGES):
        entry, out = record[str(i)], tmp_path / f"stage{i}"
        assert entry["killed"] == -signal.SIGKILL, (stage, entry, done.stderr[-3000:])
        if stage == "after the manifest":  # complete: the leftover checkpoint does not stop it verifying
            assert entry["after kill"] == "complete" and "checkpoint.safetensors" in entry["left"]
        else:
            assert entry["after kill"] != "complete" and entry.get("resumed") == 0, (stage, entry, done.stderr[-3000:])
            assert not (out / "checkpoint.safetensors").exists()
        assert "checkpoint.safetensors" not in artifact.verify(out)["files"], stage
        weights = load_weights(out)
        assert all(torch.equal(whole[k], weights[k]) for k in whole), stage
        assert json.loads((out / "task.json").read_text())["calibration"]["temperature"] == temperature, stage


def test_resume_of_a_run_with_no_checkpoint_starts_again_and_says_so(finished, tmp_path):
    # what a kill between the old code's checkpoint removal and its manifest left: metrics.json, no checkpoint
    (tmp_path / "c.yaml").write_text(CONFIG)
    run = Path(shutil.copytree(finished, tmp_path / "run", ignore=shutil.ignore_patterns("manifest.json")))
    unfinished = {"complete": False, "files": {}}
    (run / "manifest.json").write_text(json.dumps({**unfinished, "digest": artifact._digest(unfinished)}))
    assert (run / "metrics.json").is_file() and not (run / "checkpoint.safetensors").exists()
    result = runner.invoke(
        app, ["fit", str(tmp_path / "c.yaml"), "--out", str(run), "--resume", "-s", "train.epochs=1"]
    )
    assert result.exit_code == 0, result.output
    assert "no checkpoint was kept, so it starts from the beginning" in result.output
    assert "first epoch" not in result.output
    assert artifact.verify(run)["complete"]
