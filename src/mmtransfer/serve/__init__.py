"""``mmtransfer serve``: a run folder answering HTTP requests (:mod:`mmtransfer.serve.app`), its rows read as
``predict`` reads a table's (:mod:`mmtransfer.serve.rows`) and predicted in micro-batches
(:mod:`mmtransfer.serve.engine`). FastAPI and uvicorn are imported only when a server is made."""

from mmtransfer.serve.engine import Answer, Batcher, Busy, Engine, Settings

__all__ = ["Answer", "Batcher", "Busy", "Engine", "Settings"]
