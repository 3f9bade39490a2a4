"""A whole run's config (:class:`RunConfig`) and how it is read: YAML files, ``--set`` overrides, paths
relative to the file, and errors that name each bad field."""

from __future__ import annotations

import difflib
import re
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Union

import yaml
from pydantic import BaseModel, Field, ValidationError, model_validator

from mmtransfer.config.base import ConfigError, _Strict
from mmtransfer.config.data import DataConfig
from mmtransfer.config.model import ModelConfig
from mmtransfer.config.train import TrainConfig, TransferConfig


class RunConfig(_Strict):
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    transfer: TransferConfig = Field(default_factory=TransferConfig)

    @model_validator(mode="after")
    def _labels_or_teacher(self):
        distill = self.transfer.distill
        paired = distill is not None and distill.teacher_column is not None
        if self.data.k_per_class == 0 and not paired:
            raise ValueError(
                "data.k_per_class=0 trains with no label: only a teacher can (transfer.source with "
                "transfer.distill.teacher_column, a column of the same rows the teacher reads)"
            )
        if paired and self.transfer.source is None:
            raise ValueError("transfer.distill.teacher_column: set transfer.source, the run that teaches")
        if paired and self.data.table is None:
            raise ValueError(
                "transfer.distill.teacher_column names a column of data.table; a folder or a built-in dataset "
                "holds no second column of the same rows"
            )
        return self


# ---------------------------------------------------------------- loading


def read_mapping(path: str | Path, kind: str = "config", holds: str = "of sections (data, model, train, transfer)"):
    """A YAML file that must hold a mapping, as a raw dict; ``kind`` and ``holds`` word the errors."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{kind} file not found: {path}")
    raw = _read_yaml(path, str(path))
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping {holds}")
    return raw


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A config file as a raw dict, its relative paths made absolute against the file's folder."""
    raw = read_mapping(path)
    resolve_paths(raw, Path(path).parent)  # a path written in the file is relative to the file
    return raw


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML file (or start from defaults), apply ``a.b=value`` overrides, validate.

    A file that holds nothing (empty, only comments, ``null``) or an empty ``data`` section is refused unless
    the overrides give the data: it would train the built-in digits for 30 epochs, when the file was surely
    saved empty or is the wrong file. Without a file, the defaults stand (``mmtransfer fit`` alone: digits).
    """
    raw: dict[str, Any] = {}
    where = "defaults"
    if path is not None:
        where = str(path)
        raw = read_config_file(path)
    no_data = path is not None and (not raw or ("data" in raw and not raw["data"]))
    if overrides:
        where += " with --set " + " ".join(overrides)
        # Overrides apply to the mapping as the user wrote it, never to a dump with every default filled in: a
        # field the user did not set stays unset (or auto), so what depends on other parts (an image column's
        # size under a pretrained backbone) resolves the same with or without --set.
        for item in overrides:
            apply_override(raw, item)
        resolve_paths(raw, Path.cwd())  # a path given on the command line is relative to where it was typed
    if no_data and not raw.get("data"):
        raise ConfigError(f"{path}: no data section: give a table, a folder or a built-in dataset")
    return validate(raw, where)


NESTED = "its YAML is nested too deeply to read; a config is a few levels deep"
MAX_NODES = 100_000  # values a config may hold once its aliases are expanded; real configs hold hundreds


def _check_aliases(text, what: str) -> None:
    """Refuse a document whose aliases expand it beyond MAX_NODES values, before anything is built from it: an
    alias bomb (a few hundred bytes of nested ``*name`` lists) loads fast, as shared references, but every later
    walk over it (validation, an error message) expands it to billions of values."""
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    sizes: dict[int, int] = {}
    visiting: set[int] = set()

    def size(node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in visiting:  # an alias inside itself: a recursive structure, endless once expanded
            raise ConfigError(f"{what}: a YAML alias refers to itself; a config cannot be recursive")
        visiting.add(key)
        if isinstance(node, yaml.SequenceNode):
            total = 1 + sum(size(child) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            total = 1 + sum(size(k) + size(v) for k, v in node.value)
        else:
            total = 1
        visiting.discard(key)
        sizes[key] = min(total, MAX_NODES + 1)
        return sizes[key]

    if root is not None and size(root) > MAX_NODES:
        raise ConfigError(
            f"{what}: its YAML aliases (*name) expand to more than {MAX_NODES:,} values; a config needs far "
            "fewer (an alias bomb?)"
        )


def _read_yaml(path: Path, what: str) -> Any:
    """A YAML file's content, or a ConfigError naming the file (unreadable, not UTF-8, not YAML, alias bomb)."""
    try:
        with path.open(encoding="utf-8") as stream:  # a stream, so that YAML's messages name the file
            _check_aliases(stream, what)
        with path.open(encoding="utf-8") as stream:
            return yaml.safe_load(stream) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{what}: not valid YAML: {err}") from None
    except RecursionError:  # PyYAML reads nested collections recursively
        raise ConfigError(f"{what}: {NESTED}") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"{what}: not UTF-8 text (byte {err.start}: {err.reason})") from None
    except OSError as err:
        raise ConfigError(f"{what}: cannot read: {err.strerror or err}") from None


def resolve_paths(raw: dict[str, Any], base: Path) -> None:
    """Make the relative paths of a raw config absolute against ``base``, in place.

    Fields that only hold paths (``data.table``, ``transfer.source`` unless ``hf:`` / ``timm:``, a timm
    ``weights`` file) are always resolved. Fields that hold a path or a name (a tokenizer, an extractor or a
    Hugging Face ``path``: a folder, a cached hub id or the packaged MiniLM) are resolved only where that folder
    exists, so names stay names. Malformed sections are left for validation to report.
    """

    def section(*keys: str) -> dict:
        node: Any = raw
        for key in keys:
            node = node.get(key) if isinstance(node, dict) else None
        return node if isinstance(node, dict) else {}

    def path(node: dict, key: str, *, only_existing: bool = False) -> None:
        value = node.get(key)
        if not isinstance(value, str) or not value.strip() or value.startswith(("hf:", "timm:")):
            return
        candidate = Path(value).expanduser()
        if candidate.is_absolute():
            node[key] = str(candidate)  # ~ expanded
            return
        resolved = (base / candidate).resolve()
        if not only_existing or resolved.exists():
            node[key] = str(resolved)

    path(section("data"), "table")
    path(section("data"), "folder")
    path(section("transfer"), "source")
    for column in section("data", "columns").values():
        if isinstance(column, dict):
            path(column, "tokenizer", only_existing=True)
            path(column, "extractor", only_existing=True)
    for encoder in section("model", "encoders").values():
        if isinstance(encoder, dict):
            path(encoder, "path", only_existing=True)
            path(encoder, "weights")


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Set ``section.field=value`` in a raw dict; the value is parsed as YAML (``3e-4``, ``[1, 2]``, ``null``).

    Setting an encoder's ``type`` to another type drops the old type's fields.
    """
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {item!r}: expected KEY=VALUE, e.g. train.lr=3e-4")
    node = raw
    parts = key.strip().split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {item!r}: {part!r} is a value, not a section")
        node = child
    try:
        _check_aliases(value, f"override {key.strip()!r}")
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError as err:
        raise ConfigError(f"override {item!r}: the value is not valid YAML ({str(err).splitlines()[0]})") from None
    except RecursionError:
        raise ConfigError(f"override {key.strip()!r}: {NESTED}") from None
    if parts[-1] == "type" and isinstance(node.get("type"), str) and node["type"] != parsed:
        node.clear()  # another encoder type: its other fields start from that type's defaults
    # YAML 1.1 reads 3e-4 as a string; numbers are what people mean, unless they quoted the value.
    if isinstance(parsed, str) and value.strip()[:1] not in ("'", '"'):
        try:
            parsed = float(parsed)
        except ValueError:
            pass
    node[parts[-1]] = parsed


def validate(raw: dict[str, Any], where: str = "config") -> RunConfig:
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as err:
        lines = [_describe(e) for e in err.errors()]
        raise ConfigError(f"{where}: {len(lines)} invalid field(s)\n" + "\n".join(lines)) from None


def check_files(cfg: RunConfig, where: str = "config", later: set[str] | None = None) -> None:
    """The files a config names that must exist before any work starts: the table and a path source.

    Cheap (no heavy imports), so that a missing file is reported at once. ``later``: source folders that will
    be made before the run starts (a study's source runs).
    """
    table = cfg.data.table
    if table is not None and not Path(table).is_file():
        raise ConfigError(f"{where}: data.table: no such file: {table}")
    folder = cfg.data.folder
    if folder is not None and not Path(folder).is_dir():
        raise ConfigError(f"{where}: data.folder: no such folder: {folder}")
    source = cfg.transfer.source
    made_later = source is not None and any(source == f or source.startswith(f + "/") for f in later or ())
    if source is not None and not source.startswith(("hf:", "timm:")) and not made_later and not Path(source).exists():
        raise ConfigError(
            f"{where}: transfer.source: no such run folder or file: {source} (hf:ID for a cached Hugging Face "
            "model, timm:NAME for timm)"
        )


def read_rules_file(path: str | Path) -> tuple[dict[str, str], list[str]]:
    """A rules file: a YAML mapping of source-name prefix -> target-name prefix, plus optionally
    ``exclude: [patterns]`` (and, to keep rules apart, the prefixes under ``rules:``). Returns (rules, exclude)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--rules {path}: no such file")
    loaded = _read_yaml(path, f"--rules {path}")
    if not isinstance(loaded, dict):
        raise ConfigError(f"--rules {path}: expected a YAML mapping of source prefix: target prefix")
    loaded = dict(loaded)
    exclude = loaded.pop("exclude", [])
    if not isinstance(exclude, list) or not all(isinstance(p, str) for p in exclude):
        raise ConfigError(f"--rules {path}: exclude: expected a list of name patterns, got {exclude!r}")
    rules = loaded.pop("rules") if isinstance(loaded.get("rules"), dict) else {}
    rules.update(loaded)
    bad = [f"{k!r}: {v!r}" for k, v in rules.items() if not isinstance(k, str) or not isinstance(v, str)]
    if bad:
        raise ConfigError(f"--rules {path}: a rule maps a source prefix to a target prefix (both text): {bad[0]}")
    return rules, exclude


def dump_config(cfg: RunConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))


def _describe(error: dict[str, Any]) -> str:
    loc = error["loc"]
    field = ".".join(str(p) for p in loc)
    if error["type"] == "extra_forbidden":
        allowed = _allowed_fields(loc[:-1])
        hint = f"{did_you_mean(str(loc[-1]), allowed) or ';'} allowed: {', '.join(allowed)}" if allowed else ""
        return f"  {field}: unknown field{hint}"
    ctx = error.get("ctx", {})
    if error["type"] == "union_tag_invalid":
        key = ctx["discriminator"].strip("'")
        tags = [t.strip() for t in ctx["expected_tags"].replace(chr(39), "").split(",")]
        hint = did_you_mean(str(ctx["tag"]), tags)
        return f"  {field}: {key} {ctx['tag']!r} unknown{hint or ';'} allowed: {', '.join(tags)}"
    if error["type"] == "literal_error" and isinstance(error.get("input"), str):
        hint = did_you_mean(error["input"], re.findall(r"'([^']*)'", ctx.get("expected", "")))
        return f"  {field}: got {error['input']!r}{hint or ';'} {error['msg'].lower()}"
    if error["type"] == "union_tag_not_found":
        key = ctx["discriminator"].strip("'")
        return f"  {field}: needs a {key!r} field"
    if error["type"] == "value_error":  # a check across fields: its message says it all
        msg = error["msg"].removeprefix("Value error, ")
        return f"  {field}: {msg}" if field else f"  {msg}"  # across sections: the message names the fields
    got = repr(error.get("input"))
    got = got if len(got) <= 200 else got[:200] + f"... ({len(got):,} characters)"
    return f"  {field}: got {got}; {error['msg'].lower()}"


def did_you_mean(name: str, choices: list[str]) -> str:
    """The hint "; did you mean X?" for the choice nearest ``name`` (a typo, another case, an abbreviation such
    as lr for learning_rate, or a longer name holding a choice: label_column), or "" where none is near."""
    choices = [str(c) for c in choices]

    def initials(text: str) -> str:
        return "".join(part[:1] for part in re.split(r"[_\W]+", text.lower()) if part)

    lowered = {c.lower(): c for c in choices}
    near = lowered.get(name.lower())
    if near is None:  # the same letters (a transposition), or the initials of the other's words
        near = next((c for c in choices if sorted(c.lower()) == sorted(name.lower())), None)
    if near is None:
        near = next((c for c in choices if initials(name) == c.lower() or initials(c) == name.lower()), None)
    if near is None and len(name) > 1:
        close = difflib.get_close_matches(name.lower(), list(lowered), n=1, cutoff=0.6)
        near = lowered[close[0]] if close else None
    if near is None:
        parts = set(re.split(r"[_\W]+", name.lower()))
        near = next((c for c in choices if len(c) >= 4 and c.lower() in parts), None)
    return f"; did you mean {near}?" if near is not None and near != name else ""


def _allowed_fields(loc: tuple) -> list[str]:
    """Walk the config classes along ``loc`` and list the fields of the class found there."""
    node: Any = RunConfig
    for part in loc:
        node = _unwrap(node)
        if isinstance(node, type) and issubclass(node, BaseModel):
            if part not in node.model_fields:
                return []
            node = node.model_fields[part].annotation
        elif typing.get_origin(node) is dict:
            node = typing.get_args(node)[1]
        elif isinstance(node, tuple):  # a discriminated union: the part is the tag
            node = next((m for m in node if _tag(m) == part), None)
            if node is None:
                return []
        else:
            return []
    node = _unwrap(node)
    if isinstance(node, type) and issubclass(node, BaseModel):
        return list(node.model_fields)
    return []


def _tag(cls: type[BaseModel]) -> Any:
    for key in ("type", "modality"):
        if key in cls.model_fields:
            return cls.model_fields[key].default
    return None


def _unwrap(node: Any) -> Any:
    """Strip Annotated and Optional; a union of config classes becomes a tuple of them."""
    while typing.get_origin(node) is Annotated:
        node = typing.get_args(node)[0]
    if typing.get_origin(node) in (Union, types.UnionType):
        members = [a for a in typing.get_args(node) if a is not type(None)]
        if len(members) == 1:
            return _unwrap(members[0])
        return tuple(members)
    return node
