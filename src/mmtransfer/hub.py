"""Offline access to the Hugging Face Hub cache: nothing is requested from the network unless asked.

``local_files_only=True`` alone is not enough: transformers still asks the Hub for optional files (an
``adapter_config.json``), and each request retries for tens of seconds on a machine without a network before
the error. huggingface_hub reads ``HF_HUB_OFFLINE`` once, at import, so the flag is set where it is read
(``huggingface_hub.constants``), for the duration of a load, not in the environment.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def offline(enabled: bool = True) -> Iterator[None]:
    """Within the block, Hub requests fail at once instead of going to the network (when ``enabled``)."""
    if not enabled:
        yield
        return
    import huggingface_hub.constants as hub

    old = hub.HF_HUB_OFFLINE
    hub.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hub.HF_HUB_OFFLINE = old


def why_not_loaded(name: str, err: Exception, local_files_only: bool) -> str:
    """A short reason a model or tokenizer could not be loaded; the Hub's own advice to check the internet
    connection is replaced by what is true offline: where we looked and how to get the files."""
    from pathlib import Path

    if Path(name).is_dir():
        return f"the folder {name} holds no loadable model ({err})"
    if not local_files_only or _cached(name):
        return f"{name!r}: {err}"
    import huggingface_hub.constants as hub

    return (
        f"{name!r} is not a folder, and not in the local Hugging Face cache ({hub.HF_HUB_CACHE}); nothing is "
        f"downloaded (local_files_only is on): fetch it once (huggingface-cli download {name}) or give a folder"
    )


def _cached(name: str) -> bool:
    """Whether the local Hub cache holds a config.json for the id ``name``."""
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(name, "config.json"), str)
    except Exception:  # not a valid hub id, or an older huggingface_hub
        return False
