import math

import pytest
import torch

from mmtransfer.checkpoint import load_weights
from mmtransfer.data import load_dataset
from mmtransfer.model import build_model
from mmtransfer.train import evaluate, fit, warmup_cosine


def test_warmup_cosine_schedule():
    assert warmup_cosine(0, 100, 10) == pytest.approx(0.1)
    assert warmup_cosine(9, 100, 10) == pytest.approx(1.0)
    assert warmup_cosine(10, 100, 10) == pytest.approx(1.0)
    assert warmup_cosine(55, 100, 10) == pytest.approx(0.5)
    assert warmup_cosine(100, 100, 10) == pytest.approx(0.0, abs=1e-12)
    assert warmup_cosine(5, 10, 0) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))


def run_once(cfg, checkpoint=None):
    data = load_dataset(cfg.data)
    model = build_model(cfg.model, data.input_shapes, len(data.classes), seed=cfg.train.seed)
    result = fit(model, data.train, data.val, cfg.train, checkpoint=checkpoint)
    return model, result, evaluate(model, data.test)


def test_same_seed_same_metrics(small_run):
    _, r1, m1 = run_once(small_run)
    _, r2, m2 = run_once(small_run)
    assert r1.history == r2.history
    assert m1 == m2
    other = small_run.model_copy(update={"train": small_run.train.model_copy(update={"seed": 1})})
    _, _, m3 = run_once(other)
    assert m3["loss"] != m1["loss"]


def test_learns_and_keeps_the_best_checkpoint(small_run, tmp_path):
    small_run.train.epochs = 25
    model, result, metrics = run_once(small_run, checkpoint=tmp_path / "best.safetensors")
    assert metrics["accuracy"] > 0.8  # 20 digits per class, 25 epochs of a small CNN
    assert result.history[0]["val_loss"] > result.best_val_loss
    lowest = min(h["val_loss"] for h in result.history)  # a later epoch may be lower by min_delta or less
    assert lowest <= result.best_val_loss <= lowest + small_run.train.min_delta
    assert result.best_val_loss == result.history[result.best_epoch - 1]["val_loss"]
    saved = load_weights(tmp_path / "best.safetensors")
    for k, v in model.state_dict().items():
        torch.testing.assert_close(saved[k], v, rtol=0, atol=0)


def test_early_stopping(small_run):
    small_run.train.epochs, small_run.train.patience, small_run.train.lr = 200, 2, 1e-2
    _, result, _ = run_once(small_run)
    assert result.epochs_run < 200
    assert result.epochs_run == result.best_epoch + 2


def test_evaluate_metrics_on_a_known_model():
    data = load_dataset(small_data())
    model = ConstantModel(3)  # always predicts class 3
    m = evaluate(model, data.test)
    labels = data.test.labels
    assert m["n"] == len(labels)
    assert m["accuracy"] == pytest.approx(float((labels == 3).float().mean()))
    assert m["confusion"][3][3] == int((labels == 3).sum())
    assert sum(row[3] for row in m["confusion"]) == len(labels)
    p3 = m["accuracy"]
    assert m["macro_f1"] == pytest.approx(2 * p3 / (p3 + 1) / 10)  # F1 of class 3 only, averaged over 10
    assert m["f1_per_class"][3] == pytest.approx(2 * p3 / (p3 + 1))
    assert m["f1_per_class"][:3] == [0.0, 0.0, 0.0]
    # cross-entropy of logits (5 at class 3, 0 elsewhere): log(e^5 + 9) - 5 on class 3, log(e^5 + 9) otherwise
    assert m["loss"] == pytest.approx(math.log(math.exp(5) + 9) - 5 * p3, rel=1e-5)


def small_data():
    from mmtransfer.config import DataConfig

    return DataConfig(dataset="digits")


class ConstantModel(torch.nn.Module):
    def __init__(self, cls):
        super().__init__()
        self.cls = cls
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, inputs):
        n = len(inputs["image"])
        logits = torch.zeros(n, 10) + self.dummy
        logits[:, self.cls] = 5.0
        return logits


def test_no_validation_trains_exactly_the_set_epochs_and_keeps_the_last(small_run, tmp_path):
    from io import StringIO

    from rich.console import Console

    small_run.train.epochs, small_run.train.patience, small_run.train.lr = 7, 1, 5e-2  # patience has no say
    data = load_dataset(small_run.data, validation="none")
    assert data.val is None and len(data.train) == 200 and data.labels.selection == 0
    model = build_model(small_run.model, data.input_shapes, data.classes, seed=0)
    log = Console(file=StringIO(), width=30)  # a file: one plain line per epoch, never wrapped at the width
    result = fit(model, data.train, None, small_run.train, checkpoint=tmp_path / "w.safetensors", console=log)
    assert result.epochs_run == 7 and result.best_epoch == 7 and result.best_val_loss is None
    assert [h["val_loss"] for h in result.history] == [None] * 7
    saved = load_weights(tmp_path / "w.safetensors")
    assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items())  # the last epoch's weights
    lines = [line for line in log.file.getvalue().splitlines() if line.startswith("epoch ")]
    assert len(lines) == 7
    assert lines[0].startswith("epoch 1/7: train loss ") and lines[0].endswith(" s left")  # with an ETA
    assert lines[-1].endswith(" s") and "left" not in lines[-1]


def test_one_line_per_epoch_without_a_bar(small_run):
    from io import StringIO

    from rich.console import Console

    data = load_dataset(small_run.data)
    model = build_model(small_run.model, data.input_shapes, data.classes, seed=0)
    small_run.train.progress = True  # asked for, but the output is not a terminal: lines instead
    log = Console(file=StringIO())
    result = fit(model, data.train, data.val, small_run.train, console=log)
    lines = [line for line in log.file.getvalue().splitlines() if line.startswith("epoch ")]
    assert len(lines) == result.epochs_run == 4
    first = result.history[0]
    assert lines[0].startswith(
        f"epoch 1/4: train loss {first['train_loss']:.4f}, val loss {first['val_loss']:.4f} (best), "
        f"val accuracy {first['val_accuracy']:.4f}"
    )  # the first epoch is the best so far; "(best)" names what improved: the validation loss
    best = float("inf")
    for line, row in zip(lines, result.history, strict=True):  # marked when the loss beats the best by min_delta
        assert ("(best)" in line) == (row["val_loss"] < best - small_run.train.min_delta), line
        best = min(best, row["val_loss"]) if "(best)" in line else best


def test_an_improvement_must_exceed_min_delta(small_run):
    small_run.train.epochs, small_run.train.patience = 20, 3
    _, plain, _ = run_once(small_run)
    assert plain.best_epoch > 1
    small_run.train.min_delta = 10.0  # no epoch can lower a loss near 2.3 by more than 10
    _, strict, _ = run_once(small_run)
    assert (strict.best_epoch, strict.epochs_run, strict.stopped) == (1, 4, "early stop")
    assert strict.best_val_loss == strict.history[0]["val_loss"]


def test_a_time_limit_stops_at_the_end_of_the_epoch_and_keeps_the_best(small_run, tmp_path):
    from io import StringIO

    from rich.console import Console

    small_run.train.epochs, small_run.train.time_limit = 50, 1e-6  # passed within the first epoch
    data = load_dataset(small_run.data)
    model = build_model(small_run.model, data.input_shapes, data.classes, seed=0)
    log = Console(file=StringIO(), width=200)
    result = fit(model, data.train, data.val, small_run.train, console=log, checkpoint=tmp_path / "w.safetensors")
    assert (result.epochs_run, result.best_epoch, result.stopped) == (1, 1, "time limit")
    text = log.file.getvalue()
    assert "time limit: training stopped after epoch 1 of 50" in text and "the weights of epoch 1 are kept" in text
    saved = load_weights(tmp_path / "w.safetensors")
    assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items())


def test_inference_runs_channels_last_and_leaves_the_model_as_it_was(small_run):
    from mmtransfer.train import inference

    data = load_dataset(small_run.data)
    model = build_model(small_run.model, data.input_shapes, data.classes, seed=0)
    x = data.test.batch(range(8))
    model.eval()
    with torch.no_grad():
        expected = model(x)
    model.train()
    conv = next(p for p in model.parameters() if p.dim() == 4)
    with inference(model):
        assert not model.training and conv.is_contiguous(memory_format=torch.channels_last)
        out = model(x)
    torch.testing.assert_close(out, expected)
    assert model.training and conv.is_contiguous() and not conv.is_inference()
    model(x).sum().backward()  # the weights still train
    assert conv.grad is not None
