"""A study's engine: every cell is one run folder under ``OUT/cells``; its record goes to ``OUT/cells.jsonl`` as
soon as it ends, so a killed study resumes where it stopped and a finished cell is never computed again. A cell
that fails is recorded with its error and the others go on. Cells run one after another, in spawned processes or
as Ray tasks; then the study writes ``report.md``, a self-contained ``report.html`` (plots embedded),
``results.json`` (everything needed to rerun it) and the PNGs (:mod:`mmtransfer.study.report`).
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import platform
import sys
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from mmtransfer.artifact import versions
from mmtransfer.config import RunConfig, check_files
from mmtransfer.display import make_console
from mmtransfer.errors import MissingPackage
from mmtransfer.runfolder import SPLITS, RunFolder
from mmtransfer.study.plan import (
    METRICS,
    StudyConfig,
    _placeholders,
    budget_label,
    cell_config,
    cell_id,
    cells_of,
    fill,
    source_cells,
)
from mmtransfer.study.report import markdown, to_html, write_plots
from mmtransfer.study.stats import STATS_METHOD, mean_interval, metric_intervals, summarise


def run_cell(cfg_json: dict, folder: str, cell: dict, ablate: bool, selection_only: bool, threads: int) -> dict:
    """One cell in this process: fit + evaluate into ``folder``; the record (never raises)."""
    # torch and the training stack take seconds to import: only a cell needs them, so `mmtransfer study` checks
    # the study file and every cell's config (and names a mistake) before paying for them
    import torch

    from mmtransfer.runs import fit_run

    if threads:
        torch.set_num_threads(threads)
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    record = {**cell, "folder": str(out)}
    start = time.perf_counter()
    with (out.parent / f"{out.name}.log").open("w") as log, _quiet_libraries(log):
        # a file: no line wrapped or cut (a graft table's reasons stay whole), no colour codes
        console = make_console(file=log, no_color=True)
        try:
            cfg = RunConfig.model_validate(cfg_json)
            metrics = fit_run(cfg, out, console, overwrite=True, ablate=ablate, selection_only=selection_only)
        except Exception as err:  # one cell's failure is recorded; the others go on
            log.write(traceback.format_exc())
            message = str(err).splitlines()[0] if str(err) else type(err).__name__
            return {**record, "status": "failed", "error": f"{type(err).__name__}: {message}",
                    "seconds": round(time.perf_counter() - start, 2)}  # fmt: skip
    test, before = metrics["test"], metrics.get("before_training")
    splits = RunFolder(out).file(SPLITS)
    return {
        **record,
        "status": "ok",
        "seconds": round(time.perf_counter() - start, 2),
        "fit_seconds": metrics["fit_seconds"],
        "labels": metrics["labels"],
        "classes": metrics["classes"],
        "best_epoch": metrics["best_epoch"],
        "epochs_run": metrics["epochs_run"],
        "scored": "val" if selection_only else "test",
        "test": {k: v for k, v in test.items() if k in ("n", "loss", "confusion", *METRICS)},
        # transfer.score_before_training: the transferred model on the same rows before any labelled training
        "before_training": {k: v for k, v in before.items() if k in ("n", "loss", *METRICS)} if before else None,
        "ablation": metrics.get("ablation"),
        "splits": json.loads(splits.read_text()) if splits.is_file() else None,
        "threads": torch.get_num_threads(),
    }


QUIET_ENV = {"HF_HUB_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_VERBOSITY": "error", "TQDM_DISABLE": "1"}


@contextlib.contextmanager
def _quiet_libraries(log):
    """Third-party progress bars off (transformers' "Loading weights", the Hub's downloads, tqdm) and whatever
    else a library writes to stderr into the cell's ``log``, not the study's output; as it was afterwards
    (a cell can run in the study's own process)."""
    saved = {k: os.environ.get(k) for k in QUIET_ENV}
    os.environ.update(QUIET_ENV)  # read when those libraries are first imported (a spawned worker)
    undo = []
    # transformers and the Hub are optional: only when a cell has imported them already (an earlier cell in this
    # process) are their own switches turned; importing them here would cost seconds for nothing
    if "transformers" in sys.modules:  # imported already (an earlier cell in this process): switch its bars off
        from transformers.utils import logging as hf_logging

        if hf_logging.is_progress_bar_enabled():
            hf_logging.disable_progress_bar()
            undo.append(hf_logging.enable_progress_bar)
        level = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        undo.append(lambda: hf_logging.set_verbosity(level))
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

        if not are_progress_bars_disabled():
            disable_progress_bars()
            undo.append(enable_progress_bars)
    try:
        with contextlib.redirect_stderr(log):
            yield
    finally:
        for fn in reversed(undo):
            fn()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class Study:
    """Runs the cells not yet finished (in order, or in parallel), then reports."""

    def __init__(
        self,
        study: StudyConfig,
        base_raw: dict,
        folder: Path,
        out: str | Path,
        *,
        console=None,
        selection_only: bool = False,
        command: str = "",
        source: str = "",
    ):
        self.study, self.base_raw, self.folder, self.out = study, base_raw, folder, Path(out)
        self.console = console or make_console()
        self.selection_only, self.command, self.source = selection_only, command, source
        self.cells, self.source_cells = cells_of(study), source_cells(study)
        self.configs = {}
        for cell in self.source_cells + self.cells:  # every cell's config is checked before any work
            seed = cell["seed"]
            folders = {name: str(self.source_folder(name, seed)) for name in study.sources}
            if "source" in cell:
                where, overrides, budget = f"source {cell['source']}, seed {seed}", study.sources[cell["source"]], None
            else:
                where = f"arm {cell['arm']}, budget {budget_label(cell['budget'])}, seed {seed}"
                overrides, budget = study.arms[cell["arm"]], cell["budget"]
            cfg = cell_config(base_raw, fill(overrides, seed, folders), budget, seed, folder, where)
            # a missing table or source: before any work (a source of this study is made before its arms)
            check_files(cfg, f"{source or 'study'}: {where}", later=set(folders.values()))
            self.configs[cell_id(cell)] = cfg
        self.log = self.out / "cells.jsonl"

    def source_folder(self, name: str, seed: int) -> Path:
        return (self.out / "cells" / cell_id({"source": name, "seed": seed})).resolve()

    def _records(self) -> list[dict]:
        """Every record in cells.jsonl, in order (a line cut short by a kill is skipped)."""
        records = []
        if self.log.is_file():
            for line in self.log.read_text().splitlines():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
        return records

    def finished(self, records: list[dict] | None = None) -> dict[str, dict]:
        """The cells recorded as done (a failed cell is tried again on the next start)."""
        return {cell_id(r): r for r in (self._records() if records is None else records) if r.get("status") == "ok"}

    def run(self, workers: int = 1, backend: str = "local", threads: int | None = None) -> dict:
        self.out.mkdir(parents=True, exist_ok=True)
        done = self.finished()
        pending = [c for c in self.source_cells + self.cells if cell_id(c) not in done]
        cores = os.cpu_count() or 1
        threads = threads or max(1, cores // max(1, workers))
        made = f" + {len(self.source_cells)} source runs" if self.source_cells else ""
        self.console.print(
            f"study: {len(self.cells)} cells ({len(self.study.arms)} arms x {len(self.study.budgets)} budgets x "
            f"{len(self.study.seed_list)} seeds){made}; {len(done)} finished before, {len(pending)} to run "
            f"({workers} worker{'s' if workers > 1 else ''}, {backend}, {threads} torch thread"
            f"{'s' if threads > 1 else ''} each); cells.jsonl in {self.out}",
            markup=False, highlight=False,
        )  # fmt: skip
        self._start, self._total, self._logged = time.perf_counter(), len(pending), 0
        made_runs = {(r["source"], r["seed"]) for r in done.values() if "source" in r}
        with _executor(backend, workers, threads) as ex:
            self._schedule(ex, pending, made_runs, threads)
        return self.report()

    def _schedule(self, ex, pending: list[dict], made_runs: set[tuple[str, int]], threads: int) -> None:
        """Runs ``pending`` on ``ex``: an arm that transfers from its seed's source run starts once that run is
        made, the others at once; an arm whose source run failed is recorded as failed without running."""
        failed_sources: dict[tuple[str, int], str] = {}
        waiting, running = list(pending), 0
        while waiting or running:
            for c in list(waiting):
                failed = [d for d in self._needs(c) if d in failed_sources]
                if failed:  # recorded as failed without running: its source run failed
                    waiting.remove(c)
                    self._log_record(c | {"status": "failed", "seconds": 0.0, "error": f"source {failed[0][0]} of "
                                          f"seed {c['seed']} failed: {failed_sources[failed[0]]}"})  # fmt: skip
                elif all(d in made_runs for d in self._needs(c)):
                    waiting.remove(c)
                    ex.submit(self._job(c, threads))
                    running += 1
            if not running:
                break
            record = ex.next()
            running -= 1
            if "source" in record:
                key = (record["source"], record["seed"])
                if record["status"] == "ok":
                    made_runs.add(key)
                else:
                    failed_sources[key] = record["error"]
            self._log_record(record)

    def _needs(self, c: dict) -> list[tuple[str, int]]:
        """The source runs (name, seed) cell ``c`` waits for: those its arm names as {source.NAME}."""
        return [] if "source" in c else [(n, c["seed"]) for n in sorted(_placeholders(self.study.arms[c["arm"]]))]

    def _job(self, c: dict, threads: int) -> tuple:
        """run_cell's arguments for cell ``c`` (a source run is always scored on its test split, unablated)."""
        arm = "source" not in c
        ablate = self.study.ablation and not self.selection_only
        # only the fields the cell's config sets: a setting left to its default stays one, so the encoder that
        # reads a column still resolves it (an audio column under aisfx: 44.1 kHz waveforms), as in a fit
        cfg_json = self.configs[cell_id(c)].model_dump(mode="json", exclude_unset=True)
        return (cfg_json, str(self.out / "cells" / cell_id(c)), c, ablate and arm, self.selection_only and arm,
                threads)  # fmt: skip

    def _log_record(self, record: dict) -> None:
        """The record into cells.jsonl, and a line with its count and the time left."""
        self._logged += 1
        i, total = self._logged, self._total
        self._record(record)
        eta = (time.perf_counter() - self._start) / i * (total - i)
        self.console.print(f"[{i}/{total}] {describe(record, self.study.metric)}; ETA {eta:.0f} s",
                           markup=False, highlight=False)  # fmt: skip

    def _record(self, record: dict) -> None:
        with self.log.open("a") as f:
            f.write(json.dumps(record) + "\n")

    def report(self) -> dict:
        logged = self._records()
        done = self.finished(logged)
        failed = {cell_id(r): r for r in logged if r.get("status") == "failed" and cell_id(r) not in done}
        records = [done[cell_id(c)] for c in self.cells if cell_id(c) in done]
        made = [done[cell_id(c)] for c in self.source_cells if cell_id(c) in done]
        summary = summarise(records, self.study)
        plots = write_plots(records, summary, self.study, self.out)
        results = {
            "command": self.command,
            "study_file": self.source,
            "study": self.study.model_dump(mode="json"),
            "base_config": self.base_raw,
            "scored_split": "val (the test split was not read)" if self.selection_only else "test",
            "statistics": STATS_METHOD.format(level=round(100 * self.study.confidence)),
            "cells": [{**r, "config": self.configs[cell_id(r)].model_dump(mode="json")} for r in records],
            "sources": [{**r, "config": self.configs[cell_id(r)].model_dump(mode="json")} for r in made],
            "source_summary": {
                name: metric_intervals([r["test"] for r in runs], self.study.confidence)
                | {"seconds": mean_interval([r["seconds"] for r in runs])}
                for name in self.study.sources
                if (runs := [r for r in made if r["source"] == name])
            },
            "failed": list(failed.values()),
            "summary": summary,
            "versions": environment(),
            "plots": [p.name for p in plots],
        }
        (self.out / "results.json").write_text(json.dumps(results, indent=1))
        md = markdown(results, self.study)
        (self.out / "report.md").write_text(md)
        (self.out / "report.html").write_text(to_html(results, self.study, plots))
        return results


def describe(r: dict, metric: str) -> str:
    if "source" in r:
        head = f"source {r['source']}, seed {r['seed']}"
    else:
        head = f"{r['arm']}, {budget_label(r['budget'])}, seed {r['seed']}"
    if r["status"] != "ok":
        return f"{head}: FAILED ({r['error']})"
    return (
        f"{head}: {r['scored']} {metric} {r['test'][metric]:.4f} ({r['labels']['train']} train + "
        f"{r['labels']['selection']} select; {r['seconds']:.1f} s)"
    )


def environment() -> dict:
    machine = {"platform": platform.platform(), "processor": platform.machine(), "cpus": os.cpu_count()}
    try:
        import torch  # here, not at the top: importing this module stays light (see run_cell)

        machine["gpu"] = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    except Exception:  # noqa: BLE001 - the report is written whatever the GPU says
        machine["gpu"] = None
    pkgs = versions()
    for name in ("numpy", "accelerate", "scikit-learn", "pydantic", "safetensors"):
        try:
            pkgs[name] = version(name)
        except PackageNotFoundError:
            pass
    return {"packages": pkgs, "machine": machine}


class _Serial:
    """Cells one after another in this process."""

    def __init__(self):
        self.queue: list = []

    def submit(self, job: tuple) -> None:
        self.queue.append(job)

    def next(self) -> dict:
        return run_cell(*self.queue.pop(0))

    def close(self) -> None:
        pass


class _Processes:
    """Cells in ``workers`` spawned processes (torch and fork do not mix); run_cell sets each one's threads."""

    def __init__(self, workers: int):
        self.pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
        self.futures: set = set()

    def submit(self, job: tuple) -> None:
        self.futures.add(self.pool.submit(run_cell, *job))

    def next(self) -> dict:
        finished, _ = wait(self.futures, return_when=FIRST_COMPLETED)
        future = next(iter(finished))
        self.futures.discard(future)
        return future.result()

    def close(self) -> None:
        self.pool.shutdown(cancel_futures=True)


class _Ray:
    """Cells as Ray tasks: a local Ray, or the cluster at RAY_ADDRESS."""

    def __init__(self, threads: int):
        try:  # Ray is an optional extra, and heavy: imported only for --backend ray
            import ray
        except ImportError:
            raise MissingPackage("--backend ray needs Ray: pip install 'mmtransfer[ray]'") from None
        if not ray.is_initialized():
            ray.init(address=os.environ.get("RAY_ADDRESS"), log_to_driver=False, include_dashboard=False)
        self.ray, self.remote, self.pending = ray, ray.remote(num_cpus=threads)(run_cell), []

    def submit(self, job: tuple) -> None:
        self.pending.append(self.remote.remote(*job))

    def next(self) -> dict:
        ready, self.pending = self.ray.wait(self.pending, num_returns=1)
        return self.ray.get(ready[0])

    def close(self) -> None:
        pass


@contextlib.contextmanager
def _executor(backend: str, workers: int, threads: int):
    ex = _Ray(threads) if backend == "ray" else _Processes(workers) if workers > 1 else _Serial()
    try:
        yield ex
    finally:
        ex.close()
