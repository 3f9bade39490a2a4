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
from pathlib import Path

from rich.console import Console

from mmtransfer.config import EfficientNetLiteConfig, HFConfig, ImageColumn, RunConfig, TimmConfig

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


def with_backbone_preprocessing(cfg: RunConfig, console: Console | None = None) -> RunConfig:
    """The config with every image column read by a pretrained backbone given that backbone's preprocessing
    where the column does not set it; each choice is printed."""
    if cfg.data.table is None and cfg.data.folder is None:
        return cfg  # built-in datasets have their own fixed inputs
    columns = dict(cfg.data.columns)
    for name, enc in cfg.model.encoders.items():
        found = image_preprocessing(enc)
        if found is None:
            continue
        settings, source = found
        column = columns.get(name)
        if column is not None and not isinstance(column, ImageColumn):
            continue  # the encoder will refuse the input kind itself
        column = column or ImageColumn()
        given = column.model_fields_set
        update = {k: v for k, v in settings.items() if k not in given}
        for key in ("mean", "std"):
            if isinstance(update.get(key), tuple) and column.channels == 1:  # a grayscale column: one value
                update[key] = sum(update[key]) / 3
        if "augment" not in given:
            update["augment"] = "crop_flip"
        merged = ImageColumn.model_validate({**column.model_dump(), **update})
        columns[name] = merged
        if console is not None:
            kept = sorted(k for k in SETTINGS if k in given)
            console.print(
                f"image column {name}: {describe(merged)} (from {source}"
                + (f"; kept from the column config: {', '.join(kept)}" if kept else "")
                + ")",
                markup=False,
                highlight=False,
            )
    return cfg.model_copy(update={"data": cfg.data.model_copy(update={"columns": columns})})


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
