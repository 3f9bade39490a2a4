import os
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner

# The suite trains small networks from scratch unless a test asks for the pretrained defaults (model.preset auto
# picks ImageNet EfficientNet-Lite0 and MiniLM, which are installed for the tests but slow at 224x224 on 2 cores);
# CLI processes the tests start inherit it. tests/test_resolve.py sets auto where it tests the preset.
os.environ.setdefault("MMTRANSFER_PRESET", "scratch")

from mmtransfer import cli as _cli
from mmtransfer.config import CNNConfig, DataConfig, ModelConfig, RNNConfig, RunConfig, TrainConfig
from mmtransfer.display import make_console


def run_cli(*args, cwd, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``mmtransfer ARGS`` run in this process as the ``mmtransfer`` command runs it (``cli.main``: usage errors,
    exit codes), in ``cwd`` with ``env`` added to the environment: stdout and stderr apart, as a subprocess gives.

    For tests where a fresh process is not what is tested; it saves the interpreter's and torch's start-up (about
    3 s a call on 2 cores). A bug is exit code 1 with its traceback in a file, as for a user; with
    MMTRANSFER_DEBUG set it propagates and the test fails with its traceback."""
    argv, saved_argv, saved_cwd = ["mmtransfer", *map(str, args)], sys.argv, os.getcwd()
    saved_consoles = _cli.console, _cli.errors
    # click names the program from sys.argv[0] unless __main__ has a package (``python -m pytest``): as the
    # installed ``mmtransfer`` script is named, so messages say "see: mmtransfer fit --help"
    main_module = sys.modules["__main__"]
    saved_package = getattr(main_module, "__package__", None)
    code = 0
    with CliRunner().isolation(env={"COLUMNS": "200", **(env or {})}) as (out, err, _):
        # fresh consoles inside the isolation: never a terminal, so no colour codes and no wrapped lines
        _cli.console, _cli.errors = make_console(), make_console(stderr=True)
        sys.argv = argv
        main_module.__package__ = None
        os.chdir(cwd)
        try:
            _cli.main()
        except SystemExit as done:
            code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
        finally:
            sys.argv = saved_argv
            main_module.__package__ = saved_package
            os.chdir(saved_cwd)
            _cli.console, _cli.errors = saved_consoles
            sys.stdout.flush()
            sys.stderr.flush()
        return subprocess.CompletedProcess(argv, code, out.getvalue().decode(), err.getvalue().decode())


@pytest.fixture(autouse=True, scope="session")
def _temporary_files_stay_in_pytests_folder(tmp_path_factory):
    """tempfile's folders (a Predictor's run folder when given no path, serve's upload folders) under pytest's
    own temporary folder, which it prunes, rather than about 20 run folders left in /tmp by each run of the suite."""
    import tempfile

    saved = tempfile.tempdir
    tempfile.tempdir = str(tmp_path_factory.mktemp("tempfile"))
    yield
    tempfile.tempdir = saved


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


# ---------------------------------------------------------------- run folders for the artifact, predict and export
# One small table with an image, a sound, a text and two number columns, and five models fitted on it once per
# test session (2 epochs on 36 rows each): a CNN, a GRU, an attention text encoder, a tiny Hugging Face BERT
# built from a config, and all four inputs fused.

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "cat", "dog", "owl", "sits", "here", "number", "the"]


def write_mixed_table(folder, n: int = 36):
    import numpy as np
    import pandas as pd
    import soundfile as sf
    from PIL import Image

    (folder / "img").mkdir(parents=True, exist_ok=True)
    (folder / "wav").mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        k = i % 3
        label = ["cat", "dog", "owl"][k]
        pixels = (rng.random((12, 10, 3)) * 80).astype(np.uint8)
        pixels[2 + 3 * k : 5 + 3 * k, 2:8] = 250  # a bar whose height says the class
        Image.fromarray(pixels).save(folder / "img" / f"{i}.png")
        tone = np.sin(2 * np.pi * (300 + 200 * k) * np.arange(4000) / 8000).astype(np.float32)
        sf.write(folder / "wav" / f"{i}.wav", tone * 0.5, 8000)
        rows.append(
            {
                "picture": f"img/{i}.png",
                "sound": f"wav/{i}.wav",
                "caption": f"a {label} sits here number {i}",
                "weight": float(k) + 0.01 * i,
                "colour": ["red", "green"][i % 2],
                "label": label,
            }
        )
    df = pd.DataFrame(rows)
    df.to_csv(folder / "table.csv", index=False)
    return folder / "table.csv"


def tiny_bert(folder):
    transformers = pytest.importorskip("transformers")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(WORDS) + "\n")
    transformers.BertTokenizer(vocab_file=str(folder / "vocab.txt")).save_pretrained(str(folder))
    config = transformers.BertConfig(
        vocab_size=len(WORDS), hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
    )
    transformers.BertModel(config).save_pretrained(str(folder))
    return folder


IMAGE = {"modality": "image", "size": [12, 12], "channels": 3}
AUDIO = {"modality": "audio", "sample_rate": 8000, "seconds": 0.5, "n_mels": 16, "n_fft": 128, "hop_length": 64}


def run_configs(table, bert):
    """name -> (data columns, model encoders): the five models of the issue."""
    return {
        "cnn": ({"picture": IMAGE}, {"picture": {"type": "cnn", "channels": [8, 16]}}),
        "gru": ({"picture": IMAGE}, {"picture": {"type": "rnn", "cell": "gru", "hidden_size": 16}}),
        "attention": (
            {"caption": {"modality": "text", "max_length": 12}},
            {"caption": {"type": "attention", "d_model": 16, "num_heads": 2, "num_layers": 1, "ff_dim": 32}},
        ),
        "bert": (
            {"caption": {"modality": "text", "tokenizer": str(bert), "max_length": 12}},
            {"caption": {"type": "hf", "path": str(bert)}},
        ),
        "fused": (
            {"picture": IMAGE, "sound": AUDIO, "caption": {"modality": "text", "max_length": 12}},
            {},
        ),
    }


@pytest.fixture(scope="session")
def fitted_runs(tmp_path_factory):
    """name -> run folder, fitted once per session from the mixed table (plus the BERT folder and table)."""
    from mmtransfer.config import validate
    from mmtransfer.display import make_console
    from mmtransfer.runs import fit_run

    root = tmp_path_factory.mktemp("artifacts")
    table = write_mixed_table(root / "data")
    bert = tiny_bert(root / "tiny-bert-model")
    runs = {}
    for name, (columns, encoders) in run_configs(table, bert).items():
        ignore = [c for c in ("picture", "sound", "caption", "weight", "colour") if c not in columns]
        if name == "fused":
            ignore = []
        cfg = validate(
            {
                "data": {"table": str(table), "columns": columns, "ignore": ignore, "test_fraction": 0.25},
                "model": {
                    "embed_dim": 16,
                    "encoders": encoders,
                    "fusion": "attention" if name == "fused" else "concat",
                },
                "train": {"epochs": 2, "batch_size": 8, "progress": False},
            }
        )
        fit_run(cfg, root / name, make_console(quiet=True))
        runs[name] = root / name
    runs["_table"], runs["_bert"] = table, bert
    return runs


def write_photos(folder, per_class: int = 10, size: tuple[int, int] = (40, 48), suffix: str = ".png"):
    """A folder of class folders (ImageFolder) of small generated photos: noise with a strong blue, green or red
    channel, one colour per class."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for k, name in enumerate(["blue", "green", "red"]):
        (folder / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = (rng.random((*size, 3)) * 60).astype(np.uint8)
            pixels[..., 2 - k] = 200 + rng.integers(0, 50)
            Image.fromarray(pixels).save(folder / name / f"{i}{suffix}")
    return folder
