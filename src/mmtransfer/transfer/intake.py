"""What a run config's ``transfer`` section brings into a new model: the source's weights grafted by name and
shape (``graft_from_config``), or its encoders distilled on unlabelled inputs and its head grafted by label name;
the report printed and returned for the run folder."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from mmtransfer import artifact
from mmtransfer.config import RunConfig
from mmtransfer.data import Dataset
from mmtransfer.errors import UserError
from mmtransfer.model import Classifier
from mmtransfer.runfolder import CONFIG, RunFolder
from mmtransfer.tasks import get_task, task_class
from mmtransfer.train import evaluate, scalar_metrics
from mmtransfer.transfer.distill import teach_across, transfer_across
from mmtransfer.transfer.graft import GraftReport, graft
from mmtransfer.transfer.sources import load_source


def transfer_in(
    cfg: RunConfig, model: Classifier, data: Dataset, out: Path, console: Console
) -> tuple[dict, GraftReport]:
    """Move the source's knowledge into ``model``; print the report; return what is to be written."""
    source = Path(cfg.transfer.source)
    record: dict = {"source": str(source)}
    if cfg.transfer.distill is not None and cfg.transfer.distill.teacher_column is not None:
        report = _taught(cfg, model, data, source, record, console)
    elif cfg.transfer.distill is not None:
        run = artifact.load(source)
        source_model, source_classes = run.model, run.classes
        if source_classes != data.classes:
            raise UserError(f"transfer.source {source}: classes {source_classes} differ from {data.classes}")
        # Distil on every train input, labelled or not: the labels are never read.
        unlabelled = data.train_pool
        report, stats = transfer_across(
            source_model,
            model,
            unlabelled,
            cfg.transfer.distill,
            seed=cfg.train.seed,
            progress=cfg.train.progress,
            cpu=cfg.train.cpu,
            exclude=cfg.transfer.exclude,
            console=console,
        )
        record["distill"] = stats.to_dict()
        console.print(
            f"distilled {source} into this model on {stats.examples} unlabelled inputs: "
            f"feature MSE {stats.mse_before:.4f} -> {stats.mse_after:.4f}, R^2 {stats.r2_after:.3f}",
            markup=False,
        )
    else:
        report = graft_from_config(cfg, model, data)
    console.print(report.table(f"graft report: {source} -> {out}"))
    record["graft"] = report.to_dict()
    if cfg.transfer.score_before_training:
        record["before_training"] = scalar_metrics(evaluate(model, data.test, cpu=cfg.train.cpu))
        console.print(f"before any training: test accuracy {record['before_training']['accuracy']:.4f}",
                      markup=False, highlight=False)  # fmt: skip
    return record, report


def _taught(cfg: RunConfig, model: Classifier, data: Dataset, source: Path, record: dict, console) -> GraftReport:
    """Cross-modal distillation: the source run reads the paired column and teaches ``model`` on every train
    row; with an embedding to match, the teacher's head is grafted by label name first."""
    distill = cfg.transfer.distill
    teacher = artifact.load(source)
    column = distill.teacher_column
    match = distill.resolved_match()
    report = graft(
        teacher.model,
        model,
        select=["head.*"] if match in ("embedding", "both") else [],
        unselected_reason=f"trained by distillation from the teacher's outputs on column {column!r}",
        source_classes=teacher.classes,
        target_classes=data.classes,
        exclude=cfg.transfer.exclude,
    )
    stats = teach_across(
        teacher, model, data, distill, on_bad_rows=cfg.data.on_bad_rows, seed=cfg.train.seed,
        progress=cfg.train.progress, cpu=cfg.train.cpu, console=console,
    )  # fmt: skip
    record["distill"] = stats.to_dict()
    skipped = f" ({stats.left_out} pair(s) left out: a bad cell in {column!r})" if stats.left_out else ""
    agreement = ""
    if match != "embedding":
        agreement = (f": the student's top class agrees with the teacher's on {100 * stats.agreement_before:.1f} "
                     f"-> {100 * stats.agreement_after:.1f} % of them, KL {stats.kl_before:.3f} -> "
                     f"{stats.kl_after:.3f}")  # fmt: skip
    console.print(
        f"taught by {source} reading column {column!r} ({match}, T={stats.temperature:g}) on {stats.pairs} "
        f"unlabelled pairs in {stats.seconds:.1f} s{skipped}{agreement}",
        markup=False,
        highlight=False,
    )
    return report


def graft_from_config(cfg: RunConfig, model: Classifier, data: Dataset, *, dry_run: bool = False) -> GraftReport:
    """Graft ``cfg.transfer.source`` into ``model`` with the config's rules, adaptations and strictness.

    Class names come from the source run's labels.json and the data; where both sides have one text column
    with a word vocabulary (run folders record it), embedding rows of shared words are kept too.
    """
    t = cfg.transfer
    exclude = list(t.exclude)
    source = load_source(t.source)  # a run folder is verified and its labels read once, here
    folder = RunFolder(t.source) if isinstance(t.source, (str, Path)) else None
    ours = folder is not None and folder.has(CONFIG)  # a run folder of ours: its task, checked
    source_task = get_task()  # a weights file or a Hugging Face folder: no task of its own (a head of labels)
    if ours:
        source_task = artifact.read_task(folder.path, folder.read_config().data.task, source.classes)
    # a head predicts its own task's outputs: a head of values (regression) never moves to or from a head of
    # labels (a classification or multi-label head moves by label name, as between classification heads)
    across_tasks = source_task.head_kind != task_class(data.task).head_kind
    if across_tasks:
        exclude.append("head.*")
    source_vocab = target_vocab = None
    source_pre = folder.preprocessing() if ours else None
    if source_pre is not None:
        source_vocab = _single_vocab(source_pre)
        target_vocab = _single_vocab(data.preprocessing)
    report = graft(
        source,
        model,
        rules=t.rules,
        exclude=exclude,
        structure=t.structure,
        adapt_with=t.adapt,
        target_classes=data.classes,
        source_vocab=source_vocab if target_vocab else None,
        target_vocab=target_vocab if source_vocab else None,
        strict=t.strict,
        select=t.select,
        unselected_reason="not in transfer.select: newly initialised",
        dry_run=dry_run,
    )
    if across_tasks:  # say why the head stayed new, not only which pattern left it out
        for record in report.records:
            if record.excluded_by == "head.*" and "head.*" not in t.exclude:
                record.reason = (f"a {data.task} head is never grafted from a {source_task.name} head: newly "
                                 "initialised")  # fmt: skip
    return report


def _single_vocab(preprocessing: dict) -> list[str] | None:
    vocabs = [s["vocab"] for s in preprocessing.get("state", {}).values() if isinstance(s, dict) and "vocab" in s]
    return vocabs[0] if len(vocabs) == 1 else None
