"""The default image encoder against the seed's CNN, side by side on the same data, in one run.

    python bench/seed_cnn.py ../shared/data/mnist [--repeats 3] [--previous]

Data: the MNIST test set (``t10k``, the only MNIST images in ../shared/data): images 0-7,999 train, 8,000-9,999
test. Both models train 5 epochs at batch 64 on all 8,000 training images (no validation split, no early
stopping) and are scored on the 2,000 test images.

- seed CNN: the seed's three layers, Conv2D(32, 3x3, ReLU) -> Flatten -> Dense(10), Adam lr 1e-3, pixels / 255,
  as a plain PyTorch loop (the reference a user would write by hand);
- mmtransfer: ``build_model`` with no encoder configured (the default for an image input) trained by
  ``mmtransfer.train.fit`` with the default optimiser settings (AdamW, warm-up + cosine), ``train.validation``
  none, pixels normalised as an image column does ((x - 0.5) / 0.5);
- ``--previous``: also the default before this benchmark existed (channels [32, 64], stride 1, max-pool,
  global average readout), for the record.

Fit time excludes data loading. Arms alternate within each repeat so that load on the machine hits both;
the ratio is taken per repeat. Targets: mmtransfer >= 97 % test accuracy and fit time <= the seed CNN's.
"""

from __future__ import annotations

import argparse
import gzip
import shlex
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mmtransfer.config import CNNConfig, ModelConfig, TrainConfig
from mmtransfer.data import Split
from mmtransfer.model import build_model
from mmtransfer.train import evaluate, fit

CLASSES = [str(i) for i in range(10)]


def load_mnist_t10k(folder: Path) -> tuple[torch.Tensor, torch.Tensor]:
    images = folder / "t10k-images-idx3-ubyte.gz"
    labels = folder / "t10k-labels-idx1-ubyte.gz"
    if not images.is_file() or not labels.is_file():
        raise SystemExit(f"error: {folder}: expected t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz")
    x = np.frombuffer(gzip.open(images).read()[16:], np.uint8).reshape(-1, 1, 28, 28)
    y = np.frombuffer(gzip.open(labels).read()[8:], np.uint8).astype(np.int64)
    return torch.from_numpy(x.copy()), torch.from_numpy(y.copy())


def seed_cnn(x_train, y_train, x_test, y_test, epochs: int, batch: int, seed: int) -> tuple[float, float]:
    """The seed's CNN in a plain loop: (test accuracy, fit seconds)."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(1, 32, 3), nn.ReLU(), nn.Flatten(), nn.Linear(32 * 26 * 26, 10))
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    generator = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(y_train), generator=generator)
        for i in range(0, len(order), batch):
            idx = order[i : i + batch]
            loss = nn.functional.cross_entropy(model(x_train[idx]), y_train[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    seconds = time.perf_counter() - start
    model.eval()
    with torch.no_grad():
        accuracy = float((model(x_test).argmax(1) == y_test).float().mean())
    return accuracy, seconds


def ours(model_cfg: ModelConfig, train: Split, test: Split, epochs: int, batch: int, seed: int) -> tuple[float, float]:
    model = build_model(model_cfg, {"image": (1, 28, 28)}, CLASSES, seed=seed)
    cfg = TrainConfig(epochs=epochs, batch_size=batch, seed=seed, progress=False, validation="none")
    start = time.perf_counter()
    fit(model, train, None, cfg)
    seconds = time.perf_counter() - start
    return evaluate(model, test)["accuracy"], seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mnist", type=Path, help="folder holding t10k-images-idx3-ubyte.gz and the labels")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--previous", action="store_true", help="also time the previous default encoder")
    args = parser.parse_args()
    print("command: python " + " ".join(shlex.quote(a) for a in sys.argv))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    x, y = load_mnist_t10k(args.mnist)
    pixels = x.float() / 255.0
    x_train, y_train, x_test, y_test = pixels[:8000], y[:8000], pixels[8000:], y[8000:]
    normalised = (pixels - 0.5) / 0.5  # what an image column with the default mean / std gives
    train = Split({"image": normalised[:8000]}, y_train)
    test = Split({"image": normalised[8000:]}, y_test)
    arms = {"mmtransfer default": ModelConfig()}
    default = ModelConfig().model_dump()
    print(f"default image encoder: {build_model(ModelConfig(), {'image': (1, 28, 28)}, CLASSES).encoders['image']}")
    print(f"model config: {default}")
    if args.previous:
        previous = CNNConfig(channels=[32, 64], stride=1, pool=True, readout="mean")
        arms["previous default"] = ModelConfig(encoders={"image": previous})
    results: dict[str, list[tuple[float, float]]] = {"seed CNN (plain PyTorch)": [], **{a: [] for a in arms}}
    for r in range(args.repeats):
        results["seed CNN (plain PyTorch)"].append(
            seed_cnn(x_train, y_train, x_test, y_test, args.epochs, args.batch, seed=r)
        )
        for name, cfg in arms.items():
            results[name].append(ours(cfg, train, test, args.epochs, args.batch, seed=r))
        line = "  ".join(f"{n}: {100 * a:.2f} % in {s:.1f} s" for n, v in results.items() for a, s in [v[-1]])
        print(f"repeat {r}: {line}", flush=True)
    print(f"\nMNIST t10k 0-7,999 -> 8,000-9,999, {args.epochs} epochs, batch {args.batch}, {args.repeats} repeats")
    print(f"{'arm':28s} {'test accuracy (mean, min)':28s} {'fit seconds (median)':>20s}")
    for name, values in results.items():
        accs, secs = [a for a, _ in values], [s for _, s in values]
        accuracy = f"{100 * np.mean(accs):6.2f} %, {100 * min(accs):6.2f} %"
        print(f"{name:28s} {accuracy:28s} {statistics.median(secs):20.1f}")
    seed_secs = [s for _, s in results["seed CNN (plain PyTorch)"]]
    ours_secs = [s for _, s in results["mmtransfer default"]]
    ratios = [o / s for o, s in zip(ours_secs, seed_secs, strict=True)]
    accuracy = min(a for a, _ in results["mmtransfer default"])
    print(f"time ratio mmtransfer / seed per repeat: {', '.join(f'{q:.2f}' for q in ratios)}")
    print(f"median ratio {statistics.median(ratios):.2f} (target <= 1.00); worst accuracy {100 * accuracy:.2f} %")
    ok = accuracy >= 0.97 and statistics.median(ratios) <= 1.0
    print("targets met" if ok else "TARGETS NOT MET")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
