"""Shared by the examples: where results go, how a run is reported."""

from __future__ import annotations

import json
import shlex
import sys
import time
from pathlib import Path

from rich.console import Console

from mmtransfer.config import RunConfig
from mmtransfer.runs import fit_run

console = Console()


def command() -> str:
    return "python " + " ".join(shlex.quote(a) for a in sys.argv)


def run(cfg: RunConfig, out: Path, title: str) -> dict:
    """Fit + evaluate one configuration into ``out``; print and return test metrics and wall time."""
    console.rule(title)
    start = time.perf_counter()
    metrics = fit_run(cfg, out, console)
    metrics["wall_seconds"] = round(time.perf_counter() - start, 1)
    test = metrics["test"]
    console.print(
        f"[bold]{title}[/]: test accuracy {test['accuracy']:.4f}, macro-F1 {test['macro_f1']:.4f} "
        f"(n={test['n']}), {metrics['wall_seconds']:.0f} s, best epoch {metrics['best_epoch']}/{metrics['epochs_run']}"
    )
    (out / "summary.json").write_text(json.dumps({"title": title, **metrics}, indent=1))
    return metrics
