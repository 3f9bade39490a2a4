"""What writing a resumable checkpoint every epoch costs: the demo with and without it (target: under 5 %).

    python bench/checkpoint_cost.py [--repeats 3] [--seeds 3]

Runs ``mmtransfer demo``'s scenario (3 seeds: source CNN, distillation, GRU fine-tune and scratch; 9 fits, ~270
epochs) alternately without checkpoints and with every fit writing its checkpoint (model, best weights,
optimizer moments, RNG states; safetensors, fsynced, renamed) at the end of each epoch, and prints the wall time
of each and the median ratio. The demo's results are the same either way (checked).
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console

from mmtransfer.demo import run_demo


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    print("command: python " + " ".join(shlex.quote(a) for a in sys.argv))
    times: dict[str, list[float]] = {"without": [], "with": []}
    results = {}
    quiet = Console(quiet=True)
    for r in range(args.repeats):
        for arm in ("without", "with"):
            with tempfile.TemporaryDirectory() as folder:
                start = time.perf_counter()
                checkpoints = Path(folder) / "checkpoints" if arm == "with" else None
                result = run_demo(
                    Path(folder) / "demo", seeds=args.seeds, progress=False, console=quiet, checkpoints=checkpoints
                )
                times[arm].append(time.perf_counter() - start)
                written = len(list(Path(folder).rglob("checkpoint.safetensors"))) if checkpoints else 0
            results[arm] = [row["transfer_accuracy"] for row in result["per_seed"]]
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
