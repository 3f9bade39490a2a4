"""Transfer across architectures by feature distillation, then a head graft.

When source and target encoders share no parameter shapes (a CNN and a GRU), copying weights is impossible:
the seed's ``rnn.layers[2].set_weights(cnn.layers[-1].get_weights())`` fails for exactly that reason.
What *can* move is the function: train the target's encoders so that its fused embedding matches the
source's on unlabelled inputs (feature matching, MSE). Once the embeddings agree, the source's head reads
the target's embedding as it read its own, so the head is grafted by name and shape.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch
from accelerate.utils import set_seed
from rich.console import Console
from torch import nn

from mmtransfer.config import DistillConfig, TrainConfig
from mmtransfer.data import Examples, Split, batches
from mmtransfer.errors import UserError
from mmtransfer.model import Classifier
from mmtransfer.train import FeatureMatch, fit
from mmtransfer.transfer.graft import GraftReport, graft


@dataclass
class DistillStats:
    epochs: int
    examples: int
    mse_before: float
    mse_after: float
    cosine_after: float
    r2_after: float
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


class _Embedder(nn.Module):
    """The parts of a Classifier that ``embed`` uses (not the head, which gets no gradient here), as one module
    that DDP can wrap; it shares their parameters."""

    def __init__(self, model: Classifier):
        super().__init__()
        self.encoders, self.fusion, self.modality_dropout = model.encoders, model.fusion, model.modality_dropout
        self.regions = model.regions

    encode = Classifier.encode
    uses_regions = Classifier.uses_regions
    forward = Classifier.embed


def as_examples(data: Examples | dict[str, torch.Tensor]) -> Examples:
    """A split as it is; a dict of input tensors as an in-memory split without labels."""
    if isinstance(data, dict):
        n = len(next(iter(data.values())))
        return Split(data, torch.zeros(n, dtype=torch.long))
    return data


@torch.no_grad()
def embed_all(model: Classifier, data: Examples | dict[str, torch.Tensor], batch_size: int = 512) -> torch.Tensor:
    """The model's fused embedding of every example, in order, in eval mode."""
    model.eval()
    device = next(model.parameters()).device
    chunks = [
        model.embed({k: v.to(device) for k, v in inputs.items()}).cpu()
        for _, inputs in batches(as_examples(data), batch_size)
    ]
    return torch.cat(chunks)


def distill(
    source: Classifier,
    target: Classifier,
    data: Examples | dict[str, torch.Tensor],
    cfg: DistillConfig,
    *,
    seed: int = 0,
    progress: bool = True,
    cpu: bool = False,
    console: Console | None = None,
) -> DistillStats:
    """Train ``target.encoders`` (and fusion) so ``target.embed(x)`` matches ``source.embed(x)`` on ``data``
    (a split, whose labels are never read, or a dict of input tensors).

    The source is only read. Its embeddings are computed once; the target's head is not touched.
    """
    set_seed(seed)
    start = time.perf_counter()
    data = as_examples(data)
    teacher = embed_all(source, data)
    student_dim = embed_all(target, data.subset(list(range(min(2, len(data)))))).shape[-1]
    if student_dim != teacher.shape[-1]:
        raise UserError(
            f"distill: target embedding has {student_dim} values, source {teacher.shape[-1]}; "
            "set the same model.embed_dim for both so the source head can be grafted"
        )
    mse_before = float(nn.functional.mse_loss(embed_all(target, data), teacher))
    # The one training loop, with a feature-matching objective: the teacher's embeddings ride in the labels slot
    # of the split, so the same loader (and sharding) serves both. The student is trained through a module whose
    # forward is ``embed``, so that under DDP the gradients of every process are averaged.
    train_cfg = TrainConfig(
        epochs=cfg.epochs,
        batch_size=min(cfg.batch_size, len(data)),
        lr=cfg.lr,
        weight_decay=0.0,
        warmup_fraction=0.05,
        patience=None,
        seed=seed,
        progress=progress,
        cpu=cpu,
        validation="none",
    )
    fit(
        _Embedder(target),
        data.with_labels(teacher),
        None,
        train_cfg,
        desc="distil",
        console=console,
        objective=FeatureMatch(),
    )
    learned = embed_all(target, data)
    mse = float(nn.functional.mse_loss(learned, teacher))
    cosine = float(nn.functional.cosine_similarity(learned, teacher, dim=-1).mean())
    r2 = 1.0 - mse / float(teacher.var(dim=0, unbiased=False).mean())
    return DistillStats(cfg.epochs, len(teacher), mse_before, mse, cosine, r2, time.perf_counter() - start)


def transfer_across(
    source: Classifier,
    target: Classifier,
    unlabelled: Examples | dict[str, torch.Tensor],
    cfg: DistillConfig,
    *,
    seed: int = 0,
    progress: bool = True,
    cpu: bool = False,
    exclude: list[str] | None = None,
    console: Console | None = None,
) -> tuple[GraftReport, DistillStats]:
    """Distil the source's encoders into the target's on unlabelled inputs, then graft the source's head.

    The head moves by label name, as every graft does: both models need their ``classes`` (``build_model`` with
    the class names) or its rows are not copied. ``exclude`` patterns leave tensors out of that graft."""
    stats = distill(source, target, unlabelled, cfg, seed=seed, progress=progress, cpu=cpu, console=console)
    report = graft(
        source,
        target,
        select=["head.*"],
        unselected_reason=f"encoder trained by feature distillation instead (R^2 {stats.r2_after:.2f})",
        exclude=exclude,
    )
    return report, stats
