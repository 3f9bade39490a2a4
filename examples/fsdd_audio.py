"""Spoken digits (FSDD) from WAV files: a CNN over log-mel spectrograms, trained from scratch.

    python examples/fsdd_audio.py ../shared/data/fsdd [--out runs/fsdd]

Official split: recordings with index 0-4 are the test set (300), 5-49 train (2,700; 15 % of them held out
for early stopping). The table (file, label, split) is written into --out; the WAVs are read where they are.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
from _common import command, console, fsdd_table, run

from mmtransfer.config import AudioColumn, CNNConfig, DataConfig, ModelConfig, RunConfig, TrainConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("fsdd", type=Path, help="the fsdd folder (holding recordings/)")
    parser.add_argument("--out", type=Path, default=Path("runs/fsdd"))
    parser.add_argument("--epochs", type=int, default=40)
    args = parser.parse_args()
    console.print(f"command: {command()}")
    args.out.mkdir(parents=True, exist_ok=True)
    table = fsdd_table(args.fsdd, args.out)
    console.print(f"{len(pd.read_csv(table))} recordings -> {table}")

    cfg = RunConfig(
        data=DataConfig(
            table=str(table),
            split_column="split",
            columns={"audio": AudioColumn(sample_rate=8000, seconds=1.0, n_mels=40, n_fft=256, hop_length=80)},
        ),
        # the CNN measured before issue 7 (stride 1, max-pool, global average); the default encoder for a
        # spectrogram is measured in bench/default_encoders.py
        model=ModelConfig(
            encoders={
                "audio": CNNConfig(
                    channels=[32, 64, 128], kernel_size=3, stride=1, pool=True, readout="mean", dropout=0.2
                )
            },
            embed_dim=128,
        ),
        train=TrainConfig(epochs=args.epochs, batch_size=64, lr=3e-3, patience=10, seed=0),
    )
    run(cfg, args.out / "cnn", "FSDD, audio CNN from scratch")


if __name__ == "__main__":
    main()
