"""ImageNet transfer on real photos: EfficientNet-Lite0 pretrained on ImageNet vs the same architecture from
scratch, on flower_photos (5 classes, fixed split: 252 train / 108 test photos per class).

    python examples/flowers.py ../shared/data/flower_photos [--out runs/flowers] [--k 5 10 50 all] [--seeds 3]
        [--arms solved probe lp_ft full gradual] [--inits imagenet scratch] [--size 224] [--epochs 15]

Arms (each for both initialisations):
- solved: the linear probe as ``train.strategy.name: linear_probe`` now fits it: the backbone frozen, its pooled
  1280 features computed once per photo (the cache), the multinomial logistic regression solved to convergence
  (L-BFGS) with C chosen by 5-fold cross-validation on the k labels, then fitted on all k (none held out);
- probe: the same features, a linear head trained by AdamW (300 epochs, lr 1e-2, the best epoch chosen on the
  selection labels): the gradient probe the library had before;
- lp_ft: LP-FT (Kumar et al. 2022): the probe solved on the train labels' features goes into the head, then
  everything is fine-tuned at lr 1e-4 (``train.strategy.ft_lr``), with crops and flips and early stopping;
- full: everything fine-tuned (AdamW, warm-up + cosine; lr 3e-4 from ImageNet, 3e-3 from scratch, the
  library's default for training from scratch), random crops and flips in training, early stopping (patience 5);
- gradual: ULMFiT's gradual unfreezing, one more layer group from the top each epoch, lr decay 0.7 per group.
Labels: k photos per class drawn from the 252 train photos with the seed (``all``: every one); of each class's
k, round(0.15 k) (at least one) choose the best epoch and the rest train (the solved probe: all k train it, C is
chosen by cross-validation on them); no other label is used. Every arm is
evaluated on the same fixed 540 test photos. Photos are read with EfficientNet-Lite0's own preprocessing
(shorter side to size / 0.875, centre crop, scaled to [-1, 1]) and decoded once into ``--out``.

Results go to ``results.jsonl`` as each run ends (a killed run loses nothing: rerun the command to go on),
then ``report.md``, ``results.json`` and ``flowers.png`` (test accuracy vs labels per class, one line per arm,
the band is the spread over seeds).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from _common import command, console

from mmtransfer.config import EfficientNetLiteConfig, ImageColumn, ModelConfig, StrategyConfig, TrainConfig
from mmtransfer.data import Split, k_per_class, split_budget
from mmtransfer.encoders.efficientnet import preprocessing
from mmtransfer.modalities.image import ImageModality, crop_flip
from mmtransfer.model import build_model
from mmtransfer.train import FitResult, evaluate, fit
from mmtransfer.transfer.probe import embeddings, put_in_head, solve_probe

ARMS = {
    "solved": "solved linear probe",
    "probe": "linear probe (AdamW)",
    "lp_ft": "LP-FT",
    "full": "full fine-tuning",
    "gradual": "gradual unfreezing",
}
INITS = {"imagenet": "ImageNet", "scratch": "scratch"}


def decoded(data: Path, out: Path, size: int) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Every photo through the backbone's preprocessing, once: uint8 [N, 3, size, size] per split, saved."""
    from safetensors.torch import load_file, save_file

    table = pd.read_csv(data / "split.csv")
    classes = sorted(table["label"].unique())
    path = out / f"decoded_{size}.safetensors"
    if path.is_file():
        return load_file(str(path)), classes
    column = ImageColumn(**{**preprocessing("lite0"), "size": (size, size)})
    images = ImageModality("image", column)
    start, tensors = time.perf_counter(), {}
    for split in ("train", "test"):
        part = table[table["split"] == split]
        tensors[f"{split}_x"] = torch.stack([images.load(p, data) for p in part["path"]])
        tensors[f"{split}_y"] = torch.tensor([classes.index(c) for c in part["label"]])
    save_file(tensors, str(path))
    console.print(f"decoded {len(table)} photos at {size}x{size} in {time.perf_counter() - start:.0f} s -> {path}")
    return tensors, classes


def normalised(x: torch.Tensor) -> torch.Tensor:
    return x.float() / 127.5 - 1.0  # EfficientNet-Lite: mean 0.5, std 0.5 over [0, 1]


def features(init: str, x: torch.Tensor, size: int, out: Path, split: str) -> torch.Tensor:
    """The frozen backbone's pooled features of every photo (computed once per initialisation, then read)."""
    from safetensors.torch import load_file, save_file

    path = out / f"features_{init}_{size}_{split}.safetensors"
    if path.is_file():
        return load_file(str(path))["f"]
    model = backbone_model(init, size, 5, seed=0).eval()
    start = time.perf_counter()
    with torch.no_grad():
        f = torch.cat([model.encoders["image"](normalised(x[i : i + 64])) for i in range(0, len(x), 64)])
    save_file({"f": f.contiguous()}, str(path))
    console.print(f"{INITS[init]} features of {len(x)} {split} photos in {time.perf_counter() - start:.0f} s")
    return f


def backbone_model(init: str, size: int, classes, seed: int):
    encoder = EfficientNetLiteConfig(variant="lite0", pretrained=init == "imagenet")
    cfg = ModelConfig(encoders={"image": encoder}, embed_dim=1280)  # 1280: the head reads the pooled features
    return build_model(cfg, {"image": (3, size, size)}, classes, seed=seed)


def one_run(arm, init, k, seed, data, classes, size, epochs, out) -> dict:
    lr = 3e-4 if init == "imagenet" else 3e-3  # a pretrained backbone is nudged; one from scratch must learn
    pool = Split({"row": torch.arange(len(data["train_y"]))}, data["train_y"])
    labelled = pool if k == "all" else k_per_class(pool, int(k), seed=seed)
    train_part, val_part = split_budget(labelled, 0.15, seed)
    train_rows, val_rows = train_part.inputs["row"], val_part.inputs["row"]  # rows of the 1,260 train photos
    y = data["train_y"]
    model = backbone_model(init, size, classes, seed)
    start, probe = time.perf_counter(), None
    if arm == "solved":  # every one of the k labels trains the probe; cross-validation on them chooses C
        rows = labelled.inputs["row"]
        probe = solve_probe(features(init, data["train_x"], size, out, "train")[rows], y[rows], seed=seed,
                            num_classes=len(classes))  # fmt: skip
        put_in_head(model, probe)
        train, val = Split({"row": rows}, y[rows]), Split({"row": rows[:0]}, y[:0])
        test = Split({"image.features": features(init, data["test_x"], size, out, "test")}, data["test_y"])
        result = FitResult(best_epoch=1, best_val_loss=None, epochs_run=1, seconds=0.0)
    elif arm == "probe":
        f = features(init, data["train_x"], size, out, "train")
        train = Split({"image.features": f[train_rows]}, y[train_rows])
        val = Split({"image.features": f[val_rows]}, y[val_rows])
        test = Split({"image.features": features(init, data["test_x"], size, out, "test")}, data["test_y"])
        cfg = TrainConfig(  # features are cached: hundreds of cheap epochs, the best one chosen by its labels
            epochs=300, lr=1e-2, batch_size=16, patience=None, seed=seed, progress=False,
            strategy=StrategyConfig(name="linear_probe"),
        )  # fmt: skip
        result = fit(model, train, val, cfg)
    else:
        x = data["train_x"]
        train = Split({"image": normalised(x[train_rows])}, y[train_rows])
        val = Split({"image": normalised(x[val_rows])}, y[val_rows])
        test = Split({"image": normalised(data["test_x"])}, data["test_y"])
        strategy = {
            "full": StrategyConfig(name="full"),
            "gradual": StrategyConfig(name="gradual_unfreeze", unfreeze_every=1, lr_decay=0.7),
            "lp_ft": StrategyConfig(name="lp_ft"),
        }[arm]
        if arm == "lp_ft":  # the head starts as the probe solved on the frozen features of the train labels
            lr = strategy.ft_lr
            # ImageNet: the cached features are this backbone's; from scratch each seed's backbone differs
            f = features(init, x, size, out, "train")[train_rows] if init == "imagenet" else embeddings(model, train)
            probe = solve_probe(f, y[train_rows], seed=seed, num_classes=len(classes))
            put_in_head(model, probe)
        cfg = TrainConfig(epochs=epochs, lr=lr, batch_size=16, patience=5, seed=seed, progress=False, strategy=strategy)
        result = fit(model, train, val, cfg, augment={"image": crop_flip})
    test_metrics = evaluate(model, test)
    return {
        "arm": arm, "init": init, "k": k, "seed": seed, "size": size,
        "train": len(train), "select": len(val), "test_n": test_metrics["n"],
        "accuracy": test_metrics["accuracy"], "macro_f1": test_metrics["macro_f1"],
        "best_epoch": result.best_epoch, "epochs_run": result.epochs_run,
        "probe_C": probe.record["C"] if probe else None,
        "seconds": round(time.perf_counter() - start, 1), "device": device_name(),
    }  # fmt: skip


def device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"CPU, {torch.get_num_threads()} threads"


def summary(rows: list[dict]) -> dict:
    out: dict = {}
    for r in rows:
        out.setdefault((r["init"], r["arm"]), {}).setdefault(str(r["k"]), []).append(r)
    return out


def report(rows: list[dict], ks: list[str], out: Path, cmd: str) -> str:
    table = summary(rows)
    header = "| arm | " + " | ".join(f"k={k}" for k in ks) + " | time per run |"
    lines = [header, "|" + "---|" * (len(ks) + 2)]
    for (init, arm), by_k in sorted(table.items(), key=lambda t: (t[0][1], t[0][0])):
        cells = []
        for k in ks:
            accs = [100 * r["accuracy"] for r in by_k.get(k, [])]
            if not accs:
                cells.append("-")
                continue
            sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
            cells.append(f"{statistics.mean(accs):.1f} ± {sd:.1f} % ({len(accs)})")
        times = []
        for k in ks:
            runs = by_k.get(k, [])
            for device in sorted({r.get("device", "CPU, 2 threads") for r in runs}):
                secs = [r["seconds"] for r in runs if r.get("device", "CPU, 2 threads") == device]
                times.append(f"k={k}: {statistics.median(secs):.0f} s ({device})")
        lines.append(f"| {INITS[init]} {ARMS[arm]} | " + " | ".join(cells) + " | " + "; ".join(times) + " |")
    gains = []
    for arm in ARMS:
        for k in ks:
            a = [r["accuracy"] for r in table.get(("imagenet", arm), {}).get(k, [])]
            b = [r["accuracy"] for r in table.get(("scratch", arm), {}).get(k, [])]
            if a and b:
                gains.append(f"{ARMS[arm]} k={k}: {100 * (statistics.mean(a) - statistics.mean(b)):+.1f} pp")
    text = (
        f"# flower_photos: EfficientNet-Lite0, ImageNet vs scratch\n\n`{cmd}`\n\n"
        "Test accuracy on the fixed 540 test photos, mean ± std over seeds (number of seeds); k labelled photos "
        "per class, of which round(0.15 k) (at least 1) select the best epoch (the solved probe: all k train it, "
        "C chosen by 5-fold cross-validation on them). Time: median wall seconds of one "
        "run (training + test) on the device named.\n\n"
        + "\n".join(lines)
        + "\n\nImageNet - scratch: "
        + ("; ".join(gains) or "-")
        + "\n"
    )
    (out / "report.md").write_text(text)
    (out / "results.json").write_text(json.dumps({"command": cmd, "runs": rows}, indent=1))
    plot(table, ks, out / "flowers.png")
    return text


def plot(table: dict, ks: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    x_of = {k: (252 if k == "all" else int(k)) for k in ks}
    for (init, arm), by_k in sorted(table.items()):
        xs = [x_of[k] for k in ks if by_k.get(k)]
        accs = [[100 * r["accuracy"] for r in by_k[k]] for k in ks if by_k.get(k)]
        mean = np.array([np.mean(a) for a in accs])
        sd = np.array([np.std(a, ddof=1) if len(a) > 1 else 0.0 for a in accs])
        style = "-" if init == "imagenet" else "--"
        (line,) = ax.plot(xs, mean, style, marker="o", label=f"{INITS[init]} {ARMS[arm]}")
        ax.fill_between(xs, mean - sd, mean + sd, alpha=0.15, color=line.get_color())
    ax.set_xscale("log")
    ax.set_xticks([x_of[k] for k in ks], [f"{k}" if k != "all" else "252 (all)" for k in ks])
    ax.set_xlabel("labelled photos per class")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("flower_photos, EfficientNet-Lite0: ImageNet vs scratch")
    ax.axhline(20, color="gray", lw=0.8, ls=":")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path, help="the flower_photos folder (split.csv and the class folders)")
    parser.add_argument("--out", type=Path, default=Path("runs/flowers"))
    parser.add_argument("--k", nargs="+", default=["5", "10", "50", "all"])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS))
    parser.add_argument("--inits", nargs="+", choices=list(INITS), default=list(INITS))
    parser.add_argument("--size", type=int, default=224, help="photo side in pixels (lite0's own: 224)")
    parser.add_argument("--epochs", type=int, default=15, help="fine-tuning epochs (early stopping, patience 5)")
    parser.add_argument("--report", action="store_true", help="only write the report from the finished runs")
    args = parser.parse_args()
    if not (args.data / "split.csv").is_file():
        parser.exit(2, f"error: {args.data}: no split.csv; give the flower_photos folder\n")
    bad = [k for k in args.k if k != "all" and not (k.isdigit() and 2 <= int(k) <= 252)]
    if bad:
        parser.exit(2, f"error: --k {' '.join(bad)}: give numbers from 2 to 252, or all\n")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    cmd = command()
    console.print(f"command: {cmd}")
    args.out.mkdir(parents=True, exist_ok=True)
    data, classes = decoded(args.data, args.out, args.size)
    log = args.out / "results.jsonl"
    rows = [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []
    done = {(r["arm"], r["init"], str(r["k"]), r["seed"], r["size"]) for r in rows}
    for arm in [] if args.report else args.arms:
        for k in args.k:
            for init in args.inits:
                for seed in range(args.seeds):
                    if (arm, init, k, seed, args.size) in done:
                        continue
                    r = one_run(arm, init, k, seed, data, classes, args.size, args.epochs, args.out)
                    rows.append(r)
                    with log.open("a") as f:
                        f.write(json.dumps(r) + "\n")
                    console.print(
                        f"{INITS[init]} {ARMS[arm]}, k={k}, seed {seed}: test accuracy {r['accuracy']:.4f} "
                        f"({r['train']} train + {r['select']} select; best epoch {r['best_epoch']}/"
                        f"{r['epochs_run']}; {r['seconds']:.0f} s)",
                        markup=False,
                    )
    text = report([r for r in rows if r["size"] == args.size], args.k, args.out, cmd)
    console.print(text, markup=False)
    console.print(f"wrote {args.out / 'report.md'}, {args.out / 'results.json'}, {args.out / 'flowers.png'}")


if __name__ == "__main__":
    main()
