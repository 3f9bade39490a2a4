"""model.py: encoders (a dict) -> fusion -> head, built from a config with a seed that leaves the global random
state alone; the encoder contract checked for a user's module; cached features read instead of the encoder."""

import pytest
import torch
from torch import nn

from mmtransfer.config import CNNConfig, MLPConfig, ModelConfig
from mmtransfer.modalities.base import InputSpec
from mmtransfer.model import (
    TEXT_CNN,
    ClassificationHead,
    as_spec,
    build_model,
    check_encoder,
    check_encoder_names,
    default_encoder,
)

CFG = ModelConfig(encoders={"image": CNNConfig(channels=[4, 8])}, embed_dim=8)
SPECS = {"image": (1, 8, 8), "tabular": (3,)}


class Constant(nn.Module):
    """A user's encoder: [B, 2] of ones."""

    output_dim = 2

    def forward(self, x):
        return torch.ones(len(x), 2)


def test_the_head_is_linear_or_one_hidden_layer_and_its_output_is_out():
    head = ClassificationHead(6, 3)
    assert head.hidden is None and (head.out.in_features, head.out.out_features) == (6, 3)
    deep = ClassificationHead(6, 3, hidden=5)
    assert deep.out.in_features == 5 and deep(torch.zeros(4, 6)).shape == (4, 3)
    assert sum(p.numel() for p in deep.parameters()) == 6 * 5 + 5 + 5 * 3 + 3


def test_a_seeded_model_is_the_same_whatever_ran_before_and_leaves_the_global_state_alone():
    torch.manual_seed(1)
    before = torch.get_rng_state()
    a = build_model(CFG, SPECS, ["cat", "dog", "owl"], seed=7)
    assert torch.equal(torch.get_rng_state(), before)
    torch.rand(100)
    b = build_model(CFG, SPECS, ["cat", "dog", "owl"], seed=7)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    assert a.classes == ["cat", "dog", "owl"] and sorted(a.encoders) == ["image", "tabular"]
    assert a.head.out.out_features == 3 and build_model(CFG, SPECS, 5, seed=0).classes is None
    batch = {"image": torch.rand(4, 1, 8, 8), "tabular": torch.rand(4, 3)}
    a.eval()
    assert a(batch).shape == (4, 3) and a.embed(batch).shape == (4, a.fusion.output_dim)


def test_cached_features_are_read_instead_of_running_the_encoder():
    model = build_model(CFG, {"image": (1, 8, 8)}, 2, seed=0, modules={}).eval()
    images = torch.rand(3, 1, 8, 8)
    features = model.encoders["image"](images)
    with torch.no_grad():
        direct = model({"image": images})
        cached = model({"image.features": features})  # no image at all: the encoder is never called
    torch.testing.assert_close(direct, cached)


def test_a_users_module_must_follow_the_encoder_contract():
    model = build_model(CFG, SPECS, 2, seed=0, modules={"tabular": Constant()})
    assert isinstance(model.encoders["tabular"], Constant)
    with pytest.raises(ValueError, match=r"encoder for 'x': expected a torch.nn.Module, got int"):
        check_encoder("x", 3)
    with pytest.raises(ValueError, match=r"encoder for 'x' \(Linear\): needs an int output_dim"):
        check_encoder("x", nn.Linear(2, 2))
    with pytest.raises(ValueError, match=r"encoders given as modules for \['sound'\]"):
        build_model(CFG, SPECS, 2, modules={"sound": Constant()})


def test_every_configured_encoder_must_read_an_input():
    check_encoder_names({"image": None}, {"image": None, "tabular": None})
    with pytest.raises(ValueError, match=r"model.encoders has \['img'\] but the data provides inputs \['image'\]"):
        check_encoder_names({"img": None}, {"image": None})


def test_a_bare_shape_is_read_by_its_length_and_each_kind_has_a_default_encoder():
    assert as_spec((3, 8, 8)).kind == "image" and as_spec((1, 20)).kind == "signal" and as_spec((4,)).kind == "tabular"
    spec = InputSpec("tokens", (12,))
    assert as_spec(spec) is spec
    with pytest.raises(ValueError, match=r"cannot tell the kind of an input of shape \(1, 2, 3, 4\)"):
        as_spec((1, 2, 3, 4))
    assert default_encoder(InputSpec("tabular", (4,))) == MLPConfig()
    assert default_encoder(spec) == TEXT_CNN
    assert default_encoder(InputSpec("image", (3, 8, 8))) == CNNConfig()
    with pytest.raises(ValueError, match="needs that model"):
        default_encoder(InputSpec("audio_features", (80, 30)))
