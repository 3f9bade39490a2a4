"""Start-up and the main job: ``mmtransfer --help`` wall time (median of 5 fresh processes) and ``mmtransfer demo``
wall time and peak memory: the largest sum of the resident set sizes of the demo's process and its worker
processes, sampled every 0.1 s (psutil), beside the largest single process (getrusage).

    python bench/startup_demo.py [--runs 5] [--demo-runs 1]

Targets: --help under 0.8 s (heavy libraries imported lazily); the demo under 60 s and 1.5 GB.
"""

from __future__ import annotations

import argparse
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - start


def tree_peak(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, peak MiB of the process and its descendants together, sampled every 0.1 s)."""
    import psutil

    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    root, peak = psutil.Process(proc.pid), 0
    while proc.poll() is None:
        try:
            procs = [root, *root.children(recursive=True)]
            peak = max(peak, sum(p.memory_info().rss for p in procs if p.is_running()))
        except psutil.Error:  # a worker ended between the listing and the reading
            pass
        time.sleep(0.1)
    if proc.returncode:
        sys.exit(f"error: {' '.join(cmd)} exited with {proc.returncode}")
    return time.perf_counter() - start, peak / 2**20


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--demo-runs", type=int, default=1)
    args = parser.parse_args()
    print("command: python " + " ".join(shlex.quote(a) for a in sys.argv))
    exe = shutil.which("mmtransfer") or sys.exit("error: mmtransfer is not on PATH; pip install -e . first")
    timed([exe, "--help"])  # the first start reads the files into the page cache
    helps = [timed([exe, "--help"]) for _ in range(args.runs)]
    print(f"mmtransfer --help: {', '.join(f'{t:.3f}' for t in helps)} s; median {statistics.median(helps):.3f} s "
          "(target < 0.8 s)")  # fmt: skip
    demos, peaks = [], []
    for _ in range(args.demo_runs):
        with tempfile.TemporaryDirectory() as out:
            seconds, peak = tree_peak([exe, "demo", "--out", str(Path(out) / "demo"), "--no-progress"])
        demos.append(seconds)
        peaks.append(peak)
    single = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # KiB -> MiB, the largest one process
    print(f"mmtransfer demo: {', '.join(f'{t:.1f}' for t in demos)} s; median {statistics.median(demos):.1f} s "
          f"(target < 60 s); peak RSS of the demo and its workers together {max(peaks):.0f} MiB (target < 1536 "
          f"MiB), of the largest single process {single:.0f} MiB")  # fmt: skip
    ok = statistics.median(helps) < 0.8 and statistics.median(demos) < 60 and max(peaks) < 1536
    print("targets met" if ok else "TARGETS NOT MET")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
