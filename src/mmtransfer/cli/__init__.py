"""The ``mmtransfer`` command line: each subcommand is a plain typed function, grouped by use in
``fitting`` (fit), ``use`` (evaluate, predict, export, info) and ``studies`` (study, demo, graft, cache); this
module holds the app, the consoles, how an error is said, and the entry point.

Heavy libraries (torch, pandas, transformers) are imported only once the config has been read and checked, so
a mistake in it, or a missing file it names, is reported at once.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import typer
from rich.text import Text

from mmtransfer.display import Grid, make_console
from mmtransfer.errors import UserError, report_bug
from mmtransfer.metrics import METRICS

app = typer.Typer(
    help="Transfer learning on multimodal data: adapt, fine-tune, evaluate, and compare with training from scratch.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain click help: paragraphs are re-wrapped to the terminal
)
console = make_console()
errors = make_console(stderr=True)


# What a user's input or environment can cause: a mistake in what they gave (every mmtransfer error class is a
# UserError), or a file they named that is missing or unreadable, a full disk (OSError). Each becomes one error
# line with exit code 2; anything else is a bug (main): exit code 1, its traceback in a file.
USER_ERRORS = (UserError, OSError)


_DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EFBIG}  # a write refused


def fail(err: Exception, where: Path | None = None) -> None:
    """One ``error:`` line (details below it), on stderr, exit code 2; the message is printed literally.

    A disk's error (no space, no permission, a read-only folder) names its file, or else ``where`` (the folder
    being written): Python's own form of it names no file for a failed write."""
    if os.environ.get("MMTRANSFER_DEBUG"):
        raise err
    message = str(err)
    if isinstance(err, OSError) and err.strerror and (err.filename or (where and err.errno in _DISK_ERRNOS)):
        message = f"{err.filename or where}: {err.strerror[0].lower()}{err.strerror[1:]}"
    elif type(err).__name__ == "SafetensorError":  # safetensors' own error for a failed write is no OSError
        from mmtransfer.outputs import write_error

        message = str(write_error(where or "a weights file", err))
    errors.print(Text.assemble(("error:", "red"), " ", message), highlight=False, soft_wrap=True)
    raise typer.Exit(2)


UNFINISHED = typer.Option("--allow-unfinished", help="Use a run folder whose fit did not finish.")


def print_metrics(metrics: dict, title: str, classes: list[str] | None = None) -> None:

    rows = []
    for key in ("n", *METRICS, "loss"):
        if key not in metrics:
            continue
        value = metrics[key]
        rows.append([key, f"{value:.4f}" if isinstance(value, float) else str(value)])
    console.print(Grid(title, ["metric", "value"], rows, right=[1]))
    if "confusion" in metrics:
        names = classes or [str(j) for j in range(len(metrics["confusion"]))]
        cm = [
            [names[i], *[Text(str(v), style="bold") if i == j else str(v) for j, v in enumerate(row)]]
            for i, row in enumerate(metrics["confusion"])
        ]
        title = "confusion matrix (rows: true class, columns: predicted class)"
        console.print(Grid(title, ["true \\ predicted", *names], cm, right=range(1, len(names) + 1)))
    if "precision_per_class" in metrics:
        names = classes or [str(j) for j in range(len(metrics["precision_per_class"]))]
        per = zip(
            names,
            metrics["precision_per_class"],
            metrics["recall_per_class"],
            metrics["f1_per_class"],
            metrics["support_per_class"],
            strict=True,
        )
        rows = [[c, f"{p:.4f}", f"{r:.4f}", f"{f:.4f}", str(n)] for c, p, r, f, n in per]
        console.print(Grid("per class", ["class", "precision", "recall", "F1", "support"], rows, right=[1, 2, 3, 4]))


def main() -> None:
    """The console entry point: a usage mistake (an unknown option, a bad option value) is one error line too."""
    # typer carries its own copy of click; its usage errors derive from the class typer.BadParameter extends
    usage_error = typer.BadParameter.__mro__[1]
    try:
        code = app(standalone_mode=False)
    except usage_error as err:
        if type(err).__name__ == "NoArgsIsHelpError":  # `mmtransfer` alone: the help, as click shows it
            print(err.format_message())
            raise SystemExit(2) from None
        hint = f" (see: {err.ctx.command_path} --help)" if getattr(err, "ctx", None) is not None else ""
        errors.print(Text.assemble(("error:", "red"), " ", err.format_message() + hint), highlight=False)
        raise SystemExit(2) from None
    except typer.Abort as err:  # click turns Ctrl-C into Abort: 130, as a shell reports SIGINT
        raise SystemExit(130 if isinstance(err.__context__, KeyboardInterrupt) else 1) from None
    except Exception as err:  # not a user's mistake (those are error lines with code 2): a bug, said as one
        if os.environ.get("MMTRANSFER_DEBUG"):
            raise
        errors.print(Text.assemble(("error:", "red"), " ", report_bug(err)), highlight=False, soft_wrap=True)
        raise SystemExit(1) from None
    raise SystemExit(code if isinstance(code, int) else 0)


_fail = fail  # the name the commands used before they moved into modules

# Each module registers its commands on app when imported (after app, the consoles and fail exist).
from mmtransfer.cli import fitting, use, serving, studies  # noqa: E402, F401, I001 (this order is --help's)
from mmtransfer.cli.fitting import _data_overrides  # noqa: E402,F401 (tests use it)
from mmtransfer.cli.use import pretrained_sources  # noqa: E402,F401 (tests use it)

__all__ = ["app", "console", "errors", "fail", "fitting", "main", "print_metrics", "studies", "use"]


if __name__ == "__main__":
    main()
