"""Framework overhead: the same model, data and steps trained by ``mmtransfer.train.fit`` and by a plain PyTorch
loop written by hand, alternated in one run.

    python bench/overhead.py ../shared/data/mnist [--repeats 5] [--epochs 5]

Data: MNIST t10k (the only MNIST images in ../shared/data): 0-6,999 train, 7,000-7,999 validation,
8,000-9,999 test, in memory, normalised as an image column does. Model: the default image encoder and head
(``build_model(ModelConfig())``), the same initial weights in both arms. Both do the same work: AdamW
(lr 3e-3, weight decay 1e-2), linear warm-up over 10 % of the steps then cosine, batch 64, shuffled each epoch,
the validation split scored after every epoch, the weights of the best validation loss kept and restored at
the end. The hand loop slices the in-memory tensors; ``fit`` goes through its DataLoader and Accelerate.
Arms alternate (ABBA) so that the machine's load hits both. Target: median(fit) / median(hand) <= 1.05.
"""

from __future__ import annotations

import argparse
import copy
import math
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch
from seed_cnn import CLASSES, load_mnist_t10k
from torch import nn

from mmtransfer.config import ModelConfig, TrainConfig
from mmtransfer.data import Split
from mmtransfer.model import build_model
from mmtransfer.train import evaluate, fit

LR, WEIGHT_DECAY, WARMUP, BATCH = 3e-3, 1e-2, 0.1, 64


def by_hand(x_train, y_train, x_val, y_val, epochs: int, seed: int):
    torch.manual_seed(seed)
    model = build_model(ModelConfig(), {"image": (1, 28, 28)}, CLASSES, seed=seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    steps = epochs * math.ceil(len(y_train) / BATCH)
    warmup = max(1, int(WARMUP * steps))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, steps - warmup))))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    generator = torch.Generator().manual_seed(seed)
    best, best_loss = None, float("inf")
    start = time.perf_counter()
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(y_train), generator=generator)
        for i in range(0, len(order), BATCH):
            idx = order[i : i + BATCH]
            loss = nn.functional.cross_entropy(model({"image": x_train[idx]}), y_train[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
        model.eval()
        with torch.no_grad():
            val_loss = sum(
                nn.functional.cross_entropy(model({"image": x_val[i : i + 256]}), y_val[i : i + 256], reduction="sum")
                for i in range(0, len(y_val), 256)
            ) / len(y_val)
        if val_loss < best_loss:
            best_loss, best = float(val_loss), copy.deepcopy(model.state_dict())
    model.load_state_dict(best)
    return model, time.perf_counter() - start


def with_fit(train: Split, val: Split, epochs: int, seed: int):
    model = build_model(ModelConfig(), {"image": (1, 28, 28)}, CLASSES, seed=seed)
    cfg = TrainConfig(
        epochs=epochs, batch_size=BATCH, lr=LR, weight_decay=WEIGHT_DECAY, warmup_fraction=WARMUP, patience=None,
        seed=seed, progress=False,
    )  # fmt: skip
    start = time.perf_counter()
    fit(model, train, val, cfg)
    return model, time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mnist", type=Path, help="folder holding t10k-images-idx3-ubyte.gz and the labels")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args()
    print("command: python " + " ".join(shlex.quote(a) for a in sys.argv))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    x, y = load_mnist_t10k(args.mnist)
    x = (x.float() / 255.0 - 0.5) / 0.5
    parts = {"train": slice(0, 7000), "val": slice(7000, 8000), "test": slice(8000, 10000)}
    split = {k: Split({"image": x[s]}, y[s]) for k, s in parts.items()}
    times: dict[str, list[float]] = {"hand": [], "fit": []}
    accs: dict[str, list[float]] = {"hand": [], "fit": []}
    for r in range(args.repeats):
        order = ("hand", "fit") if r % 2 == 0 else ("fit", "hand")
        for arm in order:
            if arm == "hand":
                xs = (x[parts["train"]], y[parts["train"]], x[parts["val"]], y[parts["val"]])
                model, seconds = by_hand(*xs, args.epochs, seed=r)
            else:
                model, seconds = with_fit(split["train"], split["val"], args.epochs, seed=r)
            times[arm].append(seconds)
            accs[arm].append(evaluate(model, split["test"])["accuracy"])
        print(f"repeat {r}: hand {times['hand'][-1]:.2f} s ({100 * accs['hand'][-1]:.2f} %), "
              f"fit {times['fit'][-1]:.2f} s ({100 * accs['fit'][-1]:.2f} %)", flush=True)  # fmt: skip
    hand, ours = statistics.median(times["hand"]), statistics.median(times["fit"])
    ratios = [f / h for f, h in zip(times["fit"], times["hand"], strict=True)]
    print(f"\nMNIST t10k, 7,000 train / 1,000 val / 2,000 test, {args.epochs} epochs, batch {BATCH}, {args.repeats} "
          "repeats alternating")  # fmt: skip
    print(f"hand-written loop: median {hand:.2f} s, test accuracy {100 * statistics.mean(accs['hand']):.2f} %")
    print(f"mmtransfer fit:    median {ours:.2f} s, test accuracy {100 * statistics.mean(accs['fit']):.2f} %")
    print(f"per-repeat ratios fit / hand: {', '.join(f'{q:.3f}' for q in ratios)}")
    print(f"ratio of medians {ours / hand:.3f} (target <= 1.05)")
    return 0 if ours / hand <= 1.05 else 1


if __name__ == "__main__":
    raise SystemExit(main())
