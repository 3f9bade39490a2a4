"""Cross-modal transfer: an image CNN trained on MNIST digits, grafted into an audio CNN over log-mel
spectrograms of spoken digits (FSDD), against the same audio CNN from scratch, with k labelled recordings per
class.

    python examples/cross_modal.py ../shared/data [--out runs/cross_modal] [--k 5 20] [--seeds 3]

Source: the 10,000 MNIST t10k images (the only MNIST images in the shared data), 85/15 train/val, a CNN
[16, 32, 64]. Target: FSDD, official split (index 0-4 = 300 test recordings), k labelled recordings per class
drawn from the train part, and no other label: of each class's k, round(0.15 k) (at least 1) select the best
epoch and the rest train, the same for both arms. The two CNNs have the same
blocks, so every convolution and BatchNorm tensor is copied by name through the rule
``encoders.image -> encoders.audio`` (both are one channel in: the image's gray level, the spectrogram's
log-energy); the projection and the head are re-initialised (``select``), since the classes are the same
digits but the embedding means something else. Then both arms fine-tune with the same budget.
"""

from __future__ import annotations

import argparse
import gzip
import time
from pathlib import Path

import numpy as np
import pandas as pd
from _common import command, console, few_shot_on_fsdd
from PIL import Image

from mmtransfer.config import CNNConfig, DataConfig, ImageColumn, ModelConfig, RunConfig, TrainConfig
from mmtransfer.runs import fit_run

BLOCKS = [16, 32, 64]


def mnist_table(data: Path, out: Path) -> Path:
    images = np.frombuffer(gzip.open(data / "mnist" / "t10k-images-idx3-ubyte.gz").read()[16:], np.uint8)
    labels = np.frombuffer(gzip.open(data / "mnist" / "t10k-labels-idx1-ubyte.gz").read()[8:], np.uint8)
    images = images.reshape(-1, 28, 28)
    (out / "mnist_png").mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(images):
        if not (out / "mnist_png" / f"{i}.png").is_file():
            Image.fromarray(img).save(out / "mnist_png" / f"{i}.png")
    table = out / "mnist.csv"
    pd.DataFrame({"image": [f"mnist_png/{i}.png" for i in range(len(images))], "label": labels.astype(str)}).to_csv(
        table, index=False
    )
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path, help="the shared data folder (holding mnist/ and fsdd/)")
    parser.add_argument("--out", type=Path, default=Path("runs/cross_modal"))
    parser.add_argument("--k", type=int, nargs="+", default=[5, 20])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=60)
    args = parser.parse_args()
    console.print(f"command: {command()}")
    args.out.mkdir(parents=True, exist_ok=True)

    # 1. the source: an image CNN on MNIST
    source_cfg = RunConfig(
        data=DataConfig(
            table=str(mnist_table(args.data, args.out)),
            columns={"image": ImageColumn(size=(28, 28), channels=1, augment=False)},
            test_fraction=0.15,
            val_fraction=0.15,
        ),
        model=ModelConfig(encoders={"image": CNNConfig(channels=BLOCKS)}, embed_dim=64),
        train=TrainConfig(epochs=15, batch_size=64, lr=3e-3, patience=4, seed=0, progress=False),
    )
    start = time.perf_counter()
    source_metrics = fit_run(source_cfg, args.out / "mnist_cnn", console, overwrite=True)
    console.print(
        f"source: MNIST CNN, test accuracy {source_metrics['test']['accuracy']:.4f} "
        f"({time.perf_counter() - start:.0f} s)"
    )

    # 2. the target: an audio CNN with the same blocks, k recordings per class, vs scratch
    few_shot_on_fsdd(
        args.data,
        args.out,
        ModelConfig(encoders={"audio": CNNConfig(channels=BLOCKS)}, embed_dim=64),
        source=args.out / "mnist_cnn",
        rules={"encoders.image": "encoders.audio"},
        select=["encoders.audio.blocks.*"],
        title="MNIST image CNN -> FSDD audio CNN",
        ks=args.k,
        seeds=args.seeds,
        epochs=args.epochs,
        lr=3e-3,
    )


if __name__ == "__main__":
    main()
