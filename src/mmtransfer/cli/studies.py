"""Many runs and the rest: ``study`` (and ``study --auto``), ``demo``, ``graft`` and ``cache``.
On purpose, each command imports what it runs (torch, the training stack, pandas) inside its body: they load only
once the command line, the config and the files it names are checked, so a mistake is one line within a
second. What is light is imported here."""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path
from typing import Annotated

import typer

from mmtransfer import cache
from mmtransfer import cli as ui
from mmtransfer.artifact import check_out
from mmtransfer.cli.fitting import check_header
from mmtransfer.config import ConfigError, check_files, load_config, read_rules_file
from mmtransfer.errors import UserError
from mmtransfer.outputs import write_json

cache_app = typer.Typer(help="The cache of frozen encoders' features: show it, free it.", no_args_is_help=True)
ui.app.add_typer(cache_app, name="cache")


@cache_app.command("info")
def cache_info() -> None:
    """Where the feature cache is, how many entries and bytes it holds, and its size limit."""

    try:
        limit = cache.max_bytes()
        files = cache.entries()
        size = sum(p.stat().st_size for p in files)
    except ui.USER_ERRORS as err:
        ui.fail(err)
    ui.console.print(
        f"feature cache {cache.cache_dir()}: {len(files)} entries, {size / 1e6:.1f} MB "
        f"(limit {limit / 1e9:g} GB, MMTRANSFER_CACHE_MAX_GB; least recently used go first)",
        markup=False,
    )
    for path in files[-10:]:
        ui.console.print(f"  {path.name}  {path.stat().st_size / 1e6:.2f} MB", markup=False)


@cache_app.command("clear")
def cache_clear() -> None:
    """Remove every entry of the feature cache (they are computed again when needed)."""

    try:
        count, size = cache.clear()
    except ui.USER_ERRORS as err:
        ui.fail(err)
    ui.console.print(f"removed {count} entries, {size / 1e6:.1f} MB, from {cache.cache_dir()}", markup=False)


@ui.app.command()
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

    from mmtransfer.demo import run_demo

    try:
        run_demo(out, seeds=seeds, k=k, progress=progress, console=ui.console, workers=min(2, os.cpu_count() or 1))
    except ui.USER_ERRORS as err:
        ui.fail(err)


@ui.app.command()
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
    import sys

    # the study engine (numpy, statistics, reports) loads when a study runs, not for every command's --help
    from mmtransfer import study as engine

    if (study_file is None) == (auto is None):
        ui.fail(ConfigError("give a study file, or --auto CONFIG (not both)"))
    if backend not in ("local", "ray"):
        ui.fail(ConfigError(f"--backend {backend!r}: local or ray"))
    if apply is not None and auto is None:
        ui.fail(ConfigError("--apply goes with --auto CONFIG"))
    try:
        if auto is not None:
            spec, base, folder = engine.auto_study(auto, seeds=seeds)
            out = out or Path(f"{auto.stem}-auto")
        else:
            spec, base, folder = engine.load_study(study_file)
            out = out or Path(study_file.stem)
        if apply is not None:
            check_out(apply, overwrite=False, resume=False)
        command = "mmtransfer " + " ".join(shlex.quote(a) for a in sys.argv[1:])
        previous = out / "results.json"
        if report_only and previous.is_file():  # the report keeps the command that ran the cells
            command = json.loads(previous.read_text()).get("command") or command
        runner = engine.Study(spec, base, folder, out, console=ui.console, selection_only=auto is not None,
                              command=command, source=str(study_file or auto))  # fmt: skip
    except ui.USER_ERRORS as err:
        ui.fail(err)
    ui.console.quiet = quiet
    try:
        results = runner.report() if report_only else runner.run(workers, backend, threads)
    except ui.USER_ERRORS as err:
        ui.fail(err)
    engine.print_summary(results, spec, ui.console, out)
    if auto is not None:
        _recommend(engine, results, spec, out, auto, apply)


def _recommend(engine, results: dict, spec, out: Path, auto: Path, apply: Path | None) -> None:
    """study --auto: the best strategy on the validation labels, said with its interval; --apply fits it."""
    best = engine.recommend(results, spec)
    if best is None:
        ui.fail(UserError(f"no strategy finished; see the logs in {out / 'cells'}"))
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
    write_json(out / "recommendation.json", best)
    ui.console.print(line, markup=False, highlight=False)
    if apply is None:
        ui.console.print(f"fit it: mmtransfer fit {auto} --set train.strategy.name={best['arm']} --out RUN "
                      f"(or add --apply RUN)", markup=False, highlight=False)  # fmt: skip
        return
    from mmtransfer.runs import fit_run

    try:
        cfg = load_config(auto, [f"train.strategy.name={best['arm']}"])
        metrics = fit_run(cfg, apply, ui.console)
    except ui.USER_ERRORS as err:
        ui.fail(err)
    ui.print_metrics(metrics["test"], f"test metrics ({apply}, strategy {best['arm']})", metrics["classes"])


@ui.app.command()
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
        check_header(cfg, str(target_config))
        if rules is not None or exclude:
            file_rules, file_exclude = read_rules_file(rules) if rules is not None else ({}, [])
            update = {
                "rules": file_rules or cfg.transfer.rules,  # a file's rules replace the config's; exclude adds up
                "exclude": list(dict.fromkeys([*cfg.transfer.exclude, *file_exclude, *(exclude or [])])),
            }
            cfg = cfg.model_copy(update={"transfer": cfg.transfer.model_copy(update=update)})
    except ui.USER_ERRORS as err:
        ui.fail(err)
    from mmtransfer.backbones import binder
    from mmtransfer.checkpoint import save_weights
    from mmtransfer.data import load_dataset
    from mmtransfer.model import build_model
    from mmtransfer.runs import graft_from_config, resolved_config

    try:
        data = load_dataset(cfg.data, console=ui.console, binder=binder(cfg.model))
        cfg = resolved_config(cfg, data)  # the columns and encoders exactly as `fit` would bind them
        model = build_model(cfg.model, data.specs, data.classes, seed=cfg.train.seed)
        report = graft_from_config(cfg, model, data, dry_run=dry_run)
    except ui.USER_ERRORS as err:  # GraftError is a ValueError
        ui.fail(err)
    ui.console.print(report.table(f"graft report: {source} -> {target_config}"))
    if dry_run:
        ui.console.print("dry run: nothing written")
        return
    try:
        save_weights(model, out)
        report.save(out.with_suffix(".report.json"))
    except OSError as err:
        ui.fail(err, out.with_suffix(".report.json"))
    ui.console.print(f"grafted weights: {out}; report: {out.with_suffix('.report.json')} and .md", markup=False)
