"""Training that survives: resume after a kill, one writer per run folder, numbers that cannot train refused,
mixed precision, accumulation, the feature cache always right, two processes."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import run_cli
from safetensors import safe_open
from typer.testing import CliRunner

from mmtransfer.checkpoint import load_weights
from mmtransfer.cli import app
from mmtransfer.config import ConfigError, DataConfig, ModelConfig, RNNConfig, TrainConfig, load_config
from mmtransfer.data import load_dataset
from mmtransfer.model import build_model
from mmtransfer.train import Classification, TrainingError, fit

runner = CliRunner()
CONFIG = (
    "data: {dataset: digits, seed: 0}\n"
    "model: {embed_dim: 32, encoders: {image: {type: cnn, channels: [16, 32], dropout: 0.2}}}\n"
    "train: {epochs: 3, batch_size: 16, progress: false, checkpoint_every: 7}\n"
)
CLI = [sys.executable, "-m", "mmtransfer"]


def _checkpoint_meta(path):
    with safe_open(str(path), "pt") as f:
        return json.loads(f.metadata()["state"])


@pytest.mark.slow
def test_a_killed_fit_resumes_to_the_same_weights_and_metrics(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(CONFIG)
    whole = runner.invoke(app, ["fit", str(cfg), "--out", str(tmp_path / "whole"), "-q"])  # the reference
    assert whole.exit_code == 0, whole.output
    fit_b = subprocess.Popen([*CLI, "fit", str(cfg), "--out", str(tmp_path / "killed"), "-q"])
    checkpoint, meta = tmp_path / "killed" / "checkpoint.safetensors", None
    deadline = time.time() + 240
    while time.time() < deadline:  # wait for a checkpoint in the middle of epoch 2, then kill -9
        if checkpoint.is_file():
            try:
                meta = _checkpoint_meta(checkpoint)
            except Exception:  # being replaced this instant
                meta = None
            if meta and meta["epoch"] >= 1 and meta["step_in_epoch"] > 0:
                os.kill(fit_b.pid, signal.SIGKILL)
                break
        time.sleep(0.005)
    fit_b.wait(timeout=60)
    assert fit_b.returncode == -signal.SIGKILL, "the fit ended before it could be killed mid-epoch"
    assert not (tmp_path / "killed" / "metrics.json").exists()
    # the folder is marked unfinished and refused until resumed
    refused = runner.invoke(app, ["evaluate", str(tmp_path / "killed")])
    assert refused.exit_code == 2 and "did not finish" in refused.output
    again = runner.invoke(app, ["fit", str(cfg), "--out", str(tmp_path / "killed")])
    assert again.exit_code == 2 and "--resume continues it" in again.output
    resumed = run_cli("fit", cfg, "--out", tmp_path / "killed", "--resume", cwd=tmp_path)  # in this process
    assert resumed.returncode == 0, resumed.stderr
    assert re.search(r"resuming the run in \S+ from epoch [23], step \d+\n", resumed.stdout), resumed.stdout
    a, b = load_weights(tmp_path / "whole"), load_weights(tmp_path / "killed")
    assert all(torch.equal(a[k], b[k]) for k in a)
    whole = json.loads((tmp_path / "whole" / "metrics.json").read_text())
    killed = json.loads((tmp_path / "killed" / "metrics.json").read_text())
    assert whole["test"] == killed["test"] and whole["best_epoch"] == killed["best_epoch"]
    assert not (tmp_path / "killed" / "checkpoint.safetensors").exists()  # finished: no resumable state left
    history = (tmp_path / "killed" / "history.csv").read_text().splitlines()
    assert history[0].startswith("epoch,train_loss,val_loss") and len(history) == 4  # header + 3 epochs
    assert (tmp_path / "killed" / "learning_curve.png").stat().st_size > 1000
    from mmtransfer import artifact

    artifact.verify(tmp_path / "killed")


def test_a_second_writer_is_refused_with_the_holders_pid(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(CONFIG)
    holder = subprocess.Popen(["sleep", "60"])
    try:
        (tmp_path / "run").mkdir()
        (tmp_path / "run" / ".lock").write_text(str(holder.pid))
        result = runner.invoke(app, ["fit", str(cfg), "--out", str(tmp_path / "run")])
        assert result.exit_code == 2
        assert f"is being written by process {holder.pid}" in result.output
    finally:
        holder.kill()
        holder.wait()
    # a lock left by a process that is gone is taken over
    result = runner.invoke(app, ["fit", str(cfg), "--out", str(tmp_path / "run"), "--set", "train.epochs=1"])
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "run" / ".lock").exists()


@pytest.mark.parametrize(
    "override,message",
    [
        ("train.lr=.inf", "train.lr: got inf; input should be a finite number"),
        ("train.weight_decay=.inf", "train.weight_decay: got inf; input should be a finite number"),
        ("train.epochs=1e9", "train.epochs: got 1000000000.0; input should be a valid integer"),
        ("train.epochs=true", "train.epochs: got True; input should be a valid integer"),
        ("train.lr=.nan", "train.lr: got nan; input should be a finite number"),
    ],
)
def test_numbers_that_cannot_train_are_refused(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert message in str(err.value)


def test_an_alias_bomb_is_refused_fast(tmp_path):
    lines = ['a: &a ["x","x","x","x","x","x","x","x","x"]']
    for prev, name in zip("abcdefgh", "bcdefghi", strict=True):
        lines.append(f"{name}: &{name} [{','.join([f'*{prev}'] * 9)}]")
    lines.append("train: {epochs: *i}")
    (tmp_path / "bomb.yaml").write_text("\n".join(lines) + "\n")
    assert (tmp_path / "bomb.yaml").stat().st_size < 1024
    start = time.perf_counter()
    with pytest.raises(ConfigError, match="expand to more than 100,000 values"):
        load_config(tmp_path / "bomb.yaml")
    assert time.perf_counter() - start < 1.0


def test_a_batch_larger_than_the_data_is_refused():
    data = load_dataset(DataConfig(dataset="digits", k_per_class=2), validation="none")  # 20 examples
    model = build_model(ModelConfig(), data.input_shapes, data.classes)
    with pytest.raises(ValueError, match="train.batch_size 64 is larger than the 20 training examples"):
        fit(model, data.train, None, TrainConfig(batch_size=64, epochs=1, progress=False))


class NaNInEpoch2(Classification):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def loss(self, model, inputs, targets):
        self.calls += 1
        loss = super().loss(model, inputs, targets)
        return loss * float("nan") if self.calls == 12 else loss  # epoch 2, step 2 (10 steps per epoch)


def test_a_loss_that_becomes_nan_stops_the_run_and_keeps_the_last_checkpoint(tmp_path):
    data = load_dataset(DataConfig(dataset="digits", k_per_class=16), validation="none")  # 160: 10 steps of 16
    model = build_model(ModelConfig(), data.input_shapes, data.classes)
    cfg = TrainConfig(epochs=3, batch_size=16, progress=False)
    with pytest.raises(TrainingError, match=r"the training loss became nan in epoch 2, step 2"):
        fit(model, data.train, None, cfg, objective=NaNInEpoch2(), state_dir=tmp_path)
    meta = _checkpoint_meta(tmp_path / "checkpoint.safetensors")
    assert (meta["epoch"], meta["step_in_epoch"]) == (1, 0)  # the end of epoch 1: the last good state


def _two_ways(steps: dict) -> tuple[dict, dict]:
    """The same MLP trained on the same 256 digits in the same order, batch 32 vs 4 x batch 8 accumulated."""
    data = load_dataset(DataConfig(dataset="digits", k_per_class=26), validation="none")
    train = data.train.subset(list(range(256)))
    models = []
    for batch, accumulation in ((32, 1), (8, 4)):
        model = build_model(
            ModelConfig(encoders={"image": RNNConfig(cell="rnn", hidden_size=16)}, embed_dim=16),
            data.input_shapes,
            data.classes,
            seed=0,
        )
        cfg = TrainConfig(epochs=2, batch_size=batch, grad_accumulation=accumulation, progress=False, **steps)
        fit(model, train, None, cfg)
        models.append(model.state_dict())
    return models[0], models[1]


def test_accumulating_4_batches_of_8_matches_batches_of_32():
    whole, accumulated = _two_ways({})
    for k in whole:
        torch.testing.assert_close(accumulated[k], whole[k], atol=1e-5, rtol=1e-4)
    clipped_whole, clipped_acc = _two_ways({"max_grad_norm": 0.05})  # clipping the summed gradient, once
    for k in clipped_whole:
        torch.testing.assert_close(clipped_acc[k], clipped_whole[k], atol=1e-5, rtol=1e-4)
    assert not torch.allclose(clipped_whole["head.out.weight"], whole["head.out.weight"])


def test_bf16_autocast_trains_on_the_cpu():
    data = load_dataset(DataConfig(dataset="digits", k_per_class=10), validation="none")
    model = build_model(ModelConfig(), data.input_shapes, data.classes, seed=0)
    result = fit(model, data.train, None, TrainConfig(epochs=2, precision="bf16", progress=False))
    assert all(torch.isfinite(torch.tensor(h["train_loss"])) for h in result.history)
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    with pytest.raises(ValueError, match="fp16 needs a GPU"):
        fit(model, data.train, None, TrainConfig(epochs=1, precision="fp16", cpu=True, progress=False))


def test_tensorboard_events_hold_each_epoch_when_the_extra_is_installed(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    data = load_dataset(DataConfig(dataset="digits", k_per_class=10))
    model = build_model(ModelConfig(), data.input_shapes, data.classes, seed=0)
    result = fit(model, data.train, data.val, TrainConfig(epochs=3, progress=False), log_dir=tmp_path)
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert {"loss/train", "loss/val", "accuracy/val", "lr"} <= set(events.Tags()["scalars"])
    val = events.Scalars("accuracy/val")
    assert [e.step for e in val] == [1, 2, 3]
    assert [round(e.value, 6) for e in val] == [round(h["val_accuracy"], 6) for h in result.history]
    assert len((tmp_path / "history.csv").read_text().splitlines()) == 4


def test_the_feature_cache_is_always_right(tmp_path, monkeypatch):
    monkeypatch.setenv("MMTRANSFER_CACHE", str(tmp_path / "cache"))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "data: {dataset: digits, k_per_class: 5}\n"
        "model: {embed_dim: 16, encoders: {image: {type: cnn, channels: [8], stride: 1}}}\n"
        "train: {epochs: 1, progress: false, strategy: {name: linear_probe}}\n"
    )
    first = runner.invoke(app, ["fit", str(cfg), "--out", str(tmp_path / "a")])
    assert first.exit_code == 0 and first.output.count("computed") == 3
    same = runner.invoke(app, ["fit", str(cfg), "--out", str(tmp_path / "b")])
    assert same.output.count("read from cache") == 3
    # stride 2 has the same weight shapes: before, it read the features of stride 1
    other = runner.invoke(
        app, ["fit", str(cfg), "--out", str(tmp_path / "c"), "--set", "model.encoders.image.stride=2"]
    )
    assert other.exit_code == 0 and other.output.count("computed") == 3, other.output
    # a truncated file is recomputed with a warning, never used
    for entry in (tmp_path / "cache").glob("*.safetensors"):
        entry.write_bytes(entry.read_bytes()[:100])
    again = runner.invoke(app, ["fit", str(cfg), "--out", str(tmp_path / "d")])
    assert again.exit_code == 0 and again.output.count("is damaged") == 3 and again.output.count("computed") == 3
    info = runner.invoke(app, ["cache", "info"])
    assert "feature cache" in info.output and "6 entries" in info.output  # stride 1 and stride 2, 3 splits each
    cleared = runner.invoke(app, ["cache", "clear"])
    assert "removed 6 entries" in cleared.output and not list((tmp_path / "cache").glob("*.safetensors"))


def test_the_cache_stays_under_its_size_limit(tmp_path, monkeypatch):
    from mmtransfer import cache

    monkeypatch.setenv("MMTRANSFER_CACHE_MAX_GB", str(1000 / 1e9))  # 1 kB: two entries of 448 bytes fit, not three
    for i in range(3):
        cache._write(tmp_path / f"e{i}.safetensors", [f"{k:032x}" for k in range(10)], torch.zeros(10, 2))
        os.utime(tmp_path / f"e{i}.safetensors", (i, i))  # e0 is the least recently used
    assert [p.name for p in cache.evict(tmp_path)] == ["e0.safetensors"]
    assert sorted(p.name for p in tmp_path.glob("*.safetensors")) == ["e1.safetensors", "e2.safetensors"]
    # a killed write's partial file goes once it is an hour old; one being written now stays
    for name, age in ((".e3.safetensors.11.tmp", 7200), (".e4.safetensors.12.tmp", 0)):
        (tmp_path / name).write_bytes(b"partial")
        os.utime(tmp_path / name, (time.time() - age, time.time() - age))
    cache.evict(tmp_path)
    assert [p.name for p in tmp_path.glob(".*.tmp")] == [".e4.safetensors.12.tmp"]


AUDIT_HOOK = """
import os, sys
_log = open(os.path.join({log!r}, "rank" + os.environ.get("RANK", "x") + ".log"), "a", buffering=1)


def _hook(event, args):
    if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        mode, flags = args[1], args[2]
        if (mode and any(c in mode for c in "wax+")) or (mode is None and flags & (os.O_WRONLY | os.O_RDWR)):
            _log.write("open " + os.fsdecode(args[0]) + "\\n")
    elif event in ("os.rename", "os.replace"):
        _log.write(event + " " + os.fsdecode(args[0]) + " -> " + os.fsdecode(args[1]) + "\\n")
    elif event in ("os.remove", "os.rmdir", "os.mkdir"):
        _log.write(event + " " + os.fsdecode(args[0]) + "\\n")


sys.addaudithook(_hook)
"""


@pytest.mark.slow
def test_two_processes_train_one_run(tmp_path):
    """torchrun, 2 processes on the CPU (DDP over gloo): one run folder written once, test accuracy within 2
    points of the one-process run."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "data: {dataset: digits}\n"
        "model: {embed_dim: 32, encoders: {image: {type: cnn, channels: [16, 32]}}}\n"
        "train: {epochs: 5, progress: false}\n"
    )
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    # every process records what it opens for writing, renames or removes (Python's audit events), by its rank
    audit = tmp_path / "audit"
    audit.mkdir()
    (audit / "sitecustomize.py").write_text(AUDIT_HOOK.format(log=str(audit)))
    path = os.pathsep.join(filter(None, [str(audit), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    two = subprocess.run(
        [*torchrun, "-m", "mmtransfer", "fit", str(cfg), "--out", str(tmp_path / "two")],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("run folder:") == 1  # one process printed the result
    assert two.stdout.count("calibration: temperature") == 1  # both computed it (gathered logits), one wrote it
    assert json.loads((tmp_path / "two" / "task.json").read_text())["calibration"]["n_val"] == 216
    assert two.stdout.count("epoch 5/5") == 1
    assert "processes: 2 (MULTI_CPU, gloo backend, cpu); each takes batches of 32, 64 examples per" in two.stdout
    run_folder = str(tmp_path / "two")
    writes = {
        rank: [line for line in (audit / f"rank{rank}.log").read_text().splitlines() if run_folder in line]
        for rank in ("0", "1")
    }
    assert writes["1"] == []  # the second process wrote nothing into the run folder
    written = {line.split(" ", 1)[1] for line in writes["0"]}
    assert {f"{run_folder}/metrics.json", f"{run_folder}/manifest.json"} <= {w.split(" -> ")[-1] for w in written}
    one = runner.invoke(app, ["fit", str(cfg), "--out", str(tmp_path / "one")])
    assert one.exit_code == 0
    a = json.loads((tmp_path / "one" / "metrics.json").read_text())["test"]
    b = json.loads((tmp_path / "two" / "metrics.json").read_text())["test"]
    assert b["n"] == a["n"] == 360  # every test example counted once
    assert abs(a["accuracy"] - b["accuracy"]) <= 0.02
    from mmtransfer import artifact

    artifact.verify(tmp_path / "two")  # one writer: the manifest lists every file once, and they match


class FailInEpoch3(Classification):
    """Stops a fit in epoch 3 (a stand-in for a kill), after the checkpoint of epoch 2."""

    def __init__(self, steps_per_epoch):
        super().__init__()
        self.calls, self.at = 0, 2 * steps_per_epoch + 1

    def loss(self, model, inputs, targets):
        self.calls += 1
        if self.calls == self.at:
            raise KeyboardInterrupt
        return super().loss(model, inputs, targets)


def test_checkpoints_hold_only_what_trains_and_resume_exactly(tmp_path, monkeypatch):
    """A frozen encoder is in neither the resumable checkpoint nor its best copy; model.safetensors, every
    weight, is written once, at the end; a run stopped in epoch 3 resumes to the uninterrupted run's weights."""
    from mmtransfer import train
    from mmtransfer.transfer.freeze import freeze

    data = load_dataset(DataConfig(dataset="digits", k_per_class=16))
    cfg = TrainConfig(epochs=4, batch_size=16, progress=False, patience=None)

    def probe():
        model = build_model(ModelConfig(embed_dim=16), data.input_shapes, data.classes, seed=0)
        freeze(model, ["encoders.*"])
        return model

    writes = []
    save = train.save_weights
    monkeypatch.setattr(train, "save_weights", lambda state, path: writes.append(path) or save(state, path))
    whole = probe()
    fit(whole, data.train, data.val, cfg, checkpoint=tmp_path / "whole.safetensors")
    assert writes == [tmp_path / "whole.safetensors"]
    saved = load_weights(tmp_path / "whole.safetensors")
    assert set(saved) == set(whole.state_dict()) and all(
        torch.equal(saved[k], v) for k, v in whole.state_dict().items()
    )

    stopped = probe()
    steps = -(-len(data.train) // cfg.batch_size)
    with pytest.raises(KeyboardInterrupt):
        fit(stopped, data.train, data.val, cfg, state_dir=tmp_path, objective=FailInEpoch3(steps))
    with safe_open(str(tmp_path / "checkpoint.safetensors"), "pt") as f:
        names = set(f.keys())
    model_names = {k for k in names if k.startswith(("model.", "best."))}
    assert model_names and not any(k.split(".", 1)[1].startswith("encoders.") for k in model_names)
    assert {k for k in names if k.startswith("model.")} == {f"model.{k}" for k in whole.state_dict()
                                                            if not k.startswith("encoders.")}  # fmt: skip
    resumed = probe()
    result = fit(resumed, data.train, data.val, cfg, state_dir=tmp_path, resume=True)
    assert result.epochs_run == 4
    assert all(torch.equal(v, whole.state_dict()[k]) for k, v in resumed.state_dict().items())
