"""What writing a resumable checkpoint every epoch costs: the demo's fits with and without it (target: under 5 %).

    python bench/checkpoint_cost.py [--repeats 3] [--seeds 3]

Runs the fits of ``mmtransfer demo`` (per seed: the source CNN on one half of digits, and the GRU from scratch
on k=10 labels of the other half; about 90 epochs per seed) alternately without checkpoints and with every fit
writing its checkpoint (model, best weights, optimizer moments, RNG states; safetensors, fsynced, renamed) at
the end of each epoch, and prints the wall time of each and the median ratio. The results are the same either
way (checked). (The demo itself runs through ``fit_run``, which always writes the checkpoint.)
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

from mmtransfer.config import DataConfig, TrainConfig
from mmtransfer.data import load_dataset
from mmtransfer.demo import CNN, GRU
from mmtransfer.model import build_model
from mmtransfer.train import evaluate, fit


def demo_fits(seeds: int, state: Path | None) -> list[float]:
    """The demo's source and scratch fits; their test accuracies."""
    out = []
    for seed in range(seeds):
        for model_cfg, pool, k, epochs in ((CNN, "first_half", None, 30), (GRU, "second_half", 10, 60)):
            data = load_dataset(DataConfig(dataset="digits", seed=seed, pool=pool, k_per_class=k))
            model = build_model(model_cfg, data.input_shapes, data.classes, seed=seed)
            train = TrainConfig(epochs=epochs, batch_size=32, lr=3e-3, patience=15, seed=seed, progress=False)
            fit(model, data.train, data.val, train, state_dir=None if state is None else state / f"{seed}-{pool}")
            out.append(evaluate(model, data.test)["accuracy"])
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    print("command: python " + " ".join(shlex.quote(a) for a in sys.argv))
    times: dict[str, list[float]] = {"without": [], "with": []}
    results = {}
    for r in range(args.repeats):
        for arm in ("without", "with"):
            with tempfile.TemporaryDirectory() as folder:
                start = time.perf_counter()
                results[arm] = demo_fits(args.seeds, Path(folder) if arm == "with" else None)
                times[arm].append(time.perf_counter() - start)
                written = len(list(Path(folder).rglob("checkpoint.safetensors")))
            print(
                f"repeat {r}: {arm:7s} checkpoints {times[arm][-1]:6.1f} s"
                + (f" ({written} checkpoint files, rewritten every epoch)" if written else ""),
                flush=True,
            )
    ratios = [w / o for w, o in zip(times["with"], times["without"], strict=True)]
    print(
        f"median without {statistics.median(times['without']):.1f} s, with {statistics.median(times['with']):.1f} s;"
        f" ratio per repeat {', '.join(f'{q:.3f}' for q in ratios)}; median {statistics.median(ratios):.3f}"
        " (target < 1.05)"
    )
    print("same results with and without:", results["with"] == results["without"])
    return 0 if statistics.median(ratios) < 1.05 else 1


if __name__ == "__main__":
    raise SystemExit(main())
