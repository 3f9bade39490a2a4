"""Image + audio pairs (AV-MNIST style): each MNIST test image paired with a spoken recording of its digit.

    python examples/av_mnist.py ../shared/data [--out runs/av_mnist] [--epochs 15]

Uses ``av_mnist_style/pairs.csv`` (split column: 7,000 train pairs, 3,000 test pairs; 15 % of train held out
for early stopping), the MNIST t10k images (written once as PNG files into --out, since the table needs
files) and the FSDD recordings (read where they are). Trains three models with the same budget: image alone,
audio alone, and both fused, and prints their test accuracy.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from _common import av_table, command, console, run

from mmtransfer.config import (
    AudioColumn,
    CNNConfig,
    DataConfig,
    ImageColumn,
    ModelConfig,
    RunConfig,
    TrainConfig,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path, help="the shared data folder (holding av_mnist_style/, mnist/, fsdd/)")
    parser.add_argument("--out", type=Path, default=Path("runs/av_mnist"))
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--fusion", default="attention", choices=["concat", "attention", "gated"])
    args = parser.parse_args()
    console.print(f"command: {command()}")

    av_table(args.data, args.out)

    columns = {
        "image": ImageColumn(size=(28, 28), channels=1, augment=False),
        "audio": AudioColumn(sample_rate=8000, seconds=1.0, n_mels=40, n_fft=256, hop_length=80),
    }
    encoders = {
        "image": CNNConfig(channels=[16, 32, 64]),
        "audio": CNNConfig(channels=[16, 32, 64]),
    }
    train = TrainConfig(epochs=args.epochs, batch_size=64, lr=3e-3, patience=5, seed=0)
    results = {}
    for arm, used in [("image", ["image"]), ("audio", ["audio"]), ("fused", ["image", "audio"])]:
        cfg = RunConfig(
            data=DataConfig(
                table=str(args.out / "pairs.csv"),
                split_column="split",
                columns={c: columns[c] for c in used},
                ignore=[c for c in columns if c not in used],
                infer=False,
            ),
            model=ModelConfig(
                encoders={c: encoders[c] for c in used},
                embed_dim=64,
                fusion=args.fusion if len(used) > 1 else "concat",
            ),
            train=train,
        )
        results[arm] = run(cfg, args.out / arm, f"AV-MNIST, {arm}")
    console.print("== AV-MNIST test accuracy (3,000 test pairs) ==")
    for arm, m in results.items():
        console.print(f"{arm:6s} {m['test']['accuracy']:.4f}  ({m['wall_seconds']:.0f} s)")
    best_single = max(results["image"]["test"]["accuracy"], results["audio"]["test"]["accuracy"])
    console.print(f"fused - best single modality: {100 * (results['fused']['test']['accuracy'] - best_single):+.2f} pp")


if __name__ == "__main__":
    main()
