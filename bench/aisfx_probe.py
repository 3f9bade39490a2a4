"""Frozen aisfx embeddings + logistic regression: the sanity check that the torch features match the package's.

    python bench/aisfx_probe.py esc50 ../shared/data/esc50_fold4_40      # 5-fold CV grouped by source_recording
    python bench/aisfx_probe.py fsdd ../shared/data/fsdd                 # the official split (index 0-4: test)

Each clip, at its own length (resampled to 44.1 kHz), gives one 512-d embedding per 2.3 s block (a block every
1.16 s; a clip under one block is padded); the clip's features are the blocks' mean and maximum (1024). Arms:
``aisfx`` (the packaged weights), ``untrained`` (the same network, PyTorch's initialisation, seed 0) and ``logmel``
(each band's mean and standard deviation over the clip's frames of the same 96-band spectrogram, 192 numbers).
Each is standardised and fitted with scikit-learn's LogisticRegression (``--C``, default 1; lbfgs). ESC-50:
StratifiedGroupKFold (5 folds, shuffled by each seed) keeps clips of one recording on one side; ``--per-class K``
keeps K training clips per class (drawn by the seed). Prints accuracy mean ± std over folds and seeds, and wall times.
"""

from __future__ import annotations

import argparse
import csv
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from mmtransfer.encoders import aisfx as A


def read_esc50(folder: Path) -> tuple[list[Path], list[str], list[str]]:
    with open(folder / "clips.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return [folder / r["path"] for r in rows], [r["label"] for r in rows], [r["source_recording"] for r in rows]


def read_fsdd(folder: Path) -> tuple[list[Path], list[str], list[bool]]:
    paths = sorted((folder / "recordings").glob("*.wav"))
    names = [p.stem.split("_") for p in paths]
    return paths, [n[0] for n in names], [int(n[2]) < 5 for n in names]


def embed(paths: list[Path], arm: str) -> np.ndarray:
    if arm == "logmel":
        feats = A.AisfxFeatures()
        out = []
        for path in paths:
            wave, rate = sf.read(path, dtype="float32")
            with torch.no_grad():
                f = feats(torch.from_numpy(A.resample(wave, rate))[None])[0]
            out.append(torch.cat([f.mean(0), f.std(0)]).numpy())
        return np.stack(out)
    torch.manual_seed(0)
    net = A.pretrained_net() if arm == "aisfx" else A.EmbeddingNet()
    encoder = A.AisfxEncoder(net).eval()
    waves, rates = zip(*(sf.read(p, dtype="float32") for p in paths), strict=True)
    groups: dict[int, list[int]] = {}
    for i, r in enumerate(rates):
        groups.setdefault(r, []).append(i)
    out = np.zeros((len(paths), encoder.output_dim), dtype=np.float32)
    for rate, idx in groups.items():
        out[idx] = A.embed_clips(encoder, [waves[i] for i in idx], rate, on_short=lambda m: print("note:", m)).numpy()
    return out


def probe(c: float = 1.0) -> object:
    return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=5000))


def esc50_scores(x, labels, groups, seeds, per_class, c) -> list[float]:
    y = np.asarray(labels)
    scores = []
    for seed in seeds:
        rng = np.random.default_rng(seed)
        for train, test in StratifiedGroupKFold(5, shuffle=True, random_state=seed).split(x, y, groups):
            if per_class:
                train = np.concatenate([rng.permutation(train[y[train] == c])[:per_class] for c in np.unique(y[train])])
            scores.append(float((probe(c).fit(x[train], y[train]).predict(x[test]) == y[test]).mean()))
    return scores


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", choices=["esc50", "fsdd"])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--arms", default="aisfx,untrained,logmel")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--per-class", type=int, default=0, help="ESC-50: training clips per class (0: all)")
    parser.add_argument("--C", type=float, default=1.0, help="the logistic regression's inverse regularisation")
    parser.add_argument("--cache", type=Path, help="a folder to keep each arm's features in (ARM-DATASET.npy)")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    if args.dataset == "esc50":
        paths, labels, groups = read_esc50(args.folder)
    else:
        paths, labels, test = read_fsdd(args.folder)
    print(f"{args.dataset}: {len(paths)} clips, {len(set(labels))} classes")
    for arm in args.arms.split(","):
        start = time.perf_counter()
        kept = args.cache / f"{arm}-{args.dataset}.npy" if args.cache else None
        if kept is not None and kept.is_file():
            x = np.load(kept)
        else:
            x = embed(paths, arm)
            if kept is not None:
                kept.parent.mkdir(parents=True, exist_ok=True)
                np.save(kept, x)
        embed_s = time.perf_counter() - start
        start = time.perf_counter()
        if args.dataset == "esc50":
            scores = esc50_scores(x, labels, groups, range(args.seeds), args.per_class, args.C)
            result = f"{100 * np.mean(scores):.1f} ± {100 * np.std(scores):.1f} % ({len(scores)} folds x seeds)"
        else:
            y, is_test = np.asarray(labels), np.asarray(test)
            fitted = probe(args.C).fit(x[~is_test], y[~is_test])
            result = (
                f"{100 * (fitted.predict(x[is_test]) == y[is_test]).mean():.1f} % on {int(is_test.sum())} test clips"
            )
        fit_s = time.perf_counter() - start
        print(f"{arm:10s} {result}; features {embed_s:.1f} s, probe {fit_s:.1f} s")
    print("command: python " + shlex.join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]))


if __name__ == "__main__":
    main()
