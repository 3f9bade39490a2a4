"""A run folder is a self-contained artifact: this module alone writes and reads its layout.

    RUN/config.yaml          the validated config that built the model (every encoder named)
    RUN/model.safetensors    every weight, pretrained backbones included
    RUN/labels.json          class names in output order
    RUN/inputs.json          what each encoder was built for (kind and shape of each input)
    RUN/preprocessing.json   tables: column bindings and the fitted state of each modality
    RUN/assets/...           what a pretrained backbone needs besides weights: its config.json, a tokenizer's
                             files, an audio feature extractor's settings (copied in; never a path outside)
    RUN/splits.json          which rows were train / validation / test (a table's row numbers and SHA-256)
    RUN/versions.json        mmtransfer, torch, transformers and Python that wrote it
    RUN/history.json, metrics.json, transfer_report.json / .md
    RUN/manifest.json        size and SHA-256 of every file above; "complete": false until fit has finished

Loading verifies the manifest first: a missing, truncated or changed file, an unlisted file among those loading
reads, or a manifest whose own digest no longer matches is refused with the file named. The manifest guards
against damage and accidental edits, not against someone who rewrites files and manifest together. Weights are
read as safetensors, JSON and YAML as data: nothing is ever unpickled.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from mmtransfer.config import EfficientNetLiteConfig, HFConfig, RunConfig, TimmConfig, load_config

MANIFEST = "manifest.json"
ASSETS = "assets"
CORE_FILES = ("config.yaml", "model.safetensors", "labels.json", "inputs.json", "splits.json")


class ArtifactError(ValueError):
    """A run folder that cannot be trusted or used as it is; the message names the file."""


# ---------------------------------------------------------------- versions, manifest


def versions() -> dict[str, str]:
    import torch

    import mmtransfer

    out = {"mmtransfer": mmtransfer.__version__, "torch": torch.__version__, "python": platform.python_version()}
    try:  # the installed version, without importing transformers (2 s) in runs that never use it
        from importlib.metadata import version

        out["transformers"] = version("transformers")
    except ImportError:  # PackageNotFoundError is one
        pass
    return out


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _digest(manifest: dict) -> str:
    body = {k: v for k, v in manifest.items() if k != "digest"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _write_json(path: Path, data) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


RUN_FILES = ("config.yaml", MANIFEST)  # a folder holding either is a run folder
LOCK = ".lock"  # the PID of the process writing the folder


def _contents(run_dir: Path) -> list[Path]:
    return [p for p in run_dir.iterdir() if p.name != LOCK]


def check_out(run_dir: Path, *, overwrite: bool = False, resume: bool = False) -> None:
    """Before any work: ``run_dir`` must be new, empty, or a previous run folder that ``overwrite`` replaces or
    ``resume`` continues. A folder holding other files is never written into, so no stale file survives."""
    if overwrite and resume:
        raise ArtifactError("--overwrite and --resume: choose one (replace the run, or continue it)")
    if resume:
        path = run_dir / MANIFEST
        if not (run_dir / "config.yaml").is_file():
            raise ArtifactError(f"--resume: {run_dir} holds no run to continue (no config.yaml)")
        manifest = json.loads(path.read_text()) if path.is_file() else {}
        if manifest.get("complete"):
            raise ArtifactError(f"--resume: the run in {run_dir} finished; nothing to continue (--overwrite redoes it)")
        if not (run_dir / "checkpoint.safetensors").is_file():
            raise ArtifactError(
                f"--resume: {run_dir} has no checkpoint.safetensors (it stopped before its first epoch ended); "
                "start again with --overwrite"
            )
        return
    if not run_dir.exists():
        return
    if not run_dir.is_dir():
        raise ArtifactError(f"--out {run_dir}: a file, not a folder")
    if not _contents(run_dir):
        return
    if not any((run_dir / name).is_file() for name in RUN_FILES):
        raise ArtifactError(f"--out {run_dir}: not empty and not a run folder; choose a new or empty folder")
    if not overwrite:
        raise ArtifactError(
            f"--out {run_dir}: holds a previous run; --overwrite replaces it (its files are removed), --resume "
            "continues it if it did not finish"
        )


@contextmanager
def locked(run_dir: Path) -> Iterator[None]:
    """Hold ``run_dir/.lock`` (this process's PID) while writing the folder: a second process that tries is
    refused with the holder's PID. A lock whose process is gone (killed) is taken over."""
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            break
        except FileExistsError:
            try:
                pid = int(path.read_text().strip() or 0)
            except (OSError, ValueError):
                pid = 0
            if pid and pid != os.getpid() and _alive(pid):
                raise ArtifactError(
                    f"{run_dir} is being written by process {pid} ({path}); wait for it to finish, or stop it"
                ) from None
            path.unlink(missing_ok=True)  # left by a process that was killed
    else:
        raise ArtifactError(f"{path}: cannot take the lock")
    with os.fdopen(fd, "w") as f:
        f.write(str(os.getpid()))
    try:
        yield
    finally:
        path.unlink(missing_ok=True)
        if created and not any(run_dir.iterdir()):  # nothing was written (a mistake found first): no folder left
            run_dir.rmdir()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def start(run_dir: Path, *, overwrite: bool = False) -> None:
    """Mark a run folder as being written (a previous run in it is removed first, when ``overwrite``): until
    :func:`finish`, loading it is refused unless asked."""
    check_out(run_dir, overwrite=overwrite)
    for path in _contents(run_dir) if run_dir.is_dir() else []:  # check_out made sure they are a run's
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    run_dir.mkdir(parents=True, exist_ok=True)
    manifest = {"complete": False, "files": {}}
    _write_json(run_dir / MANIFEST, {**manifest, "digest": _digest(manifest)})


def finish(run_dir: Path) -> dict:
    """Give every file the same permissions, then write the manifest of the finished run folder."""
    umask = os.umask(0)
    os.umask(umask)
    files = {}
    for path in sorted(p for p in run_dir.rglob("*") if p.is_file() and p.name not in (MANIFEST, LOCK)):
        if path.name.startswith(".") and path.name.endswith(".tmp"):
            continue  # a killed write's leftover
        os.chmod(path, 0o666 & ~umask)
        files[path.relative_to(run_dir).as_posix()] = {"size": path.stat().st_size, "sha256": _sha256(path)}
    manifest = {"complete": True, "files": files}
    _write_json(run_dir / MANIFEST, {**manifest, "digest": _digest(manifest)})
    os.chmod(run_dir / MANIFEST, 0o666 & ~umask)
    return manifest


def verify(run_dir: str | Path, *, allow_unfinished: bool = False) -> dict:
    """Check the manifest and every file it lists; return the manifest. Raises :class:`ArtifactError`."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise ArtifactError(f"{run_dir} is not a run folder: no config.yaml")
    path = run_dir / MANIFEST
    if not path.is_file():
        raise ArtifactError(f"{path}: missing; this run folder was not written by a finished `mmtransfer fit`")
    try:
        manifest = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise ArtifactError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(manifest, dict) or manifest.get("digest") != _digest(manifest):
        raise ArtifactError(f"{path}: edited or damaged (its digest does not match its contents)")
    if not manifest.get("complete"):
        if allow_unfinished:
            return manifest
        raise ArtifactError(
            f"{run_dir}: this run did not finish (manifest.json says so); its weights may be from any epoch. "
            "Refit, or pass --allow-unfinished to use it anyway"
        )
    listed = manifest["files"]
    for name in CORE_FILES:
        if name not in listed:
            raise ArtifactError(f"{path}: does not list {name}, which every run folder has (edited?)")
    for name in ("preprocessing.json",):
        if (run_dir / name).is_file() and name not in listed:
            raise ArtifactError(f"{run_dir / name}: not listed in manifest.json (added after the run?)")
    unlisted = [
        p.relative_to(run_dir).as_posix()
        for p in (run_dir / ASSETS).rglob("*")
        if p.is_file() and p.relative_to(run_dir).as_posix() not in listed
    ]
    if unlisted:
        raise ArtifactError(f"{run_dir / unlisted[0]}: not listed in manifest.json (added after the run?)")
    for name, entry in listed.items():
        file = run_dir / name
        if not file.is_file():
            raise ArtifactError(f"{file}: missing from the run folder (listed in manifest.json)")
        if file.stat().st_size != entry["size"]:
            raise ArtifactError(f"{file}: {file.stat().st_size} bytes, the manifest says {entry['size']} (truncated?)")
        if _sha256(file) != entry["sha256"]:
            raise ArtifactError(f"{file}: changed since the run was written (SHA-256 differs from manifest.json)")
    return manifest


def version_differences(run_dir: Path) -> list[str]:
    """'torch: run 2.13.0, here 2.14.1' for each package whose version differs from the one that wrote the run."""
    path = run_dir / "versions.json"
    if not path.is_file():
        return []
    written, here = json.loads(path.read_text()), versions()
    return [f"{k}: run {v}, here {here.get(k, 'not installed')}" for k, v in written.items() if here.get(k) != v]


# ---------------------------------------------------------------- assets


def write_assets(run_dir: Path, cfg: RunConfig, data) -> dict:
    """Copy into the run folder what its pretrained parts need besides weights (their weights are in
    model.safetensors): each Hugging Face encoder's config.json, each pretrained tokenizer's files, each audio
    extractor's settings. Returns the preprocessing state with those files named (relative to the run)."""
    assets = run_dir / ASSETS
    for name, enc in cfg.model.encoders.items():
        if isinstance(enc, HFConfig):
            from transformers import AutoConfig

            from mmtransfer.encoders.hf import resolve_model_path
            from mmtransfer.hub import from_pretrained, offline

            with offline(enc.local_files_only):
                config = from_pretrained(
                    AutoConfig,
                    resolve_model_path(enc.path),
                    what=f"hf encoder {name}",
                    local_files_only=enc.local_files_only,
                )
            config.save_pretrained(str(assets / "encoders" / name))
    state = json.loads(json.dumps(data.preprocessing)) if data.preprocessing else {}
    pre = getattr(data, "preprocessor", None)
    if pre is not None:
        for col, modality in pre.modalities.items():
            tokenizer = getattr(modality, "tokenizer", None) if pre.columns[col].modality == "text" else None
            if tokenizer is not None:
                where = Path(ASSETS) / "tokenizers" / col
                tokenizer.save_pretrained(str(run_dir / where))
                state["state"][col]["files"] = where.as_posix()
            if pre.columns[col].modality == "audio" and pre.columns[col].extractor:
                where = Path(ASSETS) / "extractors" / col
                modality.extract([modality.placeholder()])  # loaded
                modality._extractor.save_pretrained(str(run_dir / where))
                state["state"][col]["files"] = where.as_posix()
    return state


def portable_config(cfg: RunConfig, run_dir: Path) -> RunConfig:
    """The config with every pretrained encoder pointed at the run's own assets (architecture only: the
    weights are in model.safetensors), so nothing outside the run folder is needed."""
    encoders = dict(cfg.model.encoders)
    for name, enc in encoders.items():
        if isinstance(enc, HFConfig):
            folder = run_dir / ASSETS / "encoders" / name
            if not (folder / "config.json").is_file():
                raise ArtifactError(f"{folder / 'config.json'}: missing; the run folder cannot rebuild encoder {name}")
            encoders[name] = enc.model_copy(update={"path": str(folder)})
        elif isinstance(enc, (TimmConfig, EfficientNetLiteConfig)):
            encoders[name] = enc.model_copy(update={"pretrained": False, "weights": None})
    return cfg.model_copy(update={"model": cfg.model.model_copy(update={"encoders": encoders})})


# ---------------------------------------------------------------- splits


def table_sha256(path: str | Path) -> str:
    """A table file's SHA-256; for a folder of class folders, of its listing (every file's path and size)."""
    path = Path(path)
    if not path.is_dir():
        return _sha256(path)
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")):
        h.update(f"{f.relative_to(path).as_posix()}\t{f.stat().st_size}\n".encode())
    return h.hexdigest()


def write_splits(run_dir: Path, cfg: RunConfig, data) -> None:
    """Which rows were train / validation / test: a table's own row numbers and the table's SHA-256, or, for a
    built-in dataset, the seed and a hash of each split's labels."""
    record: dict = {"validation": data.labels.validation if data.labels else None}
    parts = {"train": data.train, "val": data.val, "test": data.test}
    table = cfg.data.table or cfg.data.folder
    if table is None and all(hasattr(p, "row_ids") for p in parts.values() if p is not None):
        record["table"] = None  # a DataFrame given in Python: its rows are recorded, the table itself is not
        record["rows"] = {k: [int(r) for r in p.row_ids] for k, p in parts.items() if p is not None}
    elif table is not None and all(hasattr(p, "row_ids") for p in parts.values() if p is not None):
        record["table"] = str(table)
        record["table_sha256"] = table_sha256(table)
        record["rows"] = {k: [int(r) for r in p.row_ids] for k, p in parts.items() if p is not None}
    else:
        record["dataset"] = cfg.data.dataset
        record["seed"] = cfg.data.seed
        record["labels_sha256"] = {k: labels_hash(p.labels) for k, p in parts.items() if p is not None}
    _write_json(run_dir / "splits.json", record)


def labels_hash(labels) -> str:
    return hashlib.sha256(labels.numpy().astype("int64").tobytes()).hexdigest()[:32]


# ---------------------------------------------------------------- loading


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
    from mmtransfer.checkpoint import load_into, load_weights
    from mmtransfer.model import build_model
    from mmtransfer.transfer import strategies

    run_dir = Path(run_dir)
    manifest = verify(run_dir, allow_unfinished=allow_unfinished) if verify_files else {}
    cfg = load_config(run_dir / "config.yaml")
    classes = _json(run_dir / "labels.json")
    specs = read_specs(run_dir / "inputs.json")
    model = build_model(portable_config(cfg, run_dir).model, specs, classes, pretrained=False, modules=modules)
    strategies.prepare(model, cfg.train.strategy)  # a LoRA run's weights have the adapters' names
    weights = run_dir / "model.safetensors"
    load_into(model, load_weights(weights), where=str(weights))
    if (run_dir / "target.json").is_file():  # a regression run: the output in the target's units
        target = _json(run_dir / "target.json")
        if target.get("task") == "multilabel":  # label sets: each label's threshold
            model.task, model.thresholds = "multilabel", [float(t) for t in target["thresholds"]]
        else:
            model.task, model.target_mean, model.target_std = "regression", float(target["mean"]), float(target["std"])
    if (run_dir / "calibration.json").is_file():  # temperature scaling fitted after training
        model.temperature = float(_json(run_dir / "calibration.json")["temperature"])
    model.eval()
    preprocessor = None
    if (run_dir / "preprocessing.json").is_file():
        from mmtransfer.preprocess import TablePreprocessor

        preprocessor = TablePreprocessor.from_state(_json(run_dir / "preprocessing.json"), base=run_dir)
    return Run(run_dir, cfg, model, classes, specs, preprocessor, manifest, version_differences(run_dir))


def _json(path: Path):
    if not path.is_file():
        raise ArtifactError(f"{path}: missing from the run folder")
    try:
        return json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise ArtifactError(f"{path}: not valid JSON ({err})") from None


def write_specs(specs: dict, path: Path) -> None:
    path.write_text(json.dumps({name: spec.to_dict() for name, spec in specs.items()}, indent=1))


def read_specs(path: Path) -> dict:
    from mmtransfer.modalities.base import InputSpec

    specs = {}
    for name, d in _json(path).items():
        d["shape"] = tuple(d["shape"])
        d["categorical"] = {int(k): v for k, v in d["categorical"].items()}  # JSON keys are strings
        specs[name] = InputSpec(**d)
    return specs


def copy_run(src: str | Path, dst: str | Path) -> Path:
    """Copy a finished run folder elsewhere (it stays valid: nothing in it names its own location)."""
    verify(src)
    shutil.copytree(src, dst)
    return Path(dst)
