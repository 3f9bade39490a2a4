"""Using a run folder: ``evaluate``, ``predict``, ``export`` and ``info``.
On purpose, each command imports what it runs (torch, the training stack, pandas) inside its body: they load only
once the command line, the config and the files it names are checked, so a mistake is one line within a
second. What is light is imported here."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mmtransfer import artifact
from mmtransfer import cli as ui
from mmtransfer.display import Grid
from mmtransfer.errors import UserError
from mmtransfer.runfolder import CONFIG, RunFolder


@ui.app.command()
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
    allow_unfinished: Annotated[bool, ui.UNFINISHED] = False,
) -> None:
    """Evaluate a run folder's model: accuracy, macro-F1, balanced accuracy, loss, per-class precision / recall
    / F1, confusion; for a regression run RMSE, MAE and R² (and a predicted-vs-true plot with DATA).

    Without DATA it scores exactly the rows the run held out (recorded in splits.json), and refuses if its table
    changed since. With DATA (a labelled table or folder with the run's input columns) it scores those rows
    through the run's fitted preprocessing and writes a confusion-matrix PNG.
    """
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
            metrics = evaluate_data(run, data, png, encoding=encoding, console=ui.console)
            title = f"metrics of {run_dir} on {data}"
        ui.print_metrics(metrics, title, metrics.get("classes"))
        if "confusion_png" in metrics:
            ui.console.print(f"confusion matrix: {metrics['confusion_png']}", markup=False)
        if "plot_png" in metrics:
            ui.console.print(f"predicted vs true: {metrics['plot_png']}", markup=False)
        if json_out:
            from mmtransfer.outputs import write_json

            write_json(json_out, metrics)
    except ui.USER_ERRORS as err:
        ui.fail(err)


@ui.app.command()
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
    allow_unfinished: Annotated[bool, ui.UNFINISHED] = False,
) -> None:
    """Predict the class of every row of DATA with a run's model and its fitted preprocessing (never refitted).

    Writes one row per input row: its id, the predicted class and one probability column per class (p_NAME),
    plus the true label where DATA has the label column (which is optional). Rows are read and predicted in
    batches, so memory stays bounded on large inputs.
    """
    from mmtransfer.inference import predict as run_predict

    if on_bad_rows not in ("error", "skip"):
        ui.fail(UserError(f"--on-bad-rows: got {on_bad_rows!r}; expected error or skip"))
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
            console=ui.console,
        )
    except ui.USER_ERRORS as err:
        ui.fail(err, out)
    message = f"predicted {done['rows']} row(s) -> {done['out']}"
    if done["rejected"]:
        message += f"; {done['rejected_rows']} row(s) set aside, with their reasons -> {done['rejected']}"
    elif on_bad_rows == "skip":
        message += "; no row set aside"
    ui.console.print(message, markup=False)


@ui.app.command()
def export(
    run_dir: Annotated[Path, typer.Argument(help="A run folder written by `mmtransfer fit`.")],
    format_: Annotated[str, typer.Option("--format", help="Export format: onnx.")] = "onnx",
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="File to write (default: RUN_DIR/model.onnx).")
    ] = None,
    data: Annotated[
        Path | None, typer.Option(help="A table to check the export on (default: the run's own test rows).")
    ] = None,
    allow_unfinished: Annotated[bool, ui.UNFINISHED] = False,
) -> None:
    """Export a run's model (every encoder and the fusion; LoRA merged) as ONNX with a dynamic batch axis.

    The graph takes the preprocessed tensors. The export checks itself against PyTorch with onnxruntime on real
    rows of the run's data (the largest difference is printed and must be at most 1e-4) and writes a JSON file
    beside it describing the inputs it expects, the classes and the preprocessing.
    """
    from mmtransfer.export import export_onnx

    if format_ != "onnx":
        ui.fail(UserError(f"--format: got {format_!r}; supported: onnx"))
    try:
        run = artifact.load(run_dir, allow_unfinished=allow_unfinished)
        _notes(run)
        target = out or RunFolder(run_dir).onnx
        described = export_onnx(run, target, data=data)
    except ui.USER_ERRORS as err:
        ui.fail(err)
    rows = [[i["name"], i["dtype"], str(i["shape"])] for i in described["inputs"]]
    ui.console.print(Grid(f"ONNX inputs ({target})", ["input", "dtype", "shape"], rows))
    ui.console.print(
        f"checked on {described['checked_rows']} rows of real data with onnxruntime: max abs difference "
        f"{described['max_abs_diff']:.2e} (limit 1e-4); description: {target.with_suffix('.json')}",
        markup=False,
    )


@ui.app.command()
def info(
    run_dir: Annotated[Path, typer.Argument(help="A run folder written by `mmtransfer fit`.")],
) -> None:
    """What a run folder holds: inputs and their preprocessing, encoders with parameter counts, fusion, classes,
    metrics at training time, what was transferred from where, versions, and whether the manifest verifies."""

    if not RunFolder(run_dir).has(CONFIG):
        ui.fail(FileNotFoundError(f"{run_dir} is not a run folder: no {CONFIG}"))
    problem = None
    try:
        manifest = artifact.verify(run_dir, allow_unfinished=True)
        verified = f"ok: every file matches manifest.json (digest {manifest.get('digest')})"
        if not manifest.get("complete"):
            verified = "ui.UNFINISHED: the fit that wrote this folder did not finish (no file hashes to check)"
    except artifact.ArtifactError as err:
        verified, problem = f"FAILED: {err}", err
    ui.console.print(f"run folder {run_dir}: manifest {verified}", markup=False)
    try:
        run = artifact.load(run_dir, allow_unfinished=True, verify_files=False)
    except ui.USER_ERRORS as err:
        if "custom module" not in str(err):
            ui.fail(err)
        run = artifact.load_description(run_dir)  # no model: its config, classes and inputs
        ui.console.print(f"note: {err}", markup=False)
    try:
        _print_info(run)
    except ui.USER_ERRORS as err:
        ui.fail(err)
    if problem is not None:  # reported in full above; the exit code says the folder cannot be trusted
        ui.fail(artifact.ArtifactError(f"{run_dir}: the run folder does not verify: {problem}"))


def _notes(run) -> None:
    for difference in run.differences:
        ui.errors.print(f"note: version differs from the run's: {difference}", markup=False, highlight=False)


def _print_info(run) -> None:
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
    ui.console.print(Grid("inputs", ["input", "kind and shape", "preprocessing", "encoder", "parameters"], rows))
    total = f"{count_parameters(run.model)[1]:,}" if run.model is not None else "?"
    ui.console.print(
        f"fusion {run.cfg.model.fusion}, embedding {run.cfg.model.embed_dim}; {total} parameters in all",
        markup=False,
    )
    task = run.model.task if run.model is not None else artifact.read_task(path, run.cfg.data.task, run.classes)
    ui.console.print(task.info(run.classes), markup=False)
    if metrics:
        test, labels = metrics.get("test", {}), metrics.get("labels", {})
        scores = task.summary(test)
        epochs = f"best epoch {metrics.get('best_epoch')} of {metrics.get('epochs_run')}"
        used = f"{labels.get('train')} labels trained it, {labels.get('selection')} selected it"
        ui.console.print(f"at training time: {scores}; {epochs}; {used}", markup=False)
    record = folder.transfer_record()
    pretrained = pretrained_sources(run.cfg.model.encoders)
    for name, source in pretrained.items():
        ui.console.print(f"transferred from {source}: the pretrained backbone of input {name}", markup=False)
    if record is not None:
        counts = record["graft"]["counts"]
        summary = ", ".join(f"{k} {v}" for k, v in counts.items())
        ui.console.print(f"transferred from {record['source']}: {summary} tensors", markup=False)
    elif not pretrained:
        ui.console.print("transferred from: nothing (trained from scratch)", markup=False)
    for note in task.notes():  # the post-fit step: a temperature fitted, or none
        ui.console.print(note, markup=False)
    versions = folder.versions()
    ui.console.print("written with " + ", ".join(f"{k} {v}" for k, v in versions.items()), markup=False)
    for difference in run.differences:
        ui.console.print(f"note: version differs here: {difference}", markup=False)


def pretrained_sources(encoders: dict) -> dict[str, str]:
    """Input name -> the pretrained backbone its encoder started from and where its weights came from, as a run's
    config.yaml records them (model.encoders); encoders trained from scratch are left out."""
    from mmtransfer.encoders import encoder_info  # imports torch: the CLI stays light until a command needs it
    from mmtransfer.transfer.strategies import pretrained

    # pretrained(): the one test of which encoder configs start from pretrained weights
    return {name: encoder_info(encoders[name]).weights_from(encoders[name]) for name in pretrained(encoders)}
