"""A run folder is a self-contained artifact: its layout (every file's name, what reads and writes it) is
:mod:`mmtransfer.runfolder`'s; this module checks the whole and loads it.

Loading verifies the manifest first: a missing, truncated or changed file, any file the manifest does not list
(other than what commands write into a finished run: export's ``model.onnx`` and ``model.json``, and a
``checkpoint.safetensors`` a kill left between the final manifest and its removal, which nothing reads), a
symlink anywhere in the folder, or a manifest whose own digest no longer matches is refused with the file
named. Every value loading uses is range-checked (class names, and task.json's temperature, thresholds, a
target's mean and std). The manifest guards against damage and accidental edits (integrity), not against someone
who rewrites files and manifest together (authenticity): zeroed weights or relabelled classes, re-digested, cannot
be told from a real run. Weights are read as safetensors, JSON and YAML as data: nothing is ever unpickled.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import stat
from pathlib import Path

from mmtransfer.outputs import final_name
from mmtransfer.runfolder import (  # noqa: F401 (the layout's names, re-exported: artifact.MANIFEST, ...)
    ASSETS,
    CHECKPOINT,
    CONFIG,
    CORE_FILES,
    INPUTS,
    LABELS,
    LATER_OUTPUTS,
    MANIFEST,
    RUN_FILES,
    TASK,
    ArtifactError,
    RunFolder,
    read_json,
)
from mmtransfer.runlock import is_lock_file, locked  # noqa: F401 (fit_run takes the lock as artifact.locked)
from mmtransfer.version import __version__

# ---------------------------------------------------------------- versions, manifest


def versions() -> dict[str, str]:
    import torch

    out = {"mmtransfer": __version__, "torch": torch.__version__, "python": platform.python_version()}
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


def _contents(run_dir: Path) -> list[Path]:
    return [p for p in run_dir.iterdir() if not is_lock_file(p.name)]


def check_out(run_dir: Path, *, overwrite: bool = False, resume: bool = False) -> bool:
    """Before any work: ``run_dir`` must be new, empty, or a previous run folder that ``overwrite`` replaces or
    ``resume`` continues. A folder holding other files is never written into, so no stale file survives.

    Returns whether there is training to continue: with ``resume``, False for a run killed before its first
    checkpoint (nothing of its training was kept), which then starts again from the beginning."""
    if overwrite and resume:
        raise ArtifactError("--overwrite and --resume: choose one (replace the run, or continue it)")
    if resume:
        return _resumable(run_dir)
    if not run_dir.exists():
        return False
    if not run_dir.is_dir():
        raise ArtifactError(f"--out {run_dir}: a file, not a folder")
    if not _contents(run_dir):
        return False
    if not any((run_dir / name).is_file() for name in RUN_FILES):
        raise ArtifactError(f"--out {run_dir}: not empty and not a run folder; choose a new or empty folder")
    if not overwrite:
        raise ArtifactError(
            f"--out {run_dir}: holds a previous run; --overwrite replaces it (its files are removed), --resume "
            "continues it if it did not finish"
        )
    return False


def _resumable(run_dir: Path) -> bool:
    if not run_dir.exists():
        return False  # killed while its data was checked, before the folder was made
    if not run_dir.is_dir():
        raise ArtifactError(f"--out {run_dir}: a file, not a folder")
    if not _contents(run_dir):
        return False  # killed while its data was checked: nothing written but the lock
    if not any((run_dir / name).is_file() for name in RUN_FILES):
        raise ArtifactError(f"--resume: {run_dir} holds no run to continue (no {CONFIG})")
    manifest = read_json(run_dir / MANIFEST) if (run_dir / MANIFEST).is_file() else {}
    if isinstance(manifest, dict) and manifest.get("complete"):
        raise ArtifactError(f"--resume: the run in {run_dir} finished; nothing to continue (--overwrite redoes it)")
    if not (run_dir / CHECKPOINT).is_file():
        return False  # killed before its first checkpoint: nothing of its training was kept
    if not (run_dir / CONFIG).is_file():
        raise ArtifactError(f"--resume: {run_dir} has a {CHECKPOINT} but no {CONFIG}; start again with --overwrite")
    return True


def start(run_dir: Path, *, overwrite: bool = False) -> None:
    """Mark a run folder as being written (a previous run in it is removed first, when ``overwrite``): until
    :func:`finish`, loading it is refused unless asked."""
    check_out(run_dir, overwrite=overwrite)
    for path in _contents(run_dir) if run_dir.is_dir() else []:  # check_out made sure they are a run's
        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    run_dir.mkdir(parents=True, exist_ok=True)
    manifest = {"complete": False, "files": {}}
    _write_json(run_dir / MANIFEST, {**manifest, "digest": _digest(manifest)})


def _walk(run_dir: Path) -> list[str]:
    """Every file in ``run_dir``, relative and '/'-separated, sorted. A symlink anywhere (to a file or a folder)
    or anything but a plain file or folder is an ArtifactError naming it: a run folder holds its own files."""

    def unreadable(err: OSError) -> None:
        raise ArtifactError(f"{err.filename}: cannot be read ({err.strerror})")

    found = []
    for folder, dirs, files in os.walk(run_dir, onerror=unreadable):
        for name in sorted(dirs + files):
            path = Path(folder) / name
            try:
                mode = os.lstat(path).st_mode
            except FileNotFoundError:  # a temporary file, gone this instant
                continue
            if stat.S_ISLNK(mode):
                raise ArtifactError(
                    f"{path}: a symbolic link; a run folder holds its own files, never links to others (a linked "
                    "file can change after it is checked): replace it with the file itself"
                )
            if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                raise ArtifactError(f"{path}: not a regular file (a pipe, socket or device) in a run folder")
            if stat.S_ISREG(mode):
                found.append(path.relative_to(run_dir).as_posix())
    return sorted(found)


def _transient(name: str) -> bool:
    """A file that is never part of a run: the lock, a lock being put in place, a killed fit's checkpoint."""
    return name == CHECKPOINT or is_lock_file(name)


def finish(run_dir: Path) -> dict:
    """Give every file the same permissions, then write the manifest of the finished run folder. The checkpoint
    is not part of it: the caller removes it once this has returned."""
    umask = os.umask(0)
    os.umask(umask)
    files = {}
    for name in _walk(run_dir):
        path = run_dir / name
        if name == MANIFEST or _transient(name):
            continue
        if final_name(path.name) is not None or (
            path.name.startswith(".") and path.name.endswith(".tmp")
        ):  # a killed write's leftover
            path.unlink(missing_ok=True)
            continue
        os.chmod(path, 0o666 & ~umask)
        files[name] = {"size": path.stat().st_size, "sha256": _sha256(path)}
    manifest = {"complete": True, "files": files}
    _write_json(run_dir / MANIFEST, {**manifest, "digest": _digest(manifest)})
    os.chmod(run_dir / MANIFEST, 0o666 & ~umask)
    return manifest


def verify(run_dir: str | Path, *, allow_unfinished: bool = False) -> dict:
    """Check the manifest and every file it lists, and that the folder holds nothing else; return the manifest.
    Raises :class:`ArtifactError`."""
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG).is_file():
        raise ArtifactError(f"{run_dir} is not a run folder: no {CONFIG}")
    path = run_dir / MANIFEST
    if not path.is_file():
        raise ArtifactError(f"{path}: missing; this run folder was not written by a finished `mmtransfer fit`")
    present = _walk(run_dir)  # symlinks refused before anything is read
    manifest = read_json(path)
    if not isinstance(manifest, dict) or manifest.get("digest") != _digest(manifest):
        raise ArtifactError(f"{path}: edited or damaged (its digest does not match its contents)")
    if not manifest.get("complete"):
        if allow_unfinished:
            return manifest
        raise ArtifactError(
            f"{run_dir}: this run did not finish (manifest.json says so); its weights may be from any epoch. "
            "Refit, or pass --allow-unfinished to use it anyway"
        )
    listed = _listed(manifest, path)
    for name in CORE_FILES:
        if name not in listed:
            raise ArtifactError(f"{path}: does not list {name}, which every run folder has (edited?)")
    for name in present:
        later = name in LATER_OUTPUTS or final_name(name) in LATER_OUTPUTS  # or a killed export's temporary file
        if name not in listed and name != MANIFEST and not _transient(name) and not later:
            raise ArtifactError(
                f"{run_dir / name}: not listed in manifest.json (added after the run?); a run folder is exactly the "
                "files its fit wrote: remove it to use the run"
            )
    for name, entry in listed.items():
        file = run_dir / name
        if not file.is_file():
            raise ArtifactError(f"{file}: missing from the run folder (listed in manifest.json)")
        if file.stat().st_size != entry["size"]:
            raise ArtifactError(f"{file}: {file.stat().st_size} bytes, the manifest says {entry['size']} (truncated?)")
        if _sha256(file) != entry["sha256"]:
            raise ArtifactError(f"{file}: changed since the run was written (SHA-256 differs from manifest.json)")
    return manifest


def _listed(manifest: dict, path: Path) -> dict:
    """The manifest's files, each a relative path inside the run folder with a size and a SHA-256."""
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise ArtifactError(f"{path}: its 'files' is not a table of files (edited?)")
    for name, entry in files.items():
        parts = name.split("/")
        if not name or name.startswith("/") or "\\" in name or any(p in ("", ".", "..") for p in parts):
            raise ArtifactError(f"{path}: lists {name!r}, which is not a file inside the run folder (edited?)")
        if _transient(name) or name == MANIFEST:
            raise ArtifactError(f"{path}: lists {name}, which is never part of a finished run (edited?)")
        size = entry.get("size") if isinstance(entry, dict) else None
        if not isinstance(size, int) or isinstance(size, bool) or not isinstance(entry.get("sha256"), str):
            raise ArtifactError(f"{path}: the entry of {name} is not a size and a SHA-256 (edited?)")
    return files


def version_differences(run_dir: Path) -> list[str]:
    """'torch: run 2.13.0, here 2.14.1' for each package whose version differs from the one that wrote the run."""
    written, here = RunFolder(run_dir).versions(), versions()
    return [f"{k}: run {v}, here {here.get(k, 'not installed')}" for k, v in written.items() if here.get(k) != v]


# What a run folder is built from and loaded into (they use the manifest's checks above).
from mmtransfer.artifact.assets import (  # noqa: E402, F401
    labels_hash,
    portable_config,
    table_sha256,
    write_assets,
    write_splits,
)
from mmtransfer.artifact.load import (  # noqa: E402, F401
    Run,
    copy_run,
    load,
    load_description,
    read_labels,
    read_specs,
    read_task,
)
