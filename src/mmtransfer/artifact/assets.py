"""What a run folder is built from besides weights: the pretrained parts' assets (copied in, so nothing outside
the folder is needed) and the record of which rows were train, validation and test."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from mmtransfer.artifact import _sha256
from mmtransfer.config import RunConfig
from mmtransfer.runfolder import ASSETS, ArtifactError, RunFolder


def write_assets(run_dir: Path, cfg: RunConfig, data) -> dict:
    """Copy into the run folder what its pretrained parts need besides weights (their weights are in
    model.safetensors): each Hugging Face encoder's config.json, each pretrained tokenizer's files, each audio
    extractor's settings. Returns the preprocessing state with those files named (relative to the run)."""
    from mmtransfer.encoders import encoder_info  # imports torch: this module stays light for the study engine

    for name, enc in cfg.model.encoders.items():
        save = encoder_info(enc).save_assets
        if save is not None:
            save(enc, run_dir / ASSETS / "encoders" / name, f"{enc.type} encoder {name}")
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
    from mmtransfer.encoders import encoder_info  # imports torch: this module stays light for the study engine

    encoders = dict(cfg.model.encoders)
    for name, enc in encoders.items():
        info, folder = encoder_info(enc), run_dir / ASSETS / "encoders" / name
        for file in info.asset_files:
            if not (folder / file).is_file():
                raise ArtifactError(f"{folder / file}: missing; the run folder cannot rebuild encoder {name}")
        update = info.portable(enc, folder)
        if update:
            encoders[name] = enc.model_copy(update=update)
    return cfg.model_copy(update={"model": cfg.model.model_copy(update={"encoders": encoders})})


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
    RunFolder(run_dir).write_splits(record)


def labels_hash(labels) -> str:
    return hashlib.sha256(labels.numpy().astype("int64").tobytes()).hexdigest()[:32]
