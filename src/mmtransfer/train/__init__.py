"""The training loop, read top to bottom: AdamW, warm-up + cosine, early stopping on validation loss.

Accelerate places the model and batches, so the same code runs on a CPU, a GPU or under ``accelerate launch``.
What trains in each epoch, and at what rate per layer group, is the fine-tuning strategy's
(:mod:`mmtransfer.transfer.strategies`). The loop is here; what it sets up is in :mod:`.setup`, the objectives
in :mod:`.objectives`, the resumable state in :mod:`.state`, each epoch's report in :mod:`.report` and the
scoring in :mod:`.evaluation`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate.utils import set_seed
from rich.console import Console

from mmtransfer import resume as resume_mod
from mmtransfer.checkpoint import save_weights
from mmtransfer.config import TrainConfig
from mmtransfer.data import Examples, make_loader
from mmtransfer.runlog import RunLog
from mmtransfer.train.evaluation import EVAL_BATCH, evaluate, inference, logits_of, scalar_metrics, validate
from mmtransfer.train.objectives import (
    Classification,
    FeatureMatch,
    Multilabel,
    Objective,
    Regression,
    TrainingError,
    balanced_weights,
    default_objective,
    place_objective,
)
from mmtransfer.train.report import epoch_line, epoch_row, epoch_status, progress_bar, report_epoch, stop_reason
from mmtransfer.train.setup import (
    describe_processes,
    fit_accelerator,
    fit_batch_size,
    make_accelerator,
    make_optimizer,
    on_cpu,
    process_state,
    start_epoch,
    train_mode,
    warmup_cosine,
    what_trains,
)
from mmtransfer.train.state import FitState, changing_names, load_changing, start_state

__all__ = [
    "EVAL_BATCH", "Classification", "FeatureMatch", "FitResult", "FitState", "Multilabel", "Objective",
    "Regression", "RunLog", "TrainingError", "balanced_weights", "changing_names", "epoch_line", "evaluate",
    "fit", "inference", "load_changing", "logits_of", "make_accelerator", "on_cpu", "process_state",
    "progress_bar", "save_weights", "scalar_metrics", "train_mode", "warmup_cosine",
]  # fmt: skip


@dataclass
class FitResult:
    best_epoch: int  # without validation: the last epoch, whose weights are kept
    best_val_loss: float | None  # None without validation
    epochs_run: int
    seconds: float
    history: list[dict] = field(default_factory=list)
    checkpoint: Path | None = None
    stopped: str | None = None  # why training ended before cfg.epochs: "early stop" or "time limit"


def fit(
    model: torch.nn.Module,
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
        objective = default_objective(model, train.labels, cfg.class_weights)
    set_seed(cfg.seed)
    start = time.perf_counter()
    accelerator = fit_accelerator(cfg)
    place_objective(objective, accelerator.device)
    main = accelerator.is_main_process
    show_bar = cfg.progress and main and (console or Console()).is_terminal
    log = console if (console is not None and main and not show_bar) else None
    cfg = fit_batch_size(cfg, len(train), accelerator.num_processes, log)
    if accelerator.num_processes > 1 and main and console is not None:
        describe_processes(accelerator, cfg, console)
    generator = torch.Generator().manual_seed(cfg.seed)
    train_loader = make_loader(train, cfg.batch_size, shuffle=True, generator=generator, num_workers=num_workers)
    val_loader = make_loader(val, max(cfg.batch_size, 256), num_workers=num_workers) if val is not None else None
    allowed = what_trains(model, cfg.strategy, accelerator.num_processes)
    changing = changing_names(model, allowed)
    optimizer, scheduler = make_optimizer(model, cfg, allowed, len(train_loader))
    model, optimizer, train_loader, scheduler = accelerator.prepare(model, optimizer, train_loader, scheduler)
    if val_loader is not None:
        val_loader = accelerator.prepare(val_loader)
    unwrapped = accelerator.unwrap_model(model)
    state = start_state(state_dir, resume, main, unwrapped, optimizer, scheduler, generator, changing)
    state_path = Path(state_dir) / resume_mod.CHECKPOINT if state_dir is not None and main else None
    runlog = RunLog(Path(log_dir), resume=resume) if log_dir is not None and main else None

    def elapsed() -> float:
        return state.seconds + time.perf_counter() - start

    def save_state(epoch_start: torch.Tensor) -> None:
        if state_path is not None:
            state.save(state_path, unwrapped, optimizer, scheduler, epoch_start, elapsed(), changing)

    with progress_bar(show_bar, console) as bar:
        task = bar.add_task(desc, total=cfg.epochs, completed=state.epoch, status="")
        say = log if log is not None else bar.console if show_bar else None
        for epoch in range(state.epoch + 1, cfg.epochs + 1):
            n_trainable = start_epoch(unwrapped, cfg, epoch, allowed, train.names(), optimizer, say)
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
                    if cfg.checkpoint_every and state.global_step % cfg.checkpoint_every == 0:
                        save_state(epoch_start)
            row = epoch_row(epoch, state.train_loss / max(state.seen, 1), n_trainable, optimizer, scheduler)
            state.history.append(row)
            state.epoch, state.step_in_epoch, state.train_loss, state.seen = epoch, 0, 0.0, 0
            if val_loader is None or not objective.validates:  # nothing selects: the latest weights are the result
                state.best_epoch = epoch
            else:
                val_loss = validate(model, val_loader, accelerator, objective, row)
                state.keep_if_best(val_loss, epoch, cfg.min_delta, unwrapped, changing)
            state.stopped = stop = stop_reason(cfg, epoch, state.bad_epochs, val_loader is not None, elapsed())
            save_state(generator.get_state())
            bar.update(task, advance=1, status=epoch_status(row, state.best_epoch))
            if runlog is not None:
                runlog.epoch(row, elapsed())
            report_epoch(log, say, row, cfg, stop, state.best_epoch, elapsed(), desc)
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
