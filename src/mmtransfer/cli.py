"""The ``mmtransfer`` command line: each subcommand is a plain typed function.

Heavy libraries (torch, pandas, transformers) are imported only once the config has been read and checked, so
a mistake in it, or a missing file it names, is reported at once.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.text import Text

from mmtransfer.config import ConfigError, check_files, load_config, read_rules_file
from mmtransfer.display import Grid, make_console

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


def _fail(err: Exception) -> None:
    """One ``error:`` line (details below it), on stderr, exit code 2; the message is printed literally."""
    if os.environ.get("MMTRANSFER_DEBUG"):
        raise err
    message = str(err) if not isinstance(err, KeyError) else f"missing key {err}"
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
) -> None:
    """Train a model from a config (validated before any work starts) and write a run folder.

    The run folder holds config.yaml, model.safetensors (the epoch with the best validation loss; the last
    epoch with train.validation=none), labels.json, inputs.json, history.json, metrics.json (with how many
    labels trained and selected the model), preprocessing.json (tables) and, when transfer.source is set,
    transfer_report.json / .md. Fine-tuning strategy: --set train.strategy.name=full | linear_probe |
    freeze_then_unfreeze | gradual_unfreeze | discriminative | lora.
    """
    try:
        cfg = load_config(config, set_ or [])
        check_files(cfg, str(config) if config else "config")
    except USER_ERRORS as err:
        _fail(err)
    from mmtransfer.runs import fit_run  # torch and the rest load only for a config that is good

    try:
        metrics = fit_run(cfg, out, console)
    except USER_ERRORS as err:
        _fail(err)
    _print_metrics(metrics["test"], f"test metrics ({out})", metrics["classes"])
    labels = metrics["labels"]
    console.print(
        f"best epoch {metrics['best_epoch']} of {metrics['epochs_run']}; {labels['train']} labelled examples "
        f"trained the model, {labels['selection']} selected it; run folder: {out}",
        markup=False,
        highlight=False,
    )


@app.command()
def evaluate(
    run_dir: Annotated[Path, typer.Argument(help="A run folder written by `mmtransfer fit`.")],
    split: Annotated[str, typer.Option(help="Which split of the run's data: train, val or test.")] = "test",
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the metrics to this JSON file.")] = None,
) -> None:
    """Evaluate a run folder's model on held-out data: accuracy, macro-F1, loss and the confusion matrix."""
    if not (run_dir / "config.yaml").is_file():
        _fail(FileNotFoundError(f"{run_dir} is not a run folder: no config.yaml"))
    from mmtransfer.runs import evaluate_run

    try:
        metrics = evaluate_run(run_dir, split)
        _print_metrics(metrics, f"{split} metrics ({run_dir})", metrics.get("classes"))
        if json_out:
            json_out.write_text(json.dumps(metrics, indent=1))
    except USER_ERRORS as err:
        _fail(err)


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

    Trains a CNN on a labelled source split, transfers it into a GRU that reads each image row by row (feature
    distillation on unlabelled images + head graft), fine-tunes on k images per class and compares with the same
    GRU trained from scratch on the same images, over several seeds. Writes report.md, metrics.json, demo.png.
    """
    from mmtransfer.demo import run_demo

    run_demo(out, seeds=seeds, k=k, progress=progress, console=console)


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
        if rules is not None or exclude:
            file_rules, file_exclude = read_rules_file(rules) if rules is not None else ({}, [])
            update = {
                "rules": file_rules or cfg.transfer.rules,  # a file's rules replace the config's; exclude adds up
                "exclude": list(dict.fromkeys([*cfg.transfer.exclude, *file_exclude, *(exclude or [])])),
            }
            cfg = cfg.model_copy(update={"transfer": cfg.transfer.model_copy(update=update)})
    except USER_ERRORS as err:
        _fail(err)
    from mmtransfer.checkpoint import save_weights
    from mmtransfer.data import load_dataset
    from mmtransfer.model import build_model
    from mmtransfer.runs import graft_from_config

    try:
        data = load_dataset(cfg.data, console=console)
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
        _fail(err)
    console.print(f"grafted weights: {out}; report: {out.with_suffix('.report.json')} and .md", markup=False)


def _print_metrics(metrics: dict, title: str, classes: list[str] | None = None) -> None:
    rows = []
    for key in ("n", "accuracy", "macro_f1", "loss"):
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


if __name__ == "__main__":
    app()
