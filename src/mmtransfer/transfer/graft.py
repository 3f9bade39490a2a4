"""``graft``: copy source tensors into a target model, with a report on every target tensor.

Every tensor of the target's state dict ends in exactly one state:
- ``copied``: a source tensor of the same name and shape was copied in;
- ``skipped``: not copied, with why: the source tensor's shape differs, or the name is outside ``select``;
- ``new``: no source tensor has that name, so it keeps its fresh initialisation.
"""

from __future__ import annotations

import fnmatch
import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch
from rich.table import Table
from torch import nn

from mmtransfer.checkpoint import load_weights

State = Literal["copied", "skipped", "new"]


@dataclass
class TensorRecord:
    target: str
    state: State
    shape: list[int]
    source: str | None = None
    source_shape: list[int] | None = None
    reason: str = ""


@dataclass
class GraftReport:
    records: list[TensorRecord]
    unused_source: list[str] = field(default_factory=list)

    def by_state(self, state: State) -> list[str]:
        return [r.target for r in self.records if r.state == state]

    def counts(self) -> dict[str, int]:
        c = Counter(r.state for r in self.records)
        return {s: c.get(s, 0) for s in ("copied", "skipped", "new")}

    def parameter_counts(self) -> dict[str, int]:
        """Elements per state (a tensor of shape [10, 64] counts 640)."""
        out = dict.fromkeys(("copied", "skipped", "new"), 0)
        for r in self.records:
            out[r.state] += int(torch.Size(r.shape).numel())
        return out

    def to_dict(self) -> dict:
        return {
            "counts": self.counts(),
            "elements": self.parameter_counts(),
            "records": [asdict(r) for r in self.records],
            "unused_source": self.unused_source,
        }

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=2))
        return path

    def table(self, title: str = "graft report") -> Table:
        colours = {"copied": "green", "skipped": "yellow", "new": "cyan"}
        t = Table(title=title, title_justify="left")
        for col in ("target tensor", "state", "shape", "source / reason"):
            t.add_column(col)
        for r in self.records:
            detail = r.source or ""
            if r.reason:
                detail = f"{detail}: {r.reason}" if detail else r.reason
            t.add_row(r.target, f"[{colours[r.state]}]{r.state}[/]", str(r.shape), detail)
        c, e = self.counts(), self.parameter_counts()
        total = sum(e.values()) or 1
        t.caption = "  ".join(f"{s}: {c[s]} tensors, {e[s]:,} values ({100 * e[s] / total:.1f}%)" for s in c)
        return t

    def __str__(self) -> str:
        lines = [f"{r.target:50s} {r.state:8s} {r.shape!s:16s} {r.reason}" for r in self.records]
        return "\n".join(lines + [str(self.counts())])


def graft(
    source: Mapping[str, torch.Tensor] | nn.Module | str | Path,
    target: nn.Module,
    *,
    select: list[str] | None = None,
    unselected_reason: str = "not selected",
) -> GraftReport:
    """Copy every source tensor whose name and shape match into ``target``; return the report.

    ``select`` limits copying to target names matching any of these fnmatch patterns; the others are
    ``skipped`` with ``unselected_reason``.

    >>> src, dst = nn.Linear(4, 2), nn.Linear(4, 3)
    >>> graft(src, dst).counts()
    {'copied': 0, 'skipped': 2, 'new': 0}
    """
    if isinstance(source, nn.Module):
        source = source.state_dict()
    elif isinstance(source, (str, Path)):
        source = load_weights(source)
    records = []
    with torch.no_grad():
        for name, tensor in target.state_dict(keep_vars=True).items():
            shape = list(tensor.shape)
            src = source.get(name)
            rec = TensorRecord(
                name,
                "skipped",
                shape,
                source=name if src is not None else None,
                source_shape=list(src.shape) if src is not None else None,
            )
            if select is not None and not any(fnmatch.fnmatchcase(name, p) for p in select):
                rec.reason = unselected_reason
            elif src is None:
                rec.state, rec.reason = "new", "no source tensor of this name"
            elif src.shape != tensor.shape:
                rec.reason = f"shape {list(src.shape)} vs {shape}"
            else:
                tensor.copy_(src.to(dtype=tensor.dtype, device=tensor.device))
                rec.state = "copied"
            records.append(rec)
    return GraftReport(records, unused_source=sorted(set(source) - set(target.state_dict())))
