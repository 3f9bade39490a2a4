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

import base64
import contextlib
import copy
import html
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
    seeds: int | list[int] = Field(3, description="How many seeds (0, 1, ...) or which ones; each seed draws the "
                                   "splits, the budget's labels and the initialisation.")  # fmt: skip
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
            if isinstance(b, bool) or (isinstance(b, int) and b < 1) or (isinstance(b, float) and not 0 < b < 1):
                raise ValueError(f"budget {b!r}: an int >= 1 (per class), a float in (0, 1) or 'all'")
        if len({budget_name(b) for b in budgets}) != len(budgets):
            raise ValueError("a budget is listed twice")
        return budgets

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
        if isinstance(self.seeds, int) and self.seeds < 1:
            raise ValueError("seeds: at least 1")
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
    from rich.console import Console

    from mmtransfer.config import RunConfig
    from mmtransfer.runs import fit_run

    if threads:
        torch.set_num_threads(threads)
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    record = {**cell, "folder": str(out)}
    start = time.perf_counter()
    with (out.parent / f"{out.name}.log").open("w") as log:
        console = Console(file=log, width=120, no_color=True)
        try:
            cfg = RunConfig.model_validate(cfg_json)
            metrics = fit_run(cfg, out, console, overwrite=True, ablate=ablate, selection_only=selection_only)
        except Exception as err:  # one cell's failure is recorded; the others go on
            log.write(traceback.format_exc())
            message = str(err).splitlines()[0] if str(err) else type(err).__name__
            return {**record, "status": "failed", "error": f"{type(err).__name__}: {message}",
                    "seconds": round(time.perf_counter() - start, 2)}  # fmt: skip
    test = metrics["test"]
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
        "ablation": metrics.get("ablation"),
        "splits": json.loads(splits.read_text()) if splits.is_file() else None,
        "threads": torch.get_num_threads(),
    }


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
    "mean ± t(n-1) * sd / sqrt(n)"
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


def paired_interval(a, b, confidence: float = 0.95) -> dict:
    """Mean of a - b (paired) with its Student t interval; no interval for fewer than 2 pairs."""
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    return mean_interval(d, confidence)


def mean_interval(values, confidence: float = 0.95) -> dict:
    from scipy import stats

    v = np.asarray(values, dtype=float)
    n = len(v)
    out = {"n": n, "mean": float(v.mean()) if n else float("nan"), "std": float(v.std(ddof=1)) if n > 1 else 0.0}
    if n > 1:
        half = float(stats.t.ppf((1 + confidence) / 2, n - 1) * out["std"] / math.sqrt(n))
        out.update(low=out["mean"] - half, high=out["mean"] + half)
    else:
        out.update(low=None, high=None)
    return out


def metric_intervals(scores: list[dict], confidence: float = 0.95) -> dict:
    """Each metric of METRICS that every one of ``scores`` holds: its mean and interval over them (an older
    record may hold fewer)."""
    return {m: mean_interval([s[m] for s in scores], confidence) for m in METRICS if all(m in s for s in scores)}


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
                                       [by_arm[ref][s]["test"][m] for s in paired], study.confidence)
                    for m in have if all(m in by_arm[ref][s]["test"] for s in paired)
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


def _value(metric: str, x: float | None) -> str:
    """A metric as the tables show it: fractions in percent, R² as it is, errors in the target's units."""
    if x is None:
        return "-"
    return f"{100 * x:.1f}" if metric in FRACTIONS else f"{x:.3f}" if metric == "r2" else f"{x:.4g}"


def _cell(entry: dict | None, metric: str) -> str:
    if entry is None or metric not in entry:
        return "-"
    s = entry[metric]
    return f"{_value(metric, s['mean'])} ± {_value(metric, s['std'])} ({s['n']})"


def _seconds(entry: dict | None) -> str:
    return "-" if entry is None else f"{entry['seconds']['mean']:.1f} ± {entry['seconds']['std']:.1f}"


def _signed(x: float) -> str:
    return "0.0" if abs(x) < 0.05 else f"{x:+.1f}"


def _gain(entry: dict | None, metric: str) -> str:
    if entry is None or metric not in entry.get("gain", {}):
        return "-"
    g = entry["gain"][metric]
    ci = (
        f" [{_value(metric, g['low'])}, {_value(metric, g['high'])}]"
        if g["low"] is not None
        else " (one seed: no interval)"
    )
    sign = "+" if g["mean"] >= 0 else ""
    return f"{sign}{_value(metric, g['mean'])}{ci}"


def tables(results: dict, study: StudyConfig) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) of each table, for the Markdown and the HTML report alike."""
    summary, metric, ref = results["summary"], study.metric, study.reference_arm
    level = round(100 * study.confidence)
    names = [budget_name(b) for b in study.budgets]
    labels = [budget_label(b) for b in study.budgets]
    scored = "validation" if results["scored_split"].startswith("val") else "test"
    unit = " (%)" if metric in FRACTIONS else ""
    gain_unit = " (percentage points)" if metric in FRACTIONS else f" (difference in {metric})"
    out = [
        (
            f"{metric} on the {scored} split{unit}, mean ± std (seeds)",
            ["arm", *labels],
            [[arm, *[_cell(summary[n].get(arm), metric) for n in names]] for arm in study.arms],
        ),
        (
            f"gain over {ref}{gain_unit} with its {level} % paired t interval",
            ["arm", *labels],
            [[arm, *[_gain(summary[n].get(arm), metric) for n in names]] for arm in study.arms if arm != ref],
        ),
        (
            "wall time per cell (s), mean ± std: fit, evaluation and writing the run folder",
            ["arm", *labels],
            [[arm, *[_seconds(summary[n].get(arm)) for n in names]] for arm in study.arms],
        ),
    ]  # fmt: skip
    rows = []
    for n, label in zip(names, labels, strict=True):
        for arm in study.arms:
            e = summary[n].get(arm)
            if e and "ablation" in e:
                for inp, a in e["ablation"].items():
                    change = -a["drop"]["mean"]
                    shown = _signed(100 * change) if metric in FRACTIONS else f"{change:+.4g}"
                    rows.append([arm, label, inp, _value(metric, a[metric]["mean"]), shown])
    if rows:
        out.append((f"each input masked at test time: {metric}{unit} and the change it causes",
                    ["arm", "budget", "input masked", metric, "change"], rows))  # fmt: skip
    if results.get("source_summary"):
        out.append((f"source runs (one per seed, before the arms): {metric} on their own test split{unit}",
                    ["source", metric, "seeds", "time (s)"],
                    [[name, f"{_value(metric, s[metric]['mean'])} ± {_value(metric, s[metric]['std'])}",
                      str(s[metric]["n"]),
                      f"{s['seconds']['mean']:.1f}"] for name, s in results["source_summary"].items()]))  # fmt: skip
    if results["failed"]:
        out.append(("failed cells (run the study again to retry them; the log is beside each cell's folder)",
                    ["cell", "error"], [[cell_id(r), r["error"]] for r in results["failed"]]))  # fmt: skip
    return out


def _setup_lines(results: dict, study: StudyConfig) -> list[str]:
    arms = "; ".join(f"{a}: {json.dumps(o) if o else 'the base config'}" for a, o in study.arms.items())
    if study.sources:
        arms += ". Sources, one run per seed: " + "; ".join(f"{a}: {json.dumps(o)}" for a, o in study.sources.items())
    return [
        f"Base config: {study.base if isinstance(study.base, str) else 'inline'}; budgets: "
        f"{', '.join(budget_label(b) for b in study.budgets)}; seeds: {study.seed_list}; reference: "
        f"{study.reference_arm}.",
        f"Arms: {arms}.",
        "Every cell is one fit and evaluation; each label budget counts the labels that select the best epoch. "
        f"Statistics: {results['statistics']}.",
        f"Machine: {results['versions']['machine']['platform']}, {results['versions']['machine']['cpus']} CPUs, "
        f"GPU {results['versions']['machine']['gpu'] or 'none'}; torch {results['versions']['packages']['torch']}.",
    ]


def markdown(results: dict, study: StudyConfig) -> str:
    lines = ["# mmtransfer study", ""]
    if results["command"]:
        lines += [f"`{results['command']}`", ""]
    for line in _setup_lines(results, study):
        lines += [line, ""]
    for title, header, rows in tables(results, study):
        lines += [f"## {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(r) + " |" for r in rows] + [""]
    for p in results["plots"]:
        lines += [f"![{p}]({p})", ""]
    return "\n".join(lines)


def to_html(results: dict, study: StudyConfig, plots: list[Path]) -> str:
    """One file: inline CSS, the PNGs as data URIs, no scripts, nothing fetched."""
    e = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>mmtransfer study</title><style>"
        "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
        "table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:4px 8px;"
        "text-align:right}td:first-child,th:first-child{text-align:left}th{background:#f3f3f3}"
        "code{background:#f5f5f5;padding:2px 4px}img{max-width:100%;border:1px solid #eee;margin:.5em 0}"
        "</style></head><body><h1>mmtransfer study</h1>"
    ]
    if results["command"]:
        parts.append(f"<p><code>{e(results['command'])}</code></p>")
    parts += [f"<p>{e(line)}</p>" for line in _setup_lines(results, study)]
    for title, header, rows in tables(results, study):
        parts.append(f"<h2>{e(title)}</h2><table><tr>" + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr>")
        parts += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in rows]
        parts.append("</table>")
    for p in plots:
        data = base64.b64encode(p.read_bytes()).decode()
        parts.append(
            f"<h2>{e(p.stem.replace('_', ' '))}</h2><img alt='{e(p.name)}' src='data:image/png;base64,{data}'>"
        )
    parts.append("</body></html>")
    return "\n".join(parts)


def write_plots(records: list[dict], summary: dict, study: StudyConfig, out: Path) -> list[Path]:
    if not records:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    metric = study.metric
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for arm in study.arms:
        pts = [(summary[budget_name(b)][arm]) for b in study.budgets if arm in summary[budget_name(b)]]
        if not pts:
            continue
        pts.sort(key=lambda e: e["labels_per_class"])
        x = [e["labels_per_class"] for e in pts]
        scale = 100 if metric in FRACTIONS else 1
        y = np.array([scale * e[metric]["mean"] for e in pts])
        (line,) = ax.plot(x, y, marker="o", label=arm)
        lo = np.array([scale * (e[metric]["low"] if e[metric]["low"] is not None else e[metric]["mean"]) for e in pts])
        hi = np.array(
            [scale * (e[metric]["high"] if e[metric]["high"] is not None else e[metric]["mean"]) for e in pts]
        )
        ax.fill_between(x, lo, hi, alpha=0.15, color=line.get_color())
    if len({round(e["labels_per_class"], 3) for s in summary.values() for e in s.values()}) > 1:
        ax.set_xscale("log")
    ax.set_xlabel("labelled examples per class (train + selection)")
    ax.set_ylabel(f"{metric} (%)" if metric in FRACTIONS else metric)
    ax.set_title(f"learning curves: mean and {round(100 * study.confidence)} % t interval over seeds", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    paths.append(out / "learning_curves.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    sizes = {budget_name(b): max((e["labels_per_class"] for e in summary[budget_name(b)].values()), default=-1.0)
             for b in study.budgets}  # fmt: skip
    largest = max(study.budgets, key=lambda b: sizes[budget_name(b)])  # the most labels, in whatever order given
    for arm in study.arms:  # each arm's confusion matrix at its largest budget, summed over seeds
        runs = [r for r in records if r["arm"] == arm and r["budget_name"] == budget_name(largest)]
        if not runs or any("confusion" not in r["test"] for r in runs):  # a regression target: no classes
            continue
        matrix = np.sum([np.asarray(r["test"]["confusion"]) for r in runs], axis=0)
        classes = runs[0]["classes"]
        size = min(10, 2.5 + 0.45 * len(classes))
        fig, ax = plt.subplots(figsize=(size, size * 0.85))
        ax.imshow(matrix, cmap="Blues")
        if len(classes) <= 20:
            ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right", fontsize=8)
            ax.set_yticks(range(len(classes)), classes, fontsize=8)
            for i in range(len(classes)):
                for j in range(len(classes)):
                    color = "white" if matrix[i, j] > matrix.max() / 2 else "black"
                    ax.text(j, i, int(matrix[i, j]), ha="center", va="center", fontsize=7, color=color)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"{arm}, {budget_label(largest)}: confusion summed over {len(runs)} seeds", fontsize=9)
        fig.tight_layout()
        paths.append(out / f"confusion_{arm}.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    return paths


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


AUTO_STRATEGIES = ("linear_probe", "full", "freeze_then_unfreeze", "gradual_unfreeze", "discriminative", "lora")


def auto_study(config: str | Path, seeds: int = 3) -> tuple[StudyConfig, dict, Path]:
    """A study of the strategies that apply to ``config``'s model, on its own label budget."""
    path = Path(config)
    raw = read_config_file(path)
    cfg = validate(copy.deepcopy(raw), str(path))
    hf = any(getattr(e, "type", None) == "hf" for e in cfg.model.encoders.values())  # lora needs a transformer
    arms = {name: {"train.strategy.name": name} for name in AUTO_STRATEGIES if name != "lora" or hf}
    budget: Budget = cfg.data.k_per_class or cfg.data.label_fraction or "all"
    study = StudyConfig(base=raw, budgets=[budget], seeds=seeds, arms=arms, reference="full", ablation=False)
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
    from mmtransfer.display import Grid

    for title, header, rows in tables(results, study):
        console.print(Grid(title, header, rows))
    console.print(
        f"wrote {out / 'report.md'}, {out / 'report.html'}, {out / 'results.json'}, "
        + ", ".join(str(out / p) for p in results["plots"]),
        markup=False,
        highlight=False,
    )
