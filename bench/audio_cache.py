"""Decoding audio every epoch against reading it decoded from the cache (an audio column's ``cache: true``).

    python bench/audio_cache.py ../shared/data/esc50_fold4_40 [--clips 80] [--rate 44100] [--epochs 3]

Each epoch loads every clip as an audio column does (decode the FLAC, down-mix, resample to ``--rate``, pad or
crop to 5 s). Without the cache every epoch decodes again; with it the first epoch decodes and keeps each clip,
the later ones read the kept clips. A fresh cache folder in the temporary folder; nothing else is written.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd


def epoch(column, files: list[str], base: Path) -> float:
    start = time.perf_counter()
    for name in files:
        column.load(name, base)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--clips", type=int, default=80)
    parser.add_argument("--rate", type=int, default=44100)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    print("command: python " + " ".join(shlex.quote(a) for a in sys.argv))
    os.environ["MMTRANSFER_CACHE"] = tempfile.mkdtemp(prefix="audio-cache-")
    from mmtransfer.config import AudioColumn
    from mmtransfer.modalities.audio import AudioModality

    clips = pd.read_csv(args.folder / "clips.csv")
    column_name = next(c for c in clips.columns if str(clips[c].iloc[0]).endswith((".flac", ".wav", ".ogg")))
    files = clips[column_name].tolist()[: args.clips]
    for cache in (False, True):
        cfg = AudioColumn(sample_rate=args.rate, seconds=5.0, features="waveform", cache=cache)
        times = [epoch(AudioModality("clip", cfg), files, args.folder) for _ in range(args.epochs)]
        print(f"cache {'on ' if cache else 'off'}: {len(files)} clips of 5 s at {args.rate} Hz, per epoch "
              + ", ".join(f"{t:.2f}" for t in times) + " s")  # fmt: skip
    size = sum(p.stat().st_size for p in Path(os.environ["MMTRANSFER_CACHE"]).glob("audio-*.safetensors"))
    print(f"kept: {size / 1e6:.1f} MB in {os.environ['MMTRANSFER_CACHE']}")


if __name__ == "__main__":
    main()
