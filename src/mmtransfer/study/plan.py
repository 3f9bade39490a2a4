"""A study's plan: the study file's schema, its cells (arms x budgets x seeds, and the source runs), the
``{seed}`` and ``{source.NAME}`` placeholders, and each cell's validated run config.

A study file names a base run config, the label budgets, the seeds and the arms (each a named set of ``--set``
overrides); nothing here runs anything.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mmtransfer import limits
from mmtransfer.config import ConfigError, apply_override, read_config_file, read_mapping, resolve_paths, validate
from mmtransfer.metrics import METRICS as REGISTERED

Budget = int | float | Literal["all"]
METRICS = tuple(REGISTERED)  # the metrics registry's names (mmtransfer.metrics.METRICS)
FRACTIONS = tuple(m for m in METRICS if REGISTERED[m].fraction)  # shown in percent, gains in percentage points
LOWER_BETTER = tuple(m for m in METRICS if REGISTERED[m].direction == "min")  # errors, in the target's units


class StudyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    base: str | dict[str, Any] = Field(
        description="The run config every cell starts from: a YAML file (relative to the study file) or inline."
    )
    budgets: list[Budget] = Field(
        default_factory=lambda: ["all"],
        description="Label budgets: an int is k labelled examples per class, a float in (0, 1) a share of the "
        "train labels, 'all' every one. The labels that select the best epoch come out of the same budget. 0: no "
        "label at all, for arms taught by a teacher column (transfer.distill.teacher_column).",
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
    metric: Literal[METRICS] = Field(  # type: ignore[valid-type]  (the registry's names)
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
            small, large = isinstance(b, int) and b < 0, isinstance(b, int) and b > limits.MAX_PER_CLASS
            if isinstance(b, bool) or small or large or (isinstance(b, float) and not 0 < b < 1):
                raise ValueError(
                    f"budget {b!r}: an int from 0 to {limits.MAX_PER_CLASS:,} (per class; 0: no label, for arms a "
                    "teacher teaches), a float in (0, 1) or 'all'"
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


def error_lines(err: ValidationError) -> list[str]:
    """One indented line per invalid field: ``  budgets.0: <what is wrong>``."""
    return [f"  {_where(e['loc'])}{e['msg'].removeprefix('Value error, ')}" for e in err.errors()]


def _where(loc: tuple) -> str:
    return ".".join(str(p) for p in loc) + ": " if loc else ""


def load_study(path: str | Path) -> tuple[StudyConfig, dict, Path]:
    """The study, the base config as a raw dict (paths absolute) and the study file's folder."""
    path = Path(path)
    raw = read_mapping(path, "study", "with base, budgets, seeds and arms")
    try:
        study = StudyConfig.model_validate(raw)
    except ValidationError as err:
        lines = error_lines(err)
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
