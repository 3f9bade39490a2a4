"""Shared by the examples: where results go, how a run is reported."""

from __future__ import annotations

import json
import shlex
import sys
import time
from pathlib import Path

from mmtransfer.config import RunConfig
from mmtransfer.display import make_console
from mmtransfer.runs import fit_run

console = make_console()


def command() -> str:
    return "python " + " ".join(shlex.quote(a) for a in sys.argv)


def run(cfg: RunConfig, out: Path, title: str) -> dict:
    """Fit + evaluate one configuration into ``out``; print and return test metrics and wall time."""
    console.print(f"== {title} ==", markup=False)
    start = time.perf_counter()
    metrics = fit_run(cfg, out, console, overwrite=True)  # an example owns its output folders
    metrics["wall_seconds"] = round(time.perf_counter() - start, 1)
    test = metrics["test"]
    console.print(
        f"[bold]{title}[/]: test accuracy {test['accuracy']:.4f}, macro-F1 {test['macro_f1']:.4f} "
        f"(n={test['n']}), {metrics['wall_seconds']:.0f} s, best epoch {metrics['best_epoch']}/{metrics['epochs_run']}"
    )
    (out / "summary.json").write_text(json.dumps({"title": title, **metrics}, indent=1))
    return metrics


def av_table(data: Path, out: Path) -> Path:
    """``av_mnist_style/pairs.csv`` as a table of files: each MNIST t10k image written once as a PNG into
    ``out/mnist_png`` (a table needs files), each FSDD recording read where it is; split column as given."""
    import gzip

    import numpy as np
    import pandas as pd
    from PIL import Image

    pairs = pd.read_csv(data / "av_mnist_style" / "pairs.csv")
    images = np.frombuffer(gzip.open(data / "mnist" / "t10k-images-idx3-ubyte.gz").read()[16:], np.uint8)
    images = images.reshape(-1, 28, 28)
    png = out / "mnist_png"
    png.mkdir(parents=True, exist_ok=True)
    for i in pairs.mnist_t10k_index:
        if not (png / f"{i}.png").is_file():
            Image.fromarray(images[i]).save(png / f"{i}.png")
    recordings = (data / "fsdd" / "recordings").resolve()
    table = pd.DataFrame(
        {
            "image": [f"mnist_png/{i}.png" for i in pairs.mnist_t10k_index],
            "audio": [str(recordings / f) for f in pairs.fsdd_file],
            "label": pairs.label.astype(str),
            "split": pairs.split,
        }
    )
    table.to_csv(out / "pairs.csv", index=False)
    return out / "pairs.csv"


def fsdd_table(fsdd: Path, out: Path) -> Path:
    """FSDD as a table (audio path, digit, split): index 0-4 of each speaker and digit is the official test set."""
    import pandas as pd

    recordings = sorted((fsdd / "recordings").glob("*.wav"))
    if not recordings:
        raise SystemExit(f"no WAV files in {fsdd / 'recordings'}")
    rows = []
    for path in recordings:
        digit, _, index = path.stem.split("_")
        rows.append({"audio": str(path.resolve()), "label": digit, "split": "test" if int(index) < 5 else "train"})
    table = out / "fsdd.csv"
    pd.DataFrame(rows).to_csv(table, index=False)
    return table


def few_shot_on_fsdd(
    data: Path,
    out: Path,
    model_cfg,
    *,
    source: Path,
    rules: dict,
    select: list[str],
    title: str,
    ks: list[int],
    seeds: int,
    epochs: int,
    lr: float,
) -> list[dict]:
    """For each k and seed: the target model from scratch vs grafted from ``source``, same data and budget;
    prints each pair, the graft report and the mean ± std per k; writes summary.json into ``out``."""

    from mmtransfer.config import AudioColumn, DataConfig, TrainConfig
    from mmtransfer.data import load_dataset
    from mmtransfer.model import build_model
    from mmtransfer.train import evaluate, fit
    from mmtransfer.transfer.graft import graft

    audio = AudioColumn(sample_rate=8000, seconds=1.0, n_mels=40, n_fft=256, hop_length=80)
    table = fsdd_table(data / "fsdd", out)
    rows, report = [], None
    for k in ks:
        for seed in range(seeds):
            # Every label counts: of each class's k, round(0.15 k) (at least 1) select the best epoch, the rest
            # train; k = 1 leaves none to select with, so that run trains all its epochs.
            split = load_dataset(
                DataConfig(table=str(table), split_column="split", columns={"audio": audio}, k_per_class=k, seed=seed)
            )
            if seed == 0:
                console.print(f"k={k}: {split.labels.sentence()}", markup=False)
            budget = TrainConfig(epochs=epochs, batch_size=16, lr=lr, patience=15, seed=seed, progress=False)
            result = {"k": k, "seed": seed, "labels": split.labels.to_dict()}
            for arm in ("scratch", "transfer"):
                model = build_model(model_cfg, split.specs, split.classes, seed=seed)  # same init for both
                if arm == "transfer":
                    reason = "re-initialised: trained on the target"
                    report = graft(source, model, rules=rules, select=select, unselected_reason=reason)
                t = time.perf_counter()
                fit(model, split.train, split.val, budget)
                result[arm] = evaluate(model, split.test)["accuracy"]
                result[f"{arm}_seconds"] = round(time.perf_counter() - t, 1)
            rows.append(result)
            console.print(
                f"k={k:3d} seed {seed}: scratch {result['scratch']:.3f}  transfer {result['transfer']:.3f}  "
                f"gain {100 * (result['transfer'] - result['scratch']):+.1f} pp"
            )
    console.print(report.table(f"graft report: {title}"))
    report.save(out / "graft_report.json")
    console.print(f"== {title}: FSDD test accuracy (300 recordings), mean ± std over {seeds} seeds ==", markup=False)
    from mmtransfer.study import mean_interval, paired_interval  # the study engine's statistics

    for k in ks:
        s = mean_interval([r["scratch"] for r in rows if r["k"] == k])
        g = mean_interval([r["transfer"] for r in rows if r["k"] == k])
        d = paired_interval([r["transfer"] for r in rows if r["k"] == k], [r["scratch"] for r in rows if r["k"] == k])
        interval = f", 95 % CI [{100 * d['low']:+.1f}, {100 * d['high']:+.1f}]" if d["low"] is not None else ""
        console.print(
            f"k={k:3d} per class: scratch {100 * s['mean']:.1f} ± {100 * s['std']:.1f} %, transfer "
            f"{100 * g['mean']:.1f} ± {100 * g['std']:.1f} %, gain {100 * d['mean']:+.1f} ± {100 * d['std']:.1f} pp"
            + interval
        )
    (out / "summary.json").write_text(json.dumps({"command": command(), "rows": rows}, indent=1))
    return rows
