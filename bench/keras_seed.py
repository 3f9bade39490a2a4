"""The seed's own stack: its CNN in Keras 3 on TensorFlow against the same CNN trained by mmtransfer, alternated.

    python bench/keras_seed.py ../shared/data/mnist [--repeats 3] [--venv ~/.cache/mmtransfer-bench/keras]

The seed's CNN: Conv2D(32, 3x3, ReLU) -> Flatten -> Dense(10). Data: MNIST t10k, images 0-7,999 train and
8,000-9,999 test, pixels / 255. Both: 5 epochs, batch 64, no validation split.
- Keras: ``model.fit`` with Adam(1e-3) and sparse categorical cross-entropy, in a separate virtual environment
  (made here on first use: ``pip install tensorflow-cpu``), one process per repeat; the time is ``fit``'s.
- mmtransfer: the same three layers (the convolution and flatten as a custom encoder, the linear head as the
  library's head) trained by ``mmtransfer.train.fit`` with lr 1e-3, no weight decay, no warm-up (AdamW with
  decay 0 is Adam; the library's cosine schedule stays), ``train.validation: none``.
- mmtransfer default: the image encoder a user gets with none configured (``ModelConfig()``), trained the same
  way with the library's defaults (lr 3e-3, AdamW, warm-up + cosine), pixels normalised as an image column does.
Targets: mmtransfer's fit time <= 0.6x Keras's (ratio of medians), test accuracy within 1 point.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import torch
from seed_cnn import CLASSES, load_mnist_t10k
from torch import nn

from mmtransfer.config import ModelConfig, TrainConfig
from mmtransfer.data import Split
from mmtransfer.model import build_model
from mmtransfer.train import evaluate, fit

KERAS = textwrap.dedent(
    """
    import gzip, json, sys, time
    import numpy as np
    import keras
    folder, seed = sys.argv[1], int(sys.argv[2])
    x = np.frombuffer(gzip.open(folder + "/t10k-images-idx3-ubyte.gz").read()[16:], np.uint8).reshape(-1, 28, 28, 1)
    y = np.frombuffer(gzip.open(folder + "/t10k-labels-idx1-ubyte.gz").read()[8:], np.uint8).astype("int64")
    x = x.astype("float32") / 255.0
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([
        keras.Input((28, 28, 1)),
        keras.layers.Conv2D(32, 3, activation="relu"),
        keras.layers.Flatten(),
        keras.layers.Dense(10, activation="softmax"),
    ])
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
    start = time.perf_counter()
    model.fit(x[:8000], y[:8000], epochs=5, batch_size=64, verbose=0)
    seconds = time.perf_counter() - start
    _, accuracy = model.evaluate(x[8000:], y[8000:], verbose=0)
    import tensorflow as tf
    print(json.dumps({"seconds": seconds, "accuracy": float(accuracy), "keras": keras.__version__,
                      "tensorflow": tf.__version__}))
    """
)


class SeedConv(nn.Module):
    """Conv2D(32, 3x3, ReLU) -> Flatten: the seed's CNN up to its dense layer."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 32, 3)
        self.output_dim = 32 * 26 * 26

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x)).flatten(1)


def venv_python(venv: Path) -> Path:
    python = venv / "bin" / "python"
    if (
        python.is_file()
        and subprocess.run([python, "-c", "import keras, tensorflow"], capture_output=True).returncode == 0
    ):
        return python
    print(f"making {venv} with tensorflow-cpu (once) ...", flush=True)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([python, "-m", "pip", "install", "-q", "--disable-pip-version-check", "tensorflow-cpu"], check=True)
    print(f"installed in {time.perf_counter() - start:.0f} s", flush=True)
    return python


def keras_run(python: Path, mnist: Path, seed: int) -> dict:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    out = subprocess.run([python, "-c", KERAS, str(mnist), str(seed)], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise SystemExit(f"error: the Keras run failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def ours(train: Split, test: Split, seed: int, default: bool = False) -> dict:
    if default:
        model = build_model(ModelConfig(), {"image": (1, 28, 28)}, CLASSES, seed=seed)
        cfg = TrainConfig(epochs=5, batch_size=64, seed=seed, validation="none", progress=False)
        train = Split({"image": (train.inputs["image"] - 0.5) / 0.5}, train.labels)
        test = Split({"image": (test.inputs["image"] - 0.5) / 0.5}, test.labels)
    else:
        model = build_model(ModelConfig(), {"image": (1, 28, 28)}, CLASSES, seed=seed, modules={"image": SeedConv()})
        cfg = TrainConfig(epochs=5, batch_size=64, lr=1e-3, weight_decay=0.0, warmup_fraction=0.0, seed=seed,
                          validation="none", progress=False)  # fmt: skip
    start = time.perf_counter()
    fit(model, train, None, cfg)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "accuracy": evaluate(model, test)["accuracy"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mnist", type=Path, help="folder holding t10k-images-idx3-ubyte.gz and the labels")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--venv", type=Path, default=Path.home() / ".cache" / "mmtransfer-bench" / "keras")
    args = parser.parse_args()
    print("command: python " + " ".join(shlex.quote(a) for a in sys.argv))
    python = venv_python(args.venv)
    x, y = load_mnist_t10k(args.mnist)
    pixels = x.float() / 255.0
    train, test = Split({"image": pixels[:8000]}, y[:8000]), Split({"image": pixels[8000:]}, y[8000:])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    results: dict[str, list[dict]] = {"keras": [], "mmtransfer": [], "mmtransfer default": []}
    for r in range(args.repeats):
        arms = list(results) if r % 2 == 0 else list(results)[::-1]
        for arm in arms:
            if arm == "keras":
                results[arm].append(keras_run(python, args.mnist, r))
            else:
                results[arm].append(ours(train, test, r, default=arm == "mmtransfer default"))
        print(f"repeat {r}: " + ", ".join(f"{a} {v[-1]['seconds']:.2f} s ({100 * v[-1]['accuracy']:.2f} %)"
                                          for a, v in results.items()), flush=True)  # fmt: skip
    k = results["keras"][0]
    print(f"\nKeras {k['keras']} on TensorFlow {k['tensorflow']}; mmtransfer on torch {torch.__version__}")
    med = {a: statistics.median(r["seconds"] for r in v) for a, v in results.items()}
    acc = {a: statistics.mean(r["accuracy"] for r in v) for a, v in results.items()}
    for arm in results:
        print(f"{arm:18s} fit median {med[arm]:.2f} s, test accuracy {100 * acc[arm]:.2f} % (mean of {args.repeats})")
    ok = True
    for arm in ("mmtransfer", "mmtransfer default"):
        ratio, gap = med[arm] / med["keras"], 100 * (acc[arm] - acc["keras"])
        print(f"{arm}: fit time ratio to Keras {ratio:.2f} (target <= 0.6); accuracy difference {gap:+.2f} points "
              "(target within 1)")  # fmt: skip
        ok &= ratio <= 0.6 and abs(gap) <= 1
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
