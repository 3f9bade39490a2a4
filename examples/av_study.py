"""A study on image + audio pairs (AV-MNIST style): from scratch vs an image encoder transferred from another
digit dataset, over label budgets, with each input masked at test time.

    python examples/av_study.py ../shared/data [--out runs/av_study] [--k 5 20 100] [--seeds 3] [--workers 1]

The table: ``av_mnist_style/pairs.csv`` (each MNIST t10k image paired with an FSDD recording of its digit;
7,000 train pairs, 3,000 test pairs). The model: a CNN per input (images 28x28, log-mel spectrograms),
attention fusion. The source: the same image CNN trained on scikit-learn's 1,797 8x8 digits (another dataset,
no AV-MNIST label used); its convolutions are grafted into the target's image encoder by name. Arms:
``scratch`` (the base config) and ``transfer`` (transfer.source: the source run). The study writes
``report.md``, ``report.html`` and ``results.json`` into --out, and ``study.yaml`` to rerun it with
``mmtransfer study``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml
from _common import av_table, command, console, need

from mmtransfer import study as engine
from mmtransfer.artifact import verify
from mmtransfer.config import CNNConfig, DataConfig, ModelConfig, RunConfig, TrainConfig
from mmtransfer.runs import fit_run

IMAGE_CNN = {"type": "cnn", "channels": [16, 32, 64]}


def _finished(run: Path) -> bool:
    try:
        verify(run)
        return True
    except (OSError, ValueError):
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path, help="the shared data folder (holding av_mnist_style/, mnist/, fsdd/)")
    parser.add_argument("--out", type=Path, default=Path("runs/av_study"))
    parser.add_argument("--k", nargs="+", type=int, default=[5, 20, 100], help="labelled pairs per class")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    need(parser, args.data, "av_mnist_style/pairs.csv")
    console.print(f"command: {command()}")
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    table = av_table(args.data, out)

    source = out / "source_digits"
    if not _finished(source):
        cfg = RunConfig(
            data=DataConfig(dataset="digits"),
            model=ModelConfig(encoders={"image": CNNConfig(**{k: v for k, v in IMAGE_CNN.items() if k != "type"})},
                              embed_dim=64),
            train=TrainConfig(epochs=30, batch_size=32, lr=3e-3, progress=False),
        )  # fmt: skip
        metrics = fit_run(cfg, source, console, overwrite=True)
        console.print(f"source: digits CNN, test accuracy {metrics['test']['accuracy']:.3f}", markup=False)

    base = {
        "data": {
            "table": str(table),
            "split_column": "split",
            "infer": False,
            "columns": {
                "image": {"modality": "image", "size": [28, 28], "channels": 1, "augment": False},
                "audio": {
                    "modality": "audio",
                    "sample_rate": 8000,
                    "seconds": 1.0,
                    "n_mels": 40,
                    "n_fft": 256,
                    "hop_length": 80,
                },
            },  # fmt: skip
        },
        "model": {
            "fusion": "attention",
            "embed_dim": 64,
            "encoders": {"image": IMAGE_CNN, "audio": {"type": "cnn", "channels": [16, 32, 64]}},
        },
        "train": {"epochs": args.epochs, "batch_size": 32, "lr": 3e-3, "patience": 5},
    }
    spec = {
        "base": "base.yaml",
        "budgets": args.k,
        "seeds": args.seeds,
        "reference": "scratch",
        "arms": {"scratch": {}, "transfer": {"transfer.source": str(source)}},
    }
    (out / "base.yaml").write_text(yaml.safe_dump(base, sort_keys=False))
    (out / "study.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    study, raw, folder = engine.load_study(out / "study.yaml")
    runner = engine.Study(study, raw, folder, out, console=console, command=command(), source=str(out / "study.yaml"))
    results = runner.run(workers=args.workers)
    engine.print_summary(results, study, console, out)


if __name__ == "__main__":
    main()
