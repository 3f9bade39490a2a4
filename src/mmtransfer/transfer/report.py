"""The graft report: what happened to every tensor of the target (copied, adapted, skipped, new), and why.

Shown as a table on the console, saved as JSON and Markdown in a run folder (``transfer_report.json`` / ``.md``).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from rich.text import Text

from mmtransfer.display import Grid

State = Literal["copied", "adapted", "skipped", "new"]
STATES = ("copied", "adapted", "skipped", "new")


@dataclass
class TensorRecord:
    target: str
    state: State
    shape: list[int]
    source: str | None = None
    source_shape: list[int] | None = None
    reason: str = ""
    matched_by: str = ""
    excluded_by: str | None = None  # the exclude pattern that left this tensor out


@dataclass
class GraftReport:
    records: list[TensorRecord]
    unused_source: list[str] = field(default_factory=list)
    source: str = ""
    dry_run: bool = False

    def by_state(self, state: State) -> list[str]:
        return [r.target for r in self.records if r.state == state]

    def counts(self) -> dict[str, int]:
        c = Counter(r.state for r in self.records)
        return {s: c.get(s, 0) for s in STATES}

    def parameter_counts(self) -> dict[str, int]:
        """Elements per state (a tensor of shape [10, 64] counts 640)."""
        out = dict.fromkeys(STATES, 0)
        for r in self.records:
            out[r.state] += math.prod(r.shape)
        return out

    def totals(self) -> str:
        c, e = self.counts(), self.parameter_counts()
        total = sum(e.values()) or 1
        return "  ".join(f"{s}: {c[s]} tensors, {e[s]:,} values ({100 * e[s] / total:.1f}%)" for s in STATES)

    def to_dict(self) -> dict:
        return {
            "source": self.source,
            "dry_run": self.dry_run,
            "counts": self.counts(),
            "elements": self.parameter_counts(),
            "records": [asdict(r) for r in self.records],
            "unused_source": self.unused_source,
        }

    def save(self, path: str | Path) -> Path:
        """JSON at ``path``, and the same report as Markdown beside it (``.md``)."""
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=2))
        path.with_suffix(".md").write_text(self.markdown())
        return path

    def _detail(self, r: TensorRecord) -> str:
        detail = r.source or ""
        if r.source and r.source != r.target and r.matched_by:
            detail += f" ({r.matched_by})"
        if r.reason:
            detail = f"{detail}: {r.reason}" if detail else r.reason
        return detail

    def markdown(self) -> str:
        lines = [
            f"# Graft report{' (dry run: nothing copied)' if self.dry_run else ''}",
            "",
            f"Source: `{self.source}`",
            "",
            self.totals(),
            "",
            "| target tensor | state | shape | source / how / why |",
            "|---|---|---|---|",
        ]
        lines += [f"| `{r.target}` | {r.state} | {r.shape} | {_md(self._detail(r))} |" for r in self.records]
        if self.unused_source:
            lines += ["", f"Source tensors not used ({len(self.unused_source)}): " + ", ".join(self.unused_source)]
        return "\n".join(lines) + "\n"

    def table(self, title: str = "graft report") -> Grid:
        """Every tensor, one row each, never cut: a rich table on a terminal, plain lines in a file or ``print``."""
        colours = {"copied": "green", "adapted": "magenta", "skipped": "yellow", "new": "cyan"}
        rows = [[r.target, Text(r.state, style=colours[r.state]), str(r.shape), self._detail(r)] for r in self.records]
        return Grid(
            title + (" (dry run: nothing copied)" if self.dry_run else ""),
            ["target tensor", "state", "shape", "source / how / why"],
            rows,
            caption=self.totals(),
        )

    def __str__(self) -> str:
        return self.table(f"graft report: {self.source}").plain()


def _md(text: str) -> str:
    """A table cell for Markdown: pipes escaped, and ``*`` (fnmatch patterns) not read as emphasis."""
    return text.replace("|", "\\|").replace("*", "\\*")
