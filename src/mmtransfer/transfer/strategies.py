"""Fine-tuning strategies: which parameters train in each epoch, and at what learning rate.

The model is cut into named layer groups: each encoder's ``layer_groups()`` (input side first), named
``encoders.{input}.{i}``, then ``fusion`` and ``head``. A group's *depth* counts down from the top: fusion and
head are depth 0; an encoder's top group is depth 1, the one below it 2, and so on. Every encoder counts from
its own top, so in a multimodal model the top groups of all encoders unfreeze together and share a rate.

==================== =============================================== ========================================
strategy             trains in epoch e                               learning rate of a group at depth k >= 1
==================== =============================================== ========================================
full                 everything                                      lr
linear_probe         fusion and head (where solved: no epoch at all) lr (never used: encoders stay frozen)
lp_ft                everything but BatchNorm; head solved first     ft_lr
freeze_then_unfreeze fusion and head; everything once e > N          lr
gradual_unfreeze     fusion, head, groups with k <= (e-1) // every   lr * lr_decay**k (as ULMFiT)
discriminative       everything                                      lr * lr_decay**k
lora                 LoRA adapters, and all outside the HF backbones lr
==================== =============================================== ========================================

``auto`` is resolved before training (:mod:`mmtransfer.transfer.auto`): the solved probe or ``lp_ft`` for a model
with a pretrained encoder, ``full`` otherwise; a loop given ``auto`` itself trains as ``full``.

Fusion and head (depth 0) always train, at ``lr * head_lr_mult``: both are new, task-specific modules, and a
linear probe on a frozen random fusion would probe a random map. A strategy only ever *freezes*: a parameter
frozen before training (``transfer.freeze`` patterns, the unused pooler of an HF backbone, a base weight under
LoRA) stays frozen.

>>> groups = param_groups(model, StrategyConfig(name="discriminative"), lr=1e-3)  # doctest: +SKIP
>>> {g["name"]: g["lr"] for g in groups}  # doctest: +SKIP
{'encoders.image.0': 0.000125, 'encoders.image.1': 0.00025, 'encoders.image.2': 0.0005, 'head': 0.001}
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from torch import nn

from mmtransfer.config import StrategyConfig
from mmtransfer.encoders import encoder_info
from mmtransfer.errors import MissingPackage, UserError

# The attention query and value projections: BERT, RoBERTa, ViT (query, value); CLIP, wav2vec 2.0 (q_proj, v_proj).
DEFAULT_LORA_TARGETS = ("query", "value", "q_proj", "v_proj")
HEAD_SIDE = ("fusion", "head")


@dataclass(frozen=True)
class LayerGroup:
    name: str
    depth: int  # 0: fusion, head and other top-level modules; k >= 1: k-th group from its encoder's top
    params: tuple[str, ...]  # parameter names, each in exactly one group


def layer_groups(model: nn.Module) -> list[LayerGroup]:
    """The model's layer groups, input side first: every encoder's ``layer_groups()`` in sorted input order
    (an encoder without one is a single group), then any other top-level module, ``fusion`` and ``head``.

    Every parameter lands in exactly one group; an encoder parameter that none of its groups holds is an error
    (it would train in no strategy's plan).
    """
    owner = {id(p): name for name, p in model.named_parameters()}  # named_parameters drops tied duplicates
    taken: set[str] = set()
    groups: list[LayerGroup] = []

    def add(name: str, depth: int, module: nn.Module) -> None:
        names = tuple(owner[id(p)] for p in module.parameters() if owner[id(p)] not in taken)
        taken.update(names)
        groups.append(LayerGroup(name, depth, names))

    encoders = getattr(model, "encoders", None) or {}
    for input_name in sorted(encoders):
        encoder = encoders[input_name]
        parts = encoder.layer_groups() if hasattr(encoder, "layer_groups") else [encoder]
        # A part without parameters (an activation, a pooling) is no layer group: it would add a depth level
        # that unfreezes nothing and decays the rates below it once more.
        parts = [part for part in parts if any(True for _ in part.parameters())]
        for i, part in enumerate(parts):
            add(f"encoders.{input_name}.{i}", len(parts) - i, part)
        missed = sorted(n for n, _ in encoder.named_parameters(prefix=f"encoders.{input_name}") if n not in taken)
        if missed:
            raise UserError(f"encoder {input_name!r}: layer_groups() leaves out parameters {missed}")
    tops = [name for name, _ in model.named_children() if name != "encoders" and name not in HEAD_SIDE]
    for name in [*tops, *HEAD_SIDE]:
        module = getattr(model, name, None)
        if isinstance(module, nn.Module):
            add(name, 0, module)
    rest = [n for n, _ in model.named_parameters(recurse=False) if n not in taken]
    if rest:  # parameters held by the model itself
        groups.append(LayerGroup("model", 0, tuple(rest)))
        taken.update(rest)
    return [g for g in groups if g.params]


def group_lr(group: LayerGroup, strategy: StrategyConfig, lr: float) -> float:
    """Peak learning rate of a group, before the warm-up / cosine factor."""
    if group.depth == 0:
        return lr * strategy.head_lr_mult
    if strategy.name in ("discriminative", "gradual_unfreeze"):
        return lr * strategy.lr_decay**group.depth
    return lr


def param_groups(
    model: nn.Module, strategy: StrategyConfig, lr: float, allowed: Collection[str] | None = None
) -> list[dict]:
    """AdamW parameter groups, input side first: ``{"name", "params", "lr"}`` for every layer group holding a
    parameter in ``allowed`` (default: every parameter). Groups frozen in early epochs are included, so one
    optimizer serves the whole run."""
    params = dict(model.named_parameters())
    out = []
    for group in layer_groups(model):
        names = [n for n in group.params if allowed is None or n in allowed]
        if names:
            out.append({"name": group.name, "params": [params[n] for n in names], "lr": group_lr(group, strategy, lr)})
    return out


def trainable_in_epoch(
    model: nn.Module, strategy: StrategyConfig, epoch: int, allowed: Collection[str] | None = None
) -> set[str]:
    """Names of the parameters the strategy trains in ``epoch`` (1-based), within ``allowed``; changes nothing."""
    lora_prefixes = tuple(f"{prefix}." for prefix in lora_backbones(model))
    if strategy.name == "lora" and not any(is_lora(n) for n, _ in model.named_parameters()):
        raise UserError("strategy lora: the model has no LoRA adapters; call prepare(model, strategy) first")
    names: set[str] = set()
    for group in layer_groups(model):
        if strategy.name == "lora":
            # Inside an HF backbone only the adapters train; everything else trains as in full fine-tuning.
            names.update(n for n in group.params if not n.startswith(lora_prefixes) or is_lora(n))
        elif _trains(group, strategy, epoch):
            names.update(group.params)
    return names if allowed is None else names & set(allowed)


def _trains(group: LayerGroup, strategy: StrategyConfig, epoch: int) -> bool:
    if group.depth == 0 or strategy.name in ("full", "discriminative", "lp_ft", "auto"):
        return True
    if strategy.name == "freeze_then_unfreeze":
        return epoch > strategy.unfreeze_epoch
    if strategy.name == "gradual_unfreeze":
        return group.depth <= (epoch - 1) // strategy.unfreeze_every
    return False  # linear_probe


def schedule(
    model: nn.Module, strategy: StrategyConfig, epoch: int, allowed: Collection[str] | None = None
) -> set[str]:
    """Set ``requires_grad`` for ``epoch`` (1-based) and return the trainable names.

    ``allowed`` is what may train at all, normally the names trainable when training started; left out, every
    parameter may, which would wake e.g. an HF pooler frozen on purpose.
    """
    names = trainable_in_epoch(model, strategy, epoch, allowed)
    if not names:
        raise UserError(f"strategy {strategy.name}: nothing to train in epoch {epoch}")
    for name, param in model.named_parameters():
        param.requires_grad_(name in names)
    return names


def pretrained(encoders: dict) -> list[str]:
    """The inputs whose encoder config starts from pretrained weights, as each encoder type's registry entry
    says (a Hugging Face model; an EfficientNet-Lite or timm model with its pretrained weights or a weights
    file). A module given in Python (custom) is not known to be."""
    return [name for name, enc in sorted(encoders.items()) if encoder_info(enc).pretrained(enc)]


def changes_over_epochs(strategy: StrategyConfig) -> bool:
    """True where the trainable set differs between epochs."""
    return strategy.name in ("freeze_then_unfreeze", "gradual_unfreeze")


def check_cached(trainable: Collection[str], inputs: Collection[str], strategy: StrategyConfig, epoch: int) -> None:
    """An encoder whose features are cached (``name.features`` among the inputs) never runs, so it must not train."""
    for key in inputs:
        if key.endswith(".features"):
            name = key.removesuffix(".features")
            if any(n.startswith(f"encoders.{name}.") for n in trainable):
                raise UserError(
                    f"strategy {strategy.name} trains encoder {name!r} in epoch {epoch}, but its features are "
                    "cached and it never runs; cache features only for encoders frozen in every epoch (linear_probe)"
                )


# ---------------------------------------------------------------- LoRA


def prepare(model: nn.Module, strategy: StrategyConfig) -> nn.Module:
    """What a strategy changes in the model itself, done once, after weights are grafted in and before a
    strategy's checkpoint is loaded: ``lora`` wraps the target layers of every HF backbone; ``lp_ft`` freezes
    every BatchNorm of the encoders. Others: nothing."""
    if strategy.name == "lora":
        apply_lora(model, strategy)
    elif strategy.name == "lp_ft":
        freeze_batchnorm(model)
    return model


def freeze_batchnorm(model: nn.Module) -> list[str]:
    """Freeze the affine parameters of every BatchNorm in the encoders (so training keeps their running
    statistics too: :func:`mmtransfer.train.train_mode`); return their names. LP-FT's probe was solved on the
    features these statistics give; re-estimating them from batches of a few labelled rows moves the features
    under it at the first step (flowers, 40 train photos, batches of 16: LP-FT's best epoch was its first)."""
    names = []
    for prefix, module in model.named_modules():
        if prefix.startswith("encoders.") and isinstance(module, nn.modules.batchnorm._BatchNorm) and module.affine:
            for name, param in module.named_parameters(prefix=prefix):
                param.requires_grad_(False)
                names.append(name)
    return names


def is_lora(name: str) -> bool:
    return "lora_" in name  # PEFT's own test for adapter parameters (lora_A, lora_B, lora_embedding_A, ...)


def lora_backbones(model: nn.Module) -> dict[str, nn.Module]:
    """``encoders.{input}.backbone`` -> the backbone, for every encoder that names one for LoRA (its
    ``lora_module``: a Hugging Face encoder's transformer)."""
    encoders = getattr(model, "encoders", None) or {}
    return {
        f"encoders.{n}.{e.lora_module}": getattr(e, e.lora_module)
        for n, e in sorted(encoders.items())
        if isinstance(getattr(e, "lora_module", None), str)
    }


def apply_lora(model: nn.Module, strategy: StrategyConfig) -> list[str]:
    """Inject LoRA adapters (PEFT, in place) into every HF backbone; return the sorted adapter names.

    A backbone that already has adapters is left as it is. A target layer's weight moves to
    ``...{target}.base_layer.weight`` and the adapters sit beside it as ``...{target}.lora_A.default.weight``,
    so a LoRA checkpoint loads into a model built from the same config and passed through ``apply_lora``.
    """
    backbones = lora_backbones(model)
    if not backbones:
        kinds = {n: type(e).__name__ for n, e in sorted((getattr(model, "encoders", None) or {}).items())}
        raise UserError(
            f"strategy lora adapts the transformer layers of Hugging Face encoders (type: hf); this model has "
            f"none (encoders: {kinds}); use full, discriminative or gradual_unfreeze"
        )
    try:
        from peft import LoraConfig, inject_adapter_in_model  # an optional extra: imported where used
        from peft.tuners.lora import LoraLayer
    except ImportError:
        raise MissingPackage("strategy lora needs PEFT: pip install peft") from None
    wanted = set(strategy.lora_targets or DEFAULT_LORA_TARGETS)
    for prefix, backbone in backbones.items():
        if any(isinstance(m, LoraLayer) for m in backbone.modules()):
            continue
        found = {n.rsplit(".", 1)[-1] for n, _ in backbone.named_modules() if n.rsplit(".", 1)[-1] in wanted}
        if not found:
            linear = sorted({n.rsplit(".", 1)[-1] for n, m in backbone.named_modules() if isinstance(m, nn.Linear)})
            raise UserError(
                f"strategy lora: {prefix} has no layer named {sorted(wanted)}; its linear layers are named "
                f"{linear} (set train.strategy.lora_targets)"
            )
        config = LoraConfig(
            r=strategy.lora_r,
            lora_alpha=strategy.lora_alpha,
            lora_dropout=strategy.lora_dropout,
            target_modules=sorted(found),
            bias="none",
        )
        inject_adapter_in_model(config, backbone)  # also freezes the backbone's own weights
    return sorted(n for n, _ in model.named_parameters() if is_lora(n))


def describe(strategy: StrategyConfig, groups: list[dict], trainable: int, total: int) -> str:
    """Two lines for the console: trainable count, and each group's peak learning rate."""
    rates = ", ".join(f"{g['name']} {g['initial_lr'] if 'initial_lr' in g else g['lr']:.3g}" for g in groups)
    return f"strategy {strategy.name}: {trainable:,} of {total:,} parameters trainable in epoch 1\nlr: {rates}"
