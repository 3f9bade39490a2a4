"""The training loop, read top to bottom: AdamW, warm-up + cosine, early stopping on validation loss.

:func:`fit` trains a model in place; it ends holding the weights of the epoch with the lowest validation loss (an
epoch counts as better when its loss falls by more than ``cfg.min_delta``), or, when ``val`` is None (no labels
to select with), those of the last epoch after exactly ``cfg.epochs``. ``cfg.time_limit``: training stops at the
end of the epoch that passes it, keeping the best weights.

The one training loop: ``objective`` says what the loss is (classification by default; feature matching for
distillation). Only parameters with ``requires_grad`` when ``fit`` starts may train; ``cfg.strategy``
(:mod:`mmtransfer.transfer.strategies`) decides which of them do in each epoch and at what peak rate per layer
group. ``history`` records per epoch the losses, the trainable parameter count and every group's learning rate.
``checkpoint``: the weights the model ends with are written there once, when training ends (safetensors,
atomically). ``augment`` maps input names to random transforms applied to training batches.

``state_dir``: a resumable checkpoint (:mod:`mmtransfer.resume`) is written there at the end of every epoch and
every ``cfg.checkpoint_every`` optimizer steps; it and the copy of the best weights hold only what training can
change (not the encoders frozen from the start); with ``resume`` training continues from it and ends exactly as
an uninterrupted run with the same seed would (on the CPU). ``log_dir``: ``history.csv``, TensorBoard events
where installed, and ``learning_curve.png``. Accelerate places the model and batches, so the same code runs on a
CPU, a GPU or under ``accelerate launch``; mixed precision (``cfg.precision``), gradient accumulation and
clipping go through it. A loss that is not finite stops the run (:class:`TrainingError`), keeping the last
checkpoint. Progress: a bar on a terminal, otherwise one line per epoch on ``console`` (with an ETA).

The loop is here; what it sets up is in :mod:`.setup`, the objectives in :mod:`.objectives`, the resumable
state in :mod:`.state`, each epoch's report in :mod:`.report` and the scoring in :mod:`.evaluation`. It lives in
the package's own module because ``mmtransfer.train.fit`` is the name everyone imports, and the names it calls at
the end of a run (``save_weights``, ``RunLog``) are looked up here, where a test replaces them.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import islice
from pathlib import Path

import torch
from accelerate.utils import set_seed
from rich.console import Console

from mmtransfer.checkpoint import save_weights
from mmtransfer.config import TrainConfig
from mmtransfer.data import Examples
from mmtransfer.runlog import RunLog
from mmtransfer.train.evaluation import EVAL_BATCH, evaluate, inference, logits_of, scalar_metrics, validate
from mmtransfer.train.objectives import (
    Classification,
    FeatureMatch,
    Multilabel,
    Objective,
    Regression,
    SoftTargets,
    TrainingError,
    balanced_weights,
    default_objective,
    place_objective,
)
from mmtransfer.train.report import epoch_line, epoch_row, epoch_status, progress_bar, report_epoch, stop_reason
from mmtransfer.train.setup import (
    changing_names,
    describe_processes,
    fit_accelerator,
    fit_batch_size,
    fit_loaders,
    make_accelerator,
    make_optimizer,
    on_cpu,
    prepare,
    process_state,
    start_epoch,
    train_mode,
    warmup_cosine,
    what_trains,
)
from mmtransfer.train.state import FitResult, FitState, load_changing, start_state

__all__ = [
    "EVAL_BATCH", "Classification", "FeatureMatch", "FitResult", "FitState", "Multilabel", "Objective",
    "Regression", "RunLog", "SoftTargets", "TrainingError", "balanced_weights", "changing_names", "epoch_line",
    "evaluate",
    "fit", "inference", "load_changing", "logits_of", "make_accelerator", "on_cpu", "process_state",
    "progress_bar", "save_weights", "scalar_metrics", "train_mode", "warmup_cosine",
]  # fmt: skip


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
    """Train ``model`` in place with ``objective`` (classification by default); it ends holding the weights of
    the epoch with the lowest validation loss, or without ``val`` those of the last epoch. ``checkpoint``: the
    final weights; ``state_dir``: the resumable checkpoint, which ``resume`` continues from; ``log_dir``:
    history.csv, TensorBoard, learning curve. The module's docstring says the rest (:mod:`mmtransfer.train`)."""
    objective = objective if objective is not None else default_objective(model, train.labels, cfg.class_weights)
    set_seed(cfg.seed)
    state = FitState()  # the clock starts: seconds count from here (and from before a resume)
    accelerator = fit_accelerator(cfg)
    place_objective(objective, accelerator.device)
    main = accelerator.is_main_process
    show_bar = cfg.progress and main and (console or Console()).is_terminal
    log = console if (console is not None and main and not show_bar) else None
    cfg = fit_batch_size(cfg, len(train), accelerator.num_processes, log)
    describe_processes(accelerator, cfg, console if main else None)
    generator = torch.Generator().manual_seed(cfg.seed)
    train_loader, val_loader = fit_loaders(train, val, cfg, generator, num_workers)
    allowed, changing = what_trains(model, cfg.strategy, accelerator.num_processes)
    optimizer, scheduler = make_optimizer(model, cfg, allowed, len(train_loader))
    model, optimizer, train_loader, val_loader, scheduler = prepare(
        accelerator, model, optimizer, train_loader, val_loader, scheduler
    )
    unwrapped = accelerator.unwrap_model(model)
    state_path = start_state(state, state_dir, resume, main, unwrapped, optimizer, scheduler, generator, changing)
    runlog = RunLog(Path(log_dir), resume=resume) if log_dir is not None and main else None
    validates = val_loader is not None and objective.validates  # else the latest weights are the result

    def save_state(epoch_start: torch.Tensor) -> None:  # the main process only
        if state_path is not None:
            state.save(state_path, unwrapped, optimizer, scheduler, epoch_start, state.elapsed(), changing)

    with progress_bar(show_bar, console) as bar:
        task = bar.add_task(desc, total=cfg.epochs, completed=state.epoch, status="")
        say = log if log is not None else bar.console if show_bar else None
        for epoch in range(state.epoch + 1, cfg.epochs + 1):
            n_trainable = start_epoch(unwrapped, cfg, epoch, allowed, train.names(), optimizer, say)
            epoch_start = state.shuffle_start(generator)  # the shuffle of this epoch is drawn from here
            # batches trained before an interruption are drawn again, in the same order, and skipped
            for i, (inputs, labels) in islice(enumerate(train_loader), state.step_in_epoch, None):
                if augment:
                    inputs = {**inputs, **{k: f(inputs[k]) for k, f in augment.items() if k in inputs}}
                loss = train_step(accelerator, model, objective, optimizer, scheduler, inputs, labels, cfg, epoch, i)
                state.count_batch(loss.item(), len(labels), i + 1, accelerator.sync_gradients)
                if accelerator.sync_gradients and state.checkpoint_due(cfg.checkpoint_every):
                    save_state(epoch_start)
            row = epoch_row(epoch, state.train_loss / max(state.seen, 1), n_trainable, optimizer, scheduler)
            state.end_epoch(epoch, row)
            val_loss = validate(model, val_loader, accelerator, objective, row) if validates else None
            state.select(epoch, val_loss, cfg.min_delta, unwrapped, changing)
            state.stopped = stop = stop_reason(cfg, epoch, state.bad_epochs, val_loader is not None, state.elapsed())
            save_state(generator.get_state())
            bar.update(task, advance=1, status=epoch_status(row, state.best_epoch))
            if runlog is not None:
                runlog.epoch(row, state.elapsed())
            report_epoch(log, say, row, cfg, stop, state.best_epoch, state.elapsed(), desc)
            if stop:
                break
    if runlog is not None:
        runlog.close(state.history)
    if state.best_state is not None:
        load_changing(unwrapped, state.best_state, changing, "the best weights")
    if checkpoint is not None and main:
        save_weights(unwrapped.state_dict(), checkpoint)
    return state.result(checkpoint, validates, state.elapsed())


def train_step(accelerator, model, objective, optimizer, scheduler, inputs, labels, cfg, epoch, i) -> torch.Tensor:
    """One batch (``i``, from 0) of ``epoch``: forward, backward, and where Accelerate's gradient accumulation
    completes a step, clipping to ``cfg.max_grad_norm``, the optimizer's and the scheduler's step. A loss that is
    not finite stops the run, naming the epoch and step. Returns the batch's loss."""
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
    return loss
