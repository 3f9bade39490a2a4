"""``mmtransfer serve`` under load: latency and throughput from 1, 8 and 32 concurrent clients, beside in-process
``predict`` on the same rows.

    python bench/serve.py ../shared/data [--out runs/bench_serve] [--requests 256] [--clients 1 8 32]
                          [--rows-per-request 1] [--only digits flowers]

Two runs, fitted here unless their folders exist under ``--out``: ``digits`` (scikit-learn's 1,797 8x8 digits
as PNG files, the default image CNN from scratch, 10 epochs) and ``flowers`` (``flower_photos``' train split at
10 photos per class, ImageNet EfficientNet-Lite0 frozen at 224 px with the solved probe: serving speed does not
depend on how many labels trained the head). For each, ``mmtransfer serve`` starts as its own process on
127.0.0.1 (a free port); an asyncio httpx client in this process sends ``--requests`` requests of
``--rows-per-request`` rows (the files in base64) with at most C in flight, and prints p50 / p99 latency and rows
per second. In-process: ``mmtransfer.inference.predict`` on a table of the same rows (a CSV written, batches of
32), timed after one warm-up call. The client shares the machine's cores with the server.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd


def digits_run(out: Path) -> tuple[Path, pd.DataFrame]:
    """(run folder, table of every digit with its PNG's path)."""
    from PIL import Image
    from sklearn.datasets import load_digits

    folder, run = out / "digits_png", out / "digits_run"
    table_path = folder / "digits.csv"
    if not table_path.is_file():
        digits = load_digits()
        (folder / "img").mkdir(parents=True, exist_ok=True)
        rows = []
        for i, (image, label) in enumerate(zip(digits.images, digits.target, strict=True)):
            path = folder / "img" / f"{i}.png"
            Image.fromarray((image * 255 / 16).astype(np.uint8)).save(path)
            rows.append({"image": str(path), "label": str(label)})
        pd.DataFrame(rows).to_csv(table_path, index=False)
    if not (run / "manifest.json").is_file():
        image = {"modality": "image", "size": [8, 8], "channels": 1}
        fit(run, {"data": {"table": str(table_path), "columns": {"image": image}}, "model": {"preset": "scratch"},
                  "train": {"epochs": 10, "progress": False}})  # fmt: skip
    return run, pd.read_csv(table_path)


def flowers_run(data: Path, out: Path) -> tuple[Path, pd.DataFrame]:
    folder, run = data.resolve() / "flower_photos", out / "flowers_run"
    table = pd.read_csv(folder / "split.csv")
    table["path"] = [str(folder / p) for p in table["path"]]
    table_path = out / "flowers.csv"
    table.to_csv(table_path, index=False)
    if not (run / "manifest.json").is_file():
        data_cfg = {
            "table": str(table_path),
            "columns": {"path": {"modality": "image"}},
            "split_column": "split",
            "k_per_class": 10,
        }
        fit(run, {"data": data_cfg, "model": {"preset": "auto"},
                  "train": {"strategy": {"name": "linear_probe"}, "progress": False}})  # fmt: skip
    return run, table[table["split"] == "test"].drop(columns=["split"])


def fit(run: Path, config: dict) -> None:
    from mmtransfer.config import validate
    from mmtransfer.display import make_console
    from mmtransfer.runs import fit_run

    print(f"fitting {run} ...", flush=True)
    start = time.perf_counter()
    metrics = fit_run(validate(config), run, make_console(quiet=True), overwrite=True)
    print(f"  test accuracy {metrics['test']['accuracy']:.3f}, {time.perf_counter() - start:.0f} s", flush=True)


def in_process(run_dir: Path, rows: pd.DataFrame, out: Path, repeats: int = 3) -> float:
    """Rows per second of ``predict`` (best of ``repeats``, after a warm-up call)."""
    from mmtransfer import artifact
    from mmtransfer.inference import predict

    run = artifact.load(run_dir)
    table = out / f"{run_dir.name}_rows.csv"
    rows.to_csv(table, index=False)
    predict(run, table, out / "warmup.csv", progress=False)
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        predict(run, table, out / "predicted.csv", progress=False)
        best = max(best, len(rows) / (time.perf_counter() - start))
    return best


def start_server(run_dir: Path, log: Path, threads: int | None) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-m", "mmtransfer", "serve", str(run_dir), "--port", "0", "--log", str(log),
           "--max-queue", "4096"] + (["--threads", str(threads)] if threads else [])  # fmt: skip
    log.unlink(missing_ok=True)  # --log appends
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline()
    if " at http://" not in line:
        proc.kill()
        raise SystemExit(f"the server did not start: {line!r}")
    return proc, line.split(" at ")[1].strip()


async def load(url: str, bodies: list[dict], clients: int) -> tuple[list[float], float]:
    """(latency of each request in s, wall time) with at most ``clients`` requests in flight."""
    import httpx

    latencies: list[float] = []
    queue = list(reversed(bodies))
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async with httpx.AsyncClient(timeout=120, limits=limits) as client:

        async def worker():
            while queue:
                body = queue.pop()
                start = time.perf_counter()
                response = await client.post(f"{url}/predict", json=body)
                latencies.append(time.perf_counter() - start)
                if response.status_code != 200:
                    raise SystemExit(f"HTTP {response.status_code}: {response.text[:200]}")

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        return latencies, time.perf_counter() - start


def bench(name: str, run_dir: Path, rows: pd.DataFrame, column: str, args, out: Path) -> list[dict]:
    rows = rows.iloc[: args.requests * args.rows_per_request].reset_index(drop=True)
    encoded = [base64.b64encode(Path(p).read_bytes()).decode() for p in rows[column]]
    step = args.rows_per_request
    bodies = [{"rows": [{column: e} for e in encoded[i : i + step]]} for i in range(0, len(encoded), step)]
    local = in_process(run_dir, rows, out)
    print(f"{name}: in-process predict {local:,.0f} rows/s ({len(rows)} rows)", flush=True)
    proc, url = start_server(run_dir, out / f"{name}_serve.log", args.threads)
    results = []
    try:
        asyncio.run(load(url, bodies[: min(16, len(bodies))], 1))  # warm-up
        for clients in args.clients:
            latencies, wall = asyncio.run(load(url, bodies, clients))
            ms = np.array(latencies) * 1000
            rate = len(rows) / wall
            results.append({"run": name, "clients": clients, "requests": len(bodies), "rows": len(rows),
                            "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
                            "rows_per_s": rate, "in_process": local})  # fmt: skip
            print(f"{name}: {clients:>2} clients: p50 {results[-1]['p50_ms']:.1f} ms, p99 {results[-1]['p99_ms']:.1f}"
                  f" ms, {rate:,.0f} rows/s ({rate / local:.2f}x in-process)", flush=True)  # fmt: skip
    finally:
        proc.terminate()
        proc.wait(30)
    batches = [int(line.split("batch=")[1].split()[0]) for line in (out / f"{name}_serve.log").read_text().splitlines()
               if "batch=" in line]  # fmt: skip
    print(f"{name}: batch sizes in the server's log: median {statistics.median(batches):.0f}, max {max(batches)}")
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path, help="the shared data folder (holding flower_photos/)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench_serve"))
    parser.add_argument("--requests", type=int, default=256)
    parser.add_argument("--rows-per-request", type=int, default=1)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--threads", type=int, default=None, help="the server's --threads (default: its own)")
    parser.add_argument("--only", nargs="+", default=["digits", "flowers"], choices=["digits", "flowers"])
    args = parser.parse_args()
    print("command: python " + " ".join(shlex.quote(a) for a in sys.argv))
    print(f"machine: {os.cpu_count()} CPUs")
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    if "digits" in args.only:
        run, rows = digits_run(args.out)
        results += bench("digits", run, rows, "image", args, args.out)
    if "flowers" in args.only:
        run, rows = flowers_run(args.data, args.out)
        results += bench("flowers", run, rows, "path", args, args.out)
    print("\n| run | clients | requests x rows | p50 ms | p99 ms | rows/s | in-process rows/s | served / in-process |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['run']} | {r['clients']} | {r['requests']} x {r['rows'] // r['requests']} | {r['p50_ms']:.1f} | "
              f"{r['p99_ms']:.1f} | {r['rows_per_s']:,.0f} | {r['in_process']:,.0f} | "
              f"{r['rows_per_s'] / r['in_process']:.2f} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
