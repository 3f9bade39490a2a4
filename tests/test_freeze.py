import pytest
import torch

from mmtransfer.config import CNNConfig, DataConfig, ModelConfig, TrainConfig
from mmtransfer.data import load_dataset
from mmtransfer.model import build_model
from mmtransfer.train import fit
from mmtransfer.transfer.freeze import count_parameters, freeze, trainable_names


def model():
    cfg = ModelConfig(encoders={"image": CNNConfig(channels=[4, 8])}, embed_dim=8)
    return build_model(cfg, {"image": (1, 8, 8)}, 10)


def test_freeze_gives_the_exact_trainable_set():
    m = model()
    assert freeze(m, ["encoders.*"]) == ["head.out.bias", "head.out.weight"]
    # blocks: conv + BN; proj reads the 2x2 grid of 8 channels (8x8 -> 4x4 -> 2x2 at stride 2); head 8 -> 10
    assert count_parameters(m) == (90, 4 * 9 + 8 + 4 * 8 * 9 + 16 + 8 * 32 + 8 + 90)


def test_freeze_by_block():
    m = model()
    assert freeze(m, ["encoders.image.blocks.0.*", "*.bias"]) == [
        "encoders.image.blocks.1.0.weight",
        "encoders.image.blocks.1.1.weight",
        "encoders.image.proj.weight",
        "head.out.weight",
    ]


def test_pattern_that_matches_nothing_is_an_error():
    m = model()
    with pytest.raises(ValueError, match="'encoderz.*' matches no parameter"):
        freeze(m, ["encoderz.*"])
    assert len(trainable_names(m)) == len(list(m.parameters()))  # nothing frozen by the failed call


def test_fit_changes_only_trainable_parameters():
    d = load_dataset(DataConfig(k_per_class=5))
    m = model()
    freeze(m, ["encoders.*"])
    before = {k: v.clone() for k, v in m.named_parameters()}
    fit(m, d.train, d.val, TrainConfig(epochs=2, progress=False, patience=None))
    after = dict(m.named_parameters())
    changed = sorted(k for k in before if not torch.equal(before[k], after[k]))
    assert changed == ["head.out.bias", "head.out.weight"]
