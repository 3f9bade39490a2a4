"""Cross-modal transfer between self-attention encoders: a transformer trained on text (AG News topics, word
tokens) grafted into a transformer over spoken-digit spectrograms (FSDD), against the same audio transformer
from scratch, with k labelled recordings per class.

    python examples/cross_modal_attention.py ../shared/data [--out runs/cross_attention] [--k 5 20] [--seeds 3]

Source: AG News test.csv split 80/20 (stratified, seed 0), an attention encoder (d_model 64, 2 layers, 4 heads)
over a word vocabulary, trained from scratch. Target: FSDD (official split; k per class from the train part),
a log-mel spectrogram [1, 40, 101] read as a sequence of 40 mel bands of 101 frames each. The transformer
layers, the final norm, the pooling query, the position table and the output projection have the same shapes
on both sides and are copied through the rule ``encoders.text.inner -> encoders.audio``; the input projection
(64 token features vs 101 frames) cannot be and is reported skipped; the head is re-initialised.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from _common import command, console, few_shot_on_fsdd
from sklearn.model_selection import train_test_split
from text_minilm import ag_news

from mmtransfer.config import (
    AttentionConfig,
    DataConfig,
    ModelConfig,
    RunConfig,
    TextColumn,
    TrainConfig,
)
from mmtransfer.runs import fit_run

ATTENTION = AttentionConfig(d_model=64, num_heads=4, num_layers=2, ff_dim=128, dropout=0.1, pool="query", max_len=64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path, help="the shared data folder (holding ag_news/ and fsdd/)")
    parser.add_argument("--out", type=Path, default=Path("runs/cross_attention"))
    parser.add_argument("--k", type=int, nargs="+", default=[5, 20])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=60)
    args = parser.parse_args()
    console.print(f"command: {command()}")
    args.out.mkdir(parents=True, exist_ok=True)

    df = ag_news(args.data / "ag_news")
    train_idx, _ = train_test_split(df.index, test_size=0.2, stratify=df.label, random_state=0)
    df["split"] = "test"
    df.loc[train_idx, "split"] = "train"
    df.to_csv(args.out / "ag_news.csv", index=False)
    source_cfg = RunConfig(
        data=DataConfig(
            table=str(args.out / "ag_news.csv"),
            split_column="split",
            columns={"text": TextColumn(max_length=64, vocab_size=20000, min_freq=2)},
        ),
        model=ModelConfig(encoders={"text": ATTENTION}, embed_dim=64),
        train=TrainConfig(epochs=8, batch_size=64, lr=1e-3, patience=2, seed=0, progress=False),
    )
    start = time.perf_counter()
    source = fit_run(source_cfg, args.out / "text_attention", console, overwrite=True)
    console.print(
        f"source: AG News attention encoder, test accuracy {source['test']['accuracy']:.4f} "
        f"({time.perf_counter() - start:.0f} s)"
    )

    few_shot_on_fsdd(
        args.data,
        args.out,
        ModelConfig(encoders={"audio": ATTENTION}, embed_dim=64),
        source=args.out / "text_attention",
        rules={"encoders.text.inner": "encoders.audio"},
        select=["encoders.audio.*"],
        title="AG News text transformer -> FSDD audio transformer",
        ks=args.k,
        seeds=args.seeds,
        epochs=args.epochs,
        lr=1e-3,
    )


if __name__ == "__main__":
    main()
