"""How fast the command line reports a user's mistake (target: under 1 s for a bad config or a missing table).

    python bench/cli_errors.py [--repeats 5]

Runs each case as a fresh process, as a user would, and prints the median wall time and the error line:
- a config with an invalid field (``train.epochs: -3``);
- a config whose table does not exist;
- a YAML syntax error;
- ``graft hf:ID`` for a Hugging Face id that is not in the local cache (offline: no network request; this one
  loads torch and transformers first, so it has no 1 s target, only "not tens of seconds of retries").
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print("command: python " + " ".join(shlex.quote(a) for a in sys.argv))
    folder = Path(tempfile.mkdtemp(prefix="mmtransfer-cli-errors-"))
    (folder / "bad.yaml").write_text("train: {epochs: -3}\n")
    (folder / "missing.yaml").write_text("data: {table: nope.csv}\n")
    (folder / "syntax.yaml").write_text("train: {epochs: [1, 2}\n")
    (folder / "digits.yaml").write_text("data: {dataset: digits}\n")
    cli = [sys.executable, "-m", "mmtransfer.cli"]
    cases = [
        ("invalid field", [*cli, "fit", str(folder / "bad.yaml")], 1.0),
        ("missing table", [*cli, "fit", str(folder / "missing.yaml")], 1.0),
        ("YAML syntax error", [*cli, "fit", str(folder / "syntax.yaml")], 1.0),
        ("hf: id not cached", [*cli, "graft", "hf:no-such/model", str(folder / "digits.yaml"), "--dry-run"], None),
    ]
    ok = True
    print(f"{'case':20s} {'median s':>9s} {'max s':>7s}  exit  first line of stderr")
    for name, command, target in cases:
        seconds, done = [], None
        for _ in range(args.repeats if target else 1):
            start = time.perf_counter()
            done = subprocess.run(command, capture_output=True, text=True, timeout=300)
            seconds.append(time.perf_counter() - start)
        line = (done.stderr.strip().splitlines() or [""])[0]
        median = statistics.median(seconds)
        met = "" if target is None else (" (target < 1 s: met)" if median < target else " (target < 1 s: NOT met)")
        ok &= target is None or median < target
        ok &= done.returncode == 2 and line.startswith("error:")
        print(f"{name:20s} {median:9.2f} {max(seconds):7.2f}  {done.returncode:4d}  {line[:110]}{met}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
