"""What :func:`mmtransfer.train.fit` sets up: the Accelerator, the batch size, what trains (before the run and
in each epoch), the optimizer and the learning-rate schedule."""

from __future__ import annotations

import math

import torch
from accelerate import Accelerator, PartialState
from accelerate.state import AcceleratorState
from rich.console import Console
from torch import nn

from mmtransfer.config import StrategyConfig, TrainConfig
from mmtransfer.data import Examples, make_loader
from mmtransfer.train.objectives import TrainingError
from mmtransfer.transfer import strategies
from mmtransfer.transfer.freeze import count_parameters, is_frozen, trainable_names


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


def on_cpu(cpu: bool) -> bool:
    """Accelerate's ``cpu`` flag: asked for, or no GPU here. Only with it does Accelerate see several processes
    on CPUs (``torchrun`` / ``accelerate launch``) as one run (DDP over gloo) rather than each alone."""
    return cpu or not torch.cuda.is_available()


def make_accelerator(cpu: bool, precision: str = "32", accumulation: int = 1) -> Accelerator:
    """An Accelerator with exactly this precision. Accelerate keeps one precision per process and would refuse
    (or silently keep) another; the state is reset when a run asks for a different one (the process group, if
    any, stays as it is)."""
    wanted = {"32": "no"}.get(precision, precision)
    current = AcceleratorState._shared_state.get("_mixed_precision")
    if current is not None and str(current) != wanted:
        AcceleratorState._reset_state()
    return Accelerator(cpu=on_cpu(cpu), mixed_precision=wanted, gradient_accumulation_steps=accumulation)


def process_state(cpu: bool = False) -> PartialState:
    """The process group's shared state (Accelerate's PartialState), set up for the CPU where there is no GPU."""
    return PartialState(cpu=on_cpu(cpu))


def fit_accelerator(cfg: TrainConfig) -> Accelerator:
    """The Accelerator of a fit: ``cfg``'s precision and gradient accumulation; fp16 refused on the CPU."""
    if cfg.precision == "fp16" and (cfg.cpu or not torch.cuda.is_available()):
        raise TrainingError("train.precision fp16 needs a GPU; on the CPU use bf16")
    return make_accelerator(cfg.cpu, cfg.precision, cfg.grad_accumulation)


def fit_batch_size(cfg: TrainConfig, n_train: int, processes: int, log: Console | None) -> TrainConfig:
    """``cfg`` with a batch no larger than the training split on one process: the default batch shrinks (with a
    note), a chosen one is a mistake to say."""
    if n_train >= cfg.batch_size or processes != 1:
        return cfg
    if cfg.batch_size != TrainConfig.model_fields["batch_size"].default:  # chosen: a mistake to say
        raise TrainingError(
            f"train.batch_size {cfg.batch_size} is larger than the {n_train} training examples; lower it"
        )
    if log is not None:
        log.print(
            f"note: {n_train} training examples, fewer than the default batch of {cfg.batch_size}: "
            f"one batch of {n_train} per epoch",
            markup=False,
        )
    return cfg.model_copy(update={"batch_size": n_train})


def describe_processes(accelerator: Accelerator, cfg: TrainConfig, console: Console | None) -> None:
    """One line on ``console`` on the processes of a distributed run and the examples each optimiser step sees."""
    if accelerator.num_processes == 1 or console is None:
        return
    backend = accelerator.state.backend or "?"
    console.print(
        f"processes: {accelerator.num_processes} ({accelerator.distributed_type.value}, {backend} backend, "
        f"{accelerator.device.type}); each takes batches of {cfg.batch_size}, "
        f"{cfg.batch_size * accelerator.num_processes * cfg.grad_accumulation} examples per optimiser step",
        markup=False,
        highlight=False,
    )


def what_trains(model: nn.Module, strategy: StrategyConfig, processes: int) -> tuple[set[str], list[str]]:
    """(the parameters that may train, the state-dict entries training can change). Those that may train have
    ``requires_grad`` once the strategy has prepared the model (lora adds its adapters into the HF backbones; a
    prepared model stays as it is). A strategy that changes what trains between epochs is refused on several
    processes."""
    strategies.prepare(model, strategy)
    allowed = set(trainable_names(model))  # a strategy only freezes: what is frozen now stays frozen
    if not allowed:
        raise TrainingError("fit: every parameter is frozen; nothing to train")
    if processes > 1 and strategies.changes_over_epochs(strategy):
        # DDP registers the parameters that train when it wraps the model; one unfrozen later would not sync.
        raise TrainingError(f"fit: strategy {strategy.name} changes what trains between epochs; run it on one process")
    return allowed, changing_names(model, allowed)


def changing_names(model: nn.Module, allowed: set[str]) -> list[str]:
    """The state-dict entries training can change: all but those of encoders none of whose parameters may
    train (kept in eval mode, their BatchNorm statistics do not change either)."""
    fixed = tuple(
        f"encoders.{name}."
        for name in getattr(model, "encoders", {})
        if not any(n.startswith(f"encoders.{name}.") for n in allowed)
    )
    return [k for k in model.state_dict() if not k.startswith(fixed)] if fixed else list(model.state_dict())


def fit_loaders(train: Examples, val: Examples | None, cfg: TrainConfig, generator, num_workers: int) -> tuple:
    """(the training loader, shuffled by ``generator``; the validation loader, in batches of at least 256, or
    None without ``val``)."""
    train_loader = make_loader(train, cfg.batch_size, shuffle=True, generator=generator, num_workers=num_workers)
    val_loader = make_loader(val, max(cfg.batch_size, 256), num_workers=num_workers) if val is not None else None
    return train_loader, val_loader


def prepare(accelerator: Accelerator, model, optimizer, train_loader, val_loader, scheduler) -> tuple:
    """Accelerate's placement (and DDP wrapping) of the model, optimizer, loaders and scheduler."""
    model, optimizer, train_loader, scheduler = accelerator.prepare(model, optimizer, train_loader, scheduler)
    if val_loader is not None:
        val_loader = accelerator.prepare(val_loader)
    return model, optimizer, train_loader, val_loader, scheduler


def _can_fuse(model: nn.Module) -> bool:
    """The fused AdamW kernel runs on the CPU from torch 2.4 on (before, only on CUDA-like devices)."""
    major, minor = (int(part) for part in torch.__version__.split(".")[:2])
    return (major, minor) >= (2, 4) and all(p.is_floating_point() for p in model.parameters())


def make_optimizer(model: nn.Module, cfg: TrainConfig, allowed: set[str], batches: int) -> tuple:
    """(AdamW, warm-up + cosine LambdaLR) over ``batches`` loader batches per epoch."""
    # One optimizer for the whole run, holding every group, frozen ones too: AdamW skips a parameter without a
    # gradient (its weights and moments stay as they are), so a group unfrozen later simply starts training.
    # The fused kernel (CPU and CUDA) updates every tensor in one call: a third of the optimiser's time here.
    optimizer = torch.optim.AdamW(
        strategies.param_groups(model, cfg.strategy, cfg.lr, allowed),
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        fused=_can_fuse(model),
    )
    steps_per_epoch = math.ceil(batches / cfg.grad_accumulation)
    total = cfg.epochs * steps_per_epoch
    warmup = int(cfg.warmup_fraction * total)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, total, warmup))
    return optimizer, scheduler


def start_epoch(model: nn.Module, cfg: TrainConfig, epoch: int, allowed: set[str], names, optimizer, say) -> int:
    """What trains in ``epoch`` is the strategy's (shown on ``say`` before the first); the model in training
    mode. Returns the trainable parameter count."""
    trainable = strategies.schedule(model, cfg.strategy, epoch, allowed)
    strategies.check_cached(trainable, names, cfg.strategy, epoch)
    n_trainable, n_total = count_parameters(model)
    if epoch == 1 and say is not None:
        say.print(strategies.describe(cfg.strategy, optimizer.param_groups, n_trainable, n_total), highlight=False)
    train_mode(model)
    return n_trainable
