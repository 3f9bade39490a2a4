"""``mmtransfer serve``: a run folder behind HTTP (FastAPI on uvicorn; ``pip install 'mmtransfer[serve]'``).

    POST /predict   rows as JSON, or one row as a multipart upload -> per row its prediction or its error
    GET  /health    {"status": "ok", ...}
    GET  /metadata  the inputs with their kinds and preprocessing, the classes, versions, the manifest's digest

The run is verified and loaded once, at start-up. Limits: a body over ``max_body`` bytes gets 413, a full queue
503, a request no row of which could be read 422 (the first row's error said), one that is not JSON or a form
400 / 415; anything else that goes wrong inside is a 500 with an id that the server's log names beside its
traceback, never the traceback itself. One log line per request: status, rows, batch and latency.
"""

# No ``from __future__ import annotations`` here: FastAPI reads the endpoints' annotations (``Request``) at run time.

import logging
import signal
import socket
import threading
import time
import traceback
import uuid
from contextlib import asynccontextmanager
from pathlib import Path

from mmtransfer import artifact
from mmtransfer.errors import MissingPackage, UserError
from mmtransfer.runfolder import RunFolder
from mmtransfer.serve.engine import Batcher, Busy, Engine, Settings
from mmtransfer.serve.rows import BadRequest, form_row, json_rows
from mmtransfer.version import __version__

log = logging.getLogger("mmtransfer.serve")

HOW_TO_SEND = {
    "image": 'the file\'s bytes in base64, or {"path": ...} under --data-root; multipart: a file part',
    "audio": 'the file\'s bytes in base64, or {"path": ...} under --data-root; multipart: a file part',
    "text": "a string",
    "tabular": "a number (numeric) or a string (categorical); null: filled as the run fills an empty cell",
}


def need_packages() -> None:
    """The serve extra, or the line that installs it."""
    try:
        import fastapi  # noqa: F401
        import python_multipart  # noqa: F401  (FastAPI's form parser)
        import uvicorn  # noqa: F401
    except ImportError as err:
        raise MissingPackage(
            f"mmtransfer serve needs {err.name}, which is not installed: pip install 'mmtransfer[serve]'"
        ) from None


def metadata(run, engine: Engine, settings: Settings) -> dict:
    """What GET /metadata answers: enough to build a request and to know which model answers it."""
    pre, task = run.preprocessor, run.model.task
    inputs = []
    for col, kind in engine.kinds.items():
        mod = pre.modalities[col]
        entry = {"name": col, "kind": kind, "send": HOW_TO_SEND.get(kind, "a value")}
        if kind == "tabular":
            entry["kind"] = mod.cfg.kind  # numeric or categorical
            if mod.cfg.kind == "categorical":
                entry["categories"] = list(getattr(mod, "categories", []) or [])
        entry["preprocessing"] = mod.cfg.model_dump(mode="json", exclude={"modality"})
        inputs.append(entry)
    return {
        "run": run.path.name,
        "task": task.name,
        "label": run.cfg.data.label,
        "classes": list(run.classes) if task.lists_classes else None,
        "inputs": inputs,
        "manifest_digest": run.manifest.get("digest"),
        "versions": {
            "trained_with": RunFolder(run.path).versions(),
            "serving": {**artifact.versions(), "mmtransfer": __version__},
        },  # fmt: skip
        "limits": {
            "max_batch": settings.max_batch,
            "max_wait_ms": settings.max_wait_ms,
            "max_queue": settings.max_queue,
            "max_body_bytes": settings.max_body,
            "reads_server_files": settings.data_root is not None,
            "truncates_text": settings.truncate_text,
        },
    }


def create_app(run, settings: Settings | None = None):
    """The FastAPI app serving ``run`` (a loaded :class:`~mmtransfer.artifact.Run`)."""
    from fastapi import FastAPI, HTTPException, Request
    from fastapi.responses import JSONResponse
    from starlette.datastructures import UploadFile

    settings = settings or Settings()
    engine = Engine(run, settings)
    batcher = Batcher(engine, settings)
    described = metadata(run, engine, settings)
    columns = list(engine.kinds)
    started = time.time()

    @asynccontextmanager
    async def lifespan(app):
        await batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(title=f"mmtransfer: {run.path.name}", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)  # fmt: skip

    def error(status: int, message: str, **more) -> JSONResponse:
        return JSONResponse({"error": message, **more}, status_code=status)

    def internal(where: str) -> JSONResponse:
        incident = uuid.uuid4().hex[:12]
        log.error("internal error %s in %s:\n%s", incident, where, traceback.format_exc().rstrip())
        return error(500, f"internal error {incident}; the server's log holds its details", id=incident)

    @app.middleware("http")
    async def one_line_each(request: Request, call_next):
        start = time.perf_counter()
        request.state.rows = request.state.batch = None
        try:
            response = await call_next(request)
        except Exception:
            response = internal(request.url.path)
        ms = (time.perf_counter() - start) * 1000
        rows, batch = request.state.rows, request.state.batch
        log.info("%s %s %d%s%s %.1f ms", request.method, request.url.path, response.status_code,
                 f" rows={rows}" if rows is not None else "", f" batch={batch}" if batch is not None else "",
                 ms)  # fmt: skip
        return response

    @app.get("/health")
    async def health():
        return {"status": "ok", "run": run.path.name, "waiting": batcher.waiting(),
                "uptime_s": round(time.time() - started, 1)}  # fmt: skip

    @app.get("/metadata")
    async def get_metadata():
        return described

    @app.post("/predict")
    async def predict(request: Request):
        try:
            body = await read_body(request, settings.max_body)
            kind = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
            if kind == "multipart/form-data":
                request._body = body  # starlette reads the form from the body already read (and measured)
                try:
                    form = await request.form(max_files=len(columns), max_fields=len(columns) + 16,
                                              max_part_size=settings.max_body)  # fmt: skip
                except HTTPException as err:
                    raise BadRequest(f"malformed multipart form: {err.detail}") from None
                items = [(k, await v.read() if isinstance(v, UploadFile) else v) for k, v in form.multi_items()]
                rows = [form_row(items)]
            elif kind in ("application/json", "text/json", ""):
                rows = json_rows(body, columns)
            else:
                raise BadRequest(f"content type {kind!r}: send application/json or multipart/form-data", 415)
            request.state.rows = len(rows)
            answer = await batcher.submit(rows)
        except BadRequest as err:
            return error(err.status, str(err))
        except Busy as err:
            return JSONResponse({"error": f"server busy: {err}"}, status_code=503, headers={"Retry-After": "1"})
        except Exception:
            return internal("/predict")
        request.state.batch = answer.batch
        content = {"predictions": answer.rows}
        ignored = engine.reader.ignored(rows)
        if ignored:
            content["ignored_columns"] = ignored
        if all("error" in row for row in answer.rows):
            return error(422, answer.rows[0]["error"], **content)
        return content

    app.state.engine, app.state.batcher = engine, batcher
    return app


async def read_body(request, limit: int) -> bytes:
    """The body, refused (413) as soon as it is known to pass ``limit`` bytes, before it is all read."""
    declared = request.headers.get("content-length", "")
    too_big = f"a body over {limit:,} bytes (--max-body-mb)"
    if declared.isdigit() and int(declared) > limit:
        raise BadRequest(f"{too_big}: {int(declared):,} declared", 413)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BadRequest(too_big, 413)
        chunks.append(chunk)
    return b"".join(chunks)


def listen(host: str, port: int) -> socket.socket:
    """A bound, listening socket, or one error line (the port in use, an address this machine does not have)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on such sockets, and without it every answer on a
    # kept-alive connection waited about 40 ms for the client's delayed ACK (measured: 52 ms a request, 11 with)
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as err:
        sock.close()
        raise UserError(f"cannot listen on {host}:{port}: {err.strerror or err}") from None
    sock.set_inheritable(True)
    return sock


def run_server(run_dir: Path, settings: Settings, host: str, port: int, *, threads: int | None = None,
               allow_unfinished: bool = False, on_ready=None) -> None:  # fmt: skip
    """Load and verify the run, listen, and serve until interrupted (Ctrl-C, SIGTERM)."""
    need_packages()
    import uvicorn

    if settings.data_root is not None and not Path(settings.data_root).is_dir():
        raise UserError(f"--data-root {settings.data_root}: not a folder")
    import torch

    if threads is not None:  # torch's default, every core, served the flowers CNN 1.4x faster than one thread
        torch.set_num_threads(threads)
    run = artifact.load(run_dir, allow_unfinished=allow_unfinished)
    app = create_app(run, settings)
    sock = listen(host, port)
    bound = sock.getsockname()[1]
    if on_ready is not None:
        on_ready(run, host, bound)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on",
                            limit_concurrency=settings.max_queue + 64, timeout_graceful_shutdown=5)  # fmt: skip
    if threading.current_thread() is threading.main_thread():  # SIGTERM stops it as Ctrl-C does: exit code 0
        signal.signal(signal.SIGTERM, _interrupt)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn has shut down cleanly and passes the signal on
        pass


def _interrupt(signum, frame):
    raise KeyboardInterrupt
