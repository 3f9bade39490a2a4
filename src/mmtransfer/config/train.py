"""The train and transfer sections: optimisation, fine-tuning strategy, and what is transferred from where."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from mmtransfer import limits
from mmtransfer.config.base import Seed, _Strict


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
    teacher_column: str | None = Field(
        None,
        description="Cross-modal distillation: the table column the source run (the teacher) reads in place of "
        "its own input, beside this run's in the same row (an image and a recording of the same thing). The "
        "teacher's outputs on it train this run on every train row, no label read; this run never reads the "
        "column. None: the teacher reads the same inputs as this run (feature distillation).",
    )
    student_column: str | None = Field(
        None,
        description="With teacher_column: the one column this run reads (the others are ignored); none: every "
        "input column but the teacher's.",
    )
    match: Literal["auto", "probs", "embedding", "both"] = Field(
        "auto",
        description="What the student matches: the teacher's temperature-softened class probabilities (probs, "
        "Hinton et al. 2015; the student's head trains with it), its fused embedding (embedding: MSE, then the "
        "teacher's head grafted by label name; needs the same model.embed_dim), or both. auto: probs with a "
        "teacher_column, else embedding.",
    )
    temperature: float = Field(
        4.0,
        gt=0,
        le=100,
        description="probs: the softmax temperature of teacher and student (the loss is scaled by T^2).",
    )

    @model_validator(mode="after")
    def _two_columns(self):
        if self.teacher_column is not None and self.teacher_column == self.student_column:
            raise ValueError(
                f"teacher_column and student_column are both {self.teacher_column!r}: the teacher and the student "
                "read different columns of the same rows"
            )
        if self.student_column is not None and self.teacher_column is None:
            raise ValueError("student_column goes with teacher_column (the column the teacher reads)")
        return self

    def resolved_match(self) -> str:
        """What is matched: ``match``, with auto resolved (probs across columns, else the embedding)."""
        if self.match != "auto":
            return self.match
        return "probs" if self.teacher_column is not None else "embedding"


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
