"""A run folder: what ``mmtransfer fit`` writes and ``mmtransfer evaluate`` reads.

RUN_DIR/config.yaml            the validated config that built the model (seeds, every encoder, absolute paths)
RUN_DIR/model.safetensors      the best weights (lowest validation loss; without validation, the last epoch's)
RUN_DIR/labels.json            class names in output order
RUN_DIR/inputs.json            what each encoder was built for (kind and shape of each input)
RUN_DIR/history.json           per epoch: losses, accuracy, trainable count, learning rate of each group
RUN_DIR/metrics.json           validation and test metrics, and how many labels trained / selected the model
RUN_DIR/preprocessing.json     tables: column bindings, what the modalities learned on train, skipped rows
RUN_DIR/transfer_report.json   when the run started from a source: the graft report (+ distillation)
RUN_DIR/transfer_report.md     the same graft report as Markdown
"""

from __future__ import annotations

import json
from pathlib import Path

from accelerate import PartialState
from rich.console import Console

from mmtransfer.cache import add_cached_features
from mmtransfer.checkpoint import load_into, load_weights
from mmtransfer.config import RunConfig, dump_config, load_config
from mmtransfer.data import Dataset, load_dataset
from mmtransfer.display import make_console
from mmtransfer.modalities.base import InputSpec
from mmtransfer.model import Classifier, build_model, default_encoder
from mmtransfer.train import evaluate, fit
from mmtransfer.transfer import strategies
from mmtransfer.transfer.distill import transfer_across
from mmtransfer.transfer.freeze import count_parameters, freeze, trainable_names
from mmtransfer.transfer.graft import GraftReport, graft


def load_run(run_dir: str | Path) -> tuple[RunConfig, Classifier, list[str]]:
    """Rebuild the model of a run folder from its config and load its weights (strictly)."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise FileNotFoundError(f"{run_dir} is not a run folder: no config.yaml")
    cfg = load_config(run_dir / "config.yaml")
    classes = json.loads((run_dir / "labels.json").read_text())
    model = build_model(cfg.model, read_specs(run_dir / "inputs.json"), classes)
    strategies.prepare(model, cfg.train.strategy)  # a LoRA run's weights have the adapters' names
    load_into(model, load_weights(run_dir / "model.safetensors"), where=str(run_dir / "model.safetensors"))
    return cfg, model, classes


def write_specs(specs: dict[str, InputSpec], path: Path) -> None:
    path.write_text(json.dumps({name: spec.to_dict() for name, spec in specs.items()}, indent=1))


def read_specs(path: Path) -> dict[str, InputSpec]:
    raw = json.loads(path.read_text())
    specs = {}
    for name, d in raw.items():
        d["shape"] = tuple(d["shape"])
        d["categorical"] = {int(k): v for k, v in d["categorical"].items()}  # JSON keys are strings
        specs[name] = InputSpec(**d)
    return specs


def fit_run(cfg: RunConfig, out: str | Path, console: Console | None = None) -> dict:
    """Load data, build the model, transfer from a source if configured, train, evaluate; write a run folder.

    Nothing is written until the data, the model and the transfer are known to be good. ``config.yaml`` names
    every input's encoder, defaults included, so the run rebuilds the same model whatever later defaults are.
    Under ``accelerate launch`` only the main process prints.
    """
    console = console or make_console()
    if not PartialState().is_main_process:
        console = Console(quiet=True)
    out = Path(out)
    data = load_dataset(cfg.data, console=console, validation=cfg.train.validation)
    model = build_model(cfg.model, data.specs, data.classes, seed=cfg.train.seed)
    console.print(
        "encoders: "
        + ", ".join(
            f"{name} ({spec.kind} {list(spec.shape)}) -> {type(model.encoders[name]).__name__}"
            + ("" if name in cfg.model.encoders else " (default)")
            for name, spec in sorted(data.specs.items())
        )
        + f"; fusion {cfg.model.fusion}",
        markup=False,
        highlight=False,
    )
    encoders = {name: cfg.model.encoders.get(name) or default_encoder(spec) for name, spec in data.specs.items()}
    cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"encoders": encoders})})
    transferred = _transfer_in(cfg, model, data, out, console) if cfg.transfer.source else None
    if cfg.transfer.freeze:
        freeze(model, cfg.transfer.freeze)

    out.mkdir(parents=True, exist_ok=True)  # only once the data, the model and the transfer are known to be good
    dump_config(cfg, out / "config.yaml")
    (out / "labels.json").write_text(json.dumps(data.classes))
    write_specs(data.specs, out / "inputs.json")
    if data.preprocessing:
        (out / "preprocessing.json").write_text(json.dumps(data.preprocessing, indent=1))
    if transferred is not None:
        record, report = transferred
        (out / "transfer_report.json").write_text(json.dumps(record, indent=1))
        (out / "transfer_report.md").write_text(report.markdown())

    strategy = cfg.train.strategy
    strategies.prepare(model, strategy)  # lora adapters go in after grafting, before training
    if strategy.name == "linear_probe":  # encoders frozen from the start, so their features can be cached
        strategies.schedule(model, strategy, 1, set(trainable_names(model)))
    if cfg.train.cache_features:
        parts = {"train": data.train, "test": data.test, **({"val": data.val} if data.val is not None else {})}
        splits = add_cached_features(model, parts, console=console)
        data.train, data.val, data.test = splits["train"], splits.get("val"), splits["test"]
    trainable, total = count_parameters(model)
    n_val = 0 if data.val is None else len(data.val)
    console.print(
        f"{data.name}: {len(data.train)} train / {n_val} val / {len(data.test)} test; "
        f"{trainable:,} of {total:,} parameters trainable ({len(trainable_names(model))} tensors)",
        markup=False,
        highlight=False,
    )
    console.print(data.labels.sentence(), markup=False, highlight=False)
    result = fit(
        model,
        data.train,
        data.val,
        cfg.train,
        checkpoint=out / "model.safetensors",
        augment=data.augment,
        console=console,
        num_workers=cfg.data.num_workers,
    )
    metrics = {
        "classes": data.classes,
        "labels": data.labels.to_dict(),
        "best_epoch": result.best_epoch,
        "epochs_run": result.epochs_run,
        "fit_seconds": round(result.seconds, 3),
        "val": evaluate(model, data.val, cpu=cfg.train.cpu) if data.val is not None else None,
        "test": evaluate(model, data.test, cpu=cfg.train.cpu),
    }
    (out / "history.json").write_text(json.dumps(result.history, indent=1))
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    return metrics


def _transfer_in(
    cfg: RunConfig, model: Classifier, data: Dataset, out: Path, console: Console
) -> tuple[dict, GraftReport]:
    """Move the source's knowledge into ``model``; print the report; return what is to be written."""
    source = Path(cfg.transfer.source)
    record: dict = {"source": str(source)}
    if cfg.transfer.distill is not None:
        _, source_model, source_classes = load_run(source)
        if source_classes != data.classes:
            raise ValueError(f"transfer.source {source}: classes {source_classes} differ from {data.classes}")
        # Distil on every train input, labelled or not: the labels are never read.
        unlabelled = data.train_pool
        report, stats = transfer_across(
            source_model,
            model,
            unlabelled,
            cfg.transfer.distill,
            seed=cfg.train.seed,
            progress=cfg.train.progress,
            cpu=cfg.train.cpu,
            exclude=cfg.transfer.exclude,
            console=console,
        )
        record["distill"] = stats.to_dict()
        console.print(
            f"distilled {source} into this model on {stats.examples} unlabelled inputs: "
            f"feature MSE {stats.mse_before:.4f} -> {stats.mse_after:.4f}, R^2 {stats.r2_after:.3f}",
            markup=False,
        )
    else:
        report = graft_from_config(cfg, model, data)
    console.print(report.table(f"graft report: {source} -> {out}"))
    record["graft"] = report.to_dict()
    return record, report


def graft_from_config(cfg: RunConfig, model: Classifier, data: Dataset, *, dry_run: bool = False) -> GraftReport:
    """Graft ``cfg.transfer.source`` into ``model`` with the config's rules, adaptations and strictness.

    Class names come from the source run's labels.json and the data; where both sides have one text column
    with a word vocabulary (run folders record it), embedding rows of shared words are kept too.
    """
    t = cfg.transfer
    source_vocab = target_vocab = None
    source_pre = Path(t.source) / "preprocessing.json"
    if source_pre.is_file():
        source_vocab = _single_vocab(json.loads(source_pre.read_text()))
        target_vocab = _single_vocab(data.preprocessing)
    return graft(
        t.source,
        model,
        rules=t.rules,
        exclude=t.exclude,
        structure=t.structure,
        adapt_with=t.adapt,
        target_classes=data.classes,
        source_vocab=source_vocab if target_vocab else None,
        target_vocab=target_vocab if source_vocab else None,
        strict=t.strict,
        dry_run=dry_run,
    )


def _single_vocab(preprocessing: dict) -> list[str] | None:
    vocabs = [s["vocab"] for s in preprocessing.get("state", {}).values() if isinstance(s, dict) and "vocab" in s]
    return vocabs[0] if len(vocabs) == 1 else None


def evaluate_run(run_dir: str | Path, split: str = "test") -> dict:
    """Evaluate a run folder's model on a split of the data its config names."""
    if split not in ("train", "val", "test"):
        raise ValueError(f"split must be train, val or test, got {split!r}")
    cfg, model, classes = load_run(run_dir)
    data = load_dataset(cfg.data, validation=cfg.train.validation)
    if data.classes != classes:
        raise ValueError(
            f"{run_dir}: the data now has classes {data.classes}, the model was trained on {classes}; "
            "the table changed since training, so its splits and metrics would not be the trained ones"
        )
    part = getattr(data, split)
    if part is None:
        raise ValueError(f"{run_dir}: no labels selected this run's model, so it has no validation split")
    return evaluate(model, part, cpu=cfg.train.cpu)
