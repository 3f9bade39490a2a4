import pytest
import torch

from mmtransfer.cache import add_cached_features, frozen_encoders
from mmtransfer.config import CNNConfig, DataConfig, ModelConfig, TrainConfig
from mmtransfer.data import load_dataset
from mmtransfer.model import build_model
from mmtransfer.train import evaluate, fit
from mmtransfer.transfer.freeze import freeze

MODEL = ModelConfig(encoders={"image": CNNConfig(channels=[8, 16], dropout=0.5)})


@pytest.fixture
def setup():
    data = load_dataset(DataConfig(dataset="digits", k_per_class=20))
    model = build_model(
        ModelConfig(encoders={"image": CNNConfig(channels=[8, 16], dropout=0.5)}), data.specs, 10, seed=0
    )
    freeze(model, ["encoders.*"])
    return data, model


def splits(data):
    return {"train": data.train, "val": data.val, "test": data.test}


def test_frozen_features_are_computed_once_then_read(setup, tmp_path):
    data, model = setup
    assert frozen_encoders(model) == ["image"]
    first = add_cached_features(model, splits(data), directory=tmp_path)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) == 3  # one per split
    model.eval()
    torch.testing.assert_close(
        first["test"].inputs["image.features"], model.encoders["image"](data.test.inputs["image"])
    )
    assert "image.features" not in data.test.inputs  # the caller's splits are not changed

    called = []
    model.encoders["image"].register_forward_hook(lambda *a: called.append(1))
    second = add_cached_features(model, splits(data), directory=tmp_path)
    assert called == []  # read from disk, the encoder did not run
    assert torch.equal(second["train"].inputs["image.features"], first["train"].inputs["image.features"])

    with torch.no_grad():
        model.encoders["image"].proj.bias.add_(1.0)  # other weights: another key, computed anew
    add_cached_features(model, splits(data), directory=tmp_path)
    assert len(list(tmp_path.iterdir())) == 6


def test_training_on_cached_features_matches_running_the_frozen_encoder(setup, tmp_path):
    data, model = setup
    uncached = build_model(MODEL, data.specs, 10)
    uncached.load_state_dict(model.state_dict())
    freeze(uncached, ["encoders.*"])
    cfg = TrainConfig(epochs=5, progress=False, patience=None)

    cached = add_cached_features(model, splits(data), directory=tmp_path)
    r1 = fit(model, cached["train"], cached["val"], cfg)
    r2 = fit(uncached, data.train, data.val, cfg)  # frozen encoder runs every step, in eval mode
    for a, b in zip(r1.history, r2.history, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
        assert a["val_accuracy"] == b["val_accuracy"]
    assert evaluate(model, cached["test"])["accuracy"] == evaluate(uncached, data.test)["accuracy"]
    assert torch.equal(model.encoders["image"].proj.weight, uncached.encoders["image"].proj.weight)  # untouched
