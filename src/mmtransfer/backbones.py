"""Each pretrained image backbone's own preprocessing, as the defaults of the image column it reads.

A pretrained image model saw its training images at one size, cropped one way and normalised with one mean
and std; feeding it anything else costs accuracy for nothing. Where a column is read by such a backbone
(``efficientnet_lite`` with weights, an ``hf`` vision model with a ``preprocessor_config.json``, a pretrained
``timm`` model), the column's ``size``, ``resize``, ``crop_pct``, ``mean`` and ``std`` come from the backbone
unless the column sets them itself, and its training augmentation becomes random crops and flips
(``crop_flip``) unless ``augment`` is set. The choice is printed and, being part of the config, stored in the
run folder (``config.yaml``, ``preprocessing.json``), so ``predict`` applies exactly the same.
"""

from __future__ import annotations

import importlib.util

from mmtransfer.config import AUTO, ColumnConfig, HFConfig, ModelConfig
from mmtransfer.data.columns import Binding, Reader, bind, binding_line, describe_image  # noqa: F401 (re-exported)
from mmtransfer.encoders import encoder_info, presets

SETTINGS = ("size", "resize", "crop_pct", "mean", "std")
SCRATCH_NOUN = {"image": "image", "text": "text", "audio": "sound"}  # "no pretrained sound encoder is packaged"


def image_preprocessing(enc) -> tuple[dict, str] | None:
    """(column settings, where they come from) for a pretrained image backbone's config; None otherwise."""
    return encoder_info(enc).preprocessing(enc)


def _installed(*modules: str) -> bool:
    return all(importlib.util.find_spec(m) is not None for m in modules)


def preset_encoder(modality: str, preset: str):
    """(encoder config or None, why) for a table column of ``modality`` that model.encoders does not name: the
    first registered preset for the modality whose packages are installed (:func:`mmtransfer.encoders.presets`).

    None means the modality's small from-scratch default (:func:`mmtransfer.model.default_encoder`)."""
    if preset != "auto" or modality not in SCRATCH_NOUN:
        return None, "model.preset scratch" if preset == "scratch" else ""
    candidates = presets(modality)
    if not candidates:
        noun = SCRATCH_NOUN[modality]
        return None, f"model.preset auto: no pretrained {noun} encoder is packaged yet; a CNN from scratch"
    for candidate in candidates:
        if _installed(*candidate.requires):
            return candidate.config(), candidate.chosen
    return None, candidates[0].missing


def bind_encoders(columns: dict[str, ColumnConfig], model: ModelConfig | None) -> Binding:
    """Resolve every ``auto`` setting of ``columns`` once, from the encoder that will read each column: the one
    model.encoders names, else the preset's (``model.preset``), else the modality's from-scratch default
    (:func:`mmtransfer.data.columns.bind` does the resolving). Without ``model`` (a table loaded on its own) the
    modality defaults apply."""
    configured = dict(model.encoders) if model is not None else {}
    preset = model.preset if model is not None else "scratch"

    def reader(name: str, column: ColumnConfig) -> Reader:
        encoder, why, chosen = configured.get(name), "model.encoders", False
        if encoder is None and column.modality in ("image", "text", "audio"):
            (encoder, why), chosen = _chosen(column, preset), True
        if encoder is None:
            return Reader(why=why)
        info = encoder_info(encoder)
        image = info.preprocessing(encoder) if column.modality == "image" else None
        audio = info.preprocessing(encoder) if column.modality == "audio" else None
        tokenizer = info.tokenizer(encoder) if column.modality == "text" else None
        note = info.column_note(encoder, column.resolved(audio[0]) if audio else column)
        why = f"{why}; {note}" if note else why
        return Reader(encoder, chosen, why, info.describe(encoder), image, tokenizer=tokenizer, audio=audio)

    return bind(columns, reader)


def binder(model: ModelConfig | None):
    """The binder ``load_dataset`` takes for a run whose model config is ``model``."""
    return lambda columns: bind_encoders(columns, model)


def _chosen(column: ColumnConfig, preset: str):
    """(encoder, why) for a column no encoder is configured for."""
    if column.modality == "text" and column.tokenizer not in (AUTO, None):
        return HFConfig(path=column.tokenizer), "the column's tokenizer names its model"
    if column.modality == "text" and column.tokenizer is None:
        return None, "tokenizer: none (a word vocabulary) keeps a text CNN from scratch"
    if column.modality == "image" and column.size != AUTO and min(column.size) < 32 and preset == "auto":
        return None, f"size {list(column.size)} is below a pretrained backbone's stride (32): a CNN from scratch"
    return preset_encoder(column.modality, preset)
