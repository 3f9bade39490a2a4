"""The default text and audio encoders, from scratch, against simple baselines and the previous default.

    python bench/default_encoders.py text ../shared/data        # AG News and SMS spam
    python bench/default_encoders.py audio ../shared/data       # FSDD spoken digits

Each arm reads the same table with the same splits and is scored on the same test rows.

- text: AG News (the 7,600-row test file, text = title + description) and SMS spam (5,574 messages), each split
  80/20 stratified with seed 0. mmtransfer: a word vocabulary from train and no encoder configured (the
  default for text), the default train settings. Baseline: TF-IDF of words and word pairs + logistic
  regression (scikit-learn), fitted on the same 80 %.
- audio: FSDD, official split (recordings 0-4 of each speaker and digit are the 300 test clips), log-mel
  40 x 101 (8 kHz, 1 s). mmtransfer: no encoder configured (the default for a spectrogram), the default train
  settings. Baseline: each mel band's mean and standard deviation over time (80 numbers per clip, the same
  spectrogram mmtransfer reads) + logistic regression.
- ``--previous`` adds the default before issue 7 (CNN channels [32, 64], stride 1, max-pool, global average).

mmtransfer arms hold 15 % of the training rows out for early stopping (validation auto); the baselines fit
on all of them. Prints test accuracy and wall time per arm, and the command.
"""

from __future__ import annotations

import argparse
import csv
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from rich.console import Console
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split

from mmtransfer.config import AudioColumn, CNNConfig, DataConfig, ModelConfig, RunConfig, TextColumn, TrainConfig
from mmtransfer.data import load_dataset
from mmtransfer.runs import fit_run

PREVIOUS = CNNConfig(channels=[32, 64], stride=1, pool=True, readout="mean")
AUDIO = AudioColumn(sample_rate=8000, seconds=1.0, n_mels=40, n_fft=256, hop_length=80)


def text_tables(data: Path, out: Path) -> dict[str, Path]:
    names = (data / "ag_news" / "classes.txt").read_text().split()
    ag = pd.read_csv(data / "ag_news" / "test.csv", header=None, names=["cls", "title", "description"])
    ag = pd.DataFrame({"text": ag.title + ". " + ag.description, "label": [names[c - 1] for c in ag.cls]})
    sms = pd.read_csv(
        data / "sms_spam" / "SMSSpamCollection", sep="\t", header=None, names=["label", "text"], quoting=csv.QUOTE_NONE
    )[["text", "label"]]
    tables = {}
    for name, df in (("ag_news", ag), ("sms_spam", sms)):
        train, _ = train_test_split(df.index, test_size=0.2, stratify=df.label, random_state=0)
        df = df.copy()
        df["split"] = "test"
        df.loc[train, "split"] = "train"
        tables[name] = out / f"{name}.csv"
        df.to_csv(tables[name], index=False)
    return tables


def fsdd_table(data: Path, out: Path) -> Path:
    rows = []
    for path in sorted((data / "fsdd" / "recordings").glob("*.wav")):
        digit, _, index = path.stem.split("_")
        rows.append({"audio": str(path.resolve()), "label": digit, "split": "test" if int(index) < 5 else "train"})
    table = out / "fsdd.csv"
    pd.DataFrame(rows).to_csv(table, index=False)
    return table


def ours(data_cfg: DataConfig, model: ModelConfig, out: Path) -> tuple[float, float]:
    cfg = RunConfig(data=data_cfg, model=model, train=TrainConfig(seed=0, progress=False))
    start = time.perf_counter()
    metrics = fit_run(cfg, out, Console(quiet=True), overwrite=True)
    return metrics["test"]["accuracy"], time.perf_counter() - start


def logistic(x_train, y_train, x_test, y_test) -> float:
    clf = LogisticRegression(max_iter=2000, C=10.0)
    clf.fit(x_train, y_train)
    return float((clf.predict(x_test) == y_test).mean())


def text(data: Path, out: Path, previous: bool) -> list[tuple]:
    rows = []
    for name, table in text_tables(data, out).items():
        df = pd.read_csv(table)
        train, test = df[df.split == "train"], df[df.split == "test"]
        start = time.perf_counter()
        tfidf = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)
        acc = logistic(tfidf.fit_transform(train.text), train.label, tfidf.transform(test.text), test.label)
        rows.append((name, "TF-IDF words + pairs, logistic regression", acc, time.perf_counter() - start))
        print(rows[-1], flush=True)
        data_cfg = DataConfig(table=str(table), split_column="split", columns={"text": TextColumn()})
        arms = {"mmtransfer default (word vocabulary + CNN)": ModelConfig(preset="scratch")}
        if previous:
            arms["previous default CNN"] = ModelConfig(encoders={"text": PREVIOUS})
        for arm, model in arms.items():
            rows.append((name, arm, *ours(data_cfg, model, out / f"{name}-{len(rows)}")))
            print(rows[-1], flush=True)
    return rows


def audio(data: Path, out: Path, previous: bool) -> list[tuple]:
    table = fsdd_table(data, out)
    data_cfg = DataConfig(table=str(table), split_column="split", columns={"audio": AUDIO})
    start = time.perf_counter()
    d = load_dataset(data_cfg)
    pool = d.train.concat(d.val)  # the baseline fits on every training clip

    def stats(split) -> np.ndarray:
        x = split.inputs["audio"][:, 0]  # [N, mels, frames]
        return np.concatenate([x.mean(-1).numpy(), x.std(-1).numpy()], axis=1)

    acc = logistic(stats(pool), pool.labels.numpy(), stats(d.test), d.test.labels.numpy())
    rows = [("fsdd", "log-mel band mean + std, logistic regression", acc, time.perf_counter() - start)]
    print(rows[-1], flush=True)
    arms = {"mmtransfer default (CNN over log-mel)": ModelConfig(preset="scratch")}
    if previous:
        arms["previous default CNN"] = ModelConfig(encoders={"audio": PREVIOUS})
    for arm, model in arms.items():
        rows.append(("fsdd", arm, *ours(data_cfg, model, out / f"fsdd-{len(rows)}")))
        print(rows[-1], flush=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("modality", choices=["text", "audio"])
    parser.add_argument("data", type=Path, help="the shared data folder (holding ag_news/, sms_spam/, fsdd/)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench_defaults"))
    parser.add_argument("--previous", action="store_true", help="also the previous default CNN")
    args = parser.parse_args()
    print("command: python " + " ".join(shlex.quote(a) for a in sys.argv))
    args.out.mkdir(parents=True, exist_ok=True)
    rows = (text if args.modality == "text" else audio)(args.data, args.out, args.previous)
    print(f"\n{'data':10s} {'arm':48s} {'test accuracy':>14s} {'wall s':>8s}")
    for name, arm, acc, seconds in rows:
        print(f"{name:10s} {arm:48s} {100 * acc:12.2f} % {seconds:8.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
