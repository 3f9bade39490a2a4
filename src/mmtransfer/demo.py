"""``mmtransfer demo``: the seed's transfer scenario on ``digits``, CNN -> GRU, against training from scratch.

One study (:mod:`mmtransfer.study`), the engine ``mmtransfer study`` runs. Per seed:
1. the source: a CNN trained on one stratified half of the 8x8 digits that are not test images
   (``data.pool: first_half``; its own validation part selects its epoch: source labels);
2. the arms draw their label budget, k labelled images per class, from the other half (``second_half``), so
   no labelled row is shared; of each class's k, round(0.15 k) (at least 1) select the best epoch (early
   stopping) and the rest train, so the GRU sees no other target label;
3. ``transfer``: a GRU that reads each image row by row; the CNN's embedding is distilled into it on unlabelled
   images and its head grafted by label name (the graft report says what moved); then fine-tuned on the budget;
4. ``scratch``: the same GRU, the same initial weights, labels and budget, from scratch.
Both are scored on the same test split; the gain is the mean of the per-seed differences with its 95 % paired
Student t interval.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.text import Text

from mmtransfer.config import CNNConfig, ModelConfig, RNNConfig
from mmtransfer.display import Grid, make_console
from mmtransfer.outputs import write_json, write_text
from mmtransfer.runfolder import RunFolder
from mmtransfer.study import Study, StudyConfig, mean_interval
from mmtransfer.transfer.report import GraftReport, TensorRecord

# preset scratch: the demo's networks are the small ones, trained here (digits are 8x8: no ImageNet backbone)
CNN = ModelConfig(encoders={"image": CNNConfig(channels=[32, 64], stride=1, pool=True)}, embed_dim=64, preset="scratch")
GRU = ModelConfig(encoders={"image": RNNConfig(cell="gru", hidden_size=64)}, embed_dim=64, preset="scratch")


def demo_study(seeds: int = 3, k: int = 10, source_epochs: int = 30, target_epochs: int = 60,
               distill_epochs: int = 40):  # fmt: skip
    """The demo as a study: source ``cnn`` per seed; arms ``scratch`` (the reference) and ``transfer``."""
    train = {"epochs": target_epochs, "batch_size": 32, "lr": 3e-3, "patience": 15}
    base = {"data": {"dataset": "digits"}, "model": GRU.model_dump(mode="json"), "train": train}
    target = {"data.pool": "second_half"}
    return StudyConfig(
        base=base,
        budgets=[k],
        seeds=seeds,
        sources={
            "cnn": {"model": CNN.model_dump(mode="json"), "data.pool": "first_half", "train.epochs": source_epochs}
        },  # fmt: skip
        arms={
            "scratch": target,
            "transfer": target
            | {
                "transfer.source": "{source.cnn}",
                "transfer.distill": {"epochs": distill_epochs},
                "transfer.score_before_training": True,
            },  # fmt: skip
        },
        reference="scratch",
        ablation=False,
    )


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
    workers: int | None = None,
) -> dict:
    """Run the demo; write ``report.md``, ``metrics.json``, ``demo.png`` and a graft report per seed into
    ``out``, and the study's own files (cells, ``study/report.html``) under ``out/study``; return the metrics.
    A demo killed part way goes on from its finished runs when started again with the same ``out``.
    ``workers``: runs at once, each in its own process (``mmtransfer demo`` uses 2 where there are 2 cores or more;
    from Python, more than 1 needs the ``if __name__ == "__main__":`` guard that spawned processes need)."""
    console = console or make_console()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    spec = demo_study(seeds, k, source_epochs, target_epochs, distill_epochs)
    study = Study(spec, spec.base, out, out / "study", console=console if progress else Console(quiet=True),
                  command=f"mmtransfer demo --seeds {seeds} --k {k}", source="demo")  # fmt: skip
    results = study.run(workers=workers or 1)
    if results["failed"]:
        first = results["failed"][0]
        raise RuntimeError(f"demo: {len(results['failed'])} run(s) failed, first {first.get('error')}; logs in "
                           f"{out / 'study' / 'cells'}")  # fmt: skip
    cells = {(r["arm"], r["seed"]): r for r in results["cells"]}
    sources = {r["seed"]: r for r in results["sources"]}
    rows = [_seed_row(seed, cells, sources, out, console, first=seed == spec.seed_list[0]) for seed in spec.seed_list]
    keys = [k for k in rows[0] if k.endswith(("accuracy", "seconds", "gain")) and not k.endswith("macro_f1")]
    # an accuracy's interval within [0, 1], a difference of two within [-1, 1]; times at least 0
    bounds = {k: (-1.0, 1.0) if k.endswith("gain") else (0.0, 1.0) if k.endswith("accuracy") else (0.0, None)
              for k in keys}  # fmt: skip
    summary = {key: mean_interval([r[key] for r in rows], bounds=bounds[key]) for key in keys}
    labels = cells[("scratch", spec.seed_list[0])]["labels"]
    result = {
        "setup": {
            "dataset": "digits (scikit-learn, 1,797 8x8 images)",
            "seeds": seeds,
            "k_per_class": k,
            "target_labels": {"train": labels["train"], "selection": labels["selection"], "total": labels["total"]},
            "source_labels": sources[spec.seed_list[0]]["labels"],
            "source_epochs": source_epochs,
            "target_epochs": target_epochs,
            "distill_epochs": distill_epochs,
            "source_model": CNN.model_dump(mode="json"),
            "target_model": GRU.model_dump(mode="json"),
            "study": spec.model_dump(mode="json"),
        },
        "per_seed": rows,
        "summary": summary,
        "total_seconds": time.perf_counter() - t0,
    }
    write_json(out / "metrics.json", result)
    _plot(rows, out / "demo.png")
    write_text(out / "report.md", _markdown(result))
    console.print(_table(summary, seeds, k, result["setup"]["target_labels"]))
    console.print(
        f"total {result['total_seconds']:.1f} s. Files: {out / 'report.md'}, {out / 'metrics.json'}, "
        f"{out / 'demo.png'}, {out}/graft_report_seed*.json; the study's own report: {out / 'study' / 'report.html'}",
        markup=False,
    )
    return result


def _seed_row(seed: int, cells: dict, sources: dict, out: Path, console, first: bool) -> dict:
    """One seed's line of the demo: the source CNN, the GRU from scratch and the GRU transferred into; its graft
    report copied beside the demo's report."""
    scratch, transfer, source = cells[("scratch", seed)], cells[("transfer", seed)], sources[seed]
    folder = RunFolder(transfer["folder"])
    report, metrics = folder.transfer_record(), folder.metrics()
    folder.copy_transfer_report(out / f"graft_report_seed{seed}")
    if first:
        _print_setup(console, source, scratch, report, metrics, seed)
    row = {
        "seed": seed,
        "source_cnn_accuracy": source["test"]["accuracy"],
        "source_cnn_seconds": source["seconds"],
        "distill": report["distill"],
        "graft_counts": report["graft"]["counts"],
        "transfer_before_finetune_accuracy": metrics["before_training"]["accuracy"],
        "transfer_accuracy": transfer["test"]["accuracy"],
        "transfer_macro_f1": transfer["test"]["macro_f1"],
        "transfer_seconds": transfer["seconds"],
        "scratch_accuracy": scratch["test"]["accuracy"],
        "scratch_macro_f1": scratch["test"]["macro_f1"],
        "scratch_seconds": scratch["seconds"],
        "gain": transfer["test"]["accuracy"] - scratch["test"]["accuracy"],
        "finetune_gain": transfer["test"]["accuracy"] - metrics["before_training"]["accuracy"],
    }
    console.print(
        f"seed {seed}: source CNN {row['source_cnn_accuracy']:.3f} | GRU scratch "
        f"{row['scratch_accuracy']:.3f} | GRU transfer {row['transfer_accuracy']:.3f}"
    )
    return row


def _print_setup(console, source: dict, scratch: dict, report: dict, metrics: dict, seed: int) -> None:
    s, t = source["labels"], scratch["labels"]
    console.print(
        f"digits, seed {seed}: the source CNN trains on {s['train']} labelled images of one half of the "
        f"non-test images ({s['selection']} more select its epoch); the GRU's budget is {t['total']} labelled "
        f"images of the other half ({t['train']} train, {t['selection']} select its best epoch); test "
        f"{scratch['test']['n']}",
        markup=False,
    )
    graft = report["graft"]
    records = [TensorRecord(**r) for r in graft["records"]]
    console.print(GraftReport(records, graft["unused_source"], graft["source"]).table(
        f"graft report: source CNN -> GRU (seed {seed})"))  # fmt: skip
    d = report["distill"]
    console.print(
        f"feature distillation on {d['examples']} unlabelled images: MSE {d['mse_before']:.4f} -> "
        f"{d['mse_after']:.4f}, cosine {d['cosine_after']:.3f}, R^2 {d['r2_after']:.3f}; GRU test accuracy with "
        f"the grafted head, before any labelled target data: {metrics['before_training']['accuracy']:.3f}",
        markup=False,
    )


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
        ["GRU transfer, before fine-tuning (distil + graft)", _fmt(summary["transfer_before_finetune_accuracy"]), ""],
        [
            "GRU transfer (distil + graft + fine-tune)",
            _fmt(summary["transfer_accuracy"]),
            _fmt(summary["transfer_seconds"], "s"),
        ],
        ["fine-tuning's part (transfer - before fine-tuning)", _gain(summary["finetune_gain"]), ""],
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
        "A CNN trained on one stratified half of the digits that are not test images is transferred into a GRU "
        "that reads each 8x8 image row by row (feature distillation on unlabelled images, then the CNN's head "
        f"grafted by label name), fine-tuned on a budget of {setup['k_per_class']} labelled images per class "
        "drawn from the other half, and compared with the same GRU trained from scratch on the same images with "
        f"the same budget ({setup['target_epochs']} epochs, early stopping on validation loss). Every target label "
        f"counts: of the {setup['target_labels']['total']} labelled target images, "
        f"{setup['target_labels']['train']} train the GRU and {setup['target_labels']['selection']} select its "
        "best epoch; no other target label is used, and no labelled image is shared with the source. "
        f"Test accuracy over {setup['seeds']} seeds, mean ± sample std; the gain's interval is the 95 % Student "
        "t interval of the per-seed differences (the same seed: the same labels and splits). It is one "
        "`mmtransfer study` (source `cnn` per seed, arms `scratch` and `transfer`): its own report is "
        "`study/report.html`.",
        "",
        "| arm | test accuracy | time |",
        "|---|---|---|",
        f"| source CNN (reference) | {_fmt(s['source_cnn_accuracy'])} | {_fmt(s['source_cnn_seconds'], 's')} |",
        f"| GRU from scratch | {_fmt(s['scratch_accuracy'])} | {_fmt(s['scratch_seconds'], 's')} |",
        f"| GRU transfer, before fine-tuning | {_fmt(s['transfer_before_finetune_accuracy'])} | |",
        f"| GRU transfer (distil + graft + fine-tune) | {_fmt(s['transfer_accuracy'])} | "
        f"{_fmt(s['transfer_seconds'], 's')} |",
        f"| fine-tuning's part (transfer - before fine-tuning) | {_gain(s['finetune_gain'])} | |",
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
