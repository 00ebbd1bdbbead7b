"""Terminal rendering shared by the CLI commands: stderr console, progress bars, warnings.

stdout carries only data; everything here writes to stderr.
"""

from __future__ import annotations

import contextlib
import os
import sys
import traceback
import warnings
from collections.abc import Iterator

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from .errors import ZeroshotError, ZeroshotWarning

EXIT_OK, EXIT_FATAL, EXIT_USAGE, EXIT_PARTIAL = 0, 1, 2, 3
stderr = Console(stderr=True, highlight=False, soft_wrap=True)


def printable(text: str) -> str:
    """One line whatever the name holds: control characters shown escaped."""
    return "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in text)


def say(message: str, quiet: bool = False) -> None:
    if not quiet:
        stderr.print(message, markup=False, highlight=False)


def show_progress(quiet: bool) -> bool:
    return not quiet and stderr.is_terminal


def progress_bar(quiet: bool, unit: str = "img") -> Progress:
    """count, rate, ETA; silent when stderr is not a terminal or with --quiet."""
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=stderr,
        transient=True,
        disable=not show_progress(quiet),
    )


def rate_text(done: int, seconds: float, unit: str = "img") -> str:
    return f"{done / seconds:.1f} {unit}/s" if seconds > 0 else ""


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    stderr.print(f"warning: {printable(str(message))}", markup=False)


@contextlib.contextmanager
def cli_errors(quiet: bool = False) -> Iterator[None]:
    """Turn library errors into ``error: ...`` on stderr and the documented exit codes."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        warnings.simplefilter("always", ZeroshotWarning)
        old = warnings.showwarning
        warnings.showwarning = _show_warning if not quiet else (lambda *a, **k: None)
        try:
            yield
        except ZeroshotError as err:
            stderr.print(f"error: {printable(str(err))}", markup=False)
            raise typer.Exit(err.exit_code) from None
        except KeyboardInterrupt:
            stderr.print("interrupted", markup=False)
            raise typer.Exit(130) from None
        except BrokenPipeError:
            with contextlib.suppress(OSError):
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, sys.stdout.fileno())
            raise typer.Exit(EXIT_OK) from None
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except Exception as err:  # noqa: BLE001 - a bug: say so in one line unless debugging
            if os.environ.get("ZEROSHOT_DEBUG"):
                traceback.print_exc()
            stderr.print(
                f"internal error: {type(err).__name__}: {printable(str(err))} "
                "(set ZEROSHOT_DEBUG=1 for a traceback and please report it)",
                markup=False,
            )
            raise typer.Exit(EXIT_FATAL) from None
        finally:
            warnings.showwarning = old
