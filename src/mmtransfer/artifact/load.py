"""Loading a run folder: verified first, every value it uses checked, the model rebuilt from its own files."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from mmtransfer.artifact import verify, version_differences
from mmtransfer.artifact.assets import portable_config
from mmtransfer.config import RunConfig
from mmtransfer.runfolder import INPUTS, LABELS, TASK, ArtifactError, RunFolder, read_json

if TYPE_CHECKING:
    from mmtransfer.tasks import Task


@dataclass
class Run:
    """A verified run folder, loaded: its config, model (weights in), classes and fitted preprocessing."""

    path: Path
    cfg: RunConfig
    model: object
    classes: list[str]
    specs: dict
    preprocessor: object | None = None
    manifest: dict = field(default_factory=dict)
    differences: list[str] = field(default_factory=list)


def load(
    run_dir: str | Path, *, allow_unfinished: bool = False, verify_files: bool = True, modules: dict | None = None
) -> Run:
    """Verify and load a run folder; nothing outside it is read (pretrained parts come from its assets).
    ``modules`` supply the encoders a run was given as Python modules (``custom`` in its config)."""
    # torch and the model stack, here and below: the CLI checks run folders (check_out, verify) before torch loads
    from mmtransfer.checkpoint import load_into, load_weights
    from mmtransfer.model import build_model
    from mmtransfer.transfer import strategies

    run_dir = Path(run_dir)
    manifest = verify(run_dir, allow_unfinished=allow_unfinished) if verify_files else {}
    folder = RunFolder(run_dir)
    cfg = folder.read_config()
    classes = read_labels(folder.file(LABELS))
    specs = read_specs(folder.file(INPUTS))
    task = read_task(run_dir, cfg.data.task, classes)
    model = build_model(portable_config(cfg, run_dir).model, specs, classes, pretrained=False, modules=modules)
    strategies.prepare(model, cfg.train.strategy)  # a LoRA run's weights have the adapters' names
    load_into(model, load_weights(folder.weights), where=str(folder.weights))
    model.task = task  # its fitted state: a temperature, a target's mean and std, thresholds
    model.eval()
    preprocessor, state = None, folder.preprocessing()
    if state is not None:
        from mmtransfer.data.preprocess import TablePreprocessor

        preprocessor = TablePreprocessor.from_state(state, base=run_dir)
    return Run(run_dir, cfg, model, classes, specs, preprocessor, manifest, version_differences(run_dir))


def load_description(run_dir: str | Path) -> Run:
    """A run folder's config, classes and inputs, checked, without its model (``info`` on a run whose encoder is
    a module given in Python)."""
    folder = RunFolder(run_dir)
    cfg = folder.read_config()
    return Run(folder.path, cfg, None, read_labels(folder.file(LABELS)), read_specs(folder.file(INPUTS)))


def read_labels(path: Path) -> list[str]:
    """labels.json: the output names, each a non-empty string, none twice."""
    labels = read_json(path)
    if not isinstance(labels, list) or not labels:
        raise ArtifactError(f"{path}: expected a list of class names, got {type(labels).__name__} {labels!r:.60}")
    for i, name in enumerate(labels):
        if not isinstance(name, str) or not name.strip():
            raise ArtifactError(f"{path}: name {i} is {name!r:.60}; every class name is a non-empty string")
    seen = set()
    for name in labels:
        if name in seen:
            raise ArtifactError(f"{path}: the class name {name!r:.60} is given twice; each output has its own")
        seen.add(name)
    return labels


def read_task(run_dir: Path, task: str, classes: list[str]) -> Task:
    """task.json, checked against the config's task: a classification run's temperature (finite, in
    TEMPERATURE_RANGE), a regression's mean and std (finite, std > 0), a multi-label run's labels and thresholds
    (one per label, in [0, 1]). A run folder without one was made by an older mmtransfer (target.json and
    calibration.json) and must be fitted again."""
    # here, not at the top: the CLI checks an --out folder (check_out) before torch may load, and tasks needs it
    from mmtransfer.tasks import TASKS, TaskStateError, task_from_state

    folder = RunFolder(run_dir)
    path = folder.file(TASK)
    if not path.is_file():
        raise ArtifactError(
            f"{path}: missing; this run folder was made by an older version of mmtransfer (before task.json "
            "replaced target.json and calibration.json) and must be fitted again"
        )
    for old in folder.old_task_files():
        if old:
            raise ArtifactError(
                f"{old}: a file of an older mmtransfer (task.json holds what it held); this {task} run does "
                "not read it: remove it, or fit the run again"
            )
    state = folder.task_state()
    kind = state.get("task") if isinstance(state, dict) else None
    if kind not in TASKS:
        raise ArtifactError(f"{path}: task is {kind!r:.60}; expected one of {', '.join(TASKS)}")
    if kind != task:
        raise ArtifactError(f"{path}: task is {kind}, but config.yaml says data.task is {task}")
    try:
        return task_from_state(state, classes)
    except TaskStateError as err:
        raise ArtifactError(f"{path}: {err}") from None


def read_specs(path: Path) -> dict:
    from mmtransfer.modalities.base import InputSpec

    specs = {}
    raw = read_json(path)
    if not isinstance(raw, dict) or not raw:
        raise ArtifactError(f"{path}: expected a table of inputs, got {type(raw).__name__}")
    for name, d in raw.items():
        try:
            d["shape"] = tuple(int(n) for n in d["shape"])
            d["categorical"] = {int(k): v for k, v in d["categorical"].items()}  # JSON keys are strings
            specs[name] = InputSpec(**d)
        except (TypeError, KeyError, ValueError, AttributeError) as err:
            raise ArtifactError(f"{path}: input {name!r:.60} is not an input's description ({err})") from None
    return specs


def copy_run(src: str | Path, dst: str | Path) -> Path:
    """Copy a finished run folder elsewhere (it stays valid: nothing in it names its own location)."""
    verify(src)
    shutil.copytree(src, dst)
    return Path(dst)
