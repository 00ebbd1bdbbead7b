"""Terminal rendering shared by the commands: the stderr console, progress, warnings, errors.

stdout carries only data; everything here writes to stderr. Progress is a rich bar on a
terminal and plain lines (at most one per task every ``ZEROSHOT_PROGRESS_INTERVAL`` seconds,
default 10, plus a final one) when stderr is a file or a pipe; ``--quiet`` silences both.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

import typer
from rich.console import Console

from ..errors import ZeroshotError, ZeroshotWarning

EXIT_OK, EXIT_FATAL, EXIT_USAGE, EXIT_PARTIAL = 0, 1, 2, 3
EXIT_INTERRUPTED, EXIT_TERMINATED = 130, 143
stderr = Console(stderr=True, highlight=False, soft_wrap=True)
DEFAULT_PROGRESS_INTERVAL = 10.0


def printable(text: str) -> str:
    """One line whatever the name holds: control characters shown escaped."""
    return "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in text)


def say(message: str, quiet: bool = False) -> None:
    if not quiet:
        stderr.print(message, markup=False, highlight=False)


def rate_text(done: int, seconds: float, unit: str = "img") -> str:
    return f"{done / seconds:.1f} {unit}/s" if seconds > 0 else ""


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


@dataclass
class _PlainTask:
    description: str
    total: int | None
    started: float = field(default_factory=time.monotonic)
    last: float = field(default_factory=time.monotonic)
    completed: int = 0
    finished: bool = False


class Progress:
    """Progress of one command: ``add_task`` / ``update`` / ``print`` like rich's, rendered as a
    bar on a terminal and as plain, rate-limited lines otherwise."""

    def __init__(self, quiet: bool = False, interval: float | None = None) -> None:
        self.quiet = quiet
        self.terminal = stderr.is_terminal
        env = os.environ.get("ZEROSHOT_PROGRESS_INTERVAL")
        self.interval = interval if interval is not None else float(env) if env else DEFAULT_PROGRESS_INTERVAL
        self.bar: Any = None
        self.plain: dict[int, _PlainTask] = {}

    def __enter__(self) -> Progress:
        if self.terminal and not self.quiet:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                SpinnerColumn,
                TaskProgressColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )
            from rich.progress import Progress as RichProgress

            self.bar = RichProgress(
                SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                TaskProgressColumn(), TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                console=stderr, transient=True,
            )
            self.bar.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)
            self.bar = None

    def add_task(self, description: str, total: int | None = None) -> int:
        if self.bar is not None:
            return self.bar.add_task(description, total=total, rate="")
        task_id = len(self.plain)
        self.plain[task_id] = _PlainTask(description, total)
        return task_id

    def update(self, task_id: int, completed: int, total: int | None = None, rate: str = "") -> None:
        if self.quiet:
            return
        if self.bar is not None:
            self.bar.update(task_id, completed=completed, total=total if total is not None else self.bar.tasks[task_id].total,
                            rate=rate)
            return
        task = self.plain[task_id]
        task.completed, task.total = completed, total if total is not None else task.total
        now = time.monotonic()
        done = task.total is not None and completed >= task.total
        if task.finished or not (done or now - task.last >= self.interval):
            return
        task.last, task.finished = now, done
        say(self._line(task, now, rate))

    @staticmethod
    def _line(task: _PlainTask, now: float, rate: str) -> str:
        elapsed = now - task.started
        parts = [f"{task.description}: {task.completed}" + (f"/{task.total}" if task.total is not None else "")]
        if task.total:
            parts.append(f"{100 * task.completed / task.total:.0f}%")
        if rate:
            parts.append(rate)
        parts.append(f"{_duration(elapsed)} elapsed")
        if task.total and 0 < task.completed < task.total:
            parts.append(f"about {_duration(elapsed * (task.total - task.completed) / task.completed)} left")
        return ", ".join(parts)

    def tracker(self, description: str, rate_unit: str | None = None) -> Callable[[int, int], None]:
        """An ``(done, total)`` callback for one step: its task appears at the first update with
        a total (an empty step shows nothing) and, with ``rate_unit``, shows the rate since then."""
        state: dict[str, Any] = {}

        def update(done: int, total: int) -> None:
            if "task" not in state:
                if not total:
                    return
                state["task"], state["started"] = self.add_task(description, total=total), time.perf_counter()
            rate = rate_text(done, time.perf_counter() - state["started"], rate_unit) if rate_unit else ""
            self.update(state["task"], done, total, rate)

        return update

    def skipping(self, path: str, reason: str) -> None:
        """The ``skipping <path>: <code>: <detail>`` line of an input that could not be used."""
        self.print(f"skipping {printable(path)}: {printable(reason)}")

    def print(self, message: str) -> None:
        """A line that must not tear the bar (e.g. ``skipping ...``)."""
        if self.quiet:
            return
        if self.bar is not None:
            self.bar.console.print(message, markup=False, highlight=False)
        else:
            say(message)


@contextlib.contextmanager
def status(message: str, quiet: bool) -> Iterator[None]:
    """A spinner on a terminal; nothing otherwise (the summary reports the time)."""
    if quiet or not stderr.is_terminal:
        yield
        return
    with stderr.status(message, spinner="dots"):
        yield


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    stderr.print(f"warning: {printable(str(message))}", markup=False)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the process is, so it unwinds exactly like Ctrl-C."""


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise Terminated()


def handle_sigterm() -> None:
    """Make SIGTERM behave like Ctrl-C (journal kept, temporaries removed, one line)."""
    with contextlib.suppress(ValueError, OSError):  # not the main thread: leave it
        signal.signal(signal.SIGTERM, _terminate)


@contextlib.contextmanager
def cli_errors(quiet: bool = False, interrupted: str = "interrupted") -> Iterator[None]:
    """Turn library errors into ``error: ...`` on stderr and the documented exit codes.
    ``interrupted`` is the one line printed on Ctrl-C / SIGTERM."""
    shown: set[str] = set()

    def show_once(message, category, filename, lineno, file=None, line=None) -> None:
        # The same fact can be checked at several layers (e.g. a single label, by the label
        # parser and again by the classifier): the run prints it once.
        if str(message) not in shown:
            shown.add(str(message))
            _show_warning(message, category, filename, lineno, file, line)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        warnings.simplefilter("always", ZeroshotWarning)
        old = warnings.showwarning
        warnings.showwarning = show_once if not quiet else (lambda *a, **k: None)
        try:
            yield
        except ZeroshotError as err:
            stderr.print(f"error: {printable(str(err))}", markup=False)
            raise typer.Exit(err.exit_code) from None
        except KeyboardInterrupt as err:
            terminated = isinstance(err, Terminated)
            stderr.print(("terminated" if terminated else "interrupted") + interrupted.removeprefix("interrupted"),
                         markup=False)
            raise typer.Exit(EXIT_TERMINATED if terminated else EXIT_INTERRUPTED) from None
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


# ------------------------------------------------ checks every command that reads images repeats


def require_images(found: Any, inputs: list[str]) -> None:
    """Refuse a :class:`~zeroshot.data.discover.Discovery` with no usable image, naming the
    first problem and the extensions looked for."""
    from ..data.discover import IMAGE_EXTENSIONS
    from ..errors import UsageError

    if found.sources:
        return
    problems = found.problems
    why = f" ({printable(problems[0][0])}: {problems[0][1]})" if problems else ""
    raise UsageError(f"found 0 images in {', '.join(inputs)}{why}; supported extensions are "
                     f"{' '.join(sorted(IMAGE_EXTENSIONS))}")


def require_parent(option: str, path: Any) -> None:
    """Refuse an output file whose folder does not exist (before any work)."""
    from pathlib import Path

    from ..errors import UsageError

    if path is not None and not (Path(path).parent if str(Path(path).parent) else Path(".")).is_dir():
        raise UsageError(f"{option} {path}: folder {Path(path).parent} does not exist")


def stdout_keeps_bytes() -> None:
    """Let stdout write a file name's undecodable bytes back as the same bytes."""
    try:
        sys.stdout.reconfigure(errors="surrogateescape")
    except (AttributeError, ValueError, OSError):
        pass
