"""Training throughput on a small in-memory case: the built-in digits, the default CNN, examples per second.

    python bench/throughput.py [--repeats 5] [--epochs 20]

Trains the default image encoder on the 1,437 digits outside the test split for a fixed number of epochs
(``train.validation`` none, no progress bar) and prints examples trained per second, of wall time and of the
process's CPU time (which other jobs on the machine disturb less), for each repeat, and the medians. To compare
two versions of the code, run it alternately from each checkout, e.g.
``PYTHONPATH=/path/to/other/src python bench/throughput.py``; the version it ran is printed.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time

import torch

import mmtransfer
from mmtransfer.config import DataConfig, ModelConfig, TrainConfig
from mmtransfer.data import load_dataset
from mmtransfer.model import build_model
from mmtransfer.train import fit


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=20)
    args = parser.parse_args()
    print("command: python " + " ".join(shlex.quote(a) for a in sys.argv))
    print(f"mmtransfer from {mmtransfer.__file__}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    data = load_dataset(DataConfig(dataset="digits"), validation="none")
    rates, cpu_rates = [], []
    for r in range(args.repeats):
        model = build_model(ModelConfig(), data.input_shapes, data.classes, seed=r)
        cfg = TrainConfig(epochs=args.epochs, batch_size=32, seed=r, progress=False, validation="none")
        start, cpu = time.perf_counter(), time.process_time()
        fit(model, data.train, None, cfg)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        rates.append(args.epochs * len(data.train) / seconds)
        cpu_rates.append(args.epochs * len(data.train) / cpu)
        print(f"repeat {r}: {rates[-1]:,.0f} examples/s ({seconds:.2f} s; per CPU second {cpu_rates[-1]:,.0f})")
    median, cpu = statistics.median(rates), statistics.median(cpu_rates)
    size = f"digits, {len(data.train)} examples x {args.epochs} epochs"
    print(f"{size}: median {median:,.0f} examples/s, {cpu:,.0f} per CPU second")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
