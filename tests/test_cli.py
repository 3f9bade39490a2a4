import json

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
    assert record["distill"]["examples"] == 1221  # every train image, not only the 20 labelled per class
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
    assert len(list((tmp_path / "cache").iterdir())) == 3

    lora = runner.invoke(app, ["fit", str(cfg), "--out", str(tmp_path / "lora"), "--set", "train.strategy.name=lora"])
    assert lora.exit_code == 0, lora.output
    result = runner.invoke(app, ["evaluate", str(tmp_path / "lora"), "--json", str(tmp_path / "e.json")])
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "lora" / "metrics.json").read_text())["test"]
    assert json.loads((tmp_path / "e.json").read_text()) == saved
    names = load_weights(tmp_path / "lora").keys()
    assert any("lora_A" in n for n in names) and any("base_layer" in n for n in names)
