import torch

from mmtransfer.config import CNNConfig, DataConfig, DistillConfig, ModelConfig, TrainConfig
from mmtransfer.data import load_dataset
from mmtransfer.model import build_model
from mmtransfer.train import evaluate, fit
from mmtransfer.transfer.distill import embed_all, transfer_across


def test_cnn_to_gru_by_distillation_then_head_graft(gru_model_config):
    data = load_dataset(DataConfig(dataset="digits"))
    cnn_cfg = ModelConfig(encoders={"image": CNNConfig(channels=[8, 16])}, embed_dim=16)
    cnn = build_model(cnn_cfg, data.input_shapes, data.classes)
    fit(cnn, data.train, data.val, TrainConfig(epochs=8, progress=False, lr=5e-3))
    cnn_acc = evaluate(cnn, data.test)["accuracy"]
    assert cnn_acc > 0.9

    gru = build_model(gru_model_config, data.input_shapes, data.classes)  # the same class names: the head moves
    cnn_before = {k: v.clone() for k, v in cnn.state_dict().items()}
    report, stats = transfer_across(cnn, gru, data.train, DistillConfig(epochs=15, lr=1e-2), progress=False)

    assert all(torch.equal(v, cnn.state_dict()[k]) for k, v in cnn_before.items())  # the source is only read
    assert report.by_state("copied") == ["head.out.weight", "head.out.bias"]
    assert torch.equal(gru.head.out.weight, cnn.head.out.weight)
    assert report.counts()["new"] == 0
    reasons = {r.reason.split(" (")[0] for r in report.records if r.state == "skipped"}
    assert reasons == {"encoder trained by feature distillation instead"}
    assert stats.examples == len(data.train)
    assert stats.mse_after < 0.3 * stats.mse_before
    assert stats.r2_after > 0.7
    student, teacher = embed_all(gru, data.train.inputs), embed_all(cnn, data.train.inputs)
    assert torch.nn.functional.mse_loss(student, teacher).item() == stats.mse_after
    # with no labelled target data at all, the GRU now classifies with the CNN's head
    assert evaluate(gru, data.test)["accuracy"] > 0.75


def test_embedding_sizes_must_agree():
    import pytest

    shapes = {"image": (1, 8, 8)}
    a = build_model(ModelConfig(encoders={"image": CNNConfig(channels=[4])}, embed_dim=8), shapes, 10)
    b = build_model(ModelConfig(encoders={"image": CNNConfig(channels=[4])}, embed_dim=6), shapes, 10)
    with pytest.raises(ValueError, match="target embedding has 6 values, source 8"):
        transfer_across(a, b, {"image": torch.rand(10, 1, 8, 8)}, DistillConfig(epochs=1), progress=False)
