"""What a resumable checkpoint holds besides the model, optimizer and scheduler, and which weights it holds."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from mmtransfer import resume as resume_mod
from mmtransfer.errors import UserError


def load_changing(model: nn.Module, tensors: dict[str, torch.Tensor], changing: list[str], what: str) -> None:
    """Load the entries ``changing`` (a checkpoint may hold more: before, it held every weight); the others
    stay as they are. A missing entry is an error naming it."""
    missing = [k for k in changing if k not in tensors]
    if missing:
        raise UserError(f"{what} do not fit the model: missing {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    model.load_state_dict({k: tensors[k] for k in changing}, strict=False)


@dataclass
class FitResult:
    best_epoch: int  # without validation: the last epoch, whose weights are kept
    best_val_loss: float | None  # None without validation
    epochs_run: int
    seconds: float
    history: list[dict] = field(default_factory=list)
    checkpoint: Path | None = None
    stopped: str | None = None  # why training ended before cfg.epochs: "early stop" or "time limit"


@dataclass
class FitState:
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
    start: float = field(default_factory=time.perf_counter)  # when this process started (its fit's set-up too)

    FIELDS = ("epoch", "step_in_epoch", "global_step", "train_loss", "seen", "best_epoch", "bad_epochs", "stopped")

    def count_batch(self, loss: float, n: int, step: int, stepped: bool) -> None:
        """A trained batch of ``n`` examples with mean ``loss``, the ``step``-th of its epoch; ``stepped``: it
        completed an optimizer step (the last of a gradient accumulation)."""
        self.train_loss += loss * n
        self.seen += n
        self.step_in_epoch = step
        if stepped:
            self.global_step += 1

    def checkpoint_due(self, every: int | None) -> bool:
        """Whether the optimizer step just taken is one of every ``every`` (none: only epochs checkpoint)."""
        return bool(every) and self.global_step % every == 0

    def end_epoch(self, epoch: int, row: dict) -> None:
        """``epoch`` finished: its ``row`` in the history, the running sums back to zero."""
        self.history.append(row)
        self.epoch, self.step_in_epoch, self.train_loss, self.seen = epoch, 0, 0.0, 0

    def elapsed(self) -> float:
        """Seconds of training, those before a resume included."""
        return self.seconds + time.perf_counter() - self.start

    def shuffle_start(self, generator: torch.Generator) -> torch.Tensor:
        """The loader generator's state the current epoch's shuffle is drawn from: where it was when the epoch
        began, for an epoch resumed in its middle."""
        if self.step_in_epoch and self.epoch_start is not None:
            generator.set_state(self.epoch_start)
        return generator.get_state()

    def select(self, epoch: int, loss: float | None, min_delta: float, model: nn.Module, changing: list[str]) -> None:
        """Early stopping's book-keeping: a validation loss lower by more than ``min_delta`` makes ``epoch`` the
        best one (a copy of its changing weights kept); any other counts one more bad epoch. Without a loss
        (nothing selects) the latest epoch is the best."""
        if loss is None:
            self.best_epoch = epoch
        elif loss < self.best_loss - min_delta:
            self.best_loss, self.best_epoch, self.bad_epochs = loss, epoch, 0
            own = model.state_dict()
            self.best_state = {k: own[k].detach().clone() for k in changing}
        else:
            self.bad_epochs += 1

    def result(self, checkpoint: str | Path | None, validated: bool, seconds: float) -> FitResult:
        return FitResult(
            best_epoch=self.best_epoch,
            best_val_loss=self.best_loss if validated else None,
            epochs_run=len(self.history),
            seconds=seconds,
            history=self.history,
            checkpoint=Path(checkpoint) if checkpoint is not None else None,
            stopped=self.stopped or None,
        )

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


def start_state(state: FitState, state_dir, resume: bool, main: bool, model, optimizer, scheduler, generator,
                changing) -> Path | None:  # fmt: skip
    """With ``resume``, load the state saved in ``state_dir`` into ``state``, ``model``, ``optimizer``,
    ``scheduler`` and the loader's ``generator``; the main process first removes a killed write's leftovers.
    Returns the path the main process saves the state at (None elsewhere, or without ``state_dir``)."""
    state_path = Path(state_dir) / resume_mod.CHECKPOINT if state_dir is not None else None
    if state_dir is not None and main:
        resume_mod.clean_leftovers(Path(state_dir))
    if resume:
        if state_path is None or not state_path.is_file():
            raise UserError(f"nothing to resume: no {resume_mod.CHECKPOINT} in {state_dir}")
        try:
            state.load(state_path, model, optimizer, scheduler, generator, changing)
        except KeyError as err:  # a readable checkpoint whose metadata lacks a field: hand-made, or another version's
            raise UserError(f"{state_path}: not a training checkpoint this version can resume (no {err})") from None
    return state_path if main else None
