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


def need(parser, data: Path, relative: str) -> None:
    """Exit with one error line (code 2) unless the shared data folder ``data`` holds ``relative``."""
    if not (data / relative).exists():
        parser.exit(2, f"error: {data}: no {relative}; give the shared data folder\n")


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
    workers: int = 1,
) -> dict:
    """A study (``mmtransfer study``'s engine) on FSDD: for each k and seed, the target model from scratch vs
    grafted from ``source`` (only the tensors ``select`` names), same data, initialisation and budget. Prints
    the graft report and the study's tables; the study's files (report.html, results.json) go to ``out/study``.

    Every label counts: of each class's k, round(0.15 k) (at least 1) select the best epoch and the rest train;
    k = 1 leaves none to select with, so that run trains all its epochs."""
    from mmtransfer.config import AudioColumn
    from mmtransfer.study import Study, StudyConfig, budget_label, budget_name, print_summary
    from mmtransfer.transfer.graft import GraftReport, TensorRecord

    audio = AudioColumn(sample_rate=8000, seconds=1.0, n_mels=40, n_fft=256, hop_length=80)
    base = {
        "data": {"table": str(fsdd_table(data / "fsdd", out)), "split_column": "split",
                 "columns": {"audio": audio.model_dump(mode="json")}},
        "model": model_cfg.model_dump(mode="json"),
        "train": {"epochs": epochs, "batch_size": 16, "lr": lr, "patience": 15},
    }  # fmt: skip
    transfer = {"transfer.source": str(Path(source).resolve()), "transfer.rules": rules, "transfer.select": select}
    spec = StudyConfig(base=base, budgets=ks, seeds=seeds, arms={"scratch": {}, "transfer": transfer},
                       reference="scratch", ablation=False)  # fmt: skip
    study = Study(spec, base, out, out / "study", console=console, command=command(), source=title)
    results = study.run(workers=workers)
    first = next((c for c in results["cells"] if c["arm"] == "transfer"), None)
    if first is not None:
        graft = json.loads((Path(first["folder"]) / "transfer_report.json").read_text())["graft"]
        report = GraftReport([TensorRecord(**r) for r in graft["records"]], graft["unused_source"], graft["source"])
        console.print(report.table(f"graft report: {title} ({budget_label(first['budget'])}, seed {first['seed']})"))
    print_summary(results, spec, console, out / "study")
    console.print(f"== {title}: FSDD test accuracy (300 recordings), mean ± std over {seeds} seeds ==", markup=False)
    for k in ks:
        section = results["summary"][budget_name(k)]
        if "scratch" not in section or "transfer" not in section:
            continue
        s, g, d = (
            section["scratch"]["accuracy"],
            section["transfer"]["accuracy"],
            section["transfer"]["gain"]["accuracy"],
        )
        interval = f", 95 % CI [{100 * d['low']:+.1f}, {100 * d['high']:+.1f}]" if d["low"] is not None else ""
        console.print(
            f"k={k:3d} per class: scratch {100 * s['mean']:.1f} ± {100 * s['std']:.1f} %, transfer "
            f"{100 * g['mean']:.1f} ± {100 * g['std']:.1f} %, gain {100 * d['mean']:+.1f} ± {100 * d['std']:.1f} pp"
            + interval
        )
    (out / "summary.json").write_text(json.dumps({"command": command(), "summary": results["summary"]}, indent=1))
    return results
