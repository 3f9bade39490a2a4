"""``graft``: move source weights into a target model, with a report on every target tensor.

Every tensor of the target's state dict ends in exactly one state:
- ``copied``: a source tensor of the same shape was copied in (matched by name, by a rule, or by structure);
- ``adapted``: a source tensor of another shape was adapted (how is said: summed channels, kept class rows, ...);
- ``skipped``: not copied, with why (shape differs and no adaptation applies, or outside ``select``);
- ``new``: no source tensor matched, so it keeps its fresh initialisation.

Matching, in order: ``rules`` (source-name prefixes rewritten to target-name prefixes, ``{i}`` standing for a
number, first matching rule wins), exact names, then (``structure=True``) the remaining modules paired in order
with the next source module whose tensors have the same shapes in the same order.

:func:`graft` reads the source (:mod:`mmtransfer.transfer.sources`), makes a pure plan (:func:`plan_graft`: state
dicts and rules in, the new tensors and the report out; no module is touched) and applies it (:func:`apply`).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping
from dataclasses import replace

import torch
from torch import nn

from mmtransfer.errors import UserError
from mmtransfer.transfer.adapt import BY_NAMES, DEFAULT_ADAPT, Context, adapt
from mmtransfer.transfer.report import STATES, GraftReport, State, TensorRecord
from mmtransfer.transfer.sources import load_source

# The report's classes are imported from here too (``from mmtransfer.transfer.graft import GraftReport``).
__all__ = [
    "STATES",
    "GraftError",
    "GraftReport",
    "State",
    "TensorRecord",
    "apply",
    "compile_rules",
    "first_convs",
    "graft",
    "plan_graft",
    "rename",
]


class GraftError(UserError):
    """Strict mode: tensors that were expected to transfer but did not."""


def compile_rules(rules: Mapping[str, str] | list[tuple[str, str]] | None) -> list[tuple[re.Pattern, str, str]]:
    """``"encoder.layers.{i}.attn" -> "encoders.text.blocks.{i}.attn"``: a prefix of the source name (up to a
    dot or the end) is rewritten; ``{name}`` placeholders match a number and carry it over.

    Returns (regex, replacement, the rule as written) triples; a rule whose replacement uses a placeholder its
    pattern lacks, or whose pattern repeats one, is an error naming it.
    """
    pairs = list(rules.items()) if isinstance(rules, Mapping) else list(rules or [])
    out = []
    for pattern, replacement in pairs:
        names = re.findall(r"\{(\w+)\}", pattern)
        wanted = set(re.findall(r"\{(\w+)\}", replacement))
        if len(names) != len(set(names)) or not wanted <= set(names):
            raise GraftError(
                f"graft rule {pattern!r} -> {replacement!r}: each {{placeholder}} may appear once in the pattern, "
                f"and the replacement may only use the pattern's ({', '.join(names) or 'none'})"
            )
        regex = re.escape(pattern)
        regex = re.sub(r"\\\{(\w+)\\\}", lambda m: f"(?P<{m.group(1)}>\\d+)", regex)
        end = "" if pattern == "" or pattern.endswith(".") else r"(?=\.|$)"
        out.append((re.compile("^" + regex + end), replacement, f"{pattern} -> {replacement}"))
    return out


def rename(name: str, rules: list[tuple[re.Pattern, str, str]]) -> tuple[str, str] | None:
    """(new name, the rule as written) for the first rule matching ``name``."""
    for regex, replacement, written in rules:
        m = regex.match(name)
        if m:
            return replacement.format(**m.groupdict()) + name[m.end() :], f"rule {written!r}"
    return None


Rules = Mapping[str, str] | list[tuple[str, str]] | None


def graft(
    source,
    target: nn.Module,
    *,
    rules: Rules = None,
    structure: bool = False,
    select: list[str] | None = None,
    unselected_reason: str = "not selected",
    exclude: list[str] | None = None,
    adapt_with: tuple[str, ...] | list[str] = DEFAULT_ADAPT,
    target_classes: list[str] | None = None,
    source_classes: list[str] | None = None,
    source_vocab: list[str] | None = None,
    target_vocab: list[str] | None = None,
    dry_run: bool = False,
    strict: bool = False,
) -> GraftReport:
    """Move source weights into ``target``; return the report. Nothing is copied when ``dry_run``.

    ``source`` is a module, a state dict, a run folder, a weights file, ``hf:ID`` / a Hugging Face folder, or
    ``timm:NAME``. ``strict`` raises :class:`GraftError` (before copying anything) when a selected tensor that
    a source tensor was matched to is skipped, or when nothing at all would be transferred.

    The classification head's output layer (``head.out.*``) is copied only by label name: its rows follow the
    class names both sides share (``source_classes`` / ``target_classes``; by default the run folder's
    labels.json and the models' ``classes``). With no shared name, or a side whose names are unknown, it is
    skipped with the reason, never copied by position. ``exclude`` patterns (fnmatch, on the target or the
    source name) leave tensors out; the report names the pattern.

    The work is :func:`plan_graft` (state dicts in, updates and report out) then :func:`apply`.

    >>> src, dst = nn.Linear(4, 2), nn.Linear(4, 3)
    >>> graft(src, dst).counts()
    {'copied': 0, 'adapted': 0, 'skipped': 2, 'new': 0}
    """
    src = load_source(source)
    ctx = Context(
        source_classes=source_classes if source_classes is not None else src.classes,
        target_classes=target_classes if target_classes is not None else getattr(target, "classes", None),
        source_vocab=source_vocab,
        target_vocab=target_vocab,
        enabled=tuple(adapt_with),
    )
    updates, report = plan_graft(
        src.state,
        target.state_dict(),
        rules=rules,
        structure=structure,
        select=select,
        unselected_reason=unselected_reason,
        exclude=exclude,
        context=ctx,
        source_name=src.name,
        strict=strict,
    )
    report.dry_run = dry_run
    if not dry_run:
        apply(target, updates)
    return report


def plan_graft(
    source_state: Mapping[str, torch.Tensor],
    target_state: Mapping[str, torch.Tensor],
    *,
    rules: Rules = None,
    structure: bool = False,
    select: list[str] | None = None,
    unselected_reason: str = "not selected",
    exclude: list[str] | None = None,
    context: Context | None = None,
    source_name: str = "state dict",
    strict: bool = False,
) -> tuple[dict[str, torch.Tensor], GraftReport]:
    """What a graft would do, touching no module: target name -> the new tensor for every target tensor copied
    or adapted, and the report on every target tensor. ``context`` carries class names, vocabularies and the
    adaptations that are on (default: :data:`~mmtransfer.transfer.adapt.DEFAULT_ADAPT`, no names known).
    Raises :class:`GraftError` in ``strict`` mode (see :func:`graft`), ``ValueError`` on a LoRA source or an
    ``exclude`` pattern that matches nothing.

    >>> updates, report = plan_graft({"weight": torch.ones(2, 4)}, nn.Linear(4, 2).state_dict())
    >>> sorted(updates), report.counts()
    (['weight'], {'copied': 1, 'adapted': 0, 'skipped': 0, 'new': 1})
    """
    if any("lora_A" in k for k in source_state):
        raise GraftError(
            f"graft source {source_name} holds LoRA adapters (lora_A / lora_B beside base_layer weights); "
            "merge them into the base weights first (W + alpha / r * B @ A), or load the run with load_run"
        )
    ctx = replace(context) if context is not None else Context()
    ctx.first_convs = first_convs(target_state)
    exclude = list(exclude or [])
    # A tensor excluded by its own name takes no part in structure matching (it would use up a pairing).
    left_out = {t for t in target_state if any(fnmatch.fnmatchcase(t, p) for p in exclude)}
    matches = _match(source_state, target_state, compile_rules(rules), structure, left_out)

    used_patterns: set[str] = set()
    records, updates = [], {}
    for name, tensor in target_state.items():
        found = matches.get(name)
        hits = _excluded_by(exclude, name, found[0] if found else None)
        used_patterns.update(hits)
        if hits or (select is not None and not any(fnmatch.fnmatchcase(name, p) for p in select)):
            rec = _left_out(name, tensor, found, source_state, hits[0] if hits else None, unselected_reason)
        elif found is None:
            rec = TensorRecord(name, "new", list(tensor.shape), reason="no source tensor matched")
        else:
            rec, value = _transferred(name, tensor, found, source_state, ctx)
            if value is not None:
                updates[name] = value
        records.append(rec)

    unmatched = [p for p in exclude if p not in used_patterns]
    if unmatched:
        raise GraftError(
            f"exclude pattern(s) {unmatched} match no tensor of the target (nor a source tensor matched to one); "
            f"target tensors are named like {next(iter(target_state), '(none)')!r}"
        )
    used = {matches[r.target][0] for r in records if r.state in ("copied", "adapted")}
    report = GraftReport(records, sorted(set(source_state) - used), source_name)
    if strict:
        _check_strict(report, updates)
    return updates, report


def apply(target: nn.Module, updates: Mapping[str, torch.Tensor]) -> None:
    """Copy a plan's updates into ``target``'s tensors in place (each cast to the tensor's dtype and device)."""
    targets = target.state_dict(keep_vars=True)
    with torch.no_grad():
        for name, value in updates.items():
            targets[name].copy_(value.to(dtype=targets[name].dtype, device=targets[name].device))


def _left_out(name, tensor, found, source_state, excluded: str | None, unselected_reason: str) -> TensorRecord:
    """The record of a target tensor an exclude pattern (the first that matched) or ``select`` left out."""
    rec = TensorRecord(name, "skipped", list(tensor.shape), reason=unselected_reason, excluded_by=excluded)
    if excluded is not None:
        rec.reason = f"excluded by pattern {excluded!r}"
    if found:
        rec.source, rec.source_shape, rec.matched_by = found[0], list(source_state[found[0]].shape), found[1]
    return rec


def _transferred(name, tensor, found, source_state, ctx: Context) -> tuple[TensorRecord, torch.Tensor | None]:
    """A matched target tensor: its record (copied, adapted or skipped with why) and its new value, if any."""
    src_name, how = found
    value, shape = source_state[src_name], list(tensor.shape)
    rec = TensorRecord(name, "copied", shape, src_name, list(value.shape), matched_by=how)
    # Rows that follow label or token names are placed by name even when the shapes agree.
    by_name = adapt(name, value, tensor, ctx, keys=BY_NAMES)
    if by_name is not None:
        (new, rec.reason), rec.state = by_name, "adapted"
        return rec, new
    head_refusal = _head_refusal(name, src_name, ctx)
    if head_refusal is not None:
        rec.state, rec.reason = "skipped", head_refusal
        return rec, None
    if value.shape == tensor.shape:
        return rec, value
    adapted = adapt(name, value, tensor, ctx)
    if adapted is None:
        rec.state, rec.reason = "skipped", f"shape {list(value.shape)} vs {shape}"
        return rec, None
    (new, rec.reason), rec.state = adapted, "adapted"
    return rec, new


def _check_strict(report: GraftReport, updates: Mapping[str, torch.Tensor]) -> None:
    """Strict mode: a matched tensor skipped for its shape, or nothing transferred at all, is a GraftError."""
    unexpected = [
        r for r in report.records if r.state == "skipped" and r.source is not None and r.reason.startswith("shape")
    ]
    if unexpected:
        raise GraftError(
            f"strict graft from {report.source}: {len(unexpected)} tensor(s) matched but not transferred:\n"
            + "\n".join(f"  {r.target} <- {r.source}: {r.reason}" for r in unexpected)
        )
    if not updates:
        raise GraftError(
            f"strict graft from {report.source}: nothing transferred; no source tensor matched a target name "
            "(names differ? give rules, or structure=True)"
        )


def _excluded_by(patterns: list[str], target: str, source: str | None) -> list[str]:
    """Every pattern matching the target name or the source name matched to it, in the order given."""
    return [
        p for p in patterns if fnmatch.fnmatchcase(target, p) or (source is not None and fnmatch.fnmatchcase(source, p))
    ]


def _head_refusal(name: str, source: str, ctx: Context) -> str | None:
    """Why a classification head tensor that no label-name adaptation placed must not be copied, or None
    (both sides name the same classes in the same order, so copying is copying by name)."""
    target_head, source_head = name.startswith(ctx.head_prefix), source.startswith(ctx.head_prefix)
    if not target_head and not source_head:
        return None
    if target_head != source_head:
        return "a head's rows stand for classes: it is never copied into or from another kind of tensor"
    src, dst = ctx.source_classes, ctx.target_classes
    if src is None or dst is None:
        side = "source" if src is None else "target"
        return (
            f"the {side}'s label names are unknown, and a head is never copied by position (a run folder "
            "carries them in labels.json, a bare weights file does not; in Python pass source_classes / "
            "target_classes or build the models with their class names)"
        )
    if src == dst:
        return None
    if "head_classes" not in ctx.enabled:
        return "label names differ and the head_classes adaptation is off; a head is never copied by position"
    if not set(src) & set(dst):
        return (
            f"no label name shared between source ({_names(src)}) and target ({_names(dst)}); "
            "a head is never copied by position"
        )
    return (
        f"label names differ and its rows do not follow the class lists ({len(src)} source, {len(dst)} target "
        "names; or its input size differs); a head is never copied by position"
    )


def _names(classes: list[str], shown: int = 5) -> str:
    more = f", ... {len(classes)} in all" if len(classes) > shown else ""
    return ", ".join(map(str, classes[:shown])) + more


def first_convs(targets: Mapping[str, torch.Tensor]) -> frozenset[str]:
    """The first convolution weight of the model and of each encoder (``encoders.NAME.``): where images or
    spectrograms come in, the only convolutions whose input channels follow the data."""
    seen: dict[str, str] = {}
    for name, tensor in targets.items():
        if tensor.dim() in (3, 4) and name.endswith("weight"):
            parts = name.split(".")
            key = ".".join(parts[:2]) if parts[0] == "encoders" and len(parts) > 2 else ""
            seen.setdefault(key, name)
            seen.setdefault("", name)
    return frozenset(seen.values())


def _match(
    source_state: Mapping[str, torch.Tensor],
    targets: Mapping[str, torch.Tensor],
    rules: list[tuple[re.Pattern, str, str]],
    structure: bool,
    left_out: set[str] = frozenset(),
) -> dict[str, tuple[str, str]]:
    """target name -> (source name, how it was matched)."""
    matches: dict[str, tuple[str, str]] = {}
    taken: set[str] = set()
    for name in source_state:
        renamed = rename(name, rules) if rules else None
        if renamed:
            taken.add(name)  # a rule said where it goes: never also by its own name
            if renamed[0] in targets and renamed[0] not in matches:
                matches[renamed[0]] = (name, renamed[1])
    for name in targets:
        if name not in matches and name in source_state and name not in taken:
            matches[name] = (name, "name")
            taken.add(name)
    if structure:
        _match_structure(source_state, {t: v for t, v in targets.items() if t not in left_out}, matches, taken)
    return matches


def _module_of(name: str) -> str:
    return name.rsplit(".", 1)[0] if "." in name else ""


def _match_structure(source_state: Mapping[str, torch.Tensor], targets, matches: dict, taken: set) -> None:
    """Pair modules, in order, whose unmatched tensors have the same shapes in the same order; then pair their
    tensors one by one. A source module left out of one pairing stays available for the next."""

    def modules(names, shape_of):
        out: dict[str, list[str]] = {}
        for n in names:
            out.setdefault(_module_of(n), []).append(n)
        return [(m, ns, [tuple(shape_of(n)) for n in ns]) for m, ns in out.items()]

    pool = modules([s for s in source_state if s not in taken], lambda n: source_state[n].shape)
    for module, names, shapes in modules([t for t in targets if t not in matches], lambda n: targets[n].shape):
        k = next((i for i, (_, _, src_shapes) in enumerate(pool) if src_shapes == shapes), None)
        if k is None:
            continue
        src_module, src_names, _ = pool.pop(k)
        for target_name, source_name in zip(names, src_names, strict=True):
            matches[target_name] = (source_name, f"structure: module {src_module or '(top)'} -> {module or '(top)'}")
