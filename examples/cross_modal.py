"""Cross-modal distillation on paired data: an image CNN that reads MNIST digits teaches an audio CNN to hear
spoken digits (FSDD), from image + recording pairs of the same digit, without a single audio label.

    python examples/cross_modal.py ../shared/data [--out runs/cross_modal] [--seeds 3] [--teach-epochs 8]

The pairs: ``av_mnist_style/pairs.csv`` (each MNIST t10k image paired with an FSDD recording of its digit; 7,000
train pairs on FSDD's train recordings, 3,000 test pairs on its 300 test recordings, so each test recording is
scored about 10 times). The teachers: an image CNN trained on the MNIST side of the train pairs with every label
(the strong teacher) and with 10 labels per class (the weak one); each is one run, made once. The student: an
audio CNN over log-mel spectrograms that reads only the ``audio`` column; ``transfer.distill.teacher_column:
image`` has the teacher read the ``image`` column of the same rows and the student learn its temperature-softened
class probabilities (Hinton et al. 2015; Gupta et al. 2016, SoundNet 2016 for the cross-modal setting).

Three studies of the study engine (paired intervals over the seeds; each seed draws the student's initialisation
and, where there are labels, which ones):

1. ``label_free`` (budget 0: no audio label at all, so nothing selects an epoch: the lesson runs its epochs):
   the strong teacher (``taught``), the weak teacher (``weak_teacher``), and the strong teacher on pairs where
   half the train rows' recordings are shuffled among themselves (``mismatched``: 45 % of the pairs then hold
   another digit's recording; the test pairs are untouched).
2. ``five_shot`` (5 audio labels per class, 1 of them selecting the epoch): the same audio CNN from scratch
   against the taught student fine-tuned on the same 5.
3. ``ceiling``: the same audio CNN trained on every audio label of the train pairs (early stopping on 15 %).

Written into --out: the tables, the teachers' runs, each study's report.md / report.html / results.json, and
``summary.json`` with the figures quoted in the README.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
from _common import av_table, command, console, need

from mmtransfer.artifact import verify
from mmtransfer.config import CNNConfig, DataConfig, ImageColumn, ModelConfig, RunConfig, TrainConfig
from mmtransfer.runs import fit_run
from mmtransfer.study import Study, StudyConfig, print_summary

AUDIO = {"modality": "audio", "sample_rate": 8000, "seconds": 1.0, "n_mels": 40, "n_fft": 256, "hop_length": 80,
         "cache": True}  # fmt: skip
AUDIO_CNN = {"type": "cnn", "channels": [16, 32, 64]}


def teacher(table: Path, out: Path, k: int | None, epochs: int) -> tuple[Path, dict]:
    """The image CNN on the MNIST side of the train pairs (20 % of them held out to test it): every label, or
    ``k`` per class. Made once; a finished run is reused."""
    try:
        verify(out)
        return out, json.loads((out / "metrics.json").read_text())
    except (OSError, ValueError):
        pass
    cfg = RunConfig(
        data=DataConfig(table=str(table), k_per_class=k,
                        columns={"image": ImageColumn(size=(28, 28), channels=1, augment=False)}),
        model=ModelConfig(encoders={"image": CNNConfig(channels=[16, 32, 64])}, embed_dim=64),
        train=TrainConfig(epochs=epochs, batch_size=64, lr=3e-3, patience=5, progress=False),
    )  # fmt: skip
    metrics = fit_run(cfg, out, console, overwrite=True)
    return out, metrics


def mismatched(table: Path, share: float = 0.5, seed: int = 0) -> tuple[Path, float]:
    """The pairs with ``share`` of the train rows' recordings shuffled among those rows; the share of train pairs
    whose recording then says another digit."""
    df = pd.read_csv(table)
    rng = np.random.default_rng(seed)
    rows = np.flatnonzero((df["split"] == "train").to_numpy())
    chosen = rng.choice(rows, size=int(share * len(rows)), replace=False)
    shuffled = rng.permutation(chosen)
    spoken = df["audio"].str.extract(r"/(\d)_[^/]*$")[0]
    df.loc[chosen, "audio"] = df.loc[shuffled, "audio"].to_numpy()
    wrong = float((df["audio"].str.extract(r"/(\d)_[^/]*$")[0][rows] != spoken[rows]).mean())
    out = table.with_name("pairs_mismatched.csv")
    df.to_csv(out, index=False)
    return out, wrong


def study(name: str, base: dict, budgets: list, arms: dict, reference: str, out: Path, seeds: int) -> dict:
    spec = StudyConfig(base=base, budgets=budgets, seeds=seeds, arms=arms, reference=reference, ablation=False)
    runner = Study(spec, base, out, out / name, console=console, command=command(), source=f"cross_modal {name}")
    results = runner.run(workers=1)
    print_summary(results, spec, console, out / name)
    return results["summary"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path, help="the shared data folder (holding av_mnist_style/, mnist/, fsdd/)")
    parser.add_argument("--out", type=Path, default=Path("runs/cross_modal"))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--teach-epochs", type=int, default=8, help="epochs of the lesson over the 7,000 pairs")
    parser.add_argument("--epochs", type=int, default=30, help="the audio CNN's epochs on labels")
    parser.add_argument("--teacher-epochs", type=int, default=10)
    args = parser.parse_args()
    need(parser, args.data, "av_mnist_style/pairs.csv")
    console.print(f"command: {command()}")
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    pairs = av_table(args.data, out)
    df = pd.read_csv(pairs)
    images = out / "mnist_train_pairs.csv"
    df[df["split"] == "train"][["image", "label"]].to_csv(images, index=False)
    strong, strong_m = teacher(images, out / "teacher", None, args.teacher_epochs)
    weak, weak_m = teacher(images, out / "teacher_weak", 10, args.teacher_epochs)
    console.print(f"teachers (MNIST side of the train pairs, 20 % held out): every label "
                  f"{100 * strong_m['test']['accuracy']:.1f} %, 10 per class {100 * weak_m['test']['accuracy']:.1f} %",
                  markup=False)  # fmt: skip
    shuffled, wrong = mismatched(pairs)
    console.print(f"mismatched pairs: {100 * wrong:.1f} % of the train pairs hold another digit's recording",
                  markup=False)  # fmt: skip

    base = {
        "data": {"table": str(pairs), "split_column": "split", "infer": False, "columns": {"audio": AUDIO}},
        "model": {"embed_dim": 64, "encoders": {"audio": AUDIO_CNN}},
        "train": {"epochs": args.epochs, "batch_size": 32, "lr": 3e-3, "patience": 8},
    }
    lesson = {"teacher_column": "image", "epochs": args.teach_epochs, "batch_size": 64, "lr": 3e-3}
    taught = {"transfer.source": str(strong), "transfer.distill": lesson}
    summary = {
        "label_free": study(
            "label_free", base, [0],
            {"taught": taught, "weak_teacher": {**taught, "transfer.source": str(weak)},
             "mismatched": {**taught, "data.table": str(shuffled)}},
            "taught", out, args.seeds,
        ),
        "five_shot": study("five_shot", base, [5], {"scratch": {}, "taught": taught}, "scratch", out, args.seeds),
        "ceiling": study("ceiling", base, ["all"], {"scratch": {}}, "scratch", out, args.seeds),
    }  # fmt: skip
    ceiling = summary["ceiling"]["all"]["scratch"]["accuracy"]["mean"]
    lines = []
    for arm, s in summary["label_free"]["k0"].items():
        a = s["accuracy"]
        lines.append(f"label-free {arm}: {100 * a['mean']:.1f} ± {100 * a['std']:.1f} % "
                     f"({100 * a['mean'] / ceiling:.0f} % of the ceiling)")  # fmt: skip
    five = summary["five_shot"]["k5"]
    gain = five["taught"]["gain"]["accuracy"]
    interval = f" [{100 * gain['low']:+.1f}, {100 * gain['high']:+.1f}]" if gain["low"] is not None else ""
    scratch, student = (100 * five[arm]["accuracy"]["mean"] for arm in ("scratch", "taught"))
    lines.append(f"5 audio labels per class: scratch {scratch:.1f} %, taught {student:.1f} %, gain "
                 f"{100 * gain['mean']:+.1f} pp{interval}")  # fmt: skip
    lines.append(f"ceiling (every audio label): {100 * ceiling:.1f} ± "
                 f"{100 * summary['ceiling']['all']['scratch']['accuracy']['std']:.1f} %")  # fmt: skip
    for line in lines:
        console.print(line, markup=False)
    record = {"command": command(), "teachers": {"strong": strong_m["test"], "weak": weak_m["test"]},
              "mismatched_share": wrong, "summary": summary, "lines": lines}  # fmt: skip
    (out / "summary.json").write_text(json.dumps(record, indent=1, default=str))


if __name__ == "__main__":
    main()
