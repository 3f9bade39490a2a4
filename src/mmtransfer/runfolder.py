"""A run folder's layout: the one module that names its files, and the only code that reads or writes them.

    RUN/config.yaml          the validated config that built the model (every encoder named)
    RUN/model.safetensors    every weight, pretrained backbones included
    RUN/labels.json          class names in output order
    RUN/inputs.json          what each encoder was built for (kind and shape of each input)
    RUN/preprocessing.json   tables: column bindings and the fitted state of each modality
    RUN/assets/...           what a pretrained backbone needs besides weights: its config.json, a tokenizer's
                             files, an audio feature extractor's settings (copied in; never a path outside)
    RUN/task.json            what it predicts and the task's fitted state (temperature, target mean and std,
                             thresholds): mmtransfer.tasks
    RUN/splits.json          which rows were train / validation / test (a table's row numbers and SHA-256)
    RUN/versions.json        mmtransfer, torch, transformers and Python that wrote it
    RUN/history.json         one record per epoch; history.csv and learning_curve.png the same for people
    RUN/metrics.json         the scores at training time; transfer_report.json / .md what was transferred
    RUN/NAME.png             a task's figure (reliability.png, predicted_vs_true.png)
    RUN/manifest.json        size and SHA-256 of every file above; "complete": false until fit has finished

Written while a fit runs and never part of a finished run: ``checkpoint.safetensors`` (the resumable state) and
``.lock``. Written into a finished run by later commands: export's ``model.onnx`` and ``model.json``.
:mod:`mmtransfer.artifact` checks the whole (the manifest, every value loading uses); this module knows where
each thing is and reads JSON and YAML as data, never code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mmtransfer.config import RunConfig, dump_config, load_config
from mmtransfer.errors import UserError
from mmtransfer.outputs import write_json, write_text

CONFIG = "config.yaml"
WEIGHTS = "model.safetensors"
LABELS = "labels.json"
INPUTS = "inputs.json"
PREPROCESSING = "preprocessing.json"
ASSETS = "assets"
TASK = "task.json"
OLD_TASK_FILES = ("target.json", "calibration.json")  # what an older mmtransfer kept the task's state in
SPLITS = "splits.json"
VERSIONS = "versions.json"
HISTORY = "history.json"
HISTORY_CSV = "history.csv"
LEARNING_CURVE = "learning_curve.png"
TENSORBOARD = "tensorboard"
METRICS = "metrics.json"
TRANSFER_REPORT = "transfer_report.json"
TRANSFER_MARKDOWN = "transfer_report.md"
MANIFEST = "manifest.json"
CHECKPOINT = "checkpoint.safetensors"  # the resumable state of a fit (mmtransfer.resume); never part of a finished run
ONNX = "model.onnx"
ONNX_DESCRIPTION = "model.json"  # what export writes beside the ONNX graph: inputs, outputs, preprocessing

CORE_FILES = (CONFIG, WEIGHTS, LABELS, INPUTS, SPLITS)  # every finished run folder has these
RUN_FILES = (CONFIG, MANIFEST)  # a folder holding either is a run folder
# Written into a finished run folder by later commands (export's default --out); loading never reads them.
LATER_OUTPUTS = (ONNX, ONNX_DESCRIPTION, f".{ONNX}.tmp")


class ArtifactError(UserError):
    """A run folder that cannot be trusted or used as it is; the message names the file."""


def read_json(path: Path):
    """A run folder's JSON file as data: missing, unreadable or nested too deeply is an ArtifactError naming it."""
    if not path.is_file():
        raise ArtifactError(f"{path}: missing from the run folder")
    try:
        return json.loads(path.read_text())
    except RecursionError:
        raise ArtifactError(f"{path}: not valid JSON (nested too deeply)") from None
    except (ValueError, UnicodeDecodeError) as err:
        raise ArtifactError(f"{path}: not valid JSON ({err})") from None


class RunFolder:
    """The files of the run folder at ``path``, by what they hold. Writers replace a file whole (written under a
    temporary name, then moved into place); readers return data, or raise ArtifactError naming the file."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    def file(self, name: str) -> Path:
        return self.path / name

    def has(self, name: str) -> bool:
        return (self.path / name).is_file()

    def is_run(self) -> bool:
        """Whether the folder holds a run (its config or its manifest)."""
        return any(self.has(name) for name in RUN_FILES)

    # ------------------------------------------------------------ paths others write through

    @property
    def weights(self) -> Path:
        return self.path / WEIGHTS

    @property
    def checkpoint(self) -> Path:
        return self.path / CHECKPOINT

    @property
    def manifest(self) -> Path:
        return self.path / MANIFEST

    @property
    def assets(self) -> Path:
        return self.path / ASSETS

    @property
    def onnx(self) -> Path:
        return self.path / ONNX

    def figure(self, kind: str) -> Path:
        """Where a figure of ``kind`` ("reliability", "predicted_vs_true", ...) goes: ``RUN/KIND.png``."""
        return self.path / f"{kind}.png"

    def log_files(self) -> tuple[Path, Path, Path]:
        """The epoch log for people: (history.csv, learning_curve.png, the TensorBoard folder)."""
        return self.path / HISTORY_CSV, self.path / LEARNING_CURVE, self.path / TENSORBOARD

    # ------------------------------------------------------------ writers

    def write_config(self, cfg: RunConfig) -> None:
        dump_config(cfg, self.path / CONFIG)

    def write_labels(self, classes: list[str]) -> None:
        write_text(self.path / LABELS, json.dumps(list(classes)))  # one line, as it always was

    def write_inputs(self, specs: dict) -> None:
        write_json(self.path / INPUTS, {name: spec.to_dict() for name, spec in specs.items()})

    def write_preprocessing(self, state: dict) -> None:
        write_json(self.path / PREPROCESSING, state)

    def write_task(self, state: dict) -> None:
        write_json(self.path / TASK, state)

    def write_splits(self, record: dict) -> None:
        write_json(self.path / SPLITS, record)

    def write_versions(self, versions: dict) -> None:
        write_json(self.path / VERSIONS, versions)

    def write_transfer(self, record: dict, markdown: str) -> None:
        write_json(self.path / TRANSFER_REPORT, record)
        (self.path / TRANSFER_MARKDOWN).write_text(markdown)

    def write_history(self, history: list[dict]) -> None:
        write_json(self.path / HISTORY, history)

    def write_metrics(self, metrics: dict) -> None:
        write_json(self.path / METRICS, metrics)

    # ------------------------------------------------------------ readers (data; the checks are artifact's)

    def read_config(self) -> RunConfig:
        return load_config(self.path / CONFIG)

    def read(self, name: str) -> Any:
        """The JSON file ``name`` as data (ArtifactError when missing or not JSON)."""
        return read_json(self.path / name)

    def optional(self, name: str, default=None) -> Any:
        """The JSON file ``name`` as data, or ``default`` where the folder has none."""
        return read_json(self.path / name) if self.has(name) else default

    def metrics(self) -> dict:
        """metrics.json, or {} (a run that did not finish has none)."""
        found = self.optional(METRICS, {})
        return found if isinstance(found, dict) else {}

    def versions(self) -> dict:
        found = self.optional(VERSIONS, {})
        if not isinstance(found, dict):
            raise ArtifactError(f"{self.path / VERSIONS}: expected a table of package versions")
        return found

    def transfer_record(self) -> dict | None:
        """transfer_report.json: what was grafted in from where (None: nothing was)."""
        return self.optional(TRANSFER_REPORT)

    def copy_transfer_report(self, to: Path) -> None:
        """The transfer report, JSON and Markdown, copied to ``to``.json and ``to``.md."""
        to.with_suffix(".json").write_bytes((self.path / TRANSFER_REPORT).read_bytes())
        to.with_suffix(".md").write_bytes((self.path / TRANSFER_MARKDOWN).read_bytes())

    def splits(self) -> dict:
        return self.read(SPLITS)

    def preprocessing(self) -> dict | None:
        return self.optional(PREPROCESSING)

    def task_state(self) -> Any:
        return self.read(TASK)

    def old_task_files(self) -> list[Path]:
        return [self.path / name for name in OLD_TASK_FILES if self.has(name)]
