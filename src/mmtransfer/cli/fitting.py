"""``mmtransfer fit``: a config (or a table and its label) in, a run folder out; Ctrl-C says how to resume.
On purpose, each command imports what it runs (torch, the training stack, pandas) inside its body: they load only
once the command line, the config and the files it names are checked, so a mistake is one line within a
second. What is light is imported here."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Annotated

import typer

from mmtransfer import cli as ui
from mmtransfer.artifact import check_out
from mmtransfer.config import ConfigError, check_files, load_config
from mmtransfer.headers import check_columns, folder_columns, table_columns
from mmtransfer.runfolder import RunFolder

ConfigFile = Annotated[Path | None, typer.Argument(help="YAML config (sections data, model, train, transfer).")]
Out = Annotated[Path, typer.Option("--out", "-o", help="Run folder to write.")]
Sets = Annotated[
    list[str] | None, typer.Option("--set", "-s", help="Override a field, e.g. --set train.lr=3e-4 (repeatable).")
]
Overwrite = Annotated[
    bool, typer.Option("--overwrite", help="Replace the run folder --out holds (its files are removed first).")
]
Resume = Annotated[
    bool,
    typer.Option(
        "--resume",
        help="Continue the unfinished run in --out from its last checkpoint (same config); a run killed before "
        "its first checkpoint starts again.",
    ),
]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing but errors.")]
Data = Annotated[
    Path | None,
    typer.Option(
        "--data",
        "-d",
        help="A table (CSV / TSV / Parquet) or a folder of class folders to train on, without a config file "
        "or instead of its data.table / data.folder (relative to the current folder).",
    ),
]
Label = Annotated[
    str | None, typer.Option("--label", "-l", help="The table's label column (data.label; default: label).")
]


@ui.app.command()
def fit(
    config: ConfigFile = None,
    out: Out = Path("runs/latest"),
    set_: Sets = None,
    overwrite: Overwrite = False,
    resume: Resume = False,
    quiet: Quiet = False,
    data: Data = None,
    label: Label = None,
) -> None:
    """Train a model from a config (validated before any work starts) and write a run folder.

    Without a config: mmtransfer fit --data TABLE_OR_FOLDER --label COLUMN --out RUN (every other setting at
    its default; --set changes any). A headerless or tab-separated table: --set data.header=false --set
    'data.names=[label,text]' --set data.sep=tab.

    The run folder is self-contained: config.yaml, model.safetensors (the epoch with the best validation loss;
    the last epoch with train.validation=none), labels.json, inputs.json, preprocessing.json (tables: what the
    columns learned on train), assets/ (pretrained configs, tokenizers), splits.json (which rows were held
    out), versions.json, history.json, metrics.json (with how many labels trained and selected the model),
    transfer_report.json / .md when transfer.source is set, history.csv and learning_curve.png, and
    manifest.json (size and SHA-256 of each file; written last, so an interrupted fit is marked unfinished).
    Until the fit ends, checkpoint.safetensors holds everything needed to continue it with --resume.
    Use the run folder with predict, evaluate, export, info.
    Fine-tuning strategy: --set train.strategy.name=auto (the default: with a pretrained encoder the solved
    linear probe, or LP-FT where train.time_limit allows it; else full) | linear_probe (solved by L-BFGS, C by
    cross-validation) | lp_ft | full | freeze_then_unfreeze | gradual_unfreeze | discriminative | lora.
    Image and text columns get pretrained encoders by default (model.preset auto).
    """

    try:
        cfg = load_config(config, [*(set_ or []), *_data_overrides(data, label)])
        where = str(config) if config else "--data" if data is not None else "config"
        check_files(cfg, where)
        check_header(cfg, where)
        check_out(out, overwrite=overwrite, resume=resume)
    except ui.USER_ERRORS as err:
        ui.fail(err)
    ui.console.quiet = quiet
    try:
        from mmtransfer.runs import fit_run  # torch and the rest load only for a config that is good

        metrics = fit_run(cfg, out, ui.console, overwrite=overwrite, resume=resume)
    except ui.USER_ERRORS as err:
        ui.fail(err, out)
    except KeyboardInterrupt:
        _interrupted(out, config, data, label, set_ or [])
    except Exception as err:
        if type(err).__name__ != "SafetensorError":  # a full disk under safetensors; anything else is a bug
            raise
        ui.fail(err, out)
    from mmtransfer.train import process_state

    if not process_state(cfg.train.cpu).is_main_process:  # several processes: one prints the result
        return
    ui.print_metrics(metrics["test"], f"test metrics ({out})", metrics["classes"])
    labels = metrics["labels"]
    ui.console.print(
        f"best epoch {metrics['best_epoch']} of {metrics['epochs_run']}; {labels['train']} labelled examples "
        f"trained the model, {labels['selection']} selected it; run folder: {out}",
        markup=False,
        highlight=False,
    )


def _data_overrides(data: Path | None, label: str | None) -> list[str]:
    """``--data`` and ``--label`` as overrides (JSON strings are YAML: any path or name reads literally)."""
    overrides = []
    if data is not None:
        path = Path.cwd() / data.expanduser()
        if not path.exists():
            raise ConfigError(f"--data {data}: no such file or folder")
        kind, other = ("folder", "table") if path.is_dir() else ("table", "folder")
        overrides += [f"data.{kind}={json.dumps(str(path))}", f"data.{other}=null"]
    if label is not None:
        overrides.append(f"data.label={json.dumps(label)}")
    return overrides


def check_header(cfg, where: str) -> None:
    """The columns the data config names are in the table's header (or the folder's layout), read without
    pandas or torch: a missing label column is one error line at once, with the nearest column named."""

    if cfg.data.folder is not None:
        check_columns(folder_columns(cfg.data.folder, cfg.data), cfg.data, cfg.data.folder)
    elif cfg.data.table is not None:
        try:
            columns = table_columns(cfg.data.table, cfg.data)
        except UnicodeDecodeError:
            return  # read_table names the line
        except OSError as err:
            raise ConfigError(f"{where}: data.table {cfg.data.table}: cannot read: {err.strerror or err}") from None
        distill = cfg.transfer.distill
        paired = [(f"{who} column", column, f"transfer.distill.{who}_column")
                  for who, column in (("teacher", distill and distill.teacher_column),
                                      ("student", distill and distill.student_column)) if column]  # fmt: skip
        check_columns(columns, cfg.data, cfg.data.table, also=paired)


def _interrupted(out: Path, config: Path | None, data: Path | None, label: str | None, sets: list[str]) -> None:
    """Ctrl-C during a fit: where the run stopped and how to continue it, on stderr; exit code 130."""

    words = ["mmtransfer", "fit", *([str(config)] if config else [])]
    words += [*(["--data", str(data)] if data else []), *(["--label", label] if label else [])]
    words += [w for s in sets for w in ("--set", s)] + ["--out", str(out), "--resume"]
    checkpoint = RunFolder(out).checkpoint
    if checkpoint.is_file():
        from mmtransfer.runs import _checkpoint_place

        where = _checkpoint_place(out).removeprefix("from ")
        message = (f"interrupted: the run in {out} stopped; its last checkpoint ({checkpoint}) is {where}. "
                   f"Continue it with: {shlex.join(words)}")  # fmt: skip
    elif out.is_dir() and any(out.iterdir()):
        message = (f"interrupted: the run in {out} stopped before its first checkpoint (the end of its first "
                   f"epoch); start it again with: {shlex.join(words[:-1] + ['--overwrite'])}")  # fmt: skip
    else:
        message = f"interrupted before the run started; nothing was written to {out}"
    ui.errors.print(message, markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(130)
