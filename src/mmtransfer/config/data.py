"""The data section: where rows come from, which column is the label, how each column is read."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from mmtransfer import limits
from mmtransfer.config.base import AUTO, Seed, _count_or_auto, _Strict

# The names data.task accepts besides auto: the tasks of mmtransfer.tasks.TASKS, named here so that a config is
# checked without importing them (they need torch); mmtransfer.tasks.register adds a new task's name.
TASK_NAMES = ["classification", "regression", "multilabel"]


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
    cache: bool = Field(
        False,
        description="Keep each clip decoded and resampled on disk (under MMTRANSFER_CACHE, bounded with the feature "
        "cache by MMTRANSFER_CACHE_MAX_GB), keyed by the file's path, size and modification time and the sample "
        "rate: later epochs and runs read it instead of decoding and resampling again.",
    )

    def resolved(self, values: dict | None = None) -> AudioColumn:
        """A copy whose fields the user did not set take ``values`` (the settings a pretrained encoder reading
        the column expects: aisfx's 44.1 kHz waveforms of 5 s); the fields the user set are kept."""
        update = {k: v for k, v in (values or {}).items() if k not in self.model_fields_set}
        return self.model_copy(update=update) if update else self


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
    task: str = Field(
        "auto",
        description="What the label column holds: classes, a number to predict (regression), or a set of labels "
        "per row (multilabel). auto: cells holding label_separator are label sets, numbers with more than 20 "
        "distinct values a regression target, anything else classes; the guess is printed with the column "
        "binding. Built-in datasets are classification.",
    )

    @field_validator("task")
    @classmethod
    def _known_task(cls, value: str) -> str:
        if value != "auto" and value not in TASK_NAMES:
            raise ValueError(f"expected auto or one of {', '.join(TASK_NAMES)}, got {value!r:.60}")
        return value

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
        ge=0,
        le=limits.MAX_PER_CLASS,
        description="Label budget: k labelled examples per class in all, drawn from the train split; with "
        "train.validation auto, the labels that select the model (early stopping) come out of these k. 0: no "
        "label at all, only with cross-modal distillation (transfer.distill.teacher_column): the model is what "
        "the teacher taught, not trained further.",
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
