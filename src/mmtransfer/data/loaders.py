"""Batches of a split: a DataLoader that serves whole batches (sharded by Accelerate, shuffled from a seeded
generator a resumed run restores), and batches made one ahead in a thread."""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torch.utils.data import DataLoader

from mmtransfer.data.splits import Examples


class _SplitDataset(torch.utils.data.Dataset):
    """Serves whole batches (``__getitems__``), not one example at a time: an in-memory split slices its
    tensors, a table's split reads and transforms the batch's rows (in a worker process where there are any)."""

    def __init__(self, split: Examples):
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int):
        return self.__getitems__([i])

    def __getitems__(self, indices: list[int]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        return self.split.batch(indices), self.split.labels[torch.as_tensor(indices, dtype=torch.long)]


def _already_batched(batch):
    return batch


def make_loader(
    split: Examples,
    batch_size: int,
    *,
    shuffle: bool = False,
    seed: int = 0,
    num_workers: int = 0,
    generator: torch.Generator | None = None,
) -> DataLoader:
    """A DataLoader of (inputs, labels) batches; Accelerate can shard it across processes. ``num_workers``
    processes prepare batches ahead of the model (``data.num_workers``; none where a table's split reads no file:
    its inputs are cached features). A shuffled loader draws each epoch's
    order from ``generator`` (by default one seeded with ``seed``), which a resumed run restores."""
    if not getattr(split, "reads_files", True):
        num_workers = 0  # its batches are slices of cached features: a worker process would only add copying
    if shuffle and generator is None:
        generator = torch.Generator().manual_seed(seed)
    generator = generator if shuffle else None
    if num_workers > 0:  # a fast tokenizer used before the workers fork would warn in each of them
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return DataLoader(
        _SplitDataset(split),
        batch_size=batch_size,
        shuffle=shuffle,
        generator=generator,
        collate_fn=_already_batched,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        # A lone last example would break BatchNorm in training; drop it (it is redrawn next epoch).
        drop_last=shuffle and len(split) % batch_size == 1,
    )


def batches(split: Examples, batch_size: int = 256) -> Iterator[tuple[np.ndarray, dict[str, torch.Tensor]]]:
    """(row positions, inputs) of ``split`` in order, ``batch_size`` rows at a time, in this process (the next
    batch made in a thread while the caller works on this one)."""
    starts = range(0, len(split), batch_size)
    indices = (np.arange(start, min(start + batch_size, len(split))) for start in starts)
    return ahead((index, split.batch(index)) for index in indices)


def ahead(items: Iterator) -> Iterator:
    """The items of ``items``, the next one made in a thread while the caller works on this one: a batch of
    photos is decoded (Pillow lets go of the GIL) while the model runs on the one before. On the shared 2-core
    machine this also halved the CPU time per photo of the frozen-feature path (bench/feature_throughput.py)."""
    done = object()
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(next, items, done)
        while (item := pending.result()) is not done:
            pending = pool.submit(next, items, done)
            yield item
