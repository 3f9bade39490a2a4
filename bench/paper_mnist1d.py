"""MNIST-1D: our CNN and GRU encoders against the paper's table (Greydanus 2020: CNN 94 %, GRU 91 %).

    python bench/paper_mnist1d.py [--seeds 3] [--epochs 60] [--out runs/paper_mnist1d] [--workers 1]

Data: ``mnist1d.data.make_dataset(get_dataset_args())`` (4,000 train / 1,000 test, generated offline); 15 % of
train is held out (stratified) for early stopping, so we train on 3,400 examples, fewer than the paper's 4,000.
A study (``mmtransfer.study``): one arm per model, every label, the seeds given; each cell a run folder under
--out, and report.md / report.html / results.json beside them. Prints test accuracy per seed, the mean and
std of the seeds, the 95 % t interval, and the wall time of each model.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import torch

from mmtransfer import study as engine
from mmtransfer.display import make_console

CNN = {"type": "cnn", "channels": [64, 128, 128], "kernel_size": 5, "stride": 1, "pool": True}  # as measured first
GRU = {"type": "rnn", "cell": "gru", "hidden_size": 128, "num_layers": 2, "bidirectional": True}
PAPER = {"CNN": 0.94, "GRU": 0.91}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--models", default="CNN,GRU")
    parser.add_argument("--out", type=Path, default=Path("runs/paper_mnist1d"))
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    print(f"command: {command}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    encoders = {"CNN": CNN, "GRU": GRU}
    models = args.models.split(",")
    base = {
        "data": {"dataset": "mnist1d"},
        "model": {"embed_dim": 128, "preset": "scratch"},
        "train": {"epochs": args.epochs, "batch_size": 64, "lr": 3e-3, "patience": 20},
    }
    spec = engine.StudyConfig(
        base=base, budgets=["all"], seeds=args.seeds, arms={m: {"model.encoders.signal": encoders[m]} for m in models}
    )
    console = make_console()
    runner = engine.Study(spec, base, Path.cwd(), args.out, console=console, command=command)
    results = runner.run(workers=args.workers)
    summary, ok = results["summary"]["all"], True
    print()
    print(f"| model | ours, test accuracy (mean ± std, 95 % t interval, {args.seeds} seeds) | paper | time per run |")
    print("|---|---|---|---|")
    for name in models:
        e = summary[name]
        acc, secs = e["accuracy"], e["seconds"]["mean"]
        interval = f"[{100 * acc['low']:.1f}, {100 * acc['high']:.1f}]" if acc["low"] is not None else "-"
        print(f"| {name} | {100 * acc['mean']:.1f} ± {100 * acc['std']:.1f} % {interval} | "
              f"{100 * PAPER[name]:.0f} % | {secs:.0f} s |")  # fmt: skip
        ok &= acc["mean"] >= PAPER[name]
    print(f"report: {args.out / 'report.md'}")
    print("PASS: every model reaches the paper's figure" if ok else "FAIL: below the paper's figure")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
