"""timm backbones: run only where timm (and a matching torchvision) imports; elsewhere the clear error is tested."""

import pytest
import torch

from mmtransfer.encoders import ENCODERS
from mmtransfer.modalities.base import InputSpec

try:
    import timm
except Exception:  # ImportError, or torchvision failing beside this torch
    timm = None

needs_timm = pytest.mark.skipif(timm is None, reason="timm does not import here")


@pytest.mark.skipif(timm is not None, reason="timm imports here")
def test_clear_error_where_timm_does_not_import():
    with pytest.raises(ValueError, match="timm encoder: timm does not import here"):
        ENCODERS["timm"](InputSpec("image", (3, 32, 32)), 8, name="resnet18")


@needs_timm
def test_local_weights_file_gives_the_same_features(tmp_path):
    from safetensors.torch import save_file

    source = timm.create_model("resnet18", pretrained=False, num_classes=0).eval()
    path = tmp_path / "resnet18.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    enc = ENCODERS["timm"](InputSpec("image", (3, 32, 32)), 512, name="resnet18", weights=str(path)).eval()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(enc(x), source(x))
    assert isinstance(enc.proj, torch.nn.Identity) and enc.output_dim == 512
    assert {id(p) for g in enc.layer_groups() for p in g.parameters()} == {id(p) for p in enc.parameters()}


@needs_timm
def test_grayscale_first_conv_is_the_sum_of_the_rgb_kernels(tmp_path):
    from safetensors.torch import save_file

    source = timm.create_model("resnet18", pretrained=False, num_classes=0)
    path = tmp_path / "resnet18.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    enc = ENCODERS["timm"](InputSpec("image", (1, 32, 32)), 16, name="resnet18", weights=str(path))
    torch.testing.assert_close(enc.backbone.conv1.weight, source.conv1.weight.sum(1, keepdim=True))
    assert enc(torch.randn(2, 1, 32, 32)).shape == (2, 16)


@needs_timm
def test_no_download_and_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no weights file"):
        ENCODERS["timm"](InputSpec("image", (3, 32, 32)), 8, name="resnet18", weights=str(tmp_path / "x.pt"))
    with pytest.raises(ValueError, match="unknown model 'resnet9000'"):
        ENCODERS["timm"](InputSpec("image", (3, 32, 32)), 8, name="resnet9000", pretrained=False)


def fake_hub_cache(folder, model):
    """The layout huggingface_hub keeps for a downloaded file, holding ``model``'s weights."""
    from safetensors.torch import save_file

    repo = folder / ("models--" + model.pretrained_cfg["hf_hub_id"].replace("/", "--"))
    (repo / "snapshots" / "c0ffee").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("c0ffee")
    weights = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(weights, str(repo / "snapshots" / "c0ffee" / "model.safetensors"))


@needs_timm
def test_pretrained_weights_come_from_the_local_cache_only(tmp_path, monkeypatch):
    import huggingface_hub.constants as hub

    from mmtransfer.transfer.sources import load_source

    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "empty"))
    offline_before = hub.HF_HUB_OFFLINE
    with pytest.raises(FileNotFoundError, match="no local weights for 'resnet18'"):
        ENCODERS["timm"](InputSpec("image", (3, 32, 32)), 8, name="resnet18")
    assert hub.HF_HUB_OFFLINE == offline_before  # the offline switch is put back

    source = timm.create_model("resnet18", pretrained=False)
    fake_hub_cache(tmp_path / "hub", source)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hub"))
    enc = ENCODERS["timm"](InputSpec("image", (3, 32, 32)), 512, name="resnet18")
    assert torch.equal(enc.backbone.conv1.weight, source.conv1.weight)
    state = load_source("timm:resnet18").state  # graft's timm:NAME source, from the same cache
    assert torch.equal(state["layer4.1.conv2.weight"], source.state_dict()["layer4.1.conv2.weight"])
    assert "fc.weight" not in state  # the classifier is dropped


@needs_timm
def test_a_column_read_by_a_timm_model_takes_its_pretrained_config():
    from mmtransfer.backbones import bind_encoders
    from mmtransfer.config import RunConfig

    cfg = RunConfig.model_validate(
        {
            "data": {"table": "t.csv", "columns": {"img": {"modality": "image", "size": [160, 160]}}},
            "model": {"encoders": {"img": {"type": "timm", "name": "resnet18"}}},
        }
    )
    col = bind_encoders(cfg.data.columns, cfg.model).columns["img"]
    want = timm.get_pretrained_cfg("resnet18").to_dict()
    assert col.size == (160, 160)  # set by the column: kept
    assert (col.resize, col.crop_pct) == ("crop", round(want["crop_pct"], 4))
    assert col.mean == tuple(want["mean"]) and col.std == tuple(want["std"])  # ImageNet's per-channel values
    assert col.augment == "crop_flip"
