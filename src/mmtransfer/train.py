"""The training loop, read top to bottom: AdamW, warm-up + cosine, early stopping on validation loss.

Accelerate places the model and batches, so the same code runs on a CPU, a GPU or under ``accelerate launch``.
What trains in each epoch, and at what rate per layer group, is the fine-tuning strategy's
(:mod:`mmtransfer.transfer.strategies`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support
from torch import nn

from mmtransfer import resume as resume_mod
from mmtransfer.checkpoint import save_weights
from mmtransfer.config import TrainConfig
from mmtransfer.data import Examples, make_loader
from mmtransfer.runlog import RunLog
from mmtransfer.transfer import strategies
from mmtransfer.transfer.freeze import count_parameters, is_frozen, trainable_names


@dataclass
class FitResult:
    best_epoch: int  # without validation: the last epoch, whose weights are kept
    best_val_loss: float | None  # None without validation
    epochs_run: int
    seconds: float
    history: list[dict] = field(default_factory=list)
    checkpoint: Path | None = None
    stopped: str | None = None  # why training ended before cfg.epochs: "early stop" or "time limit"


def warmup_cosine(step: int, total: int, warmup: int) -> float:
    """Learning-rate factor: linear from 0 to 1 over ``warmup`` steps, then cosine down to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def train_mode(model: nn.Module) -> None:
    """Training mode, except for encoders that are wholly frozen: their dropout stays off and their
    BatchNorm statistics stay as they were, so a frozen encoder computes what it computed before training.
    Likewise every BatchNorm whose weight and bias are frozen (a frozen layer group) keeps its running statistics."""
    model.train()
    for encoder in getattr(model, "encoders", {}).values():
        if is_frozen(encoder):
            encoder.eval()
    for module in model.modules():
        # A BatchNorm without affine parameters has nothing to tell frozen from trained; it follows its encoder.
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.affine and is_frozen(module):
            module.eval()


def progress_bar(enabled: bool, console: Console | None = None) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[status]}"),
        console=console,
        disable=not enabled,
        transient=True,
    )


def on_cpu(cpu: bool) -> bool:
    """Accelerate's ``cpu`` flag: asked for, or no GPU here. Only with it does Accelerate see several processes
    on CPUs (``torchrun`` / ``accelerate launch``) as one run (DDP over gloo) rather than each alone."""
    return cpu or not torch.cuda.is_available()


def make_accelerator(cpu: bool, precision: str = "32", accumulation: int = 1) -> Accelerator:
    """An Accelerator with exactly this precision. Accelerate keeps one precision per process and would refuse
    (or silently keep) another; the state is reset when a run asks for a different one (the process group, if
    any, stays as it is)."""
    from accelerate.state import AcceleratorState

    wanted = {"32": "no"}.get(precision, precision)
    current = AcceleratorState._shared_state.get("_mixed_precision")
    if current is not None and str(current) != wanted:
        AcceleratorState._reset_state()
    return Accelerator(cpu=on_cpu(cpu), mixed_precision=wanted, gradient_accumulation_steps=accumulation)


def process_state(cpu: bool = False):
    """The process group's shared state (Accelerate's PartialState), set up for the CPU where there is no GPU."""
    from accelerate import PartialState

    return PartialState(cpu=on_cpu(cpu))


def _can_fuse(model: nn.Module) -> bool:
    """The fused AdamW kernel runs on the CPU from torch 2.4 on (before, only on CUDA-like devices)."""
    major, minor = (int(part) for part in torch.__version__.split(".")[:2])
    return (major, minor) >= (2, 4) and all(p.is_floating_point() for p in model.parameters())


def epoch_line(row: dict, epochs: int, seconds: float, best: bool, desc: str = "fit") -> str:
    """One plain line per epoch, for logs and pipes: epoch, losses, validation accuracy, elapsed time. "(best)"
    follows what selects the best epoch, the validation loss."""
    line = f"{'' if desc == 'fit' else desc + ' '}epoch {row['epoch']}/{epochs}: train loss {row['train_loss']:.4f}"
    if row.get("val_loss") is not None:
        name, value = _val_score(row)
        line += f", val loss {row['val_loss']:.4f}{' (best)' if best else ''}, val {name} {value:.4f}"
    return line + f", {seconds:.1f} s"


def _val_score(row: dict) -> tuple[str, float]:
    """The validation score an epoch shows: accuracy, or R² (regression), or micro-F1 (multilabel)."""
    for key, name in (("val_accuracy", "accuracy"), ("val_r2", "R²"), ("val_micro_f1", "micro-F1")):
        if row.get(key) is not None:
            return name, row[key]
    return "score", float("nan")


class TrainingError(ValueError):
    """Training cannot go on (a loss that is not finite); the message names the epoch and step."""


class Objective:
    """What a batch's loss is: ``loss(model, inputs, targets)``. ``validates``: whether validation scores it
    (loss and accuracy) to select the best epoch."""

    validates = True

    def loss(self, model: nn.Module, inputs: dict, targets: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class Classification(Objective):
    """Cross-entropy of the model's logits against integer labels; ``weight``: one loss weight per class."""

    def __init__(self, weight: torch.Tensor | None = None):
        self.weight = weight
        self.fn = nn.CrossEntropyLoss(weight=weight)

    def loss(self, model, inputs, targets):
        return self.fn(model(inputs), targets)


class Regression(Objective):
    """MSE (or Huber) between the model's output and the targets, both standardised with the train labels'
    mean and std; validation is scored the same way, with RMSE, MAE and R^2 in the target's units."""

    def __init__(self, mean: float, std: float, kind: str = "mse"):
        self.mean, self.std, self.kind = mean, std, kind
        self.fn = nn.HuberLoss(delta=1.0) if kind == "huber" else nn.MSELoss()

    def loss(self, model, inputs, targets):
        return self.fn((model(inputs) - self.mean) / self.std, (targets.float() - self.mean) / self.std)


class Multilabel(Objective):
    """Binary cross-entropy of one logit per label against 0/1 targets."""

    def __init__(self):
        self.fn = nn.BCEWithLogitsLoss()

    def loss(self, model, inputs, targets):
        return self.fn(model(inputs), targets.float())


class FeatureMatch(Objective):
    """Mean squared error between the model's output and target vectors (feature distillation)."""

    validates = False

    def loss(self, model, inputs, targets):
        return nn.functional.mse_loss(model(inputs), targets)


def fit(
    model: nn.Module,
    train: Examples,
    val: Examples | None,
    cfg: TrainConfig,
    *,
    checkpoint: str | Path | None = None,
    desc: str = "fit",
    augment: dict[str, Callable[[torch.Tensor], torch.Tensor]] | None = None,
    console: Console | None = None,
    num_workers: int = 0,
    objective: Objective | None = None,
    state_dir: str | Path | None = None,
    resume: bool = False,
    log_dir: str | Path | None = None,
) -> FitResult:
    """Train ``model`` in place; it ends holding the weights of the epoch with the lowest validation loss (an
    epoch counts as better when its loss falls by more than ``cfg.min_delta``), or, when ``val`` is None (no
    labels to select with), those of the last epoch after exactly ``cfg.epochs``. ``cfg.time_limit``: training
    stops at the end of the epoch that passes it, keeping the best weights.

    The one training loop: ``objective`` says what the loss is (classification by default; feature matching
    for distillation). Only parameters with ``requires_grad`` when ``fit`` starts may train; ``cfg.strategy``
    decides which of them do in each epoch and at what peak rate per layer group. ``history`` records per
    epoch the losses, the trainable parameter count and every group's learning rate. ``checkpoint``: the
    weights the model ends with are written there once, when training ends (safetensors, atomically).
    ``augment`` maps input names to random transforms applied to training batches.

    ``state_dir``: a resumable checkpoint (:mod:`mmtransfer.resume`) is written there at the end of every
    epoch and every ``cfg.checkpoint_every`` optimizer steps; it and the copy of the best weights hold only what
    training can change (not the encoders frozen from the start); with ``resume`` training continues from it and
    ends exactly as an uninterrupted run with the same seed would (on the CPU). ``log_dir``: ``history.csv``,
    TensorBoard events where installed, and ``learning_curve.png``. Mixed precision (``cfg.precision``),
    gradient accumulation and clipping go through Accelerate. A loss that is not finite stops the run
    (:class:`TrainingError`), keeping the last checkpoint. Progress: a bar on a terminal, otherwise one line per
    epoch on ``console`` (with an ETA).
    """
    if objective is None:
        weight = None
        if cfg.class_weights == "balanced":
            weight = balanced_weights(train.labels, _num_outputs(model))
        objective = Classification(weight)
    set_seed(cfg.seed)
    start = time.perf_counter()
    if cfg.precision == "fp16" and (cfg.cpu or not torch.cuda.is_available()):
        raise ValueError("train.precision fp16 needs a GPU; on the CPU use bf16")
    accelerator = make_accelerator(cfg.cpu, cfg.precision, cfg.grad_accumulation)
    if getattr(objective, "weight", None) is not None:  # class weights live where the logits are
        objective.weight = objective.weight.to(accelerator.device)
        objective.fn = nn.CrossEntropyLoss(weight=objective.weight)
    main = accelerator.is_main_process
    show_bar = cfg.progress and main and (console or Console()).is_terminal
    log = console if (console is not None and main and not show_bar) else None
    if len(train) < cfg.batch_size and accelerator.num_processes == 1:
        if cfg.batch_size != TrainConfig.model_fields["batch_size"].default:  # chosen: a mistake to say
            raise ValueError(
                f"train.batch_size {cfg.batch_size} is larger than the {len(train)} training examples; lower it"
            )
        if log is not None:
            log.print(
                f"note: {len(train)} training examples, fewer than the default batch of {cfg.batch_size}: "
                f"one batch of {len(train)} per epoch",
                markup=False,
            )
        cfg = cfg.model_copy(update={"batch_size": len(train)})
    if accelerator.num_processes > 1 and main and console is not None:
        backend = accelerator.state.backend or "?"
        console.print(
            f"processes: {accelerator.num_processes} ({accelerator.distributed_type.value}, {backend} backend, "
            f"{accelerator.device.type}); each takes batches of {cfg.batch_size}, "
            f"{cfg.batch_size * accelerator.num_processes * cfg.grad_accumulation} examples per optimiser step",
            markup=False,
            highlight=False,
        )
    generator = torch.Generator().manual_seed(cfg.seed)
    train_loader = make_loader(train, cfg.batch_size, shuffle=True, generator=generator, num_workers=num_workers)
    val_loader = make_loader(val, max(cfg.batch_size, 256), num_workers=num_workers) if val is not None else None
    strategy = cfg.strategy
    strategies.prepare(model, strategy)  # lora: adapters into the HF backbones (a prepared model stays as it is)
    allowed = set(trainable_names(model))  # a strategy only freezes: what is frozen now stays frozen
    if not allowed:
        raise ValueError("fit: every parameter is frozen; nothing to train")
    changing = changing_names(model, allowed)
    if accelerator.num_processes > 1 and strategies.changes_over_epochs(strategy):
        # DDP registers the parameters that train when it wraps the model; one unfrozen later would not sync.
        raise ValueError(f"fit: strategy {strategy.name} changes what trains between epochs; run it on one process")
    # One optimizer for the whole run, holding every group, frozen ones too: AdamW skips a parameter without a
    # gradient (its weights and moments stay as they are), so a group unfrozen later simply starts training.
    # The fused kernel (CPU and CUDA) updates every tensor in one call: a third of the optimiser's time here.
    optimizer = torch.optim.AdamW(
        strategies.param_groups(model, strategy, cfg.lr, allowed),
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        fused=_can_fuse(model),
    )
    steps_per_epoch = math.ceil(len(train_loader) / cfg.grad_accumulation)
    total = cfg.epochs * steps_per_epoch
    warmup = int(cfg.warmup_fraction * total)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, total, warmup))
    model, optimizer, train_loader, scheduler = accelerator.prepare(model, optimizer, train_loader, scheduler)
    if val_loader is not None:
        val_loader = accelerator.prepare(val_loader)

    state = _State()
    state_path = Path(state_dir) / resume_mod.CHECKPOINT if state_dir is not None else None
    if state_dir is not None and main:
        resume_mod.clean_leftovers(Path(state_dir))
    if resume:
        if state_path is None or not state_path.is_file():
            raise ValueError(f"nothing to resume: no {resume_mod.CHECKPOINT} in {state_dir}")
        state.load(state_path, accelerator.unwrap_model(model), optimizer, scheduler, generator, changing)
    runlog = RunLog(Path(log_dir), resume=resume) if log_dir is not None and main else None
    every = cfg.checkpoint_every

    def save_state(epoch_start: torch.Tensor) -> None:
        if state_path is not None and main:
            unwrapped = accelerator.unwrap_model(model)
            state.save(state_path, unwrapped, optimizer, scheduler, epoch_start, elapsed(), changing)

    def elapsed() -> float:
        return state.seconds + time.perf_counter() - start

    with progress_bar(show_bar, console) as bar:
        task = bar.add_task(desc, total=cfg.epochs, completed=state.epoch, status="")
        for epoch in range(state.epoch + 1, cfg.epochs + 1):
            trainable = strategies.schedule(accelerator.unwrap_model(model), strategy, epoch, allowed)
            strategies.check_cached(trainable, train.names(), strategy, epoch)
            n_trainable, n_total = count_parameters(accelerator.unwrap_model(model))
            if epoch == 1 and (show_bar or log is not None):
                (log or bar.console).print(
                    strategies.describe(strategy, optimizer.param_groups, n_trainable, n_total), highlight=False
                )
            train_mode(accelerator.unwrap_model(model))
            if state.step_in_epoch and state.epoch_start is not None:  # resuming inside an epoch
                generator.set_state(state.epoch_start)
            epoch_start = generator.get_state()  # the shuffle of this epoch is drawn from here
            skip = state.step_in_epoch
            for i, (inputs, labels) in enumerate(train_loader):
                if i < skip:  # trained before the interruption: the same batches, in the same order
                    continue
                if augment:
                    inputs = {**inputs, **{k: f(inputs[k]) for k, f in augment.items() if k in inputs}}
                with accelerator.accumulate(model):
                    loss = objective.loss(model, inputs, labels)
                    if not torch.isfinite(loss.detach()).all():
                        raise TrainingError(
                            f"the training loss became {loss.item()} in epoch {epoch}, step {i + 1}; the run "
                            "stopped (the last checkpoint is kept). Lower train.lr, or check the inputs"
                        )
                    accelerator.backward(loss)
                    if cfg.max_grad_norm is not None and accelerator.sync_gradients:
                        accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                state.train_loss += loss.item() * len(labels)
                state.seen += len(labels)
                state.step_in_epoch = i + 1
                if accelerator.sync_gradients:
                    state.global_step += 1
                    if every and state.global_step % every == 0:
                        save_state(epoch_start)
            lr_groups = {group["name"]: group["lr"] for group in optimizer.param_groups}
            row = {
                "epoch": epoch,
                "train_loss": state.train_loss / max(state.seen, 1),
                "val_loss": None,
                "val_accuracy": None,
                "lr": lr_groups.get("head", scheduler.get_last_lr()[-1]),
                "trainable": n_trainable,
                "lr_groups": lr_groups,
            }
            state.history.append(row)
            state.epoch, state.step_in_epoch, state.train_loss, state.seen = epoch, 0, 0.0, 0
            if val_loader is None or not objective.validates:  # nothing selects: the latest weights are the result
                state.best_epoch = epoch
                status = f"train loss {row['train_loss']:.3f}"
            else:
                if isinstance(objective, Regression):
                    val_metrics = _evaluate_regression(model, val_loader, accelerator, objective)
                    row["val_r2"] = val_metrics["r2"]
                elif isinstance(objective, Multilabel):
                    val_metrics = _evaluate_multilabel(model, val_loader, accelerator)
                    row["val_micro_f1"] = val_metrics["micro_f1"]
                else:
                    val_metrics = _evaluate_loader(model, val_loader, accelerator, _selection_loss(objective))
                row["val_loss"], row["val_accuracy"] = val_metrics["loss"], val_metrics.get("accuracy")
                if not math.isfinite(val_metrics["loss"]):  # nan is never below the best: no epoch would be chosen
                    raise TrainingError(
                        f"the validation loss became {val_metrics['loss']} in epoch {epoch} (the training loss "
                        f"was {row['train_loss']:.4g}); the run stopped (the last checkpoint is kept). Check the "
                        "validation inputs for values unlike the training ones, or lower train.lr"
                    )
                if val_metrics["loss"] < state.best_loss - cfg.min_delta:
                    state.best_loss, state.best_epoch, state.bad_epochs = val_metrics["loss"], epoch, 0
                    own = accelerator.unwrap_model(model).state_dict()
                    state.best_state = {k: own[k].detach().clone() for k in changing}
                else:
                    state.bad_epochs += 1
                name, value = _val_score(row)
                score = f"{name} {value:.3f}"
                status = f"val loss {row['val_loss']:.3f} {score} (best ep {state.best_epoch})"
            stop = None
            if val_loader is not None and cfg.patience is not None and state.bad_epochs >= cfg.patience:
                stop = "early stop"
            elif cfg.time_limit is not None and elapsed() >= cfg.time_limit and epoch < cfg.epochs:
                stop = "time limit"
            state.stopped = stop
            save_state(generator.get_state())
            bar.update(task, advance=1, status=status)
            if runlog is not None:
                runlog.epoch(row, elapsed())
            if log is not None:
                seconds = elapsed()
                line = epoch_line(row, cfg.epochs, seconds, state.best_epoch == epoch, desc)
                if epoch < cfg.epochs and not stop:
                    line += f", about {_eta(seconds, epoch, cfg.epochs)} left"
                log.print(line, highlight=False, markup=False, soft_wrap=True)
            if stop == "early stop" and log is not None:
                log.print(
                    f"early stop: no validation loss better by more than train.min_delta {cfg.min_delta:g} for "
                    f"{cfg.patience} epochs",
                    markup=False,
                )
            elif stop == "time limit" and (show_bar or log is not None):
                (log or bar.console).print(
                    f"time limit: training stopped after epoch {epoch} of {cfg.epochs}, {elapsed():.1f} s passing "
                    f"train.time_limit {cfg.time_limit:g} s; the weights of epoch {state.best_epoch} are kept",
                    markup=False,
                    highlight=False,
                )
            if stop:
                break
    if runlog is not None:
        runlog.close(state.history)
    model = accelerator.unwrap_model(model)
    if state.best_state is not None:
        load_changing(model, state.best_state, changing, "the best weights")
    if checkpoint is not None and main:
        save_weights(model.state_dict(), checkpoint)
    return FitResult(
        best_epoch=state.best_epoch,
        best_val_loss=state.best_loss if val_loader is not None and objective.validates else None,
        epochs_run=len(state.history),
        seconds=elapsed(),
        history=state.history,
        checkpoint=Path(checkpoint) if checkpoint is not None else None,
        stopped=state.stopped or None,
    )


def changing_names(model: nn.Module, allowed: set[str]) -> list[str]:
    """The state-dict entries training can change: all but those of encoders none of whose parameters may
    train (kept in eval mode, their BatchNorm statistics do not change either)."""
    fixed = tuple(
        f"encoders.{name}."
        for name in getattr(model, "encoders", {})
        if not any(n.startswith(f"encoders.{name}.") for n in allowed)
    )
    return [k for k in model.state_dict() if not k.startswith(fixed)] if fixed else list(model.state_dict())


def load_changing(model: nn.Module, tensors: dict[str, torch.Tensor], changing: list[str], what: str) -> None:
    """Load the entries ``changing`` (a checkpoint may hold more: before, it held every weight); the others
    stay as they are. A missing entry is an error naming it."""
    missing = [k for k in changing if k not in tensors]
    if missing:
        raise ValueError(f"{what} do not fit the model: missing {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    model.load_state_dict({k: tensors[k] for k in changing}, strict=False)


def _eta(seconds: float, epoch: int, epochs: int) -> str:
    left = seconds / epoch * (epochs - epoch)
    return f"{left:.0f} s" if left < 120 else f"{left / 60:.1f} min"


@dataclass
class _State:
    """Everything a resumed run needs besides the model, optimizer and scheduler (saved by :meth:`save`)."""

    epoch: int = 0  # epochs finished
    step_in_epoch: int = 0  # batches of the current epoch already trained
    global_step: int = 0  # optimizer steps
    train_loss: float = 0.0  # running sums of the current epoch
    seen: int = 0
    best_loss: float = math.inf
    best_epoch: int = 0
    bad_epochs: int = 0
    stopped: str | bool = False  # "early stop" or "time limit" (True: an early stop, in a checkpoint from before)
    seconds: float = 0.0  # training time before this process started
    history: list = field(default_factory=list)
    best_state: dict | None = None
    epoch_start: torch.Tensor | None = None  # the loader's generator when the current epoch began

    FIELDS = ("epoch", "step_in_epoch", "global_step", "train_loss", "seen", "best_epoch", "bad_epochs", "stopped")

    def save(self, path, model, optimizer, scheduler, epoch_start, seconds, changing: list[str]) -> None:
        own = model.state_dict()
        tensors = {f"model.{k}": own[k] for k in changing}
        if self.best_state is not None:
            tensors.update({f"best.{k}": v for k, v in self.best_state.items()})
        opt_tensors, opt_meta = resume_mod.optimizer_state(optimizer)
        rng_tensors, rng_meta = resume_mod.rng_state()
        tensors.update(opt_tensors | rng_tensors | {"rng.loader_epoch_start": epoch_start})
        meta = {k: getattr(self, k) for k in self.FIELDS}
        meta |= {
            "best_loss": None if math.isinf(self.best_loss) else self.best_loss,
            "seconds": seconds,
            "history": self.history,
            "optimizer": opt_meta,
            "scheduler": scheduler.state_dict(),
            "rng": rng_meta,
        }
        resume_mod.save(path, tensors, meta)

    def load(self, path, model, optimizer, scheduler, generator, changing: list[str]) -> None:
        tensors, meta = resume_mod.load(path)
        for k in self.FIELDS:
            setattr(self, k, meta[k])
        self.best_loss = math.inf if meta["best_loss"] is None else meta["best_loss"]
        self.seconds, self.history = meta["seconds"], meta["history"]
        own = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
        load_changing(model, own, changing, f"the weights in {path}")
        best = {k[5:]: v for k, v in tensors.items() if k.startswith("best.")}
        self.best_state = best or None
        resume_mod.load_optimizer_state(optimizer, tensors, meta["optimizer"])
        scheduler.load_state_dict(meta["scheduler"])
        resume_mod.set_rng_state(tensors, meta["rng"])
        self.epoch_start = tensors["rng.loader_epoch_start"]
        generator.set_state(self.epoch_start)  # a finished epoch saved the state the next one starts from
        if self.stopped:
            self.epoch = 10**9  # it had stopped early: nothing left to train


def balanced_weights(labels: torch.Tensor, classes: int) -> torch.Tensor:
    """n / (classes present * count) per class (scikit-learn's 'balanced'); a class with no train example: 1."""
    counts = torch.bincount(labels.long().cpu(), minlength=classes).double()
    present = int((counts > 0).sum())
    weight = torch.where(counts > 0, counts.sum() / (present * counts.clamp(min=1)), torch.ones_like(counts))
    return weight.float()


def _num_outputs(model: nn.Module) -> int:
    classes = getattr(model, "classes", None)
    if classes:
        return len(classes)
    out = getattr(getattr(model, "head", None), "out", None)
    return int(out.out_features)


def _selection_loss(objective: Objective) -> nn.Module:
    """The loss the validation split is scored with to pick the best epoch: the training criterion's own
    class weights where it has them."""
    weight = getattr(objective, "weight", None)
    return nn.CrossEntropyLoss(weight=weight)


@torch.no_grad()
def _gathered(model, loader, accelerator) -> tuple[torch.Tensor, torch.Tensor]:
    """(outputs, labels) of every batch of ``loader``, gathered from every process, in eval mode, on the CPU."""
    model.eval()
    outs, labels = [], []
    for inputs, y in loader:
        out, y = accelerator.gather_for_metrics((model(inputs), y))
        outs.append(out.float().cpu())
        labels.append(y.cpu())
    return torch.cat(outs), torch.cat(labels)


def scalar_metrics(metrics: dict) -> dict:
    """The numbers of an evaluation (accuracy, loss, n, ...), without its lists and names."""
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


EVAL_BATCH = 32  # a batch of 32 photos runs as fast per photo as 256 on a CPU, in an eighth of the memory


@contextmanager
def inference(model: nn.Module, inference_mode: bool = True) -> Iterator[nn.Module]:
    """The model in eval mode under ``torch.inference_mode`` (``torch.no_grad`` without ``inference_mode``: what
    a model that DDP wraps needs), its convolution weights channels-last (1.5x faster on a CPU; the convolutions
    then run channels-last whatever the input's layout); left as it was afterwards."""
    was_training = model.training
    convolutions = any(p.dim() == 4 for p in model.parameters())
    if convolutions:
        model.to(memory_format=torch.channels_last)
    model.eval()
    try:
        with torch.inference_mode() if inference_mode else torch.no_grad():
            yield model
    finally:
        if convolutions:  # outside inference mode: the weights stay ordinary tensors
            model.to(memory_format=torch.contiguous_format)
        model.train(was_training)


def logits_of(model: nn.Module, split: Examples, *, batch_size: int = EVAL_BATCH, cpu: bool = False) -> tuple:
    """(logits [N, C] before any temperature, labels [N]) of ``split``, in eval mode, in row order."""
    accelerator = make_accelerator(cpu)
    temperature = getattr(model, "temperature", 1.0)  # read before prepare wraps the model (DDP)
    with inference(model, inference_mode=False):  # prepare may wrap it in DDP, which needs ordinary tensors
        outputs, labels = _gathered(*accelerator.prepare(model, make_loader(split, batch_size)), accelerator)
    return outputs * temperature, labels


def evaluate(model: nn.Module, split: Examples, *, batch_size: int = EVAL_BATCH, cpu: bool = False) -> dict:
    """Accuracy, macro-F1, mean cross-entropy, the confusion matrix (rows: true class, columns: predicted) and
    each class's precision, recall, F1 and support; ``classes`` names them where the model knows its names."""
    classes, task = getattr(model, "classes", None), getattr(model, "task", "classification")
    objective = Regression(model.target_mean, model.target_std) if task == "regression" else None
    thresholds = getattr(model, "thresholds", None)  # read before prepare wraps the model (DDP)
    accelerator = make_accelerator(cpu)
    with inference(model, inference_mode=False):  # prepare may wrap it in DDP, which needs ordinary tensors
        model, loader = accelerator.prepare(model, make_loader(split, batch_size))
        if task == "regression":
            return _evaluate_regression(model, loader, accelerator, objective)
        if task == "multilabel":
            out = _evaluate_multilabel(model, loader, accelerator, thresholds)
        else:
            out = _evaluate_loader(model, loader, accelerator, nn.CrossEntropyLoss(), with_confusion=True)
    return {**out, "classes": classes} if classes is not None else out


@torch.no_grad()
def _evaluate_regression(model, loader, accelerator, objective: Regression) -> dict:
    """n, loss (the objective's, on standardised values), RMSE, MAE and R^2 in the target's units."""
    from mmtransfer.tasks import regression_metrics

    pred, true = _gathered(model, loader, accelerator)
    true = true.float()
    out = regression_metrics(pred.numpy(), true.numpy(), objective.std)
    out["loss"] = float(objective.fn((pred - objective.mean) / objective.std, (true - objective.mean) / objective.std))
    return out


@torch.no_grad()
def _evaluate_multilabel(model, loader, accelerator, thresholds=None) -> dict:
    """Multi-label metrics at ``thresholds`` (0.5 where none): micro- and macro-F1, subset accuracy, mAP, BCE."""
    from mmtransfer.tasks import multilabel_metrics

    logits, labels = _gathered(model, loader, accelerator)
    return multilabel_metrics(torch.sigmoid(logits).numpy(), labels.numpy(), 0.5 if thresholds is None
                              else np.asarray(thresholds))  # fmt: skip


def _balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """The mean of each class's recall, over the classes present in ``y_true``."""
    present = np.unique(y_true)
    return float(np.mean([(y_pred[y_true == c] == c).mean() for c in present]))


@torch.no_grad()
def _evaluate_loader(model, loader, accelerator, loss_fn, with_confusion: bool = False) -> dict:
    model.eval()
    losses, preds, targets = [], [], []
    for inputs, labels in loader:
        logits = model(inputs)
        logits, labels = accelerator.gather_for_metrics((logits, labels))
        losses.append(loss_fn(logits, labels).item() * len(labels))
        preds.append(logits.argmax(-1).cpu().numpy())
        targets.append(labels.cpu().numpy())
    y_pred, y_true = np.concatenate(preds), np.concatenate(targets)
    classes = np.arange(logits.shape[-1])
    out = {
        "n": int(len(y_true)),
        "loss": float(sum(losses) / len(y_true)),
        "accuracy": float((y_pred == y_true).mean()),
        "macro_f1": float(f1_score(y_true, y_pred, labels=classes, average="macro", zero_division=0)),
        "balanced_accuracy": _balanced_accuracy(y_true, y_pred),
    }
    if with_confusion:
        out["confusion"] = confusion_matrix(y_true, y_pred, labels=classes).tolist()
        precision, recall, f1, support = precision_recall_fscore_support(
            y_true, y_pred, labels=classes, zero_division=0
        )
        out["f1_per_class"] = f1.tolist()
        out["precision_per_class"] = precision.tolist()
        out["recall_per_class"] = recall.tolist()
        out["support_per_class"] = support.tolist()
    return out
