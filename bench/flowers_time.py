"""Time to a useful model: flowers with the defaults only, from a typed command to test metrics.

    python bench/flowers_time.py ../shared/data/flower_photos --seeds 3            # k=10 and all, cold cache
    python bench/flowers_time.py ../shared/data/flower_photos --k 10 --seeds 1 --warm

Each run is a fresh `mmtransfer fit` process (the fixed split of split.csv, `data.k_per_class` = k, nothing else
set), timed by wall clock, with its peak RSS (children included); the feature cache is emptied before each run
unless --warm. Prints the test accuracy, wall time and peak RSS of every run, then mean +- std per budget, and
the `predict` time on the 540 test photos of the last run. Targets (issue 18): k=10 >= 80 % in <= 30 s, all
>= 92.5 % in <= 90 s, peak RSS <= 1.5 GB, predict <= 30 s.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def timed(command: list[str], env: dict) -> tuple[float, float, subprocess.CompletedProcess]:
    """(wall seconds, peak RSS MiB of the process and its children together, sampled every 0.1 s, the process)."""
    import psutil

    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(command, env=env, stdout=out, stderr=err, text=True)
        peak = 0.0
        parent = psutil.Process(proc.pid)
        while proc.poll() is None:
            try:
                tree = [parent, *parent.children(recursive=True)]
                peak = max(peak, sum(p.memory_info().rss for p in tree) / 2**20)
            except psutil.Error:
                pass
            time.sleep(0.1)
        seconds = time.perf_counter() - start
        out.seek(0), err.seek(0)
        done = subprocess.CompletedProcess(command, proc.returncode, out.read(), err.read())
    if done.returncode != 0:
        sys.exit(f"failed: {' '.join(command)}\n{done.stderr[-3000:]}")
    return seconds, peak, done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("flowers", type=Path, help="the flower_photos folder (holds split.csv)")
    parser.add_argument("--k", default="10,all", help="budgets: photos per class, or all (default 10,all)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--warm", action="store_true", help="keep the feature cache between runs")
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "mmtransfer-flowers-time")
    args = parser.parse_args()
    table = (args.flowers / "split.csv").resolve()
    cache = args.out / "cache"
    env = {**os.environ, "MMTRANSFER_CACHE": str(cache)}
    env.pop("MMTRANSFER_PRESET", None)  # the defaults, as a new user has them
    print(f"command: python {' '.join(sys.argv)}")
    results: dict[str, list[dict]] = {}
    last = None
    for k in args.k.split(","):
        for seed in range(args.seeds):
            if not args.warm:
                shutil.rmtree(cache, ignore_errors=True)
            run = args.out / f"k{k}_seed{seed}"
            command = [sys.executable, "-m", "mmtransfer", "fit", "--data", str(table), "--label", "label",
                       "--set", "data.split_column=split", "--set", f"data.seed={seed}", "--set", f"train.seed={seed}",
                       "--out", str(run), "--overwrite"]  # fmt: skip
            if k != "all":
                command += ["--set", f"data.k_per_class={k}"]
            seconds, peak, _ = timed(command, env)
            metrics = json.loads((run / "metrics.json").read_text())
            row = {"k": k, "seed": seed, "accuracy": metrics["test"]["accuracy"], "seconds": seconds, "peak_mib": peak,
                   "labels": metrics["labels"]["train"] + metrics["labels"]["selection"]}  # fmt: skip
            results.setdefault(k, []).append(row)
            last = run
            print(f"k={k} seed {seed}: test accuracy {100 * row['accuracy']:.1f} % ({row['labels']} labels), "
                  f"{seconds:.1f} s wall, peak RSS {peak:,.0f} MiB", flush=True)  # fmt: skip
    for k, rows in results.items():
        acc = [100 * r["accuracy"] for r in rows]
        sec = [r["seconds"] for r in rows]
        spread = f" ± {statistics.stdev(acc):.1f}" if len(acc) > 1 else ""
        print(f"k={k}: test accuracy {statistics.mean(acc):.1f}{spread} % over {len(rows)} seed(s); wall "
              f"{statistics.mean(sec):.1f} s mean ({min(sec):.1f}-{max(sec):.1f}); peak RSS "
              f"{max(r['peak_mib'] for r in rows):,.0f} MiB")  # fmt: skip
    if last is not None:  # the 540 test photos, as a new table (paths made absolute), features not cached
        import pandas as pd

        df = pd.read_csv(table)
        test = df[df["split"] == "test"].assign(path=lambda d: [str(table.parent / p) for p in d["path"]])
        test.drop(columns=["split"]).to_csv(args.out / "test_photos.csv", index=False)
        seconds, peak, _ = timed(
            [
                sys.executable,
                "-m",
                "mmtransfer",
                "predict",
                str(last),
                str(args.out / "test_photos.csv"),
                "--out",
                str(args.out / "predictions.csv"),
            ],
            env,
        )
        print(f"predict {last.name} on the {len(test)} test photos: {seconds:.1f} s wall, peak RSS {peak:,.0f} MiB")


if __name__ == "__main__":
    main()
