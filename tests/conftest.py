import pytest
import torch

from mmtransfer.config import CNNConfig, DataConfig, ModelConfig, RNNConfig, RunConfig, TrainConfig


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def small_run() -> RunConfig:
    """A digits run that trains in about a second."""
    return RunConfig(
        data=DataConfig(dataset="digits", k_per_class=20, seed=0),
        model=ModelConfig(encoders={"image": CNNConfig(channels=[8, 16])}, embed_dim=16),
        train=TrainConfig(epochs=4, batch_size=32, lr=5e-3, progress=False),
    )


@pytest.fixture
def gru_model_config() -> ModelConfig:
    return ModelConfig(encoders={"image": RNNConfig(cell="gru", hidden_size=32)}, embed_dim=16)
