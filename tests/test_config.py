import pytest

from mmtransfer.config import ConfigError, RunConfig, dump_config, load_config


def write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_defaults_and_overrides():
    cfg = load_config(
        None,
        [
            "train.lr=3e-4",
            "model.encoders.image.type=cnn",
            "model.encoders.image.channels=[4, 8]",
            "train.patience=null",
        ],
    )
    assert cfg.train.lr == pytest.approx(3e-4)
    assert cfg.model.encoders["image"].channels == [4, 8]
    assert cfg.train.patience is None
    assert load_config(None, ["data.label='1'"]).data.label == "1"  # quoted: stays a string


def test_unknown_key_names_field_and_allowed(tmp_path):
    p = write(tmp_path, "train:\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError) as err:
        load_config(p)
    msg = str(err.value)
    assert "train.learning_rate: unknown field" in msg
    assert "allowed: epochs, batch_size, lr," in msg
    assert str(p) in msg


def test_unknown_key_inside_encoder_lists_that_encoders_fields(tmp_path):
    p = write(tmp_path, "model:\n  encoders:\n    image: {type: rnn, hidden: 3}\n")
    with pytest.raises(
        ConfigError,
        match=r"model\.encoders\.image\.rnn\.hidden: unknown field; did you mean hidden_size\? allowed: type, cell",
    ):
        load_config(p)


def test_wrong_type_names_value_and_expectation(tmp_path):
    p = write(tmp_path, "train:\n  epochs: many\n")
    with pytest.raises(ConfigError, match=r"train\.epochs: got 'many'; input should be a valid integer"):
        load_config(p)


def test_wrong_value_names_allowed_values():
    with pytest.raises(ConfigError, match=r"data\.dataset: got 'cifar'; input should be 'digits' or 'mnist1d'"):
        load_config(None, ["data.dataset=cifar"])
    with pytest.raises(ConfigError, match=r"train\.lr: got -1; input should be greater than 0"):
        load_config(None, ["train.lr=-1"])
    with pytest.raises(ConfigError, match=r"cell: got 'transformer'; input should be 'rnn', 'lstm' or 'gru'"):
        load_config(None, ["model.encoders.image.type=rnn", "model.encoders.image.cell=transformer"])


def test_unknown_encoder_type():
    msg = (
        "model.encoders.image: type 'vgg' unknown; allowed: cnn, rnn, attention, hf, timm, efficientnet_lite, "
        "aisfx, mlp"
    )
    with pytest.raises(ConfigError, match=msg):
        load_config(None, ["model.encoders.image.type=vgg"])


def test_every_error_reported_at_once():
    with pytest.raises(ConfigError, match="3 invalid field") as err:
        load_config(None, ["train.epochs=0", "train.batch_size=x", "data.seed=1.5"])
    assert all(f in str(err.value) for f in ("train.epochs", "train.batch_size", "data.seed"))


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "train: [unclosed\n"))
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        load_config(None, ["train.lr"])


def test_yaml_round_trip(tmp_path):
    cfg = load_config(None, ["model.encoders.image.type=attention", "model.encoders.image.pool=attention"])
    dump_config(cfg, tmp_path / "out.yaml")
    again = load_config(tmp_path / "out.yaml")
    assert again == cfg
    assert isinstance(again, RunConfig)
