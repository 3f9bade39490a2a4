"""Regression on real data: a number per row, in its own units.

    python examples/regression.py diabetes [--out runs/regression] [--seeds 3]
    python examples/regression.py fsdd-duration ../shared/data [--out runs/regression]

diabetes: scikit-learn's built-in diabetes table (442 patients, 10 standardised measurements, the target a
measure of disease progression one year later; offline). A study of the default number encoder (an MLP) with
the MSE and the Huber loss, 3 seeds (each its own stratified 60/20/20 split; the task is inferred from the
label column), scored by R², beside scikit-learn's ridge regression (alpha chosen on the same validation rows)
fitted on each seed's same train rows and scored on its same test rows.

fsdd-duration: each FSDD recording's duration in seconds (its frames / sample rate, read from the WAV header)
predicted from its log-mel spectrogram (padded to 2.5 s, so the silence after the word shows where it ends),
official split (index 0-4 of each speaker and digit = 300 test recordings); the baseline predicts the train
mean (R² 0).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
from _common import command, console

from mmtransfer import study as engine
from mmtransfer.display import Grid


def diabetes(out: Path, seeds: int) -> None:
    from sklearn.datasets import load_diabetes
    from sklearn.linear_model import Ridge

    frame = load_diabetes(as_frame=True).frame.rename(columns={"target": "progression"})
    table = out / "diabetes.csv"
    frame.to_csv(table, index=False)
    base = {
        "data": {"table": str(table), "label": "progression", "test_fraction": 0.2, "val_fraction": 0.2},
        "train": {"epochs": 200, "batch_size": 32, "lr": 3e-3, "patience": 30},
    }
    spec = engine.StudyConfig(base=base, budgets=["all"], seeds=seeds, metric="r2", reference="mse",
                              arms={"mse": {}, "huber": {"train.regression_loss": "huber"}})  # fmt: skip
    results = engine.Study(spec, base, out, out / "study", console=console, command=command(),
                           source="diabetes").run()  # fmt: skip
    engine.print_summary(results, spec, console, out / "study")

    x, y = frame.drop(columns="progression").to_numpy(), frame["progression"].to_numpy()
    rows = []
    for cell in results["cells"]:
        if cell["arm"] != "mse":
            continue
        parts = json.loads((Path(cell["folder"]) / "splits.json").read_text())["rows"]
        tr, va, te = (np.asarray(parts[k]) for k in ("train", "val", "test"))
        alpha = min((0.01, 0.1, 1.0, 10.0), key=lambda a: np.mean((Ridge(alpha=a).fit(x[tr], y[tr]).predict(x[va])
                                                                   - y[va]) ** 2))  # fmt: skip
        pred = Ridge(alpha=alpha).fit(np.concatenate([x[tr], x[va]]), np.concatenate([y[tr], y[va]])).predict(x[te])
        from mmtransfer.tasks import regression_metrics

        m = regression_metrics(pred, y[te])
        rows.append({"seed": cell["seed"], "ridge": m, "mmtransfer": cell["test"]})
    table_rows = []
    for name in ("mmtransfer", "ridge"):
        for key in ("rmse", "mae", "r2"):
            values = [r[name][key] for r in rows]
            table_rows.append([name, key, f"{np.mean(values):.3f} ± {np.std(values, ddof=1):.3f}"])
    console.print(Grid(f"diabetes test split (89 patients), mean ± std over {len(rows)} seeds: mmtransfer (MSE) vs "
                       "scikit-learn ridge on the same rows", ["model", "metric", "value"], table_rows))  # fmt: skip
    (out / "diabetes_vs_ridge.json").write_text(json.dumps(rows, indent=1))


def fsdd_duration(data: Path, out: Path) -> None:
    import soundfile as sf

    from mmtransfer.config import validate
    from mmtransfer.runs import fit_run

    recordings = sorted((data / "fsdd" / "recordings").glob("*.wav"))
    if not recordings:
        raise SystemExit(f"error: no WAV files in {data / 'fsdd' / 'recordings'}")
    rows = []
    for path in recordings:
        info = sf.info(str(path))
        index = int(path.stem.split("_")[2])
        rows.append({"audio": str(path.resolve()), "seconds": round(info.frames / info.samplerate, 5),
                     "split": "test" if index < 5 else "train"})  # fmt: skip
    table = out / "fsdd_duration.csv"
    pd.DataFrame(rows).to_csv(table, index=False)
    seconds = pd.DataFrame(rows)["seconds"]
    console.print(f"{len(rows)} recordings, duration {seconds.min():.3f}-{seconds.max():.3f} s, mean "
                  f"{seconds.mean():.3f} s, std {seconds.std():.3f} s", markup=False)  # fmt: skip
    audio = {"modality": "audio", "sample_rate": 8000, "seconds": 2.5, "n_mels": 40, "n_fft": 256, "hop_length": 80}
    train_cfg = {"epochs": 40, "batch_size": 32, "lr": 3e-3, "patience": 8, "progress": False}
    data_cfg = {"table": str(table), "label": "seconds", "split_column": "split", "columns": {"audio": audio}}
    cfg = validate({"data": data_cfg, "train": train_cfg})
    start = time.perf_counter()
    metrics = fit_run(cfg, out / "fsdd_duration", console, overwrite=True)
    test = metrics["test"]
    train = pd.DataFrame(rows).query("split == 'train'")["seconds"]
    test_y = pd.DataFrame(rows).query("split == 'test'")["seconds"]
    mean_rmse = float(np.sqrt(np.mean((test_y - train.mean()) ** 2)))
    console.print(
        f"FSDD duration from the spectrogram: test RMSE {test['rmse']:.4f} s, MAE {test['mae']:.4f} s, R² "
        f"{test['r2']:.3f} (n={test['n']}); predicting the train mean: RMSE {mean_rmse:.4f} s; "
        f"{time.perf_counter() - start:.0f} s; plot: {out / 'fsdd_duration' / 'predicted_vs_true.png'}",
        markup=False,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("which", choices=["diabetes", "fsdd-duration"])
    parser.add_argument("data", type=Path, nargs="?", help="the shared data folder (fsdd-duration)")
    parser.add_argument("--out", type=Path, default=Path("runs/regression"))
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    console.print(f"command: {command()}")
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    if args.which == "diabetes":
        diabetes(out, args.seeds)
    else:
        if args.data is None or not (args.data / "fsdd" / "recordings").is_dir():
            parser.exit(2, "error: fsdd-duration needs the shared data folder (holding fsdd/recordings)\n")
        fsdd_duration(args.data, out)


if __name__ == "__main__":
    main()
