"""Hostile configs (issue 19, failures 5, 11 and 12's first half): every setting that sizes memory, processes or
time is bounded, a model larger than the machine is refused before allocation, the machine's own limits are
checked before a run folder is written, an empty config is refused, and a fuzz of malformed configs only ever
ends in a ConfigError (or, through the CLI, one ``error:`` line and exit code 2)."""

from __future__ import annotations

import os
import random
import time

import pytest
import torch
import yaml
from conftest import run_cli

from mmtransfer import limits
from mmtransfer.config import ConfigError, ModelConfig, RunConfig, load_config
from mmtransfer.modalities.base import InputSpec
from mmtransfer.model import build_model

CNN = ["model.encoders.image.type=cnn"]


def write(folder, name: str, text: str):
    path = folder / name
    path.write_text(text)
    return path


def cli_fails_with_one_line(args, cwd, *needles: str) -> str:
    """Run the CLI (in this process); it must exit 2 with exactly one ``error:`` line holding each needle, and no
    traceback."""
    result = run_cli(*args, cwd=cwd)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2, result.stderr[-2000:]
    assert len(errors) == 1, result.stderr
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    for needle in needles:
        assert needle in result.stderr, result.stderr
    return result.stderr


# ---------------------------------------------------------------- failure 5: bounds at validation


@pytest.mark.parametrize(
    "overrides,field,bound",
    [
        (["data.num_workers=150000"], "data.num_workers", "1024"),
        ([*CNN, "model.encoders.image.kernel_size=10001"], "kernel_size", "1024"),
        ([*CNN, "model.encoders.image.stride=5000"], "stride", "1024"),
        ([*CNN, "model.encoders.image.channels=[1000000, 1000000]"], "channels.0", "65536"),
        ([*CNN, f"model.encoders.image.channels={[8] * 300}"], "channels", "256"),
        ([*CNN, "model.encoders.image.grid=100000"], "grid", "256"),
        (["model.embed_dim=1e9"], "model.embed_dim", "65,536"),
        (["model.head_hidden=10000000"], "model.head_hidden", "65536"),
        (["model.encoders.image.type=rnn", "model.encoders.image.hidden_size=1e6"], "hidden_size", "65536"),
        (["model.encoders.image.type=rnn", "model.encoders.image.num_layers=100000"], "num_layers", "256"),
        (["model.encoders.image.type=attention", "model.encoders.image.d_model=1e6"], "d_model", "65536"),
        (["model.encoders.image.type=attention", "model.encoders.image.ff_dim=1e7"], "ff_dim", "65536"),
        (["model.encoders.image.type=attention", "model.encoders.image.num_heads=1e5"], "num_heads", "1024"),
        (["model.encoders.image.type=attention", "model.encoders.image.max_len=1e8"], "max_len", "65536"),
        (["model.encoders.n.type=mlp", "model.encoders.n.hidden=[1000000]"], "hidden.0", "65536"),
        (["model.encoders.n.type=mlp", "model.encoders.n.category_dim=1e6"], "category_dim", "65536"),
        (["data.columns.t.modality=text", "data.columns.t.max_length=10000000"], "max_length", "65,536"),
        (["data.columns.t.modality=text", "data.columns.t.vocab_size=1e9"], "vocab_size", "2000000"),
        (["data.columns.p.modality=image", "data.columns.p.size=[100000, 100000]"], "size: each side", "8,192 pixels"),
        (["data.columns.p.modality=image", "data.columns.p.size=[0, 32]"], "size: each side from 1", "got [0, 32]"),
        (["data.columns.a.modality=audio", "data.columns.a.seconds=1e6"], "seconds", "600"),
        (["data.columns.a.modality=audio", "data.columns.a.sample_rate=1e9"], "sample_rate", "384000"),
        (["data.columns.a.modality=audio", "data.columns.a.n_mels=1e6"], "n_mels", "1024"),
        (["data.columns.a.modality=audio", "data.columns.a.n_fft=1e8"], "n_fft", "65536"),
        (["data.k_per_class=1e12"], "data.k_per_class", "10000000"),
        (["train.patience=2000000"], "train.patience", "100000"),
        (["train.seed=5000000000"], "train.seed", "4294967295"),
        (["train.strategy.lora_r=1e9"], "lora_r", "65536"),
        (["transfer.distill.epochs=1e9"], "transfer.distill.epochs", "100000"),
        (["transfer.distill.batch_size=1e12"], "transfer.distill.batch_size", "1000000"),
    ],
)
def test_a_setting_that_could_exhaust_the_machine_is_refused_naming_field_and_bound(overrides, field, bound):
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides)
    message = str(err.value)
    assert field in message and bound in message, message


def test_the_bounds_leave_every_shipped_default_and_example_alone():
    RunConfig()  # the defaults
    for name in ("cnn_digits.yaml", "gru_from_cnn.yaml"):
        load_config(os.path.join(os.path.dirname(__file__), "..", "examples", name))
    load_config(None, [*CNN, "model.embed_dim=65536", "model.encoders.image.channels=[65536]"])  # at the bound


def test_workers_beyond_the_machine_are_refused_before_the_run_folder(tmp_path, small_run):
    from mmtransfer.runs import fit_run

    bound = limits.max_workers()
    assert bound == max(4 * limits.cpu_count(), 8)
    small_run.data.num_workers = bound + 1
    with pytest.raises(ValueError, match=rf"data.num_workers {bound + 1}: at most {bound} on this machine"):
        fit_run(small_run, tmp_path / "run")
    assert not (tmp_path / "run").exists()
    small_run.data.num_workers = bound
    limits.check_machine(small_run)  # at the bound: fine


def test_a_study_too_large_is_refused_at_once_naming_seeds_and_cells(tmp_path):
    from mmtransfer.study import auto_study, load_study

    write(tmp_path, "base.yaml", "data: {dataset: digits}\n")
    cases = [
        ("seeds: 1000000\narms: {a: {}}\n", "seeds: 1,000,000 seeds: at least 1 and at most 1,000"),
        ("seeds: [0, 0]\narms: {a: {}}\n", "seeds: a seed is listed twice"),
        ("seeds: [-1]\narms: {a: {}}\n", "each seed from 0 to 4,294,967,295"),
        ("budgets: [100000000]\narms: {a: {}}\n", "budget 100000000: an int from 0 to 10,000,000"),
        (
            f"seeds: 1000\nbudgets: {list(range(1, 12))}\narms: {{a: {{}}}}\n",
            "11,000 runs (1 arms x 11 budgets, x 1000 seeds): at most 10,000 in one study",
        ),
    ]
    for body, message in cases:
        study = write(tmp_path, "study.yaml", "base: base.yaml\n" + body)
        start = time.perf_counter()
        with pytest.raises(ConfigError) as err:
            load_study(study)
        assert time.perf_counter() - start < 2  # refused before any cell exists, not after 40 s
        assert message in str(err.value), str(err.value)
    config = write(tmp_path, "run.yaml", "data: {dataset: digits}\n")
    with pytest.raises(
        ConfigError, match=r"--auto with --seeds 5000:\n  seeds: 5,000 seeds: at least 1 and at most 1,000"
    ):
        auto_study(config, seeds=5000)


# ---------------------------------------------------------------- failure 5: sizes once the input is known


@pytest.mark.parametrize(
    "spec,encoder,message",
    [
        (
            (1, 8, 8),
            {"type": "cnn", "kernel_size": 9},
            "model.encoders.x: kernel_size 9: larger than the input (8 x 8)",
        ),
        ((1, 40), {"type": "cnn", "kernel_size": 41}, "model.encoders.x: kernel_size 41: larger than the input (40)"),
        (
            InputSpec("tokens", (5,), vocab_size=30),
            {"type": "cnn", "kernel_size": 7},
            "model.encoders.x: kernel_size 7: larger than the input (5); at most 5",
        ),
    ],
)
def test_a_kernel_larger_than_its_input_is_refused_before_allocation(spec, encoder, message):
    cfg = ModelConfig(encoders={"x": encoder}, embed_dim=8)
    with pytest.raises(ValueError) as err:
        build_model(cfg, {"x": spec}, 3)
    assert message in str(err.value)
    build_model(ModelConfig(encoders={"x": {**encoder, "kernel_size": 5}}, embed_dim=8), {"x": spec}, 3)


def test_a_model_larger_than_the_machine_is_refused_with_its_estimate():
    cfg = ModelConfig(encoders={"image": {"type": "cnn", "channels": [60000, 60000]}}, embed_dim=16)
    start = time.perf_counter()
    with pytest.raises(ValueError) as err:
        build_model(cfg, {"image": (1, 8, 8)}, 10)  # 32 billion parameters: 518 GB to train
    assert time.perf_counter() - start < 5  # counted on the meta device: nothing allocated
    message = str(err.value)
    memory = limits.size_text(limits.machine_memory())
    assert message.startswith("model.encoders.image.channels [60000, 60000]: the model would need about 518 GB")
    assert "32,404,620,016 parameters x 16 bytes" in message and f"this machine has {memory}" in message


def test_the_estimate_names_the_embedding_or_the_head_that_makes_the_model_too_large(monkeypatch):
    monkeypatch.setattr(limits, "machine_memory", lambda: 100_000_000)  # a machine of 100 MB
    image = {"type": "cnn", "channels": [16, 32]}
    with pytest.raises(ValueError, match=r"^model.embed_dim 65536: the model would need about 135 MB .* has 100 MB"):
        build_model(ModelConfig(encoders={"image": image}, embed_dim=65536), {"image": (1, 8, 8)}, 10)
    with pytest.raises(ValueError, match=r"^model.head_hidden 65536: the model would need about 1.1 GB"):
        build_model(ModelConfig(encoders={"image": image}, embed_dim=1024, head_hidden=65536), {"image": (1, 8, 8)}, 10)
    model = build_model(ModelConfig(encoders={"image": image}, embed_dim=16), {"image": (1, 8, 8)}, 10)
    assert sum(p.numel() for p in model.parameters()) == 7_082  # a small model is built as before


def test_counting_on_the_meta_device_leaves_the_weights_as_they_were():
    cfg = ModelConfig(encoders={"image": {"type": "cnn", "channels": [8, 16]}}, embed_dim=16)
    torch.manual_seed(0)
    first = torch.rand(3)
    torch.manual_seed(0)
    with torch.device("meta"):
        build_model(cfg, {"image": (1, 8, 8)}, 10)
    assert torch.equal(torch.rand(3), first)  # the meta pass drew no random numbers
    a, b = (build_model(cfg, {"image": (1, 8, 8)}, 10, seed=3).state_dict() for _ in range(2))
    assert all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------- failure 11: our messages, in time


def test_negative_channels_and_seed_name_their_field():
    with pytest.raises(ConfigError, match=r"model.encoders.image.cnn.channels.0: got -3; input should be greater"):
        load_config(None, [*CNN, "model.encoders.image.channels=[-3]"])
    with pytest.raises(ConfigError, match=r"data.seed: got -1; input should be greater than or equal to 0"):
        load_config(None, ["data.seed=-1"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="fp16 needs the CPU-only case")
def test_fp16_on_the_cpu_is_refused_before_the_run_folder_is_written(tmp_path, small_run):
    from mmtransfer.runs import fit_run

    small_run.train.precision = "fp16"
    with pytest.raises(ValueError, match="train.precision fp16 needs a GPU and this machine has no GPU; use bf16"):
        fit_run(small_run, tmp_path / "run")
    assert not (tmp_path / "run").exists()
    small_run.train.cpu = True
    with pytest.raises(ValueError, match="train.precision fp16 needs a GPU and train.cpu is true"):
        limits.check_machine(small_run)


# ---------------------------------------------------------------- failure 12: an empty config


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n", "null\n", "~\n", "{}\n", "data:\n", "data: {}\n"])
def test_an_empty_config_file_is_refused(tmp_path, text):
    path = write(tmp_path, "c.yaml", text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value) == f"{path}: no data section: give a table, a folder or a built-in dataset"


def test_without_a_file_or_with_the_data_given_the_defaults_still_stand(tmp_path):
    assert load_config(None).data.dataset == "digits"  # mmtransfer fit, no config
    empty = write(tmp_path, "c.yaml", "# settings come from --data\n")
    cfg = load_config(empty, [f"data.table={tmp_path / 't.csv'}", "data.folder=null"])  # what fit --data adds
    assert cfg.data.table == str(tmp_path / "t.csv")
    assert load_config(write(tmp_path, "d.yaml", "train: {epochs: 2}\n")).train.epochs == 2


def test_the_cli_refuses_an_empty_config_in_one_line_before_any_work(tmp_path):
    write(tmp_path, "empty.yaml", "# nothing here\n")
    cli_fails_with_one_line(
        ["fit", "empty.yaml", "--out", "run"],
        tmp_path,
        "error: empty.yaml: no data section: give a table, a folder or a built-in dataset",
    )
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------- fuzz: anything malformed is one ConfigError

FIELDS = [
    "data.dataset", "data.table", "data.label", "data.seed", "data.num_workers", "data.k_per_class",
    "data.label_fraction", "data.val_fraction", "data.columns", "data.columns.p", "data.columns.p.size",
    "data.columns.a.seconds", "data.sep", "data.names", "model.embed_dim", "model.fusion", "model.encoders",
    "model.encoders.image", "model.encoders.image.channels", "model.encoders.image.kernel_size",
    "model.head_hidden", "train.epochs", "train.batch_size", "train.lr", "train.precision", "train.seed",
    "train.time_limit", "train.strategy", "train.strategy.name", "transfer.source", "transfer.rules",
    "transfer.adapt", "transfer.distill.epochs", "zzz", "data.zzz", "train.strategy.zzz",
]  # fmt: skip
VALUES = [
    "-1", "0", "-0.0", "1e308", "-1e308", "1e400", "99999999999999999999999", ".nan", ".inf", "-.inf", "nan",
    "inf", "'NaN'", "true", "null", "[]", "{}", "[1, [2, [3, {a: b}]]]", "{a: {b: {c: [d]}}}", "2001-12-14",
    "!!binary aGVsbG8=", "'\\u0000'", "0x7fffffff", "1_000_000_000_000", "ÿ" * 3, "[-3]", "[1e9, 1e9]",
    "{type: cnn, channels: [-1]}", "{type: ???}", "{modality: image, size: [1e9, -1]}", "[.nan, .inf]",
]  # fmt: skip


def _nest(depth: int) -> str:
    return "data: " + "{a: " * depth + "1" + "}" * depth + "\n"


def malformed_configs(n: int = 100, seed: int = 19) -> list[str]:
    """``n`` YAML texts, each a valid config spoiled in one to three places (fixed seed)."""
    rng = random.Random(seed)
    texts = [
        "data: {dataset: digits}\n" + "x" * 200_000 + ": 1\n",  # a very long key
        "data: {label: " + "y" * 300_000 + "}\n",  # a very long value
        "base: &b {epochs: 1e9}\ndata: {dataset: digits}\ntrain: *b\n",  # an anchor reused
        "data: &d {dataset: digits}\ntrain: {<<: *d}\n",  # a merge key bringing the wrong section
        "data: {dataset: digits}\ntrain: !!python/object/apply:os.system ['true']\n",
        "data: [a, b]\n",
        "- a\n- b\n",
        "data: {dataset: digits}\n\tmodel: 1\n",
        _nest(60),
        _nest(5000),
        "\x00\x01\x02",
    ]
    while len(texts) < n:
        raw: dict = {"data": {"dataset": "digits"}}
        for _ in range(rng.randint(1, 3)):
            *parents, last = rng.choice(FIELDS).split(".")
            node = raw
            for part in parents:
                node = node.setdefault(part, {}) if isinstance(node.get(part, {}), dict) else {}
            node[last] = f"@@{len(texts)}@@"
        text = yaml.safe_dump(raw)
        for marker in sorted(set(t for t in text.split() if t.strip("'").startswith("@@"))):
            text = text.replace(marker, rng.choice(VALUES), 1)
        texts.append(text)
    return texts


def test_a_fuzz_of_malformed_configs_ends_only_in_config_errors(tmp_path):
    texts = malformed_configs()
    accepted = refused = 0
    for i, text in enumerate(texts):
        path = write(tmp_path, f"c{i}.yaml", text)
        try:
            cfg = load_config(path)
        except ConfigError as err:
            refused += 1
            assert str(err).strip() and "Traceback" not in str(err)
        else:
            accepted += 1
            assert isinstance(cfg, RunConfig)
        try:  # the same values given as --set
            load_config(None, [f"train.lr={text[:2000]}", "data.seed=" + text.splitlines()[0][:200]])
        except ConfigError:
            pass
    assert len(texts) == 100 and refused >= 80 and accepted + refused == 100


@pytest.mark.parametrize("index", [0, 4, 9, 10, 40])
def test_a_malformed_config_through_the_cli_is_one_error_line(tmp_path, index):
    write(tmp_path, "c.yaml", malformed_configs()[index])
    cli_fails_with_one_line(["fit", "c.yaml", "--out", "run"], tmp_path, "c.yaml")
    assert not (tmp_path / "run").exists()
