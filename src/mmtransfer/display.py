"""Output people can read in a terminal and in a log file.

- :func:`make_console`: a rich console that, when its output is not a terminal (a file, a pipe), never wraps
  or cuts a line, so paths and tensor names stay whole and greppable.
- :class:`Grid`: a table that never cuts a cell. On a terminal it is a rich table whose long cells fold onto
  more lines; elsewhere (and through ``str()``), plain aligned text, one line per row.
- :func:`escape`: user text (file names, column names, error messages) printed through rich markup keeps its
  square brackets: ``img/[scan 1].png`` stays ``img/[scan 1].png``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from rich.console import Console, ConsoleOptions, RenderResult
from rich.markup import escape
from rich.table import Table
from rich.text import Text

__all__ = ["Grid", "escape", "make_console"]


def make_console(**kwargs) -> Console:
    """A console for the command line: on a terminal as usual; in a file or pipe, lines are never wrapped."""
    console = Console(**kwargs)
    console.soft_wrap = not console.is_terminal
    return console


Cell = str | Text


class Grid:
    """Rows of cells under a title; prints whole on a terminal (folding long cells) and as plain text elsewhere.

    Cells are plain strings (never read as markup) or :class:`rich.text.Text` for colour on a terminal.

    >>> print(Grid("t", ["name", "n"], [["a.b.c", "1"]]))
    t
    name   n
    -----  -
    a.b.c  1
    """

    def __init__(
        self,
        title: str,
        columns: Sequence[str],
        rows: Iterable[Sequence[Cell]],
        *,
        caption: str | None = None,
        right: Sequence[int] = (),
    ):
        self.title = title
        self.columns = list(columns)
        self.rows = [list(r) for r in rows]
        self.caption = caption
        self.right = set(right)  # column indices aligned right (numbers)

    def plain(self) -> str:
        cells = [self.columns] + [[c.plain if isinstance(c, Text) else str(c) for c in row] for row in self.rows]
        widths = [max(len(row[j]) for row in cells) for j in range(len(self.columns))]

        def line(row: list[str]) -> str:
            pairs = enumerate(zip(row, widths, strict=True))
            parts = [v.rjust(w) if j in self.right else v.ljust(w) for j, (v, w) in pairs]
            return "  ".join(parts).rstrip()

        out = [self.title] if self.title else []
        out += [line(cells[0]), "  ".join("-" * w for w in widths)] + [line(r) for r in cells[1:]]
        if self.caption:
            out.append(self.caption)
        return "\n".join(out)

    def rich_table(self) -> Table:
        caption = Text(self.caption) if self.caption else None
        table = Table(title=Text(self.title), title_justify="left", caption=caption, caption_justify="left")
        for j, name in enumerate(self.columns):
            table.add_column(Text(name), overflow="fold", justify="right" if j in self.right else "left")
        for row in self.rows:
            table.add_row(*[c if isinstance(c, Text) else Text(str(c)) for c in row])
        return table

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        if console.is_terminal:
            yield self.rich_table()
        else:
            yield Text(self.plain(), no_wrap=True, overflow="ignore")

    def __str__(self) -> str:
        return self.plain()
