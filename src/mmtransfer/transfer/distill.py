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

import numpy as np
import pandas as pd
import torch
from accelerate.utils import set_seed
from rich.console import Console
from torch import nn

from mmtransfer.config import DistillConfig, TrainConfig
from mmtransfer.data import Examples, Split, batches
from mmtransfer.errors import UserError
from mmtransfer.model import Classifier
from mmtransfer.train import FeatureMatch, SoftTargets, fit
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


# ---------------------------------------------------------------- across columns (cross-modal distillation)


@dataclass
class TeachStats:
    """What teaching across two columns of the same rows did: how many pairs, how often the student's top class
    agreed with the teacher's before and after, and the divergence it trained down."""

    teacher_column: str
    student_inputs: list[str]
    match: str
    temperature: float
    epochs: int
    pairs: int
    left_out: int
    agreement_before: float
    agreement_after: float
    kl_before: float
    kl_after: float
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


class _Student(nn.Module):
    """A Classifier read for distillation: its raw class scores (``probs``), its fused embedding
    (``embedding``), or both side by side, as one module whose parameters are the model's."""

    def __init__(self, model: Classifier, match: str):
        super().__init__()
        self.model, self.match = model, match

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        embedding = self.model.embed(inputs)
        if self.match == "embedding":
            return embedding
        scores = self.model.head(embedding)
        return scores if self.match == "probs" else torch.cat([scores, embedding], dim=-1)


def teacher_inputs(teacher, paired, rows: np.ndarray, on_bad_rows: str, console: Console | None):
    """The teacher's column at ``rows`` (table rows) through the teacher's own fitted preprocessing, as a split
    the teacher reads, and the positions in ``rows`` it holds. A bad cell stops the run naming its row, or with
    ``on_bad_rows: skip`` leaves that pair out."""
    pre = teacher.preprocessor
    if pre is None:
        raise UserError(
            f"transfer.source {teacher.path}: trained on the built-in {teacher.cfg.data.dataset} data; a teacher "
            "that reads a column (transfer.distill.teacher_column) must be a run on a table"
        )
    if len(pre.columns) != 1:
        raise UserError(
            f"transfer.source {teacher.path} reads {len(pre.columns)} columns ({', '.join(pre.columns)}); "
            f"transfer.distill.teacher_column {paired.name!r} stands in for one"
        )
    frame = pd.DataFrame({next(iter(pre.columns)): paired.values[rows]})
    cells, bad = pre.check(frame, paired.base, f"{paired.table} column {paired.name!r}", console)
    if bad and on_bad_rows == "error":
        first = bad[0]
        raise UserError(
            f"{paired.table}: {len(bad)} bad cell(s) in the teacher's column {paired.name!r}; the first: row "
            f"{int(rows[first.row])}: {first.reason}" + (f" ({first.file})" if first.file else "")
            + " (data.on_bad_rows=skip leaves those pairs out)"
        )  # fmt: skip
    flagged = {b.row for b in bad}
    kept = np.array([i for i in range(len(rows)) if i not in flagged], dtype=np.int64)
    if len(kept) == 0:
        raise UserError(f"{paired.table}: no row of the teacher's column {paired.name!r} could be read")
    return pre.split(cells, kept, torch.zeros(len(kept), dtype=torch.long)), kept


@torch.no_grad()
def _outputs(model: nn.Module, data: Examples, batch_size: int = 256) -> torch.Tensor:
    model.eval()
    device = next(model.parameters()).device
    return torch.cat([model({k: v.to(device) for k, v in x.items()}).cpu() for _, x in batches(data, batch_size)])


def _agreement_and_kl(student: torch.Tensor, teacher_probs: torch.Tensor, t: float) -> tuple[float, float]:
    agree = float((student.argmax(-1) == teacher_probs.argmax(-1)).float().mean())
    kl = nn.functional.kl_div(nn.functional.log_softmax(student / t, -1), teacher_probs, reduction="batchmean")
    return agree, float(kl)


def teach_across(
    teacher,
    student: Classifier,
    data,
    cfg: DistillConfig,
    *,
    on_bad_rows: str = "error",
    seed: int = 0,
    progress: bool = True,
    cpu: bool = False,
    console: Console | None = None,
) -> TeachStats:
    """Train ``student`` on every train row of ``data`` (labelled or not: no label is read) to give what the
    ``teacher`` run gives on the paired column ``data.paired`` of the same row: its temperature-softened class
    probabilities, mapped onto the student's classes by name (``probs``), its embedding (``embedding``: the
    teacher's head is grafted by label name first), or both."""
    set_seed(seed)
    start = time.perf_counter()
    match, t = cfg.resolved_match(), cfg.temperature
    missing = [c for c in data.classes if c not in teacher.classes]
    if missing:
        raise UserError(
            f"transfer.source {teacher.path} does not know the class(es) {missing[:5]} of this table; a teacher "
            f"gives probabilities of its own classes ({', '.join(teacher.classes[:20])})"
        )
    pool = data.train_pool
    t_split, kept = teacher_inputs(teacher, data.paired, pool.row_ids, on_bad_rows, console)
    pool = pool.subset(kept)
    order = torch.tensor([teacher.classes.index(c) for c in data.classes])
    teacher.model.to("cpu")
    targets = []
    if match in ("probs", "both"):
        scores = _outputs(_Student(teacher.model, "probs"), t_split)[:, order]
        targets.append(torch.softmax(scores / t, dim=-1))
    if match in ("embedding", "both"):
        embedding = _outputs(_Student(teacher.model, "embedding"), t_split)
        width = _outputs(_Student(student, "embedding"), pool.subset([0])).shape[-1]
        if width != embedding.shape[-1]:
            raise UserError(
                f"transfer.distill.match={match}: the student's embedding has {width} values, the teacher's "
                f"{embedding.shape[-1]}; set the same model.embed_dim, or match probs"
            )
        targets.append(embedding)
    targets = torch.cat(targets, dim=-1)
    classes = len(data.classes) if match != "embedding" else 0
    probs = targets[:, :classes] if classes else None
    before = _agreement_and_kl(_outputs(_Student(student, "probs"), pool), probs, t) if classes else (0.0, 0.0)
    train_cfg = TrainConfig(
        epochs=cfg.epochs, batch_size=min(cfg.batch_size, len(pool)), lr=cfg.lr, weight_decay=0.0,
        warmup_fraction=0.05, patience=None, seed=seed, progress=progress, cpu=cpu, validation="none",
    )  # fmt: skip
    objective = SoftTargets(t, classes, embedding=match in ("embedding", "both"))
    fit(_Student(student, match), pool.with_labels(targets), None, train_cfg, desc="teach", console=console,
        objective=objective)  # fmt: skip
    after = _agreement_and_kl(_outputs(_Student(student, "probs"), pool), probs, t) if classes else (0.0, 0.0)
    return TeachStats(
        teacher_column=data.paired.name, student_inputs=sorted(student.encoders), match=match, temperature=t,
        epochs=cfg.epochs, pairs=len(pool), left_out=len(data.train_pool) - len(pool), agreement_before=before[0],
        agreement_after=after[0], kl_before=before[1], kl_after=after[1], seconds=time.perf_counter() - start,
    )  # fmt: skip
