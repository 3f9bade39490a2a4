"""``mmtransfer demo``: the seed's transfer scenario on ``digits``, CNN -> GRU, against training from scratch.

Per seed:
1. split the 8x8 digits into source / target pool / validation / test (stratified, seeded, disjoint);
2. train a CNN on the labelled source split (early stopping on the validation split: source labels);
3. build a GRU that reads each image row by row; distil the CNN's embedding into it on unlabelled train
   images and graft the CNN's head by label name (the graft report says what moved);
4. draw the target's label budget, k labelled images per class from the target pool; of each class's k,
   round(0.15 k) (at least 1) select the best epoch (early stopping) and the rest train, so the GRU sees no
   other target label; fine-tune the transferred GRU on them; evaluate on test;
5. train the same GRU from scratch on the same labels with the same budget; evaluate on test.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.text import Text

from mmtransfer.config import CNNConfig, DataConfig, DistillConfig, ModelConfig, RNNConfig, TrainConfig
from mmtransfer.data import k_per_class, load_dataset, split_budget, stratified_halves
from mmtransfer.display import Grid, make_console
from mmtransfer.model import build_model
from mmtransfer.train import evaluate, fit
from mmtransfer.transfer.distill import transfer_across

CNN = ModelConfig(encoders={"image": CNNConfig(channels=[32, 64], stride=1, pool=True)}, embed_dim=64)
GRU = ModelConfig(encoders={"image": RNNConfig(cell="gru", hidden_size=64)}, embed_dim=64)


def run_demo(
    out: str | Path = "mmtransfer-demo",
    *,
    seeds: int = 3,
    k: int = 10,
    source_epochs: int = 30,
    target_epochs: int = 60,
    distill_epochs: int = 40,
    progress: bool = True,
    console: Console | None = None,
    checkpoints: str | Path | None = None,
) -> dict:
    """Run the demo; write ``report.md``, ``metrics.json`` and ``demo.png`` into ``out``; return the metrics.
    ``checkpoints``: every fit writes its resumable checkpoint there each epoch (to measure what that costs)."""
    console = console or make_console()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    rows = []
    for seed in range(seeds):
        data = load_dataset(DataConfig(dataset="digits", seed=seed))
        source_split, target_pool = stratified_halves(data.train, 0.5, seed=seed)
        labelled = k_per_class(target_pool, k, seed=seed, classes=data.classes)
        parts = split_budget(labelled, VAL_FRACTION, seed=seed)
        target_train, target_val = parts if parts is not None else (labelled, None)
        shapes, classes = data.input_shapes, data.classes
        n_val = 0 if target_val is None else len(target_val)
        if seed == 0:
            console.print(
                f"digits, seed {seed}: source {len(source_split)} labelled (+ {len(data.val)} for its early "
                f"stopping); target budget {k} labelled images per class of {len(target_pool)}: "
                f"{len(target_train)} train the GRU, {n_val} select its best epoch; test {len(data.test)}",
                markup=False,
            )

        # 1. the source CNN
        cnn = build_model(CNN, shapes, classes, seed=seed)
        t = time.perf_counter()
        fit(
            cnn,
            source_split,
            data.val,
            _train(source_epochs, seed, progress),
            desc=f"seed {seed}: source CNN",
            state_dir=_state(checkpoints, seed, "source"),
        )
        cnn_seconds = time.perf_counter() - t
        cnn_test = evaluate(cnn, data.test)

        # 2-3. transfer: distil into a GRU on unlabelled train images, graft the head, fine-tune on the budget
        budget = _train(target_epochs, seed, progress)
        t = time.perf_counter()
        transferred = build_model(GRU, shapes, classes, seed=seed)
        report, stats = transfer_across(
            cnn, transferred, data.train, DistillConfig(epochs=distill_epochs), seed=seed, progress=progress
        )
        after_graft = evaluate(transferred, data.test)
        if seed == 0:
            console.print(report.table("graft report: source CNN -> GRU (seed 0)"))
            console.print(
                f"feature distillation on {stats.examples} unlabelled images: MSE {stats.mse_before:.4f} -> "
                f"{stats.mse_after:.4f}, cosine {stats.cosine_after:.3f}, R^2 {stats.r2_after:.3f}; "
                f"GRU test accuracy with the grafted head, before any labelled target data: "
                f"{after_graft['accuracy']:.3f}",
                markup=False,
            )
        report.save(out / f"graft_report_seed{seed}.json")
        fit(
            transferred,
            target_train,
            target_val,
            budget,
            desc=f"seed {seed}: fine-tune GRU",
            state_dir=_state(checkpoints, seed, "transfer"),
        )
        transfer_seconds = time.perf_counter() - t
        transfer_test = evaluate(transferred, data.test)

        # 4. the same GRU from scratch, same labels, same budget
        scratch = build_model(GRU, shapes, classes, seed=seed)  # the same initial weights
        t = time.perf_counter()
        fit(
            scratch,
            target_train,
            target_val,
            budget,
            desc=f"seed {seed}: scratch GRU",
            state_dir=_state(checkpoints, seed, "scratch"),
        )
        scratch_seconds = time.perf_counter() - t
        scratch_test = evaluate(scratch, data.test)

        rows.append(
            {
                "seed": seed,
                "source_cnn_accuracy": cnn_test["accuracy"],
                "source_cnn_seconds": cnn_seconds,
                "distill": stats.to_dict(),
                "graft_counts": report.counts(),
                "transfer_before_finetune_accuracy": after_graft["accuracy"],
                "transfer_accuracy": transfer_test["accuracy"],
                "transfer_macro_f1": transfer_test["macro_f1"],
                "transfer_seconds": transfer_seconds,
                "scratch_accuracy": scratch_test["accuracy"],
                "scratch_macro_f1": scratch_test["macro_f1"],
                "scratch_seconds": scratch_seconds,
                "gain": transfer_test["accuracy"] - scratch_test["accuracy"],
            }
        )
        console.print(
            f"seed {seed}: source CNN {cnn_test['accuracy']:.3f} | GRU scratch {scratch_test['accuracy']:.3f} "
            f"| GRU transfer {transfer_test['accuracy']:.3f}"
        )

    summary = _summarise(rows)
    result = {
        "setup": {
            "dataset": "digits (scikit-learn, 1,797 8x8 images)",
            "seeds": seeds,
            "k_per_class": k,
            "target_labels": {"train": len(target_train), "selection": n_val, "total": len(labelled)},
            "source_epochs": source_epochs,
            "target_epochs": target_epochs,
            "distill_epochs": distill_epochs,
            "source_model": CNN.model_dump(mode="json"),
            "target_model": GRU.model_dump(mode="json"),
        },
        "per_seed": rows,
        "summary": summary,
        "total_seconds": time.perf_counter() - t0,
    }
    (out / "metrics.json").write_text(json.dumps(result, indent=1))
    _plot(rows, out / "demo.png")
    (out / "report.md").write_text(_markdown(result))
    console.print(_table(summary, seeds, k, result["setup"]["target_labels"]))
    console.print(
        f"total {result['total_seconds']:.1f} s. Files: {out / 'report.md'}, {out / 'metrics.json'}, "
        f"{out / 'demo.png'}, {out}/graft_report_seed*.json",
        markup=False,
    )
    return result


VAL_FRACTION = 0.15  # of each class's k target labels, this share (at least 1) selects the best epoch


def _state(checkpoints, seed: int, arm: str) -> Path | None:
    return None if checkpoints is None else Path(checkpoints) / f"seed{seed}-{arm}"


def _train(epochs: int, seed: int, progress: bool) -> TrainConfig:
    return TrainConfig(epochs=epochs, batch_size=32, lr=3e-3, patience=15, seed=seed, progress=progress)


def _mean_std(values: list[float]) -> dict:
    """Mean, sample std and the 95 % Student t interval of the mean: the study engine's statistics."""
    from mmtransfer.study import mean_interval

    return mean_interval(values)


def _summarise(rows: list[dict]) -> dict:
    keys = [
        "source_cnn_accuracy",
        "scratch_accuracy",
        "transfer_before_finetune_accuracy",
        "transfer_accuracy",
        "gain",
        "source_cnn_seconds",
        "scratch_seconds",
        "transfer_seconds",
    ]
    return {key: _mean_std([r[key] for r in rows]) for key in keys}


def _fmt(s: dict, unit: str = "%") -> str:
    """Accuracies in percent, gains in percentage points (pp), times in seconds."""
    scale = 1 if unit == "s" else 100
    return f"{scale * s['mean']:.1f} ± {scale * s['std']:.1f} {unit}"


def _gain(s: dict) -> str:
    """The gain with its 95 % paired t interval over seeds (the same seed: the same labels and splits)."""
    interval = f", 95 % CI [{100 * s['low']:+.1f}, {100 * s['high']:+.1f}]" if s.get("low") is not None else ""
    return _fmt(s, "pp") + interval


def _table(summary: dict, seeds: int, k: int, labels: dict) -> Grid:
    rows = [
        ["source CNN (reference)", _fmt(summary["source_cnn_accuracy"]), _fmt(summary["source_cnn_seconds"], "s")],
        ["GRU from scratch", _fmt(summary["scratch_accuracy"]), _fmt(summary["scratch_seconds"], "s")],
        [
            "GRU transfer (distil + graft + fine-tune)",
            _fmt(summary["transfer_accuracy"]),
            _fmt(summary["transfer_seconds"], "s"),
        ],
        [Text("gain (transfer - scratch)", style="bold"), Text(_gain(summary["gain"]), style="bold"), ""],
    ]
    title = (
        f"digits, GRU with {k} labelled images per class ({labels['train']} train + {labels['selection']} select "
        f"the epoch = {labels['total']} target labels in all), {seeds} seeds (test accuracy, mean ± std)"
    )
    return Grid(title, ["arm", "test accuracy", "time"], rows)


def _markdown(result: dict) -> str:
    s, setup = result["summary"], result["setup"]
    lines = [
        "# mmtransfer demo: CNN -> GRU transfer on digits",
        "",
        f"A CNN trained on a labelled source split is transferred into a GRU that reads each 8x8 image row by row "
        f"(feature distillation on unlabelled train images, then the CNN's head grafted by label name), "
        f"fine-tuned on a budget of {setup['k_per_class']} labelled images per class, and compared with the same "
        f"GRU trained from scratch on the same images with the same budget ({setup['target_epochs']} epochs, "
        f"early stopping on validation loss). Every target label counts: of the "
        f"{setup['target_labels']['total']} labelled target images, {setup['target_labels']['train']} train the "
        f"GRU and {setup['target_labels']['selection']} select its best epoch; no other target label is used. "
        f"Test accuracy over {setup['seeds']} seeds, mean ± sample std; the gain's interval is the 95 % Student "
        "t interval of the per-seed differences (the same seed: the same labels and splits, as `mmtransfer "
        "study` computes it); every split is stratified and disjoint from the test set.",
        "",
        "| arm | test accuracy | time |",
        "|---|---|---|",
        f"| source CNN (reference) | {_fmt(s['source_cnn_accuracy'])} | {_fmt(s['source_cnn_seconds'], 's')} |",
        f"| GRU from scratch | {_fmt(s['scratch_accuracy'])} | {_fmt(s['scratch_seconds'], 's')} |",
        f"| GRU transfer, before fine-tuning | {_fmt(s['transfer_before_finetune_accuracy'])} | |",
        f"| GRU transfer (distil + graft + fine-tune) | {_fmt(s['transfer_accuracy'])} | "
        f"{_fmt(s['transfer_seconds'], 's')} |",
        f"| **gain (transfer - scratch)** | **{_gain(s['gain'])}** | |",
        "",
        "| seed | source CNN | scratch | transfer | gain |",
        "|---|---|---|---|---|",
    ]
    for r in result["per_seed"]:
        lines.append(
            f"| {r['seed']} | {r['source_cnn_accuracy']:.3f} | {r['scratch_accuracy']:.3f} | "
            f"{r['transfer_accuracy']:.3f} | {r['gain']:+.3f} |"
        )
    lines += ["", "![transfer vs scratch](demo.png)", "", f"Total wall time {result['total_seconds']:.1f} s.", ""]
    return "\n".join(lines)


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = [
        ("scratch_accuracy", "GRU scratch"),
        ("transfer_accuracy", "GRU transfer"),
        ("source_cnn_accuracy", "source CNN"),
    ]
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for i, (key, _) in enumerate(arms):
        values = np.array([r[key] for r in rows])
        ax.bar(i, values.mean(), yerr=values.std(ddof=1) if len(values) > 1 else 0, capsize=6, alpha=0.6)
        ax.scatter(np.full(len(values), i), values, color="black", s=14, zorder=3)
    for r in rows:  # paired lines: the same seed's scratch and transfer runs
        ax.plot([0, 1], [r["scratch_accuracy"], r["transfer_accuracy"]], color="grey", lw=0.8, zorder=2)
    ax.set_xticks(range(len(arms)), [label for _, label in arms])
    ax.set_ylabel("test accuracy")
    low = min(min(r[k] for k, _ in arms) for r in rows)
    ax.set_ylim(max(0.0, low - 0.05), 1.0)
    ax.set_title("digits: CNN -> GRU transfer vs scratch (bars: mean ± std; dots: seeds)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
