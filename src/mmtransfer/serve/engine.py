"""The model behind ``serve``: loaded once, and the rows of requests that arrive together predicted in one batch.

:class:`Engine` reads rows through the run's fitted preprocessing (as ``predict`` does: the same checks, the same
tensors) and answers each row; :class:`Batcher` gathers requests on the event loop (up to ``max_batch`` rows,
waiting at most ``max_wait_ms`` after the first) and runs the engine in one worker thread, so the loop keeps
accepting requests while the model works. Its queue is bounded: a request that finds it full is refused (503).
"""

from __future__ import annotations

import asyncio
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from mmtransfer.errors import UserError
from mmtransfer.serve.rows import Reader, RowError


@dataclass
class Settings:
    """What ``mmtransfer serve`` takes besides the run folder (its options say the same)."""

    max_batch: int = 32
    max_wait_ms: float = 2.0
    max_queue: int = 256
    max_body: int = 4 * 2**20
    data_root: Path | None = None
    truncate_text: bool = False


@dataclass
class Answer:
    """One request's answer: a dict per row (its prediction, or its error) and the rows predicted together."""

    rows: list[dict]
    batch: int


class Busy(Exception):
    """The queue is full: the request is refused, the server goes on."""


class Engine:
    """Rows in, answers out; one call at a time (the batcher's worker thread)."""

    def __init__(self, run, settings: Settings):
        pre = run.preprocessor
        if pre is None:
            raise UserError(
                f"{run.path}: this run was trained on the built-in {run.cfg.data.dataset} data and reads no "
                "table columns, so a request has nothing to give it; serve a run fitted on a table or folder"
            )
        self.pre, self.settings = pre, settings
        self.model, self.task, self.classes = run.model, run.model.task, run.classes
        for mod in pre.modalities.values():  # a request's files live for one batch: nothing to cache on disk
            if getattr(mod.cfg, "cache", False):
                mod.cfg = mod.cfg.model_copy(update={"cache": False})
        self.kinds = {c: cfg.modality for c, cfg in pre.columns.items()}
        self.reader = Reader(self.kinds, settings.data_root)
        self.texts = {c: m for c, m in pre.modalities.items() if self.kinds[c] == "text"}
        for mod in self.texts.values():
            _ = mod.tokenizer  # loaded now, not in the first request
        self.device = next(self.model.parameters()).device
        # as train.inference does for each call, once: eval mode, convolution weights channels-last (it converts
        # them there and back on every call, 0.6 ms of the 1.7 ms a one-row request of the digits CNN took)
        if any(p.dim() == 4 for p in self.model.parameters()):
            self.model.to(memory_format=torch.channels_last)
        self.model.eval()

    def predict(self, requests: list[list]) -> list[Answer]:
        """Every row of every request, predicted in batches of at most ``max_batch`` rows."""
        flat = [(r, i, row) for r, rows in enumerate(requests) for i, row in enumerate(rows)]
        answers: dict[int, dict] = {}
        with tempfile.TemporaryDirectory(prefix="mmtransfer-serve-") as tmp:
            readable, cells = [], []
            for k, (_, i, row) in enumerate(flat):
                try:
                    cells.append(self.reader.cells(i, row, Path(tmp)))
                    readable.append(k)
                except RowError as err:
                    answers[k] = {"error": str(err)}
            predicted = 0
            if readable:
                predicted = self._predict(flat, readable, cells, answers, Path(tmp))
        out = [Answer([], predicted) for _ in requests]
        for k, (r, _, _) in enumerate(flat):
            out[r].rows.append(answers[k])
        return out

    def _predict(self, flat, readable: list[int], cells: list[dict], answers: dict, folder: Path) -> int:
        df = pd.DataFrame(cells, columns=list(self.kinds), index=readable)
        checked, bad = self.pre.check(df, folder, "request")
        bad += self.pre.empty_rows(checked, {b.row for b in bad})  # as predict: a row must give the model something
        for b in bad:  # the file named is the request's own temporary copy: not said
            answers.setdefault(b.row, {"error": str(RowError(flat[b.row][1], b.column, b.reason))})
        self._check_lengths(flat, readable, checked, answers)
        positions = np.array([p for p, k in enumerate(readable) if k not in answers], dtype=np.int64)
        if len(positions) == 0:
            return 0
        split = self.pre.split(checked, positions, torch.full((len(positions),), -1))
        size, decoded = self.settings.max_batch, []
        with torch.inference_mode():
            for start in range(0, len(positions), size):
                inputs = split.batch(np.arange(start, min(start + size, len(positions))))
                outputs = self.model({k: v.to(self.device) for k, v in inputs.items()})
                decoded.append(self.task.decode(outputs).cpu())
        rows = self.task.answers(torch.cat(decoded).numpy(), self.classes)
        for p, answer in zip(positions.tolist(), rows, strict=True):
            answers[readable[p]] = answer
        return len(positions)

    def _check_lengths(self, flat, readable: list[int], checked, answers: dict) -> None:
        """A text longer than the model reads is the row's error, unless the server truncates (``truncate_text``)."""
        if self.settings.truncate_text:
            return
        for col, mod in self.texts.items():
            here = [p for p, k in enumerate(readable) if k not in answers and checked.present[col][p]]
            if not here:
                continue
            limit = mod.cfg.max_length
            for p, n in zip(here, mod.lengths([checked.values[col][p] for p in here]), strict=True):
                if n > limit:
                    k = readable[p]
                    answers[k] = {"error": str(RowError(flat[k][1], col, f"text of {n} tokens, over the {limit} the "
                                  "model reads (the server was started without --truncate-text)"))}  # fmt: skip


class Batcher:
    """Requests gathered into batches on the event loop, predicted in one worker thread."""

    def __init__(self, engine: Engine, settings: Settings):
        self.engine, self.settings = engine, settings
        self.queue: asyncio.Queue | None = None
        self.arrived: asyncio.Event | None = None
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="mmtransfer-predict")
        self.task: asyncio.Task | None = None

    async def start(self) -> None:
        self.queue, self.arrived = asyncio.Queue(self.settings.max_queue), asyncio.Event()
        self.task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        self.executor.shutdown(wait=True)

    def waiting(self) -> int:
        return self.queue.qsize() if self.queue is not None else 0

    async def submit(self, rows: list) -> Answer:
        future = asyncio.get_running_loop().create_future()
        try:
            self.queue.put_nowait((rows, future))
        except asyncio.QueueFull:
            raise Busy(f"{self.settings.max_queue} requests are waiting (--max-queue); try again shortly") from None
        self.arrived.set()
        return await future

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        wait = self.settings.max_wait_ms / 1000
        while True:
            items = [await self.queue.get()]
            rows = len(items[0][0])
            deadline = loop.time() + wait
            while rows < self.settings.max_batch:
                if self.queue.empty():
                    self.arrived.clear()
                    left = deadline - loop.time()
                    if left <= 0:
                        break
                    try:  # an Event, not queue.get(): a timed-out wait never takes an item with it
                        await asyncio.wait_for(self.arrived.wait(), left)
                    except asyncio.TimeoutError:
                        break
                    continue
                items.append(self.queue.get_nowait())
                rows += len(items[-1][0])
            try:
                answers = await loop.run_in_executor(self.executor, self.engine.predict, [r for r, _ in items])
            except Exception as err:  # every request of the batch hears of it (a 500 each, with an id)
                for _, future in items:
                    if not future.done():
                        future.set_exception(err)
                continue
            for (_, future), answer in zip(items, answers, strict=True):
                if not future.done():  # a client that went away
                    future.set_result(answer)
