"""The ``zeroshot`` command line: a thin client of the library, one module per command.

The app is built here and every command registered here, so no command module imports this one
(no import cycle). Only what ``--help`` needs is imported at start-up: torch and open_clip load
inside the commands that use them.
"""

from __future__ import annotations

import os
import sys
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from .._version import __version__
from . import classify as classify_cmd
from . import evaluate as evaluate_cmd
from . import fewshot as fewshot_cmd
from . import finetune as finetune_cmd
from . import index as index_cmd
from . import locate as locate_cmd
from . import models as models_cmd
from . import search as search_cmd
from . import similarity as similarity_cmd
from . import sort as sort_cmd
from .console import EXIT_USAGE, handle_sigterm, printable, stderr
from .store import store_app
from .templates import templates_app

HELP_OPTIONS = {"help_option_names": ["-h", "--help"]}


class OneLineErrors(TyperGroup):
    """Usage errors from option parsing as one ``error: ...`` line (suggestion kept) instead
    of a boxed panel; ``zeroshot`` alone still prints the help. Plain flags show no type."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _plain_flags(self)

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        from typer._click.exceptions import ClickException, NoArgsIsHelpError, NoSuchOption

        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except NoArgsIsHelpError as err:
            # Building the error already rendered the (rich) help; plain help comes back as text.
            if err.format_message().strip():
                typer.echo(err.format_message())
            code = EXIT_USAGE
        except ClickException as err:
            command = self._command_path(err, args, prog_name)
            if isinstance(err, NoSuchOption) and err.possibilities:  # best match first
                text = f"{err.message}. Did you mean {err.possibilities[0]}?"
            else:
                text = err.format_message()
            message = printable(" ".join(text.split()))
            dashed = _dashed_file(sys.argv[1:] if args is None else list(args))
            if isinstance(err, NoSuchOption) and dashed:
                message += (f"; {printable(dashed)!r} is a file whose name starts with '-': write ./{printable(dashed)} "
                            "or put -- before the file names")
            stderr.print(f"error: {message} (see '{command} --help')", markup=False, highlight=False)
            code = err.exit_code
        except typer.Abort:
            stderr.print("interrupted", markup=False)
            code = 130
        if not standalone_mode:
            return code
        sys.exit(code if isinstance(code, int) else 0)

    def _command_path(self, err: Any, args: Any, prog_name: str | None) -> str:
        """The command whose ``--help`` to point at; errors raised without a context (``-l``
        missing its value) are placed by the command words of the arguments."""
        if getattr(err, "ctx", None) is not None:
            return err.ctx.command_path
        path, group = [prog_name or self.name or "zeroshot"], self
        for word in args if args is not None else sys.argv[1:]:
            sub = getattr(group, "commands", {}).get(word)
            if sub is None:
                break
            path.append(word)
            group = sub
        return " ".join(path)


def _dashed_file(args: list[str]) -> str | None:
    """The first argument that looks like an option but is an existing file (``-2+3.jpg``)."""
    for arg in args:
        if arg == "--":
            return None
        if arg.startswith("-") and len(arg) > 1 and os.path.exists(arg):
            return arg
    return None


def _plain_flags(command: Any) -> None:
    """Flags (``--resume``, ``--quiet``, ``--help``) take no value: show no ``<bool>`` for them."""
    for param in getattr(command, "params", []):
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""
    original = command.get_help_option

    def help_option(ctx: Any) -> Any:
        option = original(ctx)
        if option is not None and option.metavar is None:
            option.metavar = ""
        return option

    command.get_help_option = help_option
    for sub in getattr(command, "commands", {}).values():
        _plain_flags(sub)


app = typer.Typer(
    name="zeroshot",
    cls=OneLineErrors,
    help="Zero-shot image classification with CLIP models: classify images into labels nobody trained on.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings=HELP_OPTIONS,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"zeroshot {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")] = False,
) -> None:
    """Zero-shot image classification with CLIP models."""


app.command("classify", context_settings=HELP_OPTIONS)(classify_cmd.classify)
app.command("eval", context_settings=HELP_OPTIONS, cls=evaluate_cmd.OrderedOptionsCommand)(evaluate_cmd.eval_command)
app.command("models", context_settings=HELP_OPTIONS)(models_cmd.models)
app.command("index", context_settings=HELP_OPTIONS)(index_cmd.index)
app.command("sort", context_settings=HELP_OPTIONS)(sort_cmd.sort)
app.command("search", context_settings=HELP_OPTIONS)(search_cmd.search)
app.command("finetune", context_settings=HELP_OPTIONS)(finetune_cmd.finetune)
app.command("fewshot", context_settings=HELP_OPTIONS)(fewshot_cmd.fewshot)
app.command("locate", context_settings=HELP_OPTIONS)(locate_cmd.locate)
app.command("similarity", context_settings=HELP_OPTIONS)(similarity_cmd.similarity)
app.add_typer(store_app, name="store")
app.add_typer(templates_app, name="templates")


def main() -> None:
    """Console-script entry point (SIGTERM behaves like Ctrl-C)."""
    handle_sigterm()
    app(prog_name="zeroshot")


__all__ = ["app", "main"]
