"""The ``mmtransfer`` command line: each subcommand is a plain typed function.

Heavy libraries (torch, pandas, transformers) are imported only once the config has been read and checked, so
a mistake in it, or a missing file it names, is reported at once.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.text import Text

from mmtransfer.config import ConfigError, check_files, load_config, read_rules_file
from mmtransfer.display import Grid, make_console
from mmtransfer.errors import report_bug
from mmtransfer.runfolder import CONFIG, RunFolder

app = typer.Typer(
    help="Transfer learning on multimodal data: adapt, fine-tune, evaluate, and compare with training from scratch.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain click help: paragraphs are re-wrapped to the terminal
)
console = make_console()
errors = make_console(stderr=True)


# What a user's input or environment can cause: a bad value, a missing or unreadable file, a missing optional
# package, a tensor that does not fit. Each becomes one error line; MMTRANSFER_DEBUG=1 shows the traceback.
USER_ERRORS = (ConfigError, ValueError, OSError, ImportError, KeyError, RuntimeError)


_DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EFBIG}  # a write refused


def _fail(err: Exception, where: Path | None = None) -> None:
    """One ``error:`` line (details below it), on stderr, exit code 2; the message is printed literally.

    A disk's error (no space, no permission, a read-only folder) names its file, or else ``where`` (the folder
    being written): Python's own form of it names no file for a failed write."""
    if os.environ.get("MMTRANSFER_DEBUG"):
        raise err
    message = str(err) if not isinstance(err, KeyError) else f"missing key {err}"
    if isinstance(err, OSError) and err.strerror and (err.filename or (where and err.errno in _DISK_ERRNOS)):
        message = f"{err.filename or where}: {err.strerror[0].lower()}{err.strerror[1:]}"
    elif type(err).__name__ == "SafetensorError":  # safetensors' own error for a failed write is no OSError
        from mmtransfer.outputs import write_error

        message = str(write_error(where or "a weights file", err))
    errors.print(Text.assemble(("error:", "red"), " ", message), highlight=False, soft_wrap=True)
    raise typer.Exit(2)


@app.command()
def fit(
    config: Annotated[Path | None, typer.Argument(help="YAML config (sections data, model, train, transfer).")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder to write.")] = Path("runs/latest"),
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", "-s", help="Override a field, e.g. --set train.lr=3e-4 (repeatable)."),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace the run folder --out holds (its files are removed first).")
    ] = False,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help=(
                "Continue the unfinished run in --out from its last checkpoint (same config); a run killed before "
                "its first checkpoint starts again."
            ),
        ),
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing but errors.")] = False,
    data: Annotated[
        Path | None,
        typer.Option(
            "--data",
            "-d",
            help="A table (CSV / TSV / Parquet) or a folder of class folders to train on, without a config file "
            "or instead of its data.table / data.folder (relative to the current folder).",
        ),
    ] = None,
    label: Annotated[
        str | None, typer.Option("--label", "-l", help="The table's label column (data.label; default: label).")
    ] = None,
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
    from mmtransfer.artifact import check_out

    try:
        cfg = load_config(config, [*(set_ or []), *_data_overrides(data, label)])
        where = str(config) if config else "--data" if data is not None else "config"
        check_files(cfg, where)
        _check_header(cfg, where)
        check_out(out, overwrite=overwrite, resume=resume)
    except USER_ERRORS as err:
        _fail(err)
    console.quiet = quiet
    try:
        from mmtransfer.runs import fit_run  # torch and the rest load only for a config that is good

        metrics = fit_run(cfg, out, console, overwrite=overwrite, resume=resume)
    except USER_ERRORS as err:
        _fail(err, out)
    except KeyboardInterrupt:
        _interrupted(out, config, data, label, set_ or [])
    except Exception as err:
        if type(err).__name__ != "SafetensorError":  # a full disk under safetensors; anything else is a bug
            raise
        _fail(err, out)
    from mmtransfer.train import process_state

    if not process_state(cfg.train.cpu).is_main_process:  # several processes: one prints the result
        return
    _print_metrics(metrics["test"], f"test metrics ({out})", metrics["classes"])
    labels = metrics["labels"]
    console.print(
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


def _check_header(cfg, where: str) -> None:
    """The columns the data config names are in the table's header (or the folder's layout), read without
    pandas or torch: a missing label column is one error line at once, with the nearest column named."""
    from mmtransfer.headers import check_columns, folder_columns, table_columns

    if cfg.data.folder is not None:
        check_columns(folder_columns(cfg.data.folder, cfg.data), cfg.data, cfg.data.folder)
    elif cfg.data.table is not None:
        try:
            columns = table_columns(cfg.data.table, cfg.data)
        except UnicodeDecodeError:
            return  # read_table names the line
        except OSError as err:
            raise ConfigError(f"{where}: data.table {cfg.data.table}: cannot read: {err.strerror or err}") from None
        check_columns(columns, cfg.data, cfg.data.table)


def _interrupted(out: Path, config: Path | None, data: Path | None, label: str | None, sets: list[str]) -> None:
    """Ctrl-C during a fit: where the run stopped and how to continue it, on stderr; exit code 130."""
    import shlex

    from mmtransfer.resume import CHECKPOINT

    words = ["mmtransfer", "fit", *([str(config)] if config else [])]
    words += [*(["--data", str(data)] if data else []), *(["--label", label] if label else [])]
    words += [w for s in sets for w in ("--set", s)] + ["--out", str(out), "--resume"]
    if (out / CHECKPOINT).is_file():
        from mmtransfer.runs import _checkpoint_place

        where = _checkpoint_place(out).removeprefix("from ")
        message = (f"interrupted: the run in {out} stopped; its last checkpoint ({out / CHECKPOINT}) is {where}. "
                   f"Continue it with: {shlex.join(words)}")  # fmt: skip
    elif out.is_dir() and any(out.iterdir()):
        message = (f"interrupted: the run in {out} stopped before its first checkpoint (the end of its first "
                   f"epoch); start it again with: {shlex.join(words[:-1] + ['--overwrite'])}")  # fmt: skip
    else:
        message = f"interrupted before the run started; nothing was written to {out}"
    errors.print(message, markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(130)


UNFINISHED = typer.Option("--allow-unfinished", help="Use a run folder whose fit did not finish.")
cache_app = typer.Typer(help="The cache of frozen encoders' features: show it, free it.", no_args_is_help=True)
app.add_typer(cache_app, name="cache")


@cache_app.command("info")
def cache_info() -> None:
    """Where the feature cache is, how many entries and bytes it holds, and its size limit."""
    from mmtransfer import cache

    try:
        limit = cache.max_bytes()
        files = cache.entries()
        size = sum(p.stat().st_size for p in files)
    except USER_ERRORS as err:
        _fail(err)
    console.print(
        f"feature cache {cache.cache_dir()}: {len(files)} entries, {size / 1e6:.1f} MB "
        f"(limit {limit / 1e9:g} GB, MMTRANSFER_CACHE_MAX_GB; least recently used go first)",
        markup=False,
    )
    for path in files[-10:]:
        console.print(f"  {path.name}  {path.stat().st_size / 1e6:.2f} MB", markup=False)


@cache_app.command("clear")
def cache_clear() -> None:
    """Remove every entry of the feature cache (they are computed again when needed)."""
    from mmtransfer import cache

    try:
        count, size = cache.clear()
    except USER_ERRORS as err:
        _fail(err)
    console.print(f"removed {count} entries, {size / 1e6:.1f} MB, from {cache.cache_dir()}", markup=False)


@app.command()
def evaluate(
    run_dir: Annotated[Path, typer.Argument(help="A run folder written by `mmtransfer fit`.")],
    data: Annotated[
        Path | None,
        typer.Argument(help="A new labelled table (CSV / TSV / Parquet) or folder; without it, the run's own split."),
    ] = None,
    split: Annotated[
        str, typer.Option(help="Without DATA: which split of the run's data: train, val or test.")
    ] = "test",
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the metrics to this JSON file.")] = None,
    png: Annotated[
        Path | None,
        typer.Option(
            help="With DATA: the confusion-matrix PNG, or for a regression run the predicted-vs-true plot (default: "
            "DATA's name + _confusion.png / _predicted_vs_true.png)."
        ),
    ] = None,
    encoding: Annotated[str | None, typer.Option(help="Text encoding of a CSV / TSV table.")] = None,
    allow_unfinished: Annotated[bool, UNFINISHED] = False,
) -> None:
    """Evaluate a run folder's model: accuracy, macro-F1, balanced accuracy, loss, per-class precision / recall
    / F1, confusion; for a regression run RMSE, MAE and R² (and a predicted-vs-true plot with DATA).

    Without DATA it scores exactly the rows the run held out (recorded in splits.json), and refuses if its table
    changed since. With DATA (a labelled table or folder with the run's input columns) it scores those rows
    through the run's fitted preprocessing and writes a confusion-matrix PNG.
    """
    from mmtransfer import artifact
    from mmtransfer.inference import evaluate_data
    from mmtransfer.runs import evaluate_run

    try:
        if data is None:
            metrics = evaluate_run(run_dir, split, allow_unfinished=allow_unfinished)
            title = f"{split} metrics ({run_dir})"
        else:
            run = artifact.load(run_dir, allow_unfinished=allow_unfinished)
            _notes(run)
            kind = run.model.task.plot_kind or "confusion"
            png = png or Path(f"{data.stem or data.name}_{kind}.png")
            metrics = evaluate_data(run, data, png, encoding=encoding, console=console)
            title = f"metrics of {run_dir} on {data}"
        _print_metrics(metrics, title, metrics.get("classes"))
        if "confusion_png" in metrics:
            console.print(f"confusion matrix: {metrics['confusion_png']}", markup=False)
        if "plot_png" in metrics:
            console.print(f"predicted vs true: {metrics['plot_png']}", markup=False)
        if json_out:
            from mmtransfer.outputs import write_json

            write_json(json_out, metrics)
    except USER_ERRORS as err:
        _fail(err)


@app.command()
def predict(
    run_dir: Annotated[Path, typer.Argument(help="A run folder written by `mmtransfer fit`.")],
    data: Annotated[Path, typer.Argument(help="A table (CSV / TSV / Parquet) or folder with the run's input columns.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Predictions CSV to write.")] = Path("predictions.csv"),
    id_column: Annotated[str | None, typer.Option(help="A column naming each row (default: the row number).")] = None,
    on_bad_rows: Annotated[
        str, typer.Option(help="error: list every bad cell and stop; skip: write those rows to OUT.rejected.csv.")
    ] = "error",
    batch_size: Annotated[int, typer.Option(min=1, help="Rows per batch.")] = 32,
    encoding: Annotated[str | None, typer.Option(help="Text encoding of a CSV / TSV table.")] = None,
    allow_unfinished: Annotated[bool, UNFINISHED] = False,
) -> None:
    """Predict the class of every row of DATA with a run's model and its fitted preprocessing (never refitted).

    Writes one row per input row: its id, the predicted class and one probability column per class (p_NAME),
    plus the true label where DATA has the label column (which is optional). Rows are read and predicted in
    batches, so memory stays bounded on large inputs.
    """
    from mmtransfer import artifact
    from mmtransfer.inference import predict as run_predict

    if on_bad_rows not in ("error", "skip"):
        _fail(ValueError(f"--on-bad-rows: got {on_bad_rows!r}; expected error or skip"))
    try:
        run = artifact.load(run_dir, allow_unfinished=allow_unfinished)
        _notes(run)
        done = run_predict(
            run,
            data,
            out,
            id_column=id_column,
            on_bad_rows=on_bad_rows,
            batch_size=batch_size,
            encoding=encoding,
            console=console,
        )
    except USER_ERRORS as err:
        _fail(err, out)
    message = f"predicted {done['rows']} row(s) -> {done['out']}"
    if done["rejected"]:
        message += f"; {done['rejected_rows']} row(s) set aside, with their reasons -> {done['rejected']}"
    elif on_bad_rows == "skip":
        message += "; no row set aside"
    console.print(message, markup=False)


@app.command()
def export(
    run_dir: Annotated[Path, typer.Argument(help="A run folder written by `mmtransfer fit`.")],
    format_: Annotated[str, typer.Option("--format", help="Export format: onnx.")] = "onnx",
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="File to write (default: RUN_DIR/model.onnx).")
    ] = None,
    data: Annotated[
        Path | None, typer.Option(help="A table to check the export on (default: the run's own test rows).")
    ] = None,
    allow_unfinished: Annotated[bool, UNFINISHED] = False,
) -> None:
    """Export a run's model (every encoder and the fusion; LoRA merged) as ONNX with a dynamic batch axis.

    The graph takes the preprocessed tensors. The export checks itself against PyTorch with onnxruntime on real
    rows of the run's data (the largest difference is printed and must be at most 1e-4) and writes a JSON file
    beside it describing the inputs it expects, the classes and the preprocessing.
    """
    from mmtransfer import artifact
    from mmtransfer.export import export_onnx

    if format_ != "onnx":
        _fail(ValueError(f"--format: got {format_!r}; supported: onnx"))
    try:
        run = artifact.load(run_dir, allow_unfinished=allow_unfinished)
        _notes(run)
        target = out or RunFolder(run_dir).onnx
        described = export_onnx(run, target, data=data)
    except USER_ERRORS as err:
        _fail(err)
    rows = [[i["name"], i["dtype"], str(i["shape"])] for i in described["inputs"]]
    console.print(Grid(f"ONNX inputs ({target})", ["input", "dtype", "shape"], rows))
    console.print(
        f"checked on {described['checked_rows']} rows of real data with onnxruntime: max abs difference "
        f"{described['max_abs_diff']:.2e} (limit 1e-4); description: {target.with_suffix('.json')}",
        markup=False,
    )


@app.command()
def info(
    run_dir: Annotated[Path, typer.Argument(help="A run folder written by `mmtransfer fit`.")],
) -> None:
    """What a run folder holds: inputs and their preprocessing, encoders with parameter counts, fusion, classes,
    metrics at training time, what was transferred from where, versions, and whether the manifest verifies."""
    from mmtransfer import artifact

    if not RunFolder(run_dir).has(CONFIG):
        _fail(FileNotFoundError(f"{run_dir} is not a run folder: no {CONFIG}"))
    problem = None
    try:
        manifest = artifact.verify(run_dir, allow_unfinished=True)
        verified = f"ok: every file matches manifest.json (digest {manifest.get('digest')})"
        if not manifest.get("complete"):
            verified = "UNFINISHED: the fit that wrote this folder did not finish (no file hashes to check)"
    except artifact.ArtifactError as err:
        verified, problem = f"FAILED: {err}", err
    console.print(f"run folder {run_dir}: manifest {verified}", markup=False)
    try:
        run = artifact.load(run_dir, allow_unfinished=True, verify_files=False)
    except USER_ERRORS as err:
        if "custom module" not in str(err):
            _fail(err)
        run = artifact.load_description(run_dir)  # no model: its config, classes and inputs
        console.print(f"note: {err}", markup=False)
    try:
        _print_info(run)
    except USER_ERRORS as err:
        _fail(err)
    if problem is not None:  # reported in full above; the exit code says the folder cannot be trusted
        _fail(artifact.ArtifactError(f"{run_dir}: the run folder does not verify: {problem}"))


def _notes(run) -> None:
    for difference in run.differences:
        errors.print(f"note: version differs from the run's: {difference}", markup=False, highlight=False)


def _print_info(run) -> None:
    from mmtransfer import artifact
    from mmtransfer.transfer.freeze import count_parameters

    path, folder = run.path, RunFolder(run.path)
    metrics = folder.metrics()  # shown only; a changed one fails verification
    pre = run.preprocessor
    rows = []
    for name, spec in sorted(run.specs.items()):
        how = ""
        if pre is not None and name in pre.columns:
            cfg = pre.columns[name].model_dump(exclude={"modality"})
            how = ", ".join(f"{k}={v}" for k, v in cfg.items() if v not in (None, [], {}))
        elif pre is not None and name == "tabular":
            how = "columns " + ", ".join(pre.tab_cols)
        enc_cfg = run.cfg.model.encoders.get(name)
        kind = enc_cfg.type if enc_cfg else "?"
        if kind == "custom":
            kind = f"custom ({enc_cfg.name}; supplied in Python)"
        if run.model is not None:
            params = f"{sum(p.numel() for p in run.model.encoders[name].parameters()):,}"
        else:
            params = "?"
        rows.append([name, f"{spec.kind} {list(spec.shape)}", how, kind, params])
    console.print(Grid("inputs", ["input", "kind and shape", "preprocessing", "encoder", "parameters"], rows))
    total = f"{count_parameters(run.model)[1]:,}" if run.model is not None else "?"
    console.print(
        f"fusion {run.cfg.model.fusion}, embedding {run.cfg.model.embed_dim}; {total} parameters in all",
        markup=False,
    )
    task = run.model.task if run.model is not None else artifact.read_task(path, run.cfg.data.task, run.classes)
    console.print(task.info(run.classes), markup=False)
    if metrics:
        test, labels = metrics.get("test", {}), metrics.get("labels", {})
        scores = task.summary(test)
        epochs = f"best epoch {metrics.get('best_epoch')} of {metrics.get('epochs_run')}"
        used = f"{labels.get('train')} labels trained it, {labels.get('selection')} selected it"
        console.print(f"at training time: {scores}; {epochs}; {used}", markup=False)
    record = folder.transfer_record()
    pretrained = pretrained_sources(run.cfg.model.encoders)
    for name, source in pretrained.items():
        console.print(f"transferred from {source}: the pretrained backbone of input {name}", markup=False)
    if record is not None:
        counts = record["graft"]["counts"]
        summary = ", ".join(f"{k} {v}" for k, v in counts.items())
        console.print(f"transferred from {record['source']}: {summary} tensors", markup=False)
    elif not pretrained:
        console.print("transferred from: nothing (trained from scratch)", markup=False)
    for note in task.notes():  # the post-fit step: a temperature fitted, or none
        console.print(note, markup=False)
    versions = folder.versions()
    console.print("written with " + ", ".join(f"{k} {v}" for k, v in versions.items()), markup=False)
    for difference in run.differences:
        console.print(f"note: version differs here: {difference}", markup=False)


def pretrained_sources(encoders: dict) -> dict[str, str]:
    """Input name -> the pretrained backbone its encoder started from and where its weights came from, as a run's
    config.yaml records them (model.encoders); encoders trained from scratch are left out."""
    from mmtransfer.encoders import encoder_info  # imports torch: the CLI stays light until a command needs it
    from mmtransfer.transfer.strategies import pretrained

    # pretrained(): the one test of which encoder configs start from pretrained weights
    return {name: encoder_info(encoders[name]).weights_from(encoders[name]) for name in pretrained(encoders)}


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for report.md, metrics.json and demo.png.")] = Path(
        "mmtransfer-demo"
    ),
    seeds: Annotated[int, typer.Option(min=1, help="Number of seeds (splits and initialisations).")] = 3,
    k: Annotated[int, typer.Option(min=1, help="Labelled target images per class.")] = 10,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """The main job: CNN -> GRU transfer on built-in digits, against training from scratch.

    Trains a CNN on one half of the digits, transfers it into a GRU that reads each image row by row (feature
    distillation on unlabelled images + head graft), fine-tunes on k images per class of the other half and
    compares with the same GRU trained from scratch on the same images, over several seeds: one study (see
    `mmtransfer study`), two runs at a time. Writes report.md, metrics.json, demo.png and study/report.html;
    run again with the same --out, it goes on from the runs it finished.
    """
    import os

    from mmtransfer.demo import run_demo

    try:
        run_demo(out, seeds=seeds, k=k, progress=progress, console=console, workers=min(2, os.cpu_count() or 1))
    except USER_ERRORS as err:
        _fail(err)


@app.command()
def study(
    study_file: Annotated[
        Path | None, typer.Argument(help="Study YAML: base (a run config), budgets, seeds, arms, reference.")
    ] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Study folder (default: the file's name).")] = None,
    workers: Annotated[int, typer.Option(min=1, help="Cells run at once, each in its own process.")] = 1,
    backend: Annotated[str, typer.Option(help="local (processes on this machine) or ray (a Ray cluster).")] = "local",
    threads: Annotated[
        int | None, typer.Option(min=1, help="torch threads per cell (default: CPU cores / workers).")
    ] = None,
    auto: Annotated[
        Path | None,
        typer.Option(
            "--auto",
            help="Compare the fine-tuning strategies that apply to this run config, on its "
            "train and validation data only, and recommend one.",
        ),
    ] = None,
    seeds: Annotated[int, typer.Option(min=2, help="--auto: seeds per strategy.")] = 3,
    apply: Annotated[
        Path | None, typer.Option("--apply", help="--auto: then fit the recommended strategy into this run folder.")
    ] = None,
    report_only: Annotated[bool, typer.Option("--report", help="Only write the report of the finished cells.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing but errors.")] = False,
) -> None:
    """Label budgets x seeds x arms, each cell a fit + evaluate on the same test split; the gain of each arm
    over the reference with a paired t interval, learning curves, confusion matrices, per-input ablation.

    Writes cells.jsonl (each cell as it ends: a killed study goes on where it stopped; a failed cell is
    recorded and retried on the next start), cells/ (one run folder per cell), report.md, report.html (one
    self-contained file), results.json (configs, seeds, splits, versions, machine) and the PNGs.
    With --auto CONFIG: the strategies that apply to the model (linear probe, full, freeze-then-unfreeze,
    gradual unfreezing, discriminative rates, LoRA for Hugging Face backbones) are scored on the validation
    split, never the test split; the best is recommended, and --apply RUN fits it.
    """
    import shlex
    import sys

    from mmtransfer import study as engine

    if (study_file is None) == (auto is None):
        _fail(ConfigError("give a study file, or --auto CONFIG (not both)"))
    if backend not in ("local", "ray"):
        _fail(ConfigError(f"--backend {backend!r}: local or ray"))
    if apply is not None and auto is None:
        _fail(ConfigError("--apply goes with --auto CONFIG"))
    try:
        if auto is not None:
            spec, base, folder = engine.auto_study(auto, seeds=seeds)
            out = out or Path(f"{auto.stem}-auto")
        else:
            spec, base, folder = engine.load_study(study_file)
            out = out or Path(study_file.stem)
        if apply is not None:
            from mmtransfer.artifact import check_out

            check_out(apply, overwrite=False, resume=False)
        command = "mmtransfer " + " ".join(shlex.quote(a) for a in sys.argv[1:])
        previous = out / "results.json"
        if report_only and previous.is_file():  # the report keeps the command that ran the cells
            command = json.loads(previous.read_text()).get("command") or command
        runner = engine.Study(spec, base, folder, out, console=console, selection_only=auto is not None,
                              command=command, source=str(study_file or auto))  # fmt: skip
    except USER_ERRORS as err:
        _fail(err)
    console.quiet = quiet
    try:
        results = runner.report() if report_only else runner.run(workers, backend, threads)
    except USER_ERRORS as err:
        _fail(err)
    engine.print_summary(results, spec, console, out)
    if auto is None:
        return
    best = engine.recommend(results, spec)
    if best is None:
        _fail(ValueError(f"no strategy finished; see the logs in {out / 'cells'}"))
    m = best[spec.metric]
    line = (f"recommended: {best['arm']}: validation {spec.metric} {100 * m['mean']:.1f} %"
            + (f" [{100 * m['low']:.1f}, {100 * m['high']:.1f}]" if m["low"] is not None else "")
            + f", {best['seconds']:.1f} s per fit")  # fmt: skip
    if "margin" in best and best["margin"]["low"] is not None:
        g = best["margin"]
        line += (
            f"; ahead of {best['runner_up']} by {100 * g['mean']:+.1f} pp "
            f"[{100 * g['low']:+.1f}, {100 * g['high']:+.1f}] ({round(100 * spec.confidence)} % paired t)"
        )
    (out / "recommendation.json").write_text(json.dumps(best, indent=1))
    console.print(line, markup=False, highlight=False)
    if apply is None:
        console.print(f"fit it: mmtransfer fit {auto} --set train.strategy.name={best['arm']} --out RUN "
                      f"(or add --apply RUN)", markup=False, highlight=False)  # fmt: skip
        return
    from mmtransfer.runs import fit_run

    try:
        cfg = load_config(auto, [f"train.strategy.name={best['arm']}"])
        metrics = fit_run(cfg, apply, console)
    except USER_ERRORS as err:
        _fail(err)
    _print_metrics(metrics["test"], f"test metrics ({apply}, strategy {best['arm']})", metrics["classes"])


@app.command()
def graft(
    source: Annotated[
        str, typer.Argument(help="Run folder, .safetensors / .pt file, Hugging Face folder or hf:ID, or timm:NAME.")
    ],
    target_config: Annotated[Path, typer.Argument(help="YAML config of the model to graft into.")],
    rules: Annotated[
        Path | None,
        typer.Option(
            help="YAML mapping of source-name prefixes to target-name prefixes ({i}: a number); they replace the "
            "config's transfer.rules. An exclude: list in it adds to transfer.exclude."
        ),
    ] = None,
    exclude: Annotated[
        list[str] | None,
        typer.Option("--exclude", "-x", help="Leave tensors matching this pattern out, e.g. 'head.*' (repeatable)."),
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only print the plan; write nothing.")] = False,
    out: Annotated[Path, typer.Option("--out", "-o", help="Grafted weights (safetensors).")] = Path(
        "grafted.safetensors"
    ),
    set_: Annotated[list[str] | None, typer.Option("--set", "-s", help="Override a config field.")] = None,
) -> None:
    """Move SOURCE's weights into the model TARGET_CONFIG builds, with a report on every tensor.

    Each target tensor is copied, adapted (how), skipped (why) or new. Matching and adaptation follow the
    config's transfer section (rules, exclude, structure, adapt, strict). A classification head moves only by
    label name: rows of the classes both sides name; with no shared name it is skipped, never copied by
    position. Writes the grafted weights and the report (JSON + Markdown) beside them, unless --dry-run.
    """
    try:
        cfg = load_config(target_config, [*(set_ or []), f"transfer.source={json.dumps(source)}"])
        check_files(cfg, str(target_config))
        _check_header(cfg, str(target_config))
        if rules is not None or exclude:
            file_rules, file_exclude = read_rules_file(rules) if rules is not None else ({}, [])
            update = {
                "rules": file_rules or cfg.transfer.rules,  # a file's rules replace the config's; exclude adds up
                "exclude": list(dict.fromkeys([*cfg.transfer.exclude, *file_exclude, *(exclude or [])])),
            }
            cfg = cfg.model_copy(update={"transfer": cfg.transfer.model_copy(update=update)})
    except USER_ERRORS as err:
        _fail(err)
    from mmtransfer.backbones import binder
    from mmtransfer.checkpoint import save_weights
    from mmtransfer.data import load_dataset
    from mmtransfer.model import build_model
    from mmtransfer.runs import graft_from_config, resolved_config

    try:
        data = load_dataset(cfg.data, console=console, binder=binder(cfg.model))
        cfg = resolved_config(cfg, data)  # the columns and encoders exactly as `fit` would bind them
        model = build_model(cfg.model, data.specs, data.classes, seed=cfg.train.seed)
        report = graft_from_config(cfg, model, data, dry_run=dry_run)
    except USER_ERRORS as err:  # GraftError is a ValueError
        _fail(err)
    console.print(report.table(f"graft report: {source} -> {target_config}"))
    if dry_run:
        console.print("dry run: nothing written")
        return
    try:
        save_weights(model, out)
        report.save(out.with_suffix(".report.json"))
    except OSError as err:
        _fail(err, out.with_suffix(".report.json"))
    console.print(f"grafted weights: {out}; report: {out.with_suffix('.report.json')} and .md", markup=False)


def _print_metrics(metrics: dict, title: str, classes: list[str] | None = None) -> None:
    from mmtransfer.tasks import METRICS  # here, as every import of the CLI's commands: --help stays fast

    rows = []
    for key in ("n", *METRICS, "loss"):
        if key not in metrics:
            continue
        value = metrics[key]
        rows.append([key, f"{value:.4f}" if isinstance(value, float) else str(value)])
    console.print(Grid(title, ["metric", "value"], rows, right=[1]))
    if "confusion" in metrics:
        names = classes or [str(j) for j in range(len(metrics["confusion"]))]
        cm = [
            [names[i], *[Text(str(v), style="bold") if i == j else str(v) for j, v in enumerate(row)]]
            for i, row in enumerate(metrics["confusion"])
        ]
        title = "confusion matrix (rows: true class, columns: predicted class)"
        console.print(Grid(title, ["true \\ predicted", *names], cm, right=range(1, len(names) + 1)))
    if "precision_per_class" in metrics:
        names = classes or [str(j) for j in range(len(metrics["precision_per_class"]))]
        per = zip(
            names,
            metrics["precision_per_class"],
            metrics["recall_per_class"],
            metrics["f1_per_class"],
            metrics["support_per_class"],
            strict=True,
        )
        rows = [[c, f"{p:.4f}", f"{r:.4f}", f"{f:.4f}", str(n)] for c, p, r, f, n in per]
        console.print(Grid("per class", ["class", "precision", "recall", "F1", "support"], rows, right=[1, 2, 3, 4]))


def main() -> None:
    """The console entry point: a usage mistake (an unknown option, a bad option value) is one error line too."""
    # typer carries its own copy of click; its usage errors derive from the class typer.BadParameter extends
    usage_error = typer.BadParameter.__mro__[1]
    try:
        code = app(standalone_mode=False)
    except usage_error as err:
        if type(err).__name__ == "NoArgsIsHelpError":  # `mmtransfer` alone: the help, as click shows it
            print(err.format_message())
            raise SystemExit(2) from None
        hint = f" (see: {err.ctx.command_path} --help)" if getattr(err, "ctx", None) is not None else ""
        errors.print(Text.assemble(("error:", "red"), " ", err.format_message() + hint), highlight=False)
        raise SystemExit(2) from None
    except typer.Abort as err:  # click turns Ctrl-C into Abort: 130, as a shell reports SIGINT
        raise SystemExit(130 if isinstance(err.__context__, KeyboardInterrupt) else 1) from None
    except Exception as err:  # not a user's mistake (those are error lines with code 2): a bug, said as one
        if os.environ.get("MMTRANSFER_DEBUG"):
            raise
        errors.print(Text.assemble(("error:", "red"), " ", report_bug(err)), highlight=False, soft_wrap=True)
        raise SystemExit(1) from None
    raise SystemExit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
