"""Bounds on the settings that size memory, processes and time, and the checks that need the machine.

A config is refused before any work when one setting could exhaust the machine: the static bounds below are
checked by validation (:mod:`mmtransfer.config`, naming the field and the bound); what depends on the machine
(worker processes per CPU, a precision its devices lack, a model larger than its memory) is checked by
:func:`check_machine` at the start of a fit and :func:`check_model_size` while a model is built, before any
allocation. Nothing here imports torch at import time: validation stays cheap.

>>> MAX_WIDTH
65536
"""

from __future__ import annotations

import os

from mmtransfer.errors import UserError

MAX_WIDTH = 65_536  # channels, embedding sizes, hidden sizes: far above any model trained here (ViT-H: 1,280)
MAX_LAYERS = 256  # conv blocks, recurrent or attention layers, hidden layers
MAX_KERNEL = 1_024  # a convolution's kernel size (and stride); at most the input's size, checked once it is known
MAX_HEADS = 1_024
MAX_POSITIONS = 65_536  # attention.max_len
MAX_IMAGE_SIDE = 8_192  # pixels per side an image is resized to
MAX_TOKENS = 65_536  # text.max_length
MAX_VOCAB = 2_000_000  # a word vocabulary
MAX_SAMPLE_RATE = 384_000  # Hz
MAX_VALUE = 1e150  # a number cell or a regression label: beyond it, squaring for a standard deviation overflows
MAX_SECONDS = 600.0  # one audio clip: ten minutes, 9.6 M samples at 16 kHz
MAX_MELS = 1_024
MAX_FFT = 65_536
MAX_EPOCHS = 100_000
MAX_BATCH = 1_000_000
MAX_PER_CLASS = 10_000_000  # a label budget (k per class)
MAX_SEED = 2**32 - 1  # numpy's and scikit-learn's seeds are 32-bit
MAX_SEEDS = 1_000  # seeds in a study
MAX_CELLS = 10_000  # runs in a study: arms x budgets x seeds (+ source runs)
MAX_WORKERS = 1_024  # data.num_workers anywhere; at a fit, also at most WORKERS_PER_CPU per CPU of the machine
WORKERS_PER_CPU = 4
MIN_WORKERS_BOUND = 8  # a small machine may still use a few workers per CPU
BYTES_PER_PARAMETER = 16  # training in fp32: weights, gradients and AdamW's two moments, 4 bytes each


def cpu_count() -> int:
    """The CPUs this process may use (its affinity where the platform says, else all)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def max_workers() -> int:
    """The most data worker processes a fit may start here: WORKERS_PER_CPU per CPU, at least MIN_WORKERS_BOUND."""
    return max(WORKERS_PER_CPU * cpu_count(), MIN_WORKERS_BOUND)


def machine_memory() -> int | None:
    """Bytes of physical memory, or None where the platform does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def size_text(n_bytes: float) -> str:
    """1.5e12 -> '1.5 TB'; 2.4e10 -> '24 GB' (powers of 1,000, as disks and people count)."""
    for unit, scale in (("PB", 1e15), ("TB", 1e12), ("GB", 1e9), ("MB", 1e6)):
        if n_bytes >= scale:
            value = n_bytes / scale
            return f"{value:.0f} {unit}" if value >= 10 else f"{value:.1f} {unit}"
    return f"{n_bytes / 1e3:.0f} kB"


def check_machine(cfg) -> None:
    """What a run config asks of this machine, before anything is written: worker processes within
    WORKERS_PER_CPU per CPU, and a precision its device supports (fp16 needs a GPU; bf16 a CPU or a GPU that has
    it). Raises ValueError naming the field."""
    workers, bound = cfg.data.num_workers, max_workers()
    if workers > bound:
        raise UserError(
            f"data.num_workers {workers}: at most {bound} on this machine ({WORKERS_PER_CPU} per CPU, "
            f"{cpu_count()} CPUs); each worker is a process of its own"
        )
    precision = cfg.train.precision
    if precision == "32":
        return
    import torch

    gpu = not cfg.train.cpu and torch.cuda.is_available()
    if precision == "fp16" and not gpu:
        why = "train.cpu is true" if cfg.train.cpu else "this machine has no GPU"
        raise UserError(f"train.precision fp16 needs a GPU and {why}; use bf16 on the CPU, or 32")
    if precision == "bf16" and gpu and not torch.cuda.is_bf16_supported():
        raise UserError("train.precision bf16: this GPU does not support bfloat16; use fp16 or 32")


def check_model_size(parameters: int, field: str) -> None:
    """Refuse a model whose training would need far more memory than the machine has, before it is allocated.

    ``parameters``: the count so far (counted on the meta device, nothing allocated); ``field`` names the
    setting that made it, with its values.
    """
    memory = machine_memory()
    need = parameters * BYTES_PER_PARAMETER
    if memory is None or need <= memory:
        return
    raise UserError(
        f"{field}: the model would need about {size_text(need)} to train ({parameters:,} parameters x "
        f"{BYTES_PER_PARAMETER} bytes: weights, gradients and AdamW's two moments); this machine has "
        f"{size_text(memory)}"
    )
