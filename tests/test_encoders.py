import math

import pytest
import torch

from mmtransfer.encoders import ENCODERS, AttentionPool, Encoder, RecurrentEncoder, as_sequence
from mmtransfer.modalities.base import InputSpec

SPECS = {
    "image": InputSpec("image", (1, 8, 8)),
    "signal": InputSpec("signal", (2, 24)),
    "tokens": InputSpec("tokens", (12,), vocab_size=30, pad_id=0),
}
SETTINGS = {
    "cnn": [
        {},
        {"channels": [4, 8, 8, 8], "kernel_size": 5, "stride": 1, "pool": True},
        {"channels": [8], "kernel_size": 3, "stride": 1, "readout": "mean"},
    ],
    "rnn": [
        {"cell": "rnn"},
        {"cell": "lstm", "num_layers": 2, "dropout": 0.1},
        {"cell": "gru", "bidirectional": True},
    ],
    "attention": [{"pool": "attention"}, {"pool": "query", "d_model": 16, "num_heads": 2}, {"pool": "mean"}],
}


def test_every_registered_encoder_is_tested():
    # hf needs a saved Hugging Face model (tests/test_hf.py builds tiny ones); timm: tests/test_timm.py;
    # efficientnet_lite: tests/test_efficientnet.py; aisfx: tests/test_aisfx.py
    assert set(SETTINGS) | {"mlp", "hf", "timm", "efficientnet_lite", "aisfx"} == set(ENCODERS)


def example(spec: InputSpec, n: int = 5) -> torch.Tensor:
    if spec.kind == "tokens":
        ids = torch.randint(1, spec.vocab_size, (n, *spec.shape))
        ids[:, -3:] = spec.pad_id  # some padding
        return ids
    return torch.randn(n, *spec.shape, requires_grad=True)


@pytest.mark.parametrize("input_name", sorted(SPECS))
@pytest.mark.parametrize("kind,kwargs", [(k, kw) for k, kws in SETTINGS.items() for kw in kws])
def test_encoder_conformance(kind, kwargs, input_name):
    spec = SPECS[input_name]
    enc = ENCODERS[kind](spec, 12, **kwargs)
    check_encoder(enc, example(spec))


def test_mlp_conformance_with_categories():
    spec = InputSpec("tabular", (4,), categorical={1: 3, 3: 5})
    x = torch.tensor([[0.5, 2.0, -1.0, 4.0], [1.5, 0.0, 0.0, 1.0]])
    enc = ENCODERS["mlp"](spec, 12, hidden=[16])
    check_encoder(enc, x, input_grad=False)
    with pytest.raises(ValueError, match="mlp encoder expects table columns"):
        ENCODERS["mlp"](SPECS["image"], 12)


def check_encoder(enc, x, input_grad=True):
    assert isinstance(enc, Encoder)
    assert enc.output_dim == 12
    y = enc(x)
    assert y.shape == (len(x), 12)
    assert torch.isfinite(y).all()
    y.pow(2).sum().backward()
    if x.is_floating_point() and input_grad:
        assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for name, p in enc.named_parameters():
        assert p.grad is not None, f"no gradient reaches {name}"
        assert torch.isfinite(p.grad).all(), name
    groups = enc.layer_groups()
    grouped = {id(p) for g in groups for p in g.parameters()}
    assert grouped == {id(p) for p in enc.parameters()}, "layer_groups must cover every parameter"


def test_cnn_rejects_wrong_rank():
    enc = ENCODERS["cnn"](SPECS["image"], 4)
    with pytest.raises(ValueError, match="expects"):
        enc(torch.zeros(2, 1, 8))


def test_image_read_row_by_row():
    x = torch.arange(2 * 3 * 4 * 5, dtype=torch.float).reshape(2, 3, 4, 5)  # [B, C, H, W]
    seq = as_sequence(x)
    assert seq.shape == (2, 4, 15)  # 4 rows, each C * W = 15 features
    assert torch.equal(seq[1, 2], torch.cat([x[1, c, 2] for c in range(3)]))
    signal = torch.randn(2, 3, 7)
    assert torch.equal(as_sequence(signal)[:, 4], signal[:, :, 4])


def test_plain_rnn_matches_its_formula():
    # h_t = tanh(W_xh x_t + W_hh h_{t-1} + b_h), by hand on two steps of two features.
    enc = RecurrentEncoder(input_size=2, output_dim=2, cell="rnn", hidden_size=2)
    with torch.no_grad():
        enc.rnn.weight_ih_l0.copy_(torch.tensor([[1.0, 0.0], [0.5, -1.0]]))
        enc.rnn.weight_hh_l0.copy_(torch.tensor([[0.5, 0.0], [0.0, 2.0]]))
        enc.rnn.bias_ih_l0.copy_(torch.tensor([0.1, 0.0]))
        enc.rnn.bias_hh_l0.copy_(torch.tensor([0.0, -0.2]))  # b_h = bias_ih + bias_hh = [0.1, -0.2]
        enc.proj.weight.copy_(torch.eye(2))
        enc.proj.bias.zero_()
    x = torch.tensor([[[1.0, 0.0], [2.0, -1.0]]])  # [B=1, C=2 features, L=2 steps]: x_1 = [1, 2], x_2 = [0, -1]
    h1 = [math.tanh(1.0 + 0.1), math.tanh(0.5 - 2.0 - 0.2)]
    h2 = [math.tanh(0.0 + 0.5 * h1[0] + 0.1), math.tanh(1.0 + 2.0 * h1[1] - 0.2)]
    torch.testing.assert_close(enc(x), torch.tensor([h2]), rtol=0, atol=1e-6)


def test_lstm_uses_hidden_not_cell_state():
    enc = RecurrentEncoder(input_size=3, output_dim=4, cell="lstm", hidden_size=4)
    with torch.no_grad():
        enc.proj.weight.copy_(torch.eye(4))
        enc.proj.bias.zero_()
    x = torch.randn(2, 3, 6)
    out, (h, _) = enc.rnn(as_sequence(x))
    torch.testing.assert_close(enc(x), out[:, -1])
    torch.testing.assert_close(enc(x), h[-1])


def test_bidirectional_concatenates_both_directions():
    enc = RecurrentEncoder(input_size=3, output_dim=8, cell="gru", hidden_size=4, bidirectional=True)
    assert enc.proj.in_features == 8
    with torch.no_grad():
        enc.proj.weight.copy_(torch.eye(8))
        enc.proj.bias.zero_()
    x = torch.randn(2, 3, 5)
    out, _ = enc.rnn(as_sequence(x))
    # forward direction ends at the last step, backward direction at the first
    torch.testing.assert_close(enc(x), torch.cat([out[:, -1, :4], out[:, 0, 4:]], -1))


def test_attention_pool_formulas():
    h = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]]])  # [B=1, T=3, D=2]
    pool = AttentionPool(2, "attention")
    scores = torch.tensor([[h[0, i] @ h[0, j] / math.sqrt(2) for j in range(3)] for i in range(3)])
    context = torch.softmax(scores, -1) @ h[0]
    torch.testing.assert_close(pool(h)[0], context.mean(0))

    qpool = AttentionPool(2, "query")
    with torch.no_grad():
        qpool.query.copy_(torch.tensor([1.0, -1.0]))
    a = torch.softmax(torch.tensor([1.0, -2.0, 0.0]) / math.sqrt(2), 0)
    torch.testing.assert_close(qpool(h)[0], (a[:, None] * h[0]).sum(0))
    torch.testing.assert_close(AttentionPool(2, "mean")(h)[0], h[0].mean(0))


def test_attention_rejects_too_long_sequence():
    with pytest.raises(ValueError, match="max_len"):
        ENCODERS["attention"](InputSpec("signal", (1, 100)), 8, max_len=50)


@pytest.mark.parametrize("kind,kwargs", [(k, kw) for k, kws in SETTINGS.items() for kw in kws])
def test_text_encoders_ignore_padding(kind, kwargs):
    spec = SPECS["tokens"]
    enc = ENCODERS[kind](spec, 12, **kwargs).eval()
    ids = torch.tensor([[5, 9, 3, 7, 0, 0, 0, 0, 0, 0, 0, 0], [4, 4, 8, 2, 6, 1, 9, 0, 0, 0, 0, 0]])
    longer = InputSpec("tokens", (20,), vocab_size=30, pad_id=0)
    enc_long = ENCODERS[kind](longer, 12, **kwargs).eval()
    enc_long.load_state_dict(enc.state_dict())
    padded = torch.nn.functional.pad(ids, (0, 8))  # the same texts with 8 more pads
    torch.testing.assert_close(enc_long(padded), enc(ids), atol=1e-5, rtol=1e-5)
    empty = torch.zeros(1, 12, dtype=torch.long)  # a missing text: padding only
    assert torch.isfinite(enc(empty)).all()


@pytest.mark.parametrize(
    "shape,kwargs,cells",
    [
        ((1, 28, 28), {}, (7, 7)),  # the default: two stride-2 blocks, 28 -> 14 -> 7, the grid is the map
        ((1, 8, 8), {}, (2, 2)),
        ((3, 224, 160), {}, (7, 7)),  # 56 x 40 averaged down to 7 x 7
        ((1, 40, 101), {"channels": [32, 64, 128], "stride": 1, "pool": True}, (5, 7)),  # 5 x 12 -> 5 x 7
        ((1, 28, 28), {"channels": [8], "kernel_size": 4}, (7, 7)),  # even kernel: (28 + 4 - 4) // 2 + 1 = 15 -> 7
        ((2, 50), {"readout": "grid", "grid": 4}, (4,)),  # 1-D on request
    ],
)
def test_cnn_grid_readout_sizes_its_projection(shape, kwargs, cells):
    enc = ENCODERS["cnn"](InputSpec("image" if len(shape) == 3 else "signal", shape), 12, **kwargs)
    channels = kwargs.get("channels", [16, 32])[-1]
    assert enc.cells == cells and enc.proj.in_features == channels * math.prod(cells)
    seen = {}
    enc.blocks[-1].register_forward_hook(lambda m, i, o: seen.update(map=tuple(o.shape[2:])))
    assert enc(torch.randn(2, *shape)).shape == (2, 12)
    pooled = tuple(n // 2 for n in seen["map"]) if kwargs.get("pool") and min(seen["map"]) >= 2 else seen["map"]
    assert enc.output_size(shape[1:]) == tuple(pooled)


def test_cnn_grid_readout_sees_where_a_feature_is():
    """The mean readout cannot tell a blob top-left from the same blob bottom-right; the grid can."""
    torch.manual_seed(0)
    x = torch.zeros(2, 1, 28, 28)
    x[0, :, 4:8, 4:8], x[1, :, 20:24, 20:24] = 1.0, 1.0  # the same phase of the stride-2 grid
    grid = ENCODERS["cnn"](InputSpec("image", (1, 28, 28)), 8).eval()
    mean = ENCODERS["cnn"](InputSpec("image", (1, 28, 28)), 8, readout="mean").eval()
    assert not torch.allclose(grid(x)[0], grid(x)[1], atol=1e-3)
    torch.testing.assert_close(mean(x)[0], mean(x)[1], atol=1e-5, rtol=1e-5)


def test_text_gets_max_over_time_by_default():
    from mmtransfer.config import ModelConfig
    from mmtransfer.model import build_model

    model = build_model(ModelConfig(), {"note": SPECS["tokens"]}, 3)
    inner = model.encoders["note"].inner
    assert inner.readout == "max" and len(inner.blocks) == 1 and inner.blocks[0][0].out_channels == 128
