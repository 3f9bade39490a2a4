"""Multi-label on image + audio pairs: which digits does a pair hold?

    python examples/av_multilabel.py ../shared/data [--out runs/av_multilabel] [--mismatch 0.5] [--epochs 12]

The table: ``av_mnist_style/pairs.csv`` (each MNIST t10k image paired with an FSDD recording of its digit; 7,000
train pairs, 3,000 test pairs). In a share ``--mismatch`` of the rows of each split the recordings are shuffled
among those rows (seeded), so the image shows one digit and the voice says another; the label is the set
{image digit, audio digit}, written ``3;7`` (one digit when they agree, ``3``). The model: a CNN per input
(28x28 images, log-mel spectrograms), concatenated; one sigmoid output per digit, binary cross-entropy, each
digit's threshold chosen on the validation rows. Reported: micro- and macro-F1, subset accuracy (both digits
right and nothing more), mAP, per digit F1, and the same for the matched and the mismatched rows apart.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
from _common import av_table, command, console, need

from mmtransfer.config import validate
from mmtransfer.display import Grid
from mmtransfer.runs import fit_run


def mismatched(table: Path, share: float, seed: int = 0) -> Path:
    df = pd.read_csv(table)
    rng = np.random.default_rng(seed)
    df["image_digit"], df["audio_digit"] = df["label"].astype(str), df["label"].astype(str)
    for split in ("train", "test"):
        rows = np.flatnonzero((df["split"] == split).to_numpy())
        chosen = rng.choice(rows, size=int(share * len(rows)), replace=False)
        shuffled = rng.permutation(chosen)
        df.loc[chosen, "audio"] = df.loc[shuffled, "audio"].to_numpy()
        df.loc[chosen, "audio_digit"] = df.loc[shuffled, "audio_digit"].to_numpy()
    df["digits"] = [";".join(sorted({a, b})) for a, b in zip(df["image_digit"], df["audio_digit"], strict=True)]
    out = table.with_name("pairs_multilabel.csv")
    df.drop(columns=["label"]).to_csv(out, index=False)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path, help="the shared data folder (holding av_mnist_style/, mnist/, fsdd/)")
    parser.add_argument("--out", type=Path, default=Path("runs/av_multilabel"))
    parser.add_argument("--mismatch", type=float, default=0.5)
    parser.add_argument("--epochs", type=int, default=12)
    args = parser.parse_args()
    need(parser, args.data, "av_mnist_style/pairs.csv")
    console.print(f"command: {command()}")
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    table = mismatched(av_table(args.data, out), args.mismatch)
    df = pd.read_csv(table, dtype=str)
    two = (df["image_digit"] != df["audio_digit"]).mean()
    console.print(f"{len(df)} pairs; {100 * two:.1f} % hold two digits (image and voice disagree)", markup=False)
    audio = {"modality": "audio", "sample_rate": 8000, "seconds": 1.0, "n_mels": 40, "n_fft": 256, "hop_length": 80}
    cfg = validate({
        "data": {"table": str(table), "label": "digits", "split_column": "split", "infer": False,
                 "columns": {"image": {"modality": "image", "size": [28, 28], "channels": 1, "augment": False},
                             "audio": audio}},
        "model": {"embed_dim": 64, "encoders": {"image": {"type": "cnn", "channels": [16, 32, 64]},
                                                "audio": {"type": "cnn", "channels": [16, 32, 64]}}},
        "train": {"epochs": args.epochs, "batch_size": 64, "lr": 3e-3, "patience": 3, "progress": False},
    })  # fmt: skip
    start = time.perf_counter()
    metrics = fit_run(cfg, out / "run", console, overwrite=True)
    seconds = time.perf_counter() - start
    test = metrics["test"]

    pred = out / "test_predictions.csv"
    from mmtransfer import artifact
    from mmtransfer.inference import predict

    run = artifact.load(out / "run")
    test_rows = df[df["split"] == "test"]
    test_table = out / "test_pairs.csv"  # beside the PNGs its image paths name
    test_rows.to_csv(test_table, index=False)
    predict(run, test_table, pred, progress=False)
    p = pd.read_csv(pred, dtype=str, keep_default_na=False)
    exact = (p["prediction"] == p["digits"]).to_numpy()
    agree = (test_rows["image_digit"] == test_rows["audio_digit"]).to_numpy()
    rows = [
        ["micro-F1", f"{test['micro_f1']:.4f}"],
        ["macro-F1", f"{test['macro_f1']:.4f}"],
        ["subset accuracy (every digit of the set right)", f"{test['subset_accuracy']:.4f}"],
        ["mean average precision", f"{test['map']:.4f}"],
        [f"subset accuracy, image and voice agree ({agree.sum()} pairs)", f"{exact[agree].mean():.4f}"],
        [f"subset accuracy, they disagree ({(~agree).sum()} pairs)", f"{exact[~agree].mean():.4f}"],
    ]
    console.print(Grid(f"test pairs ({test['n']}), {seconds:.0f} s", ["metric", "value"], rows))
    per = [[c, f"{f:.3f}", str(n)] for c, f, n in zip(metrics["classes"], test["f1_per_label"],
                                                       test["support_per_label"], strict=True)]  # fmt: skip
    console.print(Grid("per digit (test)", ["digit", "F1", "pairs holding it"], per))
    (out / "summary.json").write_text(json.dumps({"command": command(), "seconds": round(seconds, 1), "test": test,
                                                  "subset_accuracy_agree": float(exact[agree].mean()),
                                                  "subset_accuracy_disagree": float(exact[~agree].mean())},
                                                 indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
