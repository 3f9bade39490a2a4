"""``mmtransfer study``: label budgets x seeds x arms, each cell a ``fit`` + ``evaluate`` on the same test split.

A study file names a base run config, the label budgets, the seeds and the arms (each a named set of ``--set``
overrides). Every cell is one run folder under ``OUT/cells``; its record goes to ``OUT/cells.jsonl`` as soon as
it ends, so a killed study resumes where it stopped and a finished cell is never computed again. A cell that
fails is recorded with its error and the others go on. Then the study writes ``report.md``, a self-contained
``report.html`` (plots embedded), ``results.json`` (everything needed to rerun it) and the PNGs.

Statistics: per budget and arm, the mean and sample std over seeds; the gain over the reference arm is the
mean of the per-seed differences (same budget, same seed: the same labels and splits), with a 95 % Student t
interval on n - 1 degrees of freedom (mean ± t * sd / sqrt(n)).
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import platform
import re
import time
import traceback
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mmtransfer import limits
from mmtransfer.config import (
    ConfigError,
    apply_override,
    check_files,
    read_config_file,
    read_mapping,
    resolve_paths,
    validate,
)

Budget = int | float | Literal["all"]
METRICS = ("accuracy", "macro_f1", "balanced_accuracy", "micro_f1", "subset_accuracy", "map", "r2", "rmse", "mae")
FRACTIONS = (
    "accuracy",
    "macro_f1",
    "balanced_accuracy",
    "micro_f1",
    "subset_accuracy",
    "map",
)  # shown in percent, gains in percentage points
LOWER_BETTER = ("rmse", "mae")  # regression errors, in the target's units
# Where each metric can lie: an interval is clipped to it (a mean of accuracies near 1 with a wide t interval
# would otherwise reach past 100 %); a difference of fractions lies in [-1, 1].
BOUNDS = {**{m: (0.0, 1.0) for m in FRACTIONS}, "r2": (None, 1.0), "rmse": (0.0, None), "mae": (0.0, None)}
GAIN_BOUNDS = {m: (-1.0, 1.0) for m in FRACTIONS}


class StudyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    base: str | dict[str, Any] = Field(
        description="The run config every cell starts from: a YAML file (relative to the study file) or inline."
    )
    budgets: list[Budget] = Field(
        default_factory=lambda: ["all"],
        description="Label budgets: an int is k labelled examples per class, a float in (0, 1) a share of the "
        "train labels, 'all' every one. The labels that select the best epoch come out of the same budget.",
    )
    seeds: int | list[int] = Field(
        3,
        description="How many seeds (0, 1, ...) or which ones; each seed draws the splits, the budget's labels and "
        f"the initialisation (at most {limits.MAX_SEEDS:,}).",
    )
    arms: dict[str, dict[str, Any]] = Field(
        description="Arm name -> overrides of the base config ({train.strategy.name: linear_probe}); {} is the "
        "base config as it is (e.g. from scratch with the library's defaults). In a string value, {seed} is the "
        "cell's seed and {source.NAME} the folder of that seed's run of source NAME."
    )
    sources: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Source name -> overrides of the base config: a run made once per seed, before the arms, "
        "on the data its own config gives (the budgets do not apply), for arms to transfer from as "
        "{source.NAME}; with data.pool: first_half here and second_half in the arms, no labelled row is shared.",
    )
    reference: str | None = Field(None, description="The arm gains are measured against (default: the first).")
    metric: Literal[
        "accuracy", "macro_f1", "balanced_accuracy", "micro_f1", "subset_accuracy", "map", "r2", "rmse", "mae"
    ] = Field(
        "accuracy",
        description="The metric tables and plots show, and --auto ranks by (balanced_accuracy: the mean of the "
        "classes' recalls, for imbalanced classes; micro_f1, subset_accuracy, map: label sets; r2, rmse, mae: a "
        "regression target; rmse and mae rank lowest first).",
    )
    confidence: float = Field(0.95, gt=0.5, lt=1.0, description="Level of the paired Student t intervals.")
    ablation: bool = Field(True, description="With several inputs, also score each cell with each input masked.")

    @field_validator("budgets")
    @classmethod
    def _budgets(cls, budgets: list) -> list:
        if not budgets:
            raise ValueError("give at least one budget")
        for b in budgets:
            small, large = isinstance(b, int) and b < 1, isinstance(b, int) and b > limits.MAX_PER_CLASS
            if isinstance(b, bool) or small or large or (isinstance(b, float) and not 0 < b < 1):
                raise ValueError(
                    f"budget {b!r}: an int from 1 to {limits.MAX_PER_CLASS:,} (per class), a float in (0, 1) or 'all'"
                )
        if len({budget_name(b) for b in budgets}) != len(budgets):
            raise ValueError("a budget is listed twice")
        return budgets

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, seeds: int | list[int]) -> int | list[int]:
        count = seeds if isinstance(seeds, int) else len(seeds)
        if not 1 <= count <= limits.MAX_SEEDS:
            raise ValueError(f"{count:,} seeds: at least 1 and at most {limits.MAX_SEEDS:,}")
        if isinstance(seeds, list):
            if any(not 0 <= s <= limits.MAX_SEED for s in seeds):
                raise ValueError(f"each seed from 0 to {limits.MAX_SEED:,}, got {seeds}")
            if len(set(seeds)) != len(seeds):
                raise ValueError(f"a seed is listed twice: {seeds}")
        return seeds

    @field_validator("arms", "sources")
    @classmethod
    def _arms(cls, arms: dict, info) -> dict:
        if not arms and info.field_name == "arms":
            raise ValueError("give at least one arm")
        for name in arms:
            if not name or not all(c.isalnum() or c in "-_." for c in name):
                raise ValueError(f"arm name {name!r}: letters, digits, '-', '_' and '.' only (it names a folder)")
        return arms

    @model_validator(mode="after")
    def _reference(self):
        if self.reference is not None and self.reference not in self.arms:
            raise ValueError(f"reference {self.reference!r} is not an arm; arms: {', '.join(self.arms)}")
        seeds = self.seeds if isinstance(self.seeds, int) else len(self.seeds)
        cells = seeds * (len(self.arms) * len(self.budgets) + len(self.sources))
        if cells > limits.MAX_CELLS:  # each cell is a run folder and a config checked before any work
            made = f" + {len(self.sources)} sources" if self.sources else ""
            raise ValueError(
                f"{cells:,} runs ({len(self.arms)} arms x {len(self.budgets)} budgets{made}, x {seeds} seeds): at "
                f"most {limits.MAX_CELLS:,} in one study; split it into several"
            )
        if "sources" in self.arms:
            raise ValueError("arm name 'sources' is taken: source runs go in cells/sources/")
        for arm, overrides in [*self.arms.items(), *self.sources.items()]:
            for name in _placeholders(overrides):
                if name not in self.sources:
                    known = ", ".join(self.sources) or "none"
                    raise ValueError(f"{arm}: {{source.{name}}} names no source (sources: {known})")
        for name, overrides in self.sources.items():
            if _placeholders(overrides):
                raise ValueError(f"sources.{name}: a source cannot transfer from another source")
        return self

    @property
    def seed_list(self) -> list[int]:
        return list(range(self.seeds)) if isinstance(self.seeds, int) else list(self.seeds)

    @property
    def reference_arm(self) -> str:
        return self.reference or next(iter(self.arms))


PLACEHOLDER = re.compile(r"\{source\.([^{}]+)\}")


def _strings(value) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def _placeholders(overrides: dict) -> set[str]:
    """The sources an arm's overrides name as {source.NAME}."""
    return {m for s in _strings(overrides) for m in PLACEHOLDER.findall(s)}


def fill(value, seed: int, sources: dict[str, str]):
    """``value`` with {seed} and {source.NAME} replaced in every string it holds."""
    if value == "{seed}":
        return seed  # the seed itself, a number
    if isinstance(value, str):
        out = value.replace("{seed}", str(seed))
        return PLACEHOLDER.sub(lambda m: sources[m.group(1)], out)
    if isinstance(value, dict):
        return {k: fill(v, seed, sources) for k, v in value.items()}
    if isinstance(value, list):
        return [fill(v, seed, sources) for v in value]
    return value


def budget_name(b: Budget) -> str:
    return "all" if b == "all" else f"k{b}" if isinstance(b, int) else f"f{b:g}"


def budget_label(b: Budget) -> str:
    return "all labels" if b == "all" else f"k={b}" if isinstance(b, int) else f"{100 * b:g} %"


def _where(loc: tuple) -> str:
    return ".".join(str(p) for p in loc) + ": " if loc else ""


def load_study(path: str | Path) -> tuple[StudyConfig, dict, Path]:
    """The study, the base config as a raw dict (paths absolute) and the study file's folder."""
    path = Path(path)
    raw = read_mapping(path, "study", "with base, budgets, seeds and arms")
    try:
        study = StudyConfig.model_validate(raw)
    except ValidationError as err:
        lines = [f"  {_where(e['loc'])}{e['msg'].removeprefix('Value error, ')}" for e in err.errors()]
        raise ConfigError(f"{path}: {len(lines)} invalid field(s)\n" + "\n".join(lines)) from None
    base = study.base
    if isinstance(base, str):
        base_path = (path.parent / base).resolve()
        if not base_path.is_file():
            raise ConfigError(f"{path}: base: config file not found: {base_path}")
        base_raw = read_config_file(base_path)
    else:
        base_raw = copy.deepcopy(base)
        resolve_paths(base_raw, path.parent)
    return study, base_raw, path.parent.resolve()


def cell_config(base_raw: dict, overrides: dict, budget: Budget | None, seed: int, folder: Path, where: str):
    """The validated RunConfig of one cell: base + the arm's overrides + the budget and the seed (a source's
    cell: ``budget`` None, the data section's own budget if any)."""
    raw = copy.deepcopy(base_raw)
    for key, value in overrides.items():
        apply_override(raw, f"{key}={json.dumps(value)}")  # JSON is YAML: a quoted string stays a string
    resolve_paths(raw, folder)  # a path an arm names is relative to the study file
    data, train = raw.setdefault("data", {}), raw.setdefault("train", {})
    if not isinstance(data, dict) or not isinstance(train, dict):
        raise ConfigError(f"{where}: data and train must be sections")
    if budget is not None:
        data["k_per_class"] = budget if isinstance(budget, int) and budget != "all" else None
        data["label_fraction"] = budget if isinstance(budget, float) else None
    data["seed"] = seed
    train["seed"] = seed
    train.setdefault("progress", False)
    return validate(raw, where)


def cells_of(study: StudyConfig) -> list[dict]:
    return [
        {"arm": arm, "budget": b, "budget_name": budget_name(b), "seed": seed}
        for b in study.budgets
        for seed in study.seed_list
        for arm in study.arms
    ]


def source_cells(study: StudyConfig) -> list[dict]:
    return [{"source": name, "seed": seed} for seed in study.seed_list for name in study.sources]


def cell_id(cell: dict) -> str:
    if "source" in cell:
        return f"sources/{cell['source']}/seed{cell['seed']}"
    return f"{cell['arm']}/{cell['budget_name']}/seed{cell['seed']}"


def run_cell(cfg_json: dict, folder: str, cell: dict, ablate: bool, selection_only: bool, threads: int) -> dict:
    """One cell in this process: fit + evaluate into ``folder``; the record (never raises)."""
    import torch

    from mmtransfer.config import RunConfig
    from mmtransfer.display import make_console
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
    splits = out / "splits.json"
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
    import sys

    saved = {k: os.environ.get(k) for k in QUIET_ENV}
    os.environ.update(QUIET_ENV)  # read when those libraries are first imported (a spawned worker)
    undo = []
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
        from mmtransfer.display import make_console

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
        ablate = self.study.ablation and not self.selection_only
        start, total, i = time.perf_counter(), len(pending), 0
        made_runs = {(r["source"], r["seed"]) for r in done.values() if "source" in r}
        failed_sources: dict[tuple[str, int], str] = {}

        def needs(c: dict) -> list[tuple[str, int]]:
            return [] if "source" in c else [(n, c["seed"]) for n in sorted(_placeholders(self.study.arms[c["arm"]]))]

        def log_record(record: dict) -> None:
            nonlocal i
            i += 1
            self._record(record)
            eta = (time.perf_counter() - start) / i * (total - i)
            self.console.print(f"[{i}/{total}] {describe(record, self.study.metric)}; ETA {eta:.0f} s",
                               markup=False, highlight=False)  # fmt: skip

        # An arm that transfers from its seed's source run starts once that run is made; the others at once.
        with _executor(backend, workers, threads) as ex:
            waiting, running = list(pending), 0
            while waiting or running:
                for c in list(waiting):
                    failed = [d for d in needs(c) if d in failed_sources]
                    if failed:  # recorded as failed without running: its source run failed
                        waiting.remove(c)
                        log_record(c | {"status": "failed", "seconds": 0.0, "error": f"source {failed[0][0]} of seed "
                                    f"{c['seed']} failed: {failed_sources[failed[0]]}"})  # fmt: skip
                    elif all(d in made_runs for d in needs(c)):
                        waiting.remove(c)
                        arm = "source" not in c
                        ex.submit((self.configs[cell_id(c)].model_dump(mode="json"),
                                   str(self.out / "cells" / cell_id(c)), c, ablate and arm,
                                   self.selection_only and arm, threads))  # fmt: skip
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
                log_record(record)
        return self.report()

    def _record(self, record: dict) -> None:
        with self.log.open("a") as f:
            f.write(json.dumps(record) + "\n")

    def report(self) -> dict:
        logged = self._records()
        done = self.finished(logged)
        failed = {cell_id(r): r for r in logged if r.get("status") == "failed" and cell_id(r) not in done}
        records = [done[cell_id(c)] for c in self.cells if cell_id(c) in done]
        made = [done[cell_id(c)] for c in self.source_cells if cell_id(c) in done]
        from mmtransfer.study_report import markdown, to_html, write_plots

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


STATS_METHOD = (
    "mean ± sample std over seeds; the gain over the reference arm is the mean of the per-seed differences "
    "(same budget and seed: the same labels and splits) with a {level} % Student t interval, "
    "mean ± t(n-1) * sd / sqrt(n), clipped to where the metric can lie (a mean accuracy to [0, 1], a difference "
    "of accuracies to [-1, 1])"
)


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


def paired_interval(a, b, confidence: float = 0.95, bounds: tuple | None = None) -> dict:
    """Mean of a - b (paired) with its Student t interval; no interval for fewer than 2 pairs."""
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    return mean_interval(d, confidence, bounds)


def mean_interval(values, confidence: float = 0.95, bounds: tuple | None = None) -> dict:
    """n, mean, sample std and the Student t interval of the mean; ``bounds`` (low, high; None: open) clip the
    interval to where the quantity can lie (an accuracy's to [0, 1])."""
    from scipy import stats

    v = np.asarray(values, dtype=float)
    n = len(v)
    out = {"n": n, "mean": float(v.mean()) if n else float("nan"), "std": float(v.std(ddof=1)) if n > 1 else 0.0}
    if n > 1:
        half = float(stats.t.ppf((1 + confidence) / 2, n - 1) * out["std"] / math.sqrt(n))
        low, high = out["mean"] - half, out["mean"] + half
        if bounds is not None:
            low = low if bounds[0] is None else max(low, bounds[0])
            high = high if bounds[1] is None else min(high, bounds[1])
        out.update(low=low, high=high)
    else:
        out.update(low=None, high=None)
    return out


def metric_intervals(scores: list[dict], confidence: float = 0.95) -> dict:
    """Each metric of METRICS that every one of ``scores`` holds: its mean and interval over them, clipped to
    the metric's range (an older record may hold fewer metrics)."""
    return {m: mean_interval([s[m] for s in scores], confidence, BOUNDS.get(m))
            for m in METRICS if all(m in s for s in scores)}  # fmt: skip


def summarise(records: list[dict], study: StudyConfig) -> dict:
    """Per budget: each arm's metrics over seeds, its wall time, its gain over the reference and its ablation."""
    ref = study.reference_arm
    out: dict = {}
    for b in study.budgets:
        name = budget_name(b)
        by_arm = {arm: {r["seed"]: r for r in records if r["arm"] == arm and r["budget_name"] == name}
                  for arm in study.arms}  # fmt: skip
        section: dict = {}
        for arm, runs in by_arm.items():
            if not runs:
                continue
            seeds = sorted(runs)
            entry = {
                "seeds": seeds,
                "labels_per_class": float(np.mean([r["labels"]["total"] / len(r["classes"]) for r in runs.values()])),
                "seconds": mean_interval([runs[s]["seconds"] for s in seeds], study.confidence),
            }
            entry |= metric_intervals([runs[s]["test"] for s in seeds], study.confidence)
            have = [m for m in METRICS if m in entry]
            paired = [s for s in seeds if s in by_arm.get(ref, {})]
            if arm != ref and paired:
                entry["gain"] = {
                    m: paired_interval([runs[s]["test"][m] for s in paired],
                                       [by_arm[ref][s]["test"][m] for s in paired], study.confidence,
                                       GAIN_BOUNDS.get(m))
                    for m in have if all(m in by_arm[ref][s]["test"] for s in paired)
                }  # fmt: skip
            before = [runs[s]["before_training"] for s in seeds if runs[s].get("before_training")]
            if len(before) == len(seeds):  # transfer.score_before_training: the model before and after training
                entry["before_training"] = metric_intervals(before, study.confidence)
                entry["training_gain"] = {
                    m: paired_interval([runs[s]["test"][m] for s in seeds], [b[m] for b in before], study.confidence,
                                       GAIN_BOUNDS.get(m))
                    for m in have if all(m in b for b in before)
                }  # fmt: skip
            ablated = [s for s in seeds if runs[s].get("ablation")]
            if ablated:
                metric = study.metric
                entry["ablation"] = {
                    inp: metric_intervals([runs[s]["ablation"][inp] for s in ablated], study.confidence)
                    | {"drop": mean_interval([runs[s]["test"][metric] - runs[s]["ablation"][inp][metric]
                                             for s in ablated], study.confidence)}
                    for inp in runs[ablated[0]]["ablation"]
                }  # fmt: skip
            section[arm] = entry
        out[name] = section
    return out


def environment() -> dict:
    from mmtransfer.artifact import versions

    machine = {"platform": platform.platform(), "processor": platform.machine(), "cpus": os.cpu_count()}
    try:
        import torch

        machine["gpu"] = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    except Exception:  # noqa: BLE001 - the report is written whatever the GPU says
        machine["gpu"] = None
    from importlib.metadata import PackageNotFoundError, version

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
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        self.pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
        self.futures: set = set()

    def submit(self, job: tuple) -> None:
        self.futures.add(self.pool.submit(run_cell, *job))

    def next(self) -> dict:
        from concurrent.futures import FIRST_COMPLETED, wait

        finished, _ = wait(self.futures, return_when=FIRST_COMPLETED)
        future = next(iter(finished))
        self.futures.discard(future)
        return future.result()

    def close(self) -> None:
        self.pool.shutdown(cancel_futures=True)


class _Ray:
    """Cells as Ray tasks: a local Ray, or the cluster at RAY_ADDRESS."""

    def __init__(self, threads: int):
        try:
            import ray
        except ImportError:
            raise ValueError("--backend ray needs Ray: pip install 'mmtransfer[ray]'") from None
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


AUTO_STRATEGIES = (
    "linear_probe", "lp_ft", "full", "freeze_then_unfreeze", "gradual_unfreeze", "discriminative", "lora"
)  # fmt: skip


def auto_study(config: str | Path, seeds: int = 3) -> tuple[StudyConfig, dict, Path]:
    """A study of the strategies that apply to ``config``'s model, on its own label budget."""
    path = Path(config)
    raw = read_config_file(path)
    cfg = validate(copy.deepcopy(raw), str(path))
    hf = any(getattr(e, "type", None) == "hf" for e in cfg.model.encoders.values())  # lora needs a transformer
    from mmtransfer.transfer.strategies import pretrained

    # LP-FT starts from pretrained features: a configured pretrained encoder, or the preset's for a table's photos
    # and texts (their encoders are chosen when the columns are bound)
    table = cfg.data.table is not None or cfg.data.folder is not None
    warm = bool(pretrained(cfg.model.encoders)) or (cfg.model.preset == "auto" and table)
    wanted = {"lora": hf, "lp_ft": warm}
    arms = {name: {"train.strategy.name": name} for name in AUTO_STRATEGIES if wanted.get(name, True)}
    budget: Budget = cfg.data.k_per_class or cfg.data.label_fraction or "all"
    try:
        study = StudyConfig(base=raw, budgets=[budget], seeds=seeds, arms=arms, reference="full", ablation=False)
    except ValidationError as err:  # --seeds beyond the bound
        lines = [f"  {_where(e['loc'])}{e['msg'].removeprefix('Value error, ')}" for e in err.errors()]
        raise ConfigError(f"{path}: --auto with --seeds {seeds}:\n" + "\n".join(lines)) from None
    return study, raw, path.parent.resolve()


def recommend(results: dict, study: StudyConfig) -> dict | None:
    """The arm with the best mean validation metric, its interval, its cost, and its paired margin over the
    runner-up; None when no arm finished."""
    section = results["summary"][budget_name(study.budgets[0])]
    if not section:
        return None
    metric = study.metric
    ranked = sorted(section, key=lambda a: section[a][metric]["mean"], reverse=metric not in LOWER_BETTER)
    best = ranked[0]
    out = {"arm": best, "overrides": study.arms[best], metric: section[best][metric],
           "seconds": section[best]["seconds"]["mean"], "ranking": ranked}  # fmt: skip
    if len(ranked) > 1:
        a = {r["seed"]: r["test"][metric] for r in results["cells"] if r["arm"] == best}
        b = {r["seed"]: r["test"][metric] for r in results["cells"] if r["arm"] == ranked[1]}
        seeds = sorted(set(a) & set(b))
        out["runner_up"] = ranked[1]
        out["margin"] = paired_interval([a[s] for s in seeds], [b[s] for s in seeds], study.confidence)
    return out


def print_summary(results: dict, study: StudyConfig, console, out: Path) -> None:
    """The report's conclusions and tables on ``console``; :func:`mmtransfer.study_report.print_summary`."""
    from mmtransfer.study_report import print_summary as show

    show(results, study, console, out)
