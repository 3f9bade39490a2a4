"""How a run trains its model, strategy by strategy: the solved linear probe, LP-FT, ``auto``'s choice between
them, and every other strategy through the one training loop (:func:`mmtransfer.train.fit`).

- ``linear_probe``: encoders frozen; where the fusion is a concatenation and the head linear, the head is
  *solved* (:mod:`mmtransfer.transfer.probe`) on the fused embeddings of every labelled row: the selection rows
  join the train rows, cross-validation on them picks the L2 strength, and no epoch runs. Otherwise the head
  trains by gradient steps, as every strategy does.
- ``lp_ft`` (Kumar et al. 2022, "Fine-Tuning can Distort Pretrained Features"): the probe solved on the frozen
  features of the train rows goes into the head, then everything fine-tunes at ``train.strategy.ft_lr`` with
  early stopping on the selection rows. A head that already fits changes the features little.
- ``auto``: with no pretrained encoder, ``full`` (every from-scratch config trains as before). With one, the
  probe is solved on the train rows; where a timed forward pass, then two timed training steps, say LP-FT
  fits ``train.time_limit`` (60 s when none), LP-FT runs and the two are compared on the selection rows (never
  the test rows), the better kept (a probe is then solved again on every label); otherwise the probe on every
  label.

The test split is read only after the model is chosen.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mmtransfer import artifact
from mmtransfer.cache import add_cached_features
from mmtransfer.checkpoint import save_weights
from mmtransfer.config import StrategyConfig
from mmtransfer.data import LabelUse, make_loader
from mmtransfer.errors import UserError
from mmtransfer.runfolder import RunFolder
from mmtransfer.train import (
    FitResult,
    evaluate,
    fit,
    make_accelerator,
    scalar_metrics,
    train_mode,
)
from mmtransfer.transfer import probe, strategies
from mmtransfer.transfer.freeze import count_parameters, trainable_names

DEFAULT_TIME_LIMIT = 60.0  # seconds auto allows LP-FT where train.time_limit is none
TIMED_STEPS = 2  # of train.batch_size rows, after a first forward pass on two rows that warms up
PROBE = StrategyConfig(name="linear_probe")  # what freezes the encoders


@dataclass
class Trained:
    """What training gave: the loop's result (one row of history for a solved probe), the probe's record
    (metrics.json ``probe``) and auto's choice (``strategy``) where there were ones."""

    result: FitResult
    probe: dict | None = None
    strategy: dict | None = None


def train_with_strategy(model, data, cfg, out: Path, console, *, objective, resume: bool, state) -> Trained:
    """Train ``model`` on ``data`` as ``cfg.train.strategy`` says; ``data`` ends with the splits the run used
    (a solved probe's selection rows joined to train, cached features added)."""
    name = cfg.train.strategy.name
    allowed = set(trainable_names(model))  # what may train at all (transfer.freeze and the like stay frozen)
    run = _Run(model, data, cfg, Path(out), console, objective, resume, state, allowed)
    if name == "auto":
        return run.auto()
    if name == "lp_ft":
        reason = probe.solvable(model, data.task)
        if reason is not None:
            raise UserError(f"train.strategy.name lp_ft starts from a solved linear probe, and here {reason}")
        return run.lp_ft()
    if name == "linear_probe":
        reason = probe.solvable(model, data.task)
        if reason is None:
            return run.solved_probe()
        _say(console, f"linear probe: trained by gradient steps (train.epochs, train.lr), not solved: {reason}")
    return run.loop()


def _say(console, text: str) -> None:
    console.print(text, markup=False, highlight=False)


@dataclass
class _Run:
    model: object
    data: object
    cfg: object
    out: Path
    console: object
    objective: object
    resume: bool
    state: object
    allowed: set

    # ------------------------------------------------------------ the training loop, as every strategy has it

    def loop(self, strategy=None) -> Trained:
        """The strategy's epochs (``strategy`` in place of the config's), with frozen encoders' features cached."""
        cfg, data, model = self.cfg, self.data, self.model
        strategy = strategy or cfg.train.strategy
        if strategy.name == "linear_probe":  # encoders frozen from the start, so their features can be cached
            strategies.schedule(model, strategy, 1, self.allowed)
        if cfg.train.cache_features:
            parts = {"train": data.train, "test": data.test, **({"val": data.val} if data.val is not None else {})}
            splits = add_cached_features(model, parts, console=self.console)
            data.train, data.val, data.test = splits["train"], splits.get("val"), splits["test"]
        self.summary()
        _say(self.console, data.labels.sentence())
        return Trained(self.fit(cfg.train.model_copy(update={"strategy": strategy})))

    def fit(self, train_cfg, resume: bool | None = None) -> FitResult:
        return fit(
            self.model,
            self.data.train,
            self.data.val,
            train_cfg,
            checkpoint=RunFolder(self.out).weights,
            augment=self.data.augment,
            console=self.console,
            num_workers=self.cfg.data.num_workers,
            state_dir=self.out,
            resume=self.resume if resume is None else resume,
            log_dir=self.out,
            objective=self.objective,
        )

    def summary(self) -> None:
        data = self.data
        trainable, total = count_parameters(self.model)
        n_val = 0 if data.val is None else len(data.val)
        _say(
            self.console,
            f"{data.name}: {len(data.train)} train / {n_val} val / {len(data.test)} test; "
            f"{trainable:,} of {total:,} parameters trainable ({len(trainable_names(self.model))} tensors)",
        )

    # ------------------------------------------------------------ the solved probe

    def frozen_embeddings(self, parts: dict) -> tuple[dict, dict[str, torch.Tensor]]:
        """Encoders frozen: the splits (with their cached features where train.cache_features) and each one's
        fused embedding."""
        strategies.schedule(self.model, PROBE, 1, self.allowed)
        if self.cfg.train.cache_features:
            parts = add_cached_features(self.model, parts, console=self.console)
        return parts, {key: probe.embeddings(self.model, split) for key, split in parts.items()}

    def solve(self, z: torch.Tensor, y: torch.Tensor, row_ids: np.ndarray | None = None) -> probe.ProbeResult:
        result = probe.solve_probe(
            z, y, task=self.data.task, seed=self.cfg.train.seed, num_classes=len(self.data.classes) or None,
            class_weight="balanced" if self.cfg.train.class_weights == "balanced" else None, row_ids=row_ids,
        )  # fmt: skip
        probe.put_in_head(self.model, result)
        return result

    def solved_probe(self, z: dict[str, torch.Tensor] | None = None, why: str = "") -> Trained:
        """The probe solved on every labelled row (train and selection), in the head; the run's model."""
        data, start = self.data, time.perf_counter()
        if z is None:
            z = self.frozen_embeddings({"train": data.train, **({"val": data.val} if data.val is not None else {})})[1]
        strategies.schedule(self.model, PROBE, 1, self.allowed)
        joined = data.train if data.val is None else data.train.concat(data.val)
        budget = data.labels.budget if data.labels else None
        data.train, data.val = joined, None
        y = joined.labels
        z_all = torch.cat([z["train"], *([z["val"]] if "val" in z else [])])  # in the order of ``joined``
        result = self.solve(z_all, y, getattr(joined, "row_ids", None))  # a table's rows are named by number
        record = result.record
        if record["probe"] == "ridge":
            how = f"alpha chosen by {record['cv']['folds']}-fold cross-validation" if record["cv"] else "alpha fixed"
        elif record["cv"]:
            kind = "grouped " if record["cv"]["grouped"] else ""
            how = f"C chosen by {record['cv']['folds']}-fold {kind}cross-validation"
        else:
            how = f"C fixed at {record['C']:g} ({record['why_fixed']})"
        note = f"{len(y)} labels train the probe; {how} on the same labels"
        data.labels = LabelUse(len(y), 0, "none", budget, note)
        if self.state.is_main_process:
            artifact.write_splits(self.out, self.cfg, data)  # the selection rows are train rows now
        self.summary()
        _say(self.console, f"labels: {note}" + (f"; budget {budget}" if budget else ""))
        _say(self.console, result.line() + (f"; {why}" if why else ""))
        if self.cfg.train.cache_features:  # only now, with the model chosen: the test rows' features
            data.test = add_cached_features(self.model, {"test": data.test}, console=self.console)["test"]
        path = RunFolder(self.out).weights
        if self.state.is_main_process:
            save_weights(self.model.state_dict(), path)
        n_head = sum(p.numel() for p in self.model.head.parameters())
        row = {"epoch": 1, "train_loss": probe.training_loss(result, z_all, y), "val_loss": None,
               "val_accuracy": None, "lr": None, "trainable": n_head, "lr_groups": {},
               "solved": record["solver"]}  # fmt: skip
        seconds = time.perf_counter() - start
        return Trained(FitResult(1, None, 1, seconds, [row], path), probe=record)

    # ------------------------------------------------------------ LP-FT

    def lp_ft(self, probe_result: probe.ProbeResult | None = None) -> Trained:
        """The probe solved on the train rows in the head, then everything fine-tuned at ``ft_lr``."""
        data, s = self.data, self.cfg.train.strategy
        if probe_result is None:
            z = self.frozen_embeddings({"train": data.train})[1]["train"]
            probe_result = self.solve(z, data.train.labels, getattr(data.train, "row_ids", None))
            _say(self.console, "LP-FT, step 1: " + probe_result.line())
        for name, param in self.model.named_parameters():  # every parameter that may train, trains
            param.requires_grad_(name in self.allowed)
        self.summary()
        _say(self.console, data.labels.sentence())
        _say(self.console, f"LP-FT, step 2: everything fine-tuned from the solved probe at lr {s.ft_lr:g} "
                           "(train.strategy.ft_lr), the encoders' BatchNorm statistics kept")  # fmt: skip
        strategy = s.model_copy(update={"name": "lp_ft"})
        train_cfg = self.cfg.train.model_copy(update={"lr": s.ft_lr, "strategy": strategy})
        resume = self.resume and RunFolder(self.out).checkpoint.is_file()
        return Trained(self.fit(train_cfg, resume=resume), probe={**probe_result.record, "fitted_on": "train rows"})

    # ------------------------------------------------------------ auto

    def auto(self) -> Trained:
        data, cfg, model = self.data, self.cfg, self.model
        full = cfg.train.strategy.model_copy(update={"name": "full"})
        names = strategies.pretrained(cfg.model.encoders)
        if not names:
            _say(self.console, "strategy auto: full fine-tuning (no encoder starts from pretrained weights)")
            return self._chose(self.loop(full), "full", "no encoder starts from pretrained weights")
        reason = probe.solvable(model, data.task)
        if reason is not None:
            _say(self.console, f"strategy auto: full fine-tuning (no solved probe: {reason})")
            return self._chose(self.loop(full), "full", f"no solved probe: {reason}")
        pretrained = ", ".join(names)
        if data.val is None:
            why = "no selection labels to compare it with LP-FT on"
            _say(self.console, f"strategy auto ({pretrained} pretrained): the solved linear probe ({why})")
            return self._chose(self.solved_probe(), "linear_probe", why)
        limit = cfg.train.time_limit
        limit_s = DEFAULT_TIME_LIMIT if limit is None else float(limit)
        limit_text = f"{limit_s:g} s" + (" (train.time_limit)" if limit is not None else " (train.time_limit none)")
        resuming = self.resume and RunFolder(self.out).checkpoint.is_file()  # LP-FT was running: it goes on
        timing = time.perf_counter()
        estimate = None if resuming else self._shared(self.lp_ft_seconds(limit_s))
        record = {"pretrained": names, "time_limit_s": limit_s, "lp_ft_estimate_s": estimate,
                  "timed_in_s": round(time.perf_counter() - timing, 2)}  # fmt: skip
        if estimate is not None and not estimate <= limit_s:
            why = f"LP-FT would take up to {estimate:.0f} s, over the limit of {limit_text}"
            _say(
                self.console, f"strategy auto ({pretrained} pretrained): the solved linear probe on every label; " + why
            )
            return self._chose(self.solved_probe(), "linear_probe", why, record)
        if estimate is not None:
            _say(self.console, f"strategy auto ({pretrained} pretrained): LP-FT would take up to {estimate:.0f} s, "
                               f"within {limit_text}: comparing it with the solved probe on the "
                               f"{len(data.val)} selection labels")  # fmt: skip
        pretrained_state = copy.deepcopy(model.state_dict())
        parts, z = self.frozen_embeddings({"train": data.train, "val": data.val})
        train_probe = self.solve(z["train"], data.train.labels, getattr(data.train, "row_ids", None))
        _say(self.console, "LP-FT, step 1: " + train_probe.line())
        probe_val = scalar_metrics(evaluate(model, parts["val"], cpu=cfg.train.cpu))
        lp_ft = self.lp_ft(train_probe)
        lp_ft_val = scalar_metrics(evaluate(model, data.val, cpu=cfg.train.cpu))
        key = model.task.selection  # the metric the probe and LP-FT are compared by (higher is better)
        record.update(selection_labels=len(data.val), probe_val=probe_val, lp_ft_val=lp_ft_val,
                      lp_ft_best_epoch=lp_ft.result.best_epoch, lp_ft_epochs_run=lp_ft.result.epochs_run,
                      lp_ft_seconds=round(lp_ft.result.seconds, 1))  # fmt: skip
        compared = (f"val {key} {lp_ft_val[key]:.4f} (loss {lp_ft_val['loss']:.4f}) after LP-FT, {probe_val[key]:.4f} "
                    f"(loss {probe_val['loss']:.4f}) for the probe, on {len(data.val)} selection labels")  # fmt: skip
        if (lp_ft_val[key], -lp_ft_val["loss"]) > (probe_val[key], -probe_val["loss"]):
            _say(self.console, f"strategy auto: LP-FT kept: {compared}")
            lp_ft.strategy = {"name": "auto", "chose": "lp_ft", "why": compared, **record}
            return lp_ft
        _say(self.console, f"strategy auto: the solved probe kept: {compared}; solving it again on every label")
        model.load_state_dict(pretrained_state)  # the encoders as they were before fine-tuning
        return self._chose(self.solved_probe(z, why="kept by auto"), "linear_probe", compared, record)

    def lp_ft_seconds(self, limit_s: float) -> float:
        """LP-FT's time, at most: the seconds of a training step of everything per row (timed on a copy of the
        model) times the rows of every epoch, plus scoring the selection rows each epoch (a forward pass is
        about a third of a step). A first forward pass on two rows (times 3) warms up; where it already puts LP-FT
        over ``limit_s`` (on 2 CPU cores an image backbone's step takes seconds), nothing more is timed;
        otherwise the fastest of a few steps of ``train.batch_size`` rows counts."""
        cfg, data = self.cfg, self.data
        device = make_accelerator(cfg.train.cpu).device
        trial = copy.deepcopy(self.model).to(device)
        for name, param in trial.named_parameters():
            param.requires_grad_(name in self.allowed)
        train_mode(trial)
        # No optimiser: its step is elementwise (milliseconds), and building AdamW first imports torch's compiler
        # stack (7 s on a busy 2-core machine), a cost a run whose probe wins would never pay otherwise.
        objective = self.objective or self.model.task.objective(data.train.labels, len(data.classes), None)

        def seconds_per_row(inputs: dict, labels: torch.Tensor) -> float:
            start = time.perf_counter()
            inputs = {k: v.to(device) for k, v in inputs.items()}
            for k, f in (data.augment or {}).items():
                if k in inputs:
                    inputs[k] = f(inputs[k])
            objective.loss(trial, inputs, labels.to(device)).backward()
            trial.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.synchronize()
            return (time.perf_counter() - start) / len(labels)

        def forward_seconds_per_row(inputs: dict, labels: torch.Tensor) -> float:
            """A forward pass without gradients, times 3 (a step is a forward and a backward about twice as
            long): no activations are kept, so a first look costs little memory (a backward through an image
            backbone at 224x224 holds gigabytes on a CPU)."""
            start = time.perf_counter()
            with torch.no_grad():
                trial({k: v.to(device) for k, v in inputs.items()})
            if device.type == "cuda":
                torch.cuda.synchronize()
            return 3 * (time.perf_counter() - start) / len(labels)

        rows = (len(data.train) + len(data.val) / 3) * cfg.train.epochs
        batch = min(cfg.train.batch_size, len(data.train))
        two = next(iter(make_loader(data.train, min(2, batch), shuffle=True, seed=cfg.train.seed)))
        first = forward_seconds_per_row(*two)
        if first * rows > limit_s:  # over the limit already: no backward pass is timed (its memory is large)
            return first * rows
        loader = make_loader(data.train, batch, shuffle=True, seed=cfg.train.seed)
        timed = [seconds_per_row(*b) for _, b in zip(range(TIMED_STEPS), loader, strict=False)]
        return min(timed) * rows

    def _shared(self, value):
        """The main process's value on every process (each would time its own steps otherwise)."""
        if self.state.num_processes <= 1:
            return value
        from accelerate.utils import broadcast_object_list

        return broadcast_object_list([value])[0]

    def _chose(self, trained: Trained, chose: str, why: str, record: dict | None = None) -> Trained:
        trained.strategy = {"name": "auto", "chose": chose, "why": why, **(record or {})}
        return trained
