"""Runs: ``fit_run`` trains and writes a run folder, ``evaluate_run`` scores one on its own held-out rows.

The run folder's layout (an artifact that needs nothing outside it) is :mod:`mmtransfer.artifact`'s.
"""

from __future__ import annotations

import contextlib
import copy
import json
from pathlib import Path

import torch
from rich.console import Console

from mmtransfer import artifact
from mmtransfer.backbones import binder
from mmtransfer.checkpoint import save_weights
from mmtransfer.config import CustomConfig, RunConfig
from mmtransfer.data import Dataset, LabelUse, Pairing, load_dataset, split_budget
from mmtransfer.display import make_console
from mmtransfer.errors import MissingFile, UserError
from mmtransfer.inference import labelled_rows
from mmtransfer.limits import check_machine
from mmtransfer.model import Classifier, build_model, check_encoder_names, default_encoder
from mmtransfer.runfolder import RunFolder
from mmtransfer.tasks import get_task
from mmtransfer.train import FitResult, evaluate, logits_of, process_state, scalar_metrics
from mmtransfer.transfer import strategies
from mmtransfer.transfer.auto import Trained, train_with_strategy
from mmtransfer.transfer.freeze import freeze
from mmtransfer.transfer.intake import graft_from_config, transfer_in  # noqa: F401 (graft_from_config: the CLI's)


def load_run(run_dir: str | Path, *, allow_unfinished: bool = False) -> tuple[RunConfig, Classifier, list[str]]:
    """Verify a run folder and rebuild its model with its weights: (config, model, classes)."""
    run = artifact.load(run_dir, allow_unfinished=allow_unfinished)
    return run.cfg, run.model, run.classes


def fit_run(
    cfg: RunConfig,
    out: str | Path,
    console: Console | None = None,
    *,
    source=None,
    modules: dict | None = None,
    overwrite: bool = False,
    resume: bool = False,
    ablate: bool = False,
    selection_only: bool = False,
    test: bool = True,
) -> dict:
    """Load data, build the model, transfer from a source if configured, train, evaluate; write a run folder.

    Nothing is written until the data, the model and the transfer are known to be good. ``config.yaml`` names
    every input's encoder, defaults included, so the run rebuilds the same model whatever later defaults are.
    ``source`` is a table given directly (a DataFrame) instead of ``cfg.data.table``; ``modules`` are encoders
    given as ``nn.Module`` (recorded as ``custom`` with their class name). ``out`` must be new or empty; a
    previous run there is replaced only with ``overwrite``, or continued from its last checkpoint with
    ``resume`` (the config must be the one it started with). While it runs, ``out/.lock`` keeps a second
    process out. Under ``accelerate launch`` / ``torchrun`` only the main process prints and writes. Without
    ``test`` (``Predictor.fit``) a table holds no test rows out: the selection rows (or, with none, the train
    rows) are scored in their place, and ``metrics.json`` says so.
    """
    console = console or make_console()
    check_machine(cfg)  # worker processes and precision this machine can give, before anything is written
    state = process_state(cfg.train.cpu)
    if not state.is_main_process:
        console = Console(quiet=True)
    out = Path(out)
    if resume and not artifact.check_out(out, resume=True):  # before any work; killed before its first checkpoint
        console.print(f"resuming {out}: no checkpoint was kept, so it starts from the beginning", markup=False)
        resume, overwrite = False, True
    artifact.check_out(out, overwrite=overwrite, resume=resume)
    with artifact.locked(out) if state.is_main_process else contextlib.nullcontext():
        return _fit_run(
            cfg, out, console, state, source=source, modules=modules or {}, overwrite=overwrite, resume=resume,
            ablate=ablate, selection_only=selection_only, test=test,
        )  # fmt: skip


def _fit_run(
    cfg,
    out: Path,
    console,
    state,
    *,
    source,
    modules,
    overwrite: bool,
    resume: bool,
    ablate: bool = False,
    selection_only: bool = False,
    test: bool = True,
) -> dict:
    folder = RunFolder(out)
    data = load_dataset(
        cfg.data, console=console, validation=cfg.train.validation, source=source, binder=binder(cfg.model), test=test,
        paired=pairing(cfg),
    )  # fmt: skip
    in_place_of_test = None
    if data.test is None:  # no test rows held out (Predictor.fit): score the selection rows, else the train rows
        in_place_of_test = "val" if data.val is not None else "train"
        data.test = data.val if data.val is not None else data.train
    if selection_only:
        data = _without_test(data, cfg)
    cfg = resolved_config(cfg, data, modules)  # every column and every input's encoder as they were bound
    model = _build(cfg, data, modules, console)
    task = get_task(data.task, label=cfg.data.label)
    task.fit(data, cfg)  # the state the train rows give (a regression target's mean and std)
    model.task = task  # its loss, its output step, its metrics: train.fit and evaluate ask the model's task
    if not task.one_class_per_row and cfg.train.class_weights != "none":
        console.print(f"note: train.class_weights applies to one class per row; a {data.task} target is not that",
                      markup=False)  # fmt: skip
    if resume:
        _check_resumable(cfg, data, out)
        console.print(f"resuming the run in {out} {_checkpoint_place(out)}", markup=False, highlight=False)
    transferred = transfer_in(cfg, model, data, out, console) if cfg.transfer.source and not resume else None
    if cfg.transfer.freeze:
        freeze(model, cfg.transfer.freeze)

    # Only once the data, the model and the transfer are known to be good; "unfinished" until the end.
    if state.is_main_process and not resume:
        artifact.start(out, overwrite=overwrite)
        _write_start(folder, cfg, data if in_place_of_test is None else _no_test_rows(data), task, transferred)
    state.wait_for_everyone()

    strategies.prepare(model, cfg.train.strategy)  # lora adapters go in after grafting, before training
    # a solved probe, LP-FT, auto's choice between them, or the strategy's epochs (mmtransfer.transfer.auto)
    if len(data.train) == 0:  # data.k_per_class=0: what the teacher taught is the model
        console.print("no labelled row: the model is the student the teacher taught, not trained further",
                      markup=False, highlight=False)  # fmt: skip
        trained = Trained(FitResult(best_epoch=0, best_val_loss=None, epochs_run=0, seconds=0.0))
        if state.is_main_process:
            save_weights(model.state_dict(), folder.weights)
    else:
        trained = train_with_strategy(model, data, cfg, out, console, objective=None, resume=resume, state=state)
    # the task's post-fit step: a temperature (classification), thresholds (multilabel), a plot (regression)
    fitted = task.after_fit(lambda split: logits_of(model, split, cpu=cfg.train.cpu), data, cfg, folder, console,
                            write=state.is_main_process)  # fmt: skip
    if state.is_main_process:
        folder.write_task(task.state())
    metrics = _metrics(model, data, cfg, trained, fitted, transferred, in_place_of_test, selection_only, ablate)
    if state.is_main_process:
        folder.write_history(trained.result.history)
        folder.write_metrics(metrics)
        artifact.finish(out)  # the manifest first: a kill before it leaves the checkpoint to resume from
        folder.checkpoint.unlink(missing_ok=True)  # finished: the resumable state is no longer needed
    state.wait_for_everyone()
    return metrics


def _build(cfg: RunConfig, data: Dataset, modules: dict, console) -> Classifier:
    """The model of ``cfg`` for ``data``'s inputs, said in one line (each input's encoder, the fusion)."""
    model = build_model(cfg.model, data.specs, data.classes, seed=cfg.train.seed, modules=modules)
    console.print(
        "encoders: "
        + ", ".join(
            f"{name} ({spec.kind} {list(spec.shape)}) -> {type(model.encoders[name]).__name__}"
            + (" (one token per region)" if model.uses_regions(name) else "")
            + f", {model.encoders[name].output_dim}-d"
            for name, spec in sorted(data.specs.items())
        )
        + f"; fusion {cfg.model.fusion}",
        markup=False,
        highlight=False,
    )
    if cfg.model.tokens == "regions" and not any(model.uses_regions(name) for name in model.encoders):
        console.print(
            "note: model.tokens is regions, but no encoder here gives region tokens (efficientnet_lite does); "
            "each input is one token",
            markup=False,
            highlight=False,
        )
    return model


def _write_start(folder: RunFolder, cfg: RunConfig, data: Dataset, task, transferred) -> None:
    """What a run folder holds from the start: everything that rebuilds the model, and the transfer's report."""
    folder.write_config(cfg)
    folder.write_labels(data.classes)
    folder.write_inputs(data.specs)
    preprocessing = artifact.write_assets(folder.path, cfg, data)
    if preprocessing:
        folder.write_preprocessing(preprocessing)
    artifact.write_splits(folder.path, cfg, data)
    folder.write_task(task.state())
    folder.write_versions(artifact.versions())
    if transferred is not None:
        record, report = transferred
        folder.write_transfer(record, report.markdown())


def _metrics(model, data, cfg, trained, fitted, transferred, in_place_of_test, selection_only, ablate) -> dict:
    """metrics.json: the labels used, the epochs, the validation and test scores, and what else the run did."""
    result = trained.result
    metrics = {
        "classes": data.classes,
        "labels": data.labels.to_dict(),
        "best_epoch": result.best_epoch,
        "epochs_run": result.epochs_run,
        "fit_seconds": round(result.seconds, 3),
        "val": evaluate(model, data.val, cpu=cfg.train.cpu) if data.val is not None else None,
        "test": evaluate(model, data.test, cpu=cfg.train.cpu),
    }
    if trained.probe is not None:
        metrics["probe"] = trained.probe
    if trained.strategy is not None:
        metrics["strategy"] = trained.strategy
    metrics.update(fitted)
    if transferred is not None and "before_training" in transferred[0]:
        metrics["before_training"] = transferred[0]["before_training"]
    if selection_only:
        metrics["scored"] = "the validation split (the test split was not read)"
    if in_place_of_test is not None:
        which = "validation rows that selected the model" if in_place_of_test == "val" else "train rows"
        if in_place_of_test == "val" and data.val is None:  # a solved probe trained on them too
            which = "rows that were held out to select the model but joined training (the probe uses every label)"
        metrics["scored"] = f"no test rows were held out: 'test' scores the {which}, not held-out data"
    if ablate and len(model.encoders) > 1:
        metrics["ablation"] = {
            name: scalar_metrics(evaluate(Masked(model, name), data.test, cpu=cfg.train.cpu))
            for name in sorted(model.encoders)
        }
    return metrics


class Masked(torch.nn.Module):
    """The model with one input marked missing in every row (the mask its fusion already supports)."""

    def __init__(self, model, name: str):
        super().__init__()
        self.model, self.name = model, name
        self.classes, self.task = getattr(model, "classes", None), getattr(model, "task", None)

    def forward(self, inputs: dict) -> torch.Tensor:
        some = next(iter(inputs.values()))
        return self.model({**inputs, f"{self.name}.present": torch.zeros(len(some), dtype=torch.bool)})


def resolve_run(cfg: RunConfig, *, source=None, console: Console | None = None) -> RunConfig:
    """The config a fit of ``cfg`` would run, every auto setting resolved (it reads and checks the data, as a fit
    does first; nothing is trained or written)."""
    data = load_dataset(
        cfg.data, console=console, validation=cfg.train.validation, source=source, binder=binder(cfg.model),
        paired=pairing(cfg),
    )  # fmt: skip
    return resolved_config(cfg, data)


def pairing(cfg: RunConfig) -> Pairing | None:
    """The teacher's and the student's columns of a cross-modal distillation, where the config has one."""
    distill = cfg.transfer.distill
    if distill is None or distill.teacher_column is None:
        return None
    return Pairing(distill.teacher_column, distill.student_column)


def resolved_config(cfg: RunConfig, data: Dataset, modules: dict | None = None) -> RunConfig:
    """The run's config as it was bound to its data: every table column with no setting left auto (inferred
    columns included), every input's encoder named (the config's, the preset's, or its modality's default), and
    the task as resolved. What a config file, ``--set``, a study cell and the Python API give for the same run
    is this same object, and ``config.yaml`` stores it."""
    check_encoder_names(cfg.model.encoders, data.specs)
    encoders = {
        name: cfg.model.encoders.get(name) or data.encoders.get(name) or default_encoder(spec)
        for name, spec in data.specs.items()
    }
    for name, module in (modules or {}).items():
        encoders[name] = CustomConfig(name=f"{type(module).__module__}.{type(module).__qualname__}")
    data_update = {"task": data.task}
    if data.ignored is not None:  # a teacher's column (and with a student column, the others) never read
        data_update["ignore"] = data.ignored
    if data.columns:
        data_update["columns"] = dict(data.columns)
    return cfg.model_copy(
        update={
            "model": cfg.model.model_copy(update={"encoders": encoders}),
            "data": cfg.data.model_copy(update=data_update),
        }
    )


def _without_test(data: Dataset, cfg: RunConfig) -> Dataset:
    """Validation becomes the scored split; a stratified part of train selects the epoch; test is dropped."""
    if data.val is None:
        raise UserError(
            "study --auto scores strategies on the validation split, and this config has none "
            "(train.validation: none, or a label budget too small to hold one selection label per class)"
        )
    parts = split_budget(data.train, cfg.data.val_fraction, cfg.train.seed)
    if parts is None:
        raise UserError("study --auto: a class has a single train example, so none is left to select the epoch")
    scored = len(data.val)
    data.test, (data.train, data.val) = data.val, parts
    note = f"{scored} validation labels score the strategies; the test split is not read"
    data.labels = LabelUse(len(data.train), len(data.val), "budget", data.labels.budget if data.labels else None, note)
    return data


def _no_test_rows(data: Dataset) -> Dataset:
    """``data`` without its test split, for splits.json: rows scored in place of test are not test rows."""
    view = copy.copy(data)
    view.test = None
    return view


def _checkpoint_place(out: Path) -> str:
    """Where the last checkpoint stands, in words: "from the end of epoch 2" or "from epoch 3, step 7"."""
    from safetensors import safe_open

    try:
        with safe_open(str(RunFolder(out).checkpoint), "pt") as f:
            meta = json.loads((f.metadata() or {})["state"])
        epoch, step = int(meta["epoch"]), int(meta["step_in_epoch"])
    except Exception:  # unreadable here: fit reports it with the file named
        return "from its last checkpoint"
    return f"from epoch {epoch + 1}, step {step}" if step else f"from the end of epoch {epoch}"


def _check_resumable(cfg: RunConfig, data: Dataset, out: Path) -> None:
    """A run continues only with the config and the data it started with."""
    folder = RunFolder(out)
    saved = folder.read_config().model_dump(mode="json")
    now = cfg.model_dump(mode="json")
    differ = [key for key in _leaves(now) | _leaves(saved) if _get(now, key) != _get(saved, key)]
    if differ:
        shown = ", ".join(f"{k} ({_get(saved, k)!r} -> {_get(now, k)!r})" for k in sorted(differ)[:5])
        raise UserError(f"--resume: the config differs from the one {out} started with: {shown}")
    record = folder.splits()
    table = record.get("table")
    if table and Path(table).exists() and artifact.table_sha256(table) != record.get("table_sha256"):
        raise UserError(f"--resume: the table {table} changed since the run started; its splits would differ")


def _leaves(tree: dict, prefix: str = "") -> set[str]:
    out = set()
    for key, value in tree.items():
        path = f"{prefix}{key}"
        out |= _leaves(value, path + ".") if isinstance(value, dict) and value else {path}
    return out


def _get(tree: dict, dotted: str):
    node = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def evaluate_run(run_dir: str | Path, split: str = "test", *, allow_unfinished: bool = False) -> dict:
    """Evaluate a run folder's model on one of its own splits: exactly the rows it recorded (splits.json).

    A table that changed since training (another SHA-256) is refused: its rows would not be the held-out ones.
    Built-in data is rebuilt from the run's seed and checked against the recorded labels.
    """
    if split not in ("train", "val", "test"):
        raise UserError(f"split must be train, val or test, got {split!r}")
    run = artifact.load(run_dir, allow_unfinished=allow_unfinished)
    record = RunFolder(run_dir).splits()
    rows = record.get("rows")
    if rows is not None:
        if split not in rows:
            if split == "test":
                raise UserError(f"{run_dir}: no test rows were held out of its data (Predictor.fit trains and "
                                 f"selects on every row it is given); evaluate it on new data: mmtransfer "
                                 f"evaluate {run_dir} TABLE")  # fmt: skip
            raise UserError(f"{run_dir}: no labels selected this run's model, so it has no {split} split")
        if record.get("table") is None:
            raise UserError(f"{run_dir}: trained on a DataFrame given in Python; give the data to score")
        table = Path(record["table"])
        if not table.exists():
            raise MissingFile(f"{run_dir}: its table {table} is not there any more; give the data to score")
        if artifact.table_sha256(table) != record["table_sha256"]:
            raise UserError(
                f"{run_dir}: the table {table} changed since training (its SHA-256 differs from splits.json), so "
                f"the recorded {split} rows may not be the held-out ones; evaluate it as new data: "
                f"mmtransfer evaluate {run_dir} TABLE"
            )
        part = labelled_rows(run, table, rows=rows[split])
    else:
        data = load_dataset(run.cfg.data, validation=run.cfg.train.validation)
        part = getattr(data, split)
        if part is None:
            raise UserError(f"{run_dir}: no labels selected this run's model, so it has no validation split")
        if artifact.labels_hash(part.labels) != record["labels_sha256"].get(split):
            raise UserError(f"{run_dir}: the built-in {run.cfg.data.dataset} {split} split is not the recorded one")
    return evaluate(run.model, part, cpu=run.cfg.train.cpu)
