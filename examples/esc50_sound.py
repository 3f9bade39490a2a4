"""Environmental sounds with few labels: the pretrained aisfx encoder (frozen, the solved linear probe) against
the default audio CNN from scratch, on ``esc50_fold4_40`` (40 classes, 8 clips of 5 s each), as a study.

    python examples/esc50_sound.py ../shared/data/esc50_fold4_40 [--out runs/esc50] [--shuffles 1] [--k 4 all]

Clips cut from one recording stay on one side of every split: the folds are scikit-learn's StratifiedGroupKFold
(5 folds grouped by ``source_recording``, shuffled by each of ``--shuffles`` seeds), one table per fold with its
split column; the study's seed s reads fold table s (shuffle s // 5, fold s % 5), so the arms of one seed share
the test clips and the intervals pair them. Budgets: k clips per class drawn from the fold's train clips (the
labels that select the epoch come out of them), or all (20 % of the fold's train clips select the epoch). A class
whose clips all come from one recording (washing_machine) has no train clip in the fold that tests it: its
test clips are left out of that fold, and the script says so. Arms:

- ``aisfx_probe``: ``type: aisfx`` (44.1 kHz log-mel blocks, the packaged weights; ``pip install --no-deps
  aisfx==0.1.2``), frozen, features cached once per clip, the head solved (``train.strategy.name: linear_probe``);
- ``scratch_cnn``: the default audio CNN over 16 kHz log-mel, every weight trained from scratch;
- ``aisfx_finetuned`` (with ``--arms``; slow on a CPU: about 35 s an epoch over 160 clips here): LP-FT, the
  solved probe and then every aisfx weight fine-tuned at ``train.strategy.ft_lr`` for ``--finetune-epochs``.

Not here: log-mel statistics + logistic regression (``bench/aisfx_probe.py``, outside the study engine).
Published, HEAR 2021 on all of ESC-50: OpenL3 75.1 %, PANNs 90.9 %, a log-mel CNN from scratch 64.5 %.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd
from _common import command, console, need
from sklearn.model_selection import StratifiedGroupKFold

from mmtransfer.study import Study, StudyConfig, print_summary

FOLDS = 5


def fold_tables(data: Path, out: Path, shuffles: int) -> int:
    """One table per (shuffle, fold): every clip with its absolute path and train / test; their count."""
    clips = pd.read_csv(data / "clips.csv")
    clips["audio"] = [str((data / p).resolve()) for p in clips["path"]]
    (out / "folds").mkdir(parents=True, exist_ok=True)
    for shuffle in range(shuffles):
        folds = StratifiedGroupKFold(n_splits=FOLDS, shuffle=True, random_state=shuffle)
        for fold, (_, test) in enumerate(folds.split(clips, clips["label"], clips["source_recording"])):
            table = clips[["audio", "label", "source_recording"]].copy()
            table["split"] = "train"
            table.loc[table.index[test], "split"] = "test"
            # a class whose clips all come from one recording has none left to train on in the fold that tests it
            untrained = set(table.label) - set(table.label[table.split == "train"])
            if untrained:
                gone = table.label.isin(untrained)
                console.print(f"fold table {shuffle * FOLDS + fold}: {int(gone.sum())} test clip(s) of "
                              f"{', '.join(sorted(untrained))} left out (every clip of it is from one recording, "
                              "so no clip of it trains in this fold)", markup=False)  # fmt: skip
                table = table[~gone]
            table.to_csv(out / "folds" / f"fold{shuffle * FOLDS + fold}.csv", index=False)
    return shuffles * FOLDS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path, help="the esc50_fold4_40 folder (holding clips.csv and audio/)")
    parser.add_argument("--out", type=Path, default=Path("runs/esc50"))
    parser.add_argument("--shuffles", type=int, default=1, help="StratifiedGroupKFold shuffles (5 folds each)")
    parser.add_argument("--k", nargs="+", default=["4", "all"], help="clips per class, or all")
    parser.add_argument("--epochs", type=int, default=30, help="the scratch CNN's epochs")
    parser.add_argument(
        "--arms",
        nargs="+",
        default=["aisfx_probe", "scratch_cnn"],
        choices=["aisfx_probe", "scratch_cnn", "aisfx_finetuned"],
    )
    parser.add_argument("--finetune-epochs", type=int, default=8, help="aisfx_finetuned: epochs after the probe")
    args = parser.parse_args()
    need(parser, args.data, "clips.csv")
    console.print(f"command: {command()}")
    out = args.out.resolve()
    cells = fold_tables(args.data, out, args.shuffles)
    table = str(out / "folds" / "fold{seed}.csv")
    base = {
        "data": {"split_column": "split", "infer": False, "label": "label", "val_fraction": 0.2,
                 "columns": {"audio": {"modality": "audio", "seconds": 5.0, "cache": True}}},
        "model": {"preset": "scratch"},
        "train": {"epochs": args.epochs, "batch_size": 32, "lr": 3e-3, "patience": 8},
    }  # fmt: skip
    every = {
        "aisfx_probe": {"data.table": table, "model.encoders.audio": {"type": "aisfx"},
                        "train.strategy.name": "linear_probe"},
        "scratch_cnn": {"data.table": table, "model.encoders.audio": {"type": "cnn"}},
        "aisfx_finetuned": {"data.table": table, "model.encoders.audio": {"type": "aisfx"},
                            "train.strategy.name": "lp_ft", "train.epochs": args.finetune_epochs},
    }  # fmt: skip
    arms = {name: every[name] for name in args.arms}
    budgets = [b if b == "all" else int(b) for b in args.k]
    reference = "scratch_cnn" if "scratch_cnn" in arms else args.arms[0]
    spec = StudyConfig(base=base, budgets=budgets, seeds=list(range(cells)), arms=arms, reference=reference,
                       ablation=False)  # fmt: skip
    runner = Study(spec, base, out, out / "study", console=console, command=command(), source="esc50_sound")
    results = runner.run(workers=1)
    print_summary(results, spec, console, out / "study")
    (out / "summary.json").write_text(json.dumps({"command": command(), "summary": results["summary"]}, indent=1))


if __name__ == "__main__":
    main()
