"""ONNX export: every model of the issue, checked against PyTorch with onnxruntime on real rows."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from mmtransfer import artifact
from mmtransfer.cli import app

pytest.importorskip("onnxruntime")
runner = CliRunner()


@pytest.mark.parametrize("name", ["cnn", "gru", "attention", "bert", "fused"])
def test_export_matches_pytorch_on_real_rows(fitted_runs, name, tmp_path):
    import onnxruntime as ort

    out = tmp_path / f"{name}.onnx"
    result = runner.invoke(app, ["export", str(fitted_runs[name]), "--out", str(out)])
    assert result.exit_code == 0, result.output
    described = json.loads(out.with_suffix(".json").read_text())
    assert described["max_abs_diff"] <= 1e-4 and described["checked_rows"] == 9  # the run's 9 test rows
    assert described["classes"] == ["cat", "dog", "owl"]
    assert all(i["shape"][0] == "batch" for i in described["inputs"])
    assert "max abs difference" in result.output
    # the graph takes a batch of any size: 3 rows of the run's data give PyTorch's logits
    run = artifact.load(fitted_runs[name])
    from mmtransfer.export import sample_batch

    batch = {k: v[:3] for k, v in sample_batch(run).items()}
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = session.run(None, {k: v.numpy() for k, v in batch.items()})[0]
    expected = run.model(batch).detach().numpy()
    np.testing.assert_allclose(got, expected, atol=1e-4)
    if name == "fused":
        assert {i["name"] for i in described["inputs"]} == {
            "caption",
            "caption.present",
            "picture",
            "picture.present",
            "sound",
            "sound.present",
            "tabular",
        }


def test_export_merges_lora_first(tmp_path):
    pytest.importorskip("peft")
    from conftest import tiny_bert, write_mixed_table

    from mmtransfer.config import validate
    from mmtransfer.display import make_console
    from mmtransfer.runs import fit_run

    table = write_mixed_table(tmp_path / "data")
    bert = tiny_bert(tmp_path / "model")
    cfg = validate(
        {
            "data": {
                "table": str(table),
                "columns": {"caption": {"modality": "text", "tokenizer": str(bert)}},
                "ignore": ["picture", "sound", "weight", "colour"],
                "test_fraction": 0.25,
            },
            "model": {"embed_dim": 16, "encoders": {"caption": {"type": "hf", "path": str(bert)}}},
            "train": {"epochs": 1, "progress": False, "strategy": {"name": "lora", "lora_targets": ["query", "value"]}},
        }
    )
    fit_run(cfg, tmp_path / "lora", make_console(quiet=True))
    result = runner.invoke(app, ["export", str(tmp_path / "lora"), "--out", str(tmp_path / "lora.onnx")])
    assert result.exit_code == 0, result.output
    described = json.loads((tmp_path / "lora.json").read_text())
    assert described["lora_merged"] == 2 and described["max_abs_diff"] <= 1e-4
