"""Peak memory of ``mmtransfer fit`` on an image table as the number of rows grows (target: flat).

    python bench/memory.py [--rows 2000 20000 100000] [--folder /tmp/mmtransfer-memory] [--epochs 1]

Generates, once, a table of N small images (32x32 RGB PNG files: noise with a class-coloured square, 10
classes) for each N, then runs ``mmtransfer fit`` on it in a fresh process (default encoder, ``--epochs``
epochs, batch 256) and reads that process's peak resident memory (``ru_maxrss``). Prints peak RSS and wall time
per N and the ratio of the largest table to the smallest. Target: 100,000 rows within 1.3x of 2,000 rows.
Before the streamed data path every image was decoded into memory up front (about 24 KB per 32x32 RGB row at
float precision: 979 MB at 20,000 rows).
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

CHILD = """
import resource, sys
from mmtransfer.cli import app
try:
    app(["fit", sys.argv[1], "--out", sys.argv[2], "--overwrite"])
except SystemExit as end:
    code = end.code
own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print("PEAK", own, workers, file=sys.stderr)
sys.exit(code)
"""


def make_table(folder: Path, n: int) -> Path:
    table = folder / f"images_{n}.csv"
    if table.is_file():
        return table
    images = folder / "img"
    images.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        path = images / f"{i}.png"
        label = i % 10
        if not path.is_file():
            pixels = (rng.random((32, 32, 3)) * 96).astype(np.uint8)
            pixels[8:24, 8:24] = (25 * label, 255 - 25 * label, 128)
            Image.fromarray(pixels).save(path)
        rows.append({"image": f"img/{i}.png", "label": f"class{label}"})
    pd.DataFrame(rows).to_csv(table, index=False)
    return table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[2000, 20000, 100000])
    parser.add_argument("--folder", type=Path, default=Path("/tmp/mmtransfer-memory"))
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--workers", type=int, default=0, help="data.num_workers")
    args = parser.parse_args()
    print("command: python " + " ".join(shlex.quote(a) for a in sys.argv), flush=True)
    args.folder.mkdir(parents=True, exist_ok=True)
    results = []
    for n in sorted(args.rows):
        start = time.perf_counter()
        table = make_table(args.folder, n)
        made = time.perf_counter() - start
        config = args.folder / f"fit_{n}.yaml"
        config.write_text(
            f"data: {{table: {table.name}{f', num_workers: {args.workers}' if args.workers else ''}}}\n"
            f"train: {{epochs: {args.epochs}, batch_size: 256, progress: false}}\n"
            "model: {preset: scratch}\n"  # the small default CNN this benchmark has always measured
        )
        # A fresh process per size, which reports its own peak (and its DataLoader workers', if any) as it ends.
        start = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-c", CHILD, str(config), str(args.folder / f"run_{n}")], capture_output=True, text=True
        )
        seconds = time.perf_counter() - start
        if done.returncode != 0 or "PEAK" not in done.stderr:
            print(done.stdout[-2000:], done.stderr[-2000:])
            return 1
        own, workers = (int(v) / 1024 for v in done.stderr.rsplit("PEAK", 1)[1].split())  # KiB on Linux
        results.append((n, own, seconds, made))
        extra = f" (+ workers' peak {workers:.0f} MiB)" if args.workers else ""
        print(f"{n:>7,} rows: peak RSS {own:7.0f} MiB{extra}, fit {seconds:6.1f} s (table made in {made:.0f} s)")
    smallest, largest = results[0], results[-1]
    ratio = largest[1] / smallest[1]
    print(f"peak RSS {largest[0]:,} rows / {smallest[0]:,} rows: {ratio:.2f}x (target <= 1.30)")
    return 0 if ratio <= 1.3 else 1


if __name__ == "__main__":
    raise SystemExit(main())
