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
from dataclasses import dataclass, field

from mmtransfer.config import AUTO, IMAGE_DEFAULTS, ColumnConfig, HFConfig, ImageColumn, ModelConfig
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


@dataclass
class Binding:
    """What binding columns to encoders decided: every column resolved (no auto left), the encoder chosen for a
    column the config does not name (None: the modality's from-scratch default), and, per column, where each
    setting came from (``origins``: field -> "you" | a backbone | "default") and a note."""

    columns: dict[str, ColumnConfig]
    encoders: dict[str, object] = field(default_factory=dict)
    readers: dict[str, object] = field(default_factory=dict)  # every column's encoder where known (None: default)
    origins: dict[str, dict[str, str]] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)


def bind_encoders(columns: dict[str, ColumnConfig], model: ModelConfig | None) -> Binding:
    """Resolve every ``auto`` setting of ``columns`` once, from the encoder that will read each column: the one
    model.encoders names, else the preset's (``model.preset``), else the modality's from-scratch default.

    An image column read by a pretrained backbone takes the backbone's size, resize, crop, mean and std, and
    random crops and flips in training; a text column read by a Hugging Face model takes its tokenizer. A value
    the user set is always kept. Without ``model`` (a table loaded on its own) the modality defaults apply.
    """
    binding = Binding({})
    configured = dict(model.encoders) if model is not None else {}
    preset = model.preset if model is not None else "scratch"
    for name, column in columns.items():
        encoder, why = configured.get(name), "model.encoders"
        if encoder is None and column.modality in ("image", "text", "audio"):
            encoder, why = _chosen(column, preset)
            if encoder is not None:
                binding.encoders[name] = encoder
        binding.readers[name] = encoder
        if why:
            binding.notes[name] = why
        if column.modality == "image":
            found = image_preprocessing(encoder) if encoder is not None else None
            settings, source = found if found is not None else ({}, "")
            settings = {**settings, "augment": "crop_flip"} if found is not None else {}
            auto = set(column.auto_fields())
            binding.columns[name] = column.resolved(settings)
            binding.origins[name] = {k: ("you" if k not in auto else source if k in settings else "default")
                                     for k in IMAGE_DEFAULTS}  # fmt: skip
        elif column.modality == "text":
            tokenizer = encoder_info(encoder).tokenizer(encoder) if encoder is not None else None
            binding.columns[name] = column.resolved(tokenizer)
            binding.origins[name] = {
                "tokenizer": "you" if column.tokenizer != AUTO else f"{tokenizer}" if tokenizer else "default",
                "max_length": "you" if column.max_length != AUTO else "default",
            }
        else:
            binding.columns[name] = column
    return binding


def _chosen(column: ColumnConfig, preset: str):
    """(encoder, why) for a column no encoder is configured for."""
    if column.modality == "text" and column.tokenizer not in (AUTO, None):
        return HFConfig(path=column.tokenizer), "the column's tokenizer names its model"
    if column.modality == "text" and column.tokenizer is None:
        return None, "tokenizer: none (a word vocabulary) keeps a text CNN from scratch"
    if column.modality == "image" and column.size != AUTO and min(column.size) < 32 and preset == "auto":
        return None, f"size {list(column.size)} is below a pretrained backbone's stride (32): a CNN from scratch"
    return preset_encoder(column.modality, preset)


def binding_line(name: str, column: ColumnConfig, binding: Binding) -> str:
    """One line per column: its resolved settings and where each came from."""
    origins = binding.origins.get(name, {})
    if column.modality == "image":
        text = describe(column)
    elif column.modality == "text":
        text = f"tokenizer {column.tokenizer or 'a word vocabulary'}, {column.max_length} tokens"
    else:
        return ""
    by_source: dict[str, list[str]] = {}
    for key, source in origins.items():
        by_source.setdefault(source, []).append(key)
    parts = [f"{', '.join(keys)} from {'you' if src == 'you' else src}" for src, keys in by_source.items()]
    return f"{column.modality} column {name}: {text} ({'; '.join(parts)})"


def describe(col: ImageColumn) -> str:
    """An image column's preprocessing in words, e.g. "224x224, shorter side to 256 then centre crop, ..."."""
    h, w = col.size
    if col.resize == "crop":
        how = f"shorter side scaled to {round(min(h, w) / col.crop_pct)} then centre crop"
    elif col.resize == "pad":
        how = "fitted inside, aspect kept, padded"
    else:
        how = "stretched"
    aug = {True: "shift", False: "none"}.get(col.augment, col.augment)
    return f"{h}x{w}, {how}, mean {_values(col.mean)} std {_values(col.std)}, training augmentation {aug}"


def _values(value) -> str:
    """One value, or one per channel joined by '/'."""
    return "/".join(f"{x:g}" for x in value) if isinstance(value, tuple) else f"{value:g}"
