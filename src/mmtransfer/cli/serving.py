"""``mmtransfer serve``: a run folder behind HTTP. FastAPI, uvicorn and torch are imported once the options and
the run folder are checked."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

from mmtransfer import cli as ui
from mmtransfer.errors import UserError


@ui.app.command()
def serve(
    run_dir: Annotated[Path, typer.Argument(help="A run folder written by `mmtransfer fit`.")],
    host: Annotated[str, typer.Option(help="Address to listen on (0.0.0.0: every interface).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port (0: any free one, printed).")] = 8000,
    data_root: Annotated[
        Path | None,
        typer.Option(
            help='A folder whose files a request may name ({"path": ...}); without it no server file is read.'
        ),
    ] = None,
    max_batch: Annotated[int, typer.Option(min=1, help="Most rows predicted together.")] = 32,
    max_wait_ms: Annotated[
        float, typer.Option(min=0.0, help="How long a batch waits for more requests after its first.")
    ] = 2.0,
    max_queue: Annotated[int, typer.Option(min=1, help="Requests waiting at most; more get 503.")] = 256,
    max_body_mb: Annotated[float, typer.Option(min=0.001, help="Largest request body; larger gets 413.")] = 4.0,
    truncate_text: Annotated[
        bool, typer.Option(help="Cut a text longer than the model reads (default: that row's error).")
    ] = False,
    threads: Annotated[
        int | None,
        typer.Option(min=1, help="torch threads for the model (default: torch's, one per core)."),
    ] = None,
    log: Annotated[Path | None, typer.Option(help="Also append the request log to this file.")] = None,
    allow_unfinished: Annotated[bool, ui.UNFINISHED] = False,
) -> None:
    """Serve a run's model over HTTP (pip install 'mmtransfer[serve]'): POST /predict, GET /health, GET /metadata.

    POST /predict takes {"rows": [{COLUMN: VALUE, ...}, ...]}: text and numbers inline, an image or a recording
    as its file's bytes in base64 (or {"path": ...} under --data-root), null for an empty cell; or one row as a
    multipart form (files as file parts). Each row gets its prediction with every class's calibrated probability
    (a number in the target's units for regression, the label set for multi-label), or its own error while the
    other rows are answered. The run is verified and loaded once; requests that arrive together are predicted
    in one batch. One log line per request on stderr (status, rows, batch size, latency).
    """
    from mmtransfer.serve.app import run_server
    from mmtransfer.serve.engine import Settings

    handlers = [logging.StreamHandler(sys.stderr)]
    if log is not None:
        handlers.append(logging.FileHandler(log))
    for handler in handlers:
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    logger = logging.getLogger("mmtransfer.serve")
    logger.handlers[:] = handlers
    logger.setLevel(logging.INFO)
    logger.propagate = False

    def ready(run, host: str, port: int) -> None:
        kinds = ", ".join(f"{c} ({cfg.modality})" for c, cfg in run.preprocessor.columns.items())
        ui.console.print(f"serving {run.path} ({run.model.task.name}; reads {kinds}) at http://{host}:{port}",
                         markup=False, highlight=False)  # fmt: skip
        ui.console.print("POST /predict, GET /health, GET /metadata; Ctrl-C stops", markup=False, highlight=False)

    settings = Settings(max_batch, max_wait_ms, max_queue, int(max_body_mb * 2**20), data_root, truncate_text)
    try:
        if not run_dir.is_dir():
            raise UserError(f"{run_dir}: " + ("a file, not a run folder" if run_dir.exists() else "no such run folder"))
        run_server(run_dir, settings, host, port, threads=threads, allow_unfinished=allow_unfinished,
                   on_ready=ready)  # fmt: skip
    except ui.USER_ERRORS as err:
        ui.fail(err)
