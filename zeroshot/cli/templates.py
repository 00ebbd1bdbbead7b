"""``zeroshot templates``: the built-in prompt-template sets (plain data in ``prompts/``)."""

from __future__ import annotations

from typing import Annotated

import typer

from .console import cli_errors

templates_app = typer.Typer(help="List the built-in template sets, or show one.", invoke_without_command=True,
                            context_settings={"help_option_names": ["-h", "--help"]})


@templates_app.callback()
def templates_list(ctx: typer.Context) -> None:
    """List the built-in template sets."""
    from ..prompts import TEMPLATE_ALIASES, builtin_template_sets, describe_builtin, load_builtin

    if ctx.invoked_subcommand is not None:
        return
    aliases: dict[str, list[str]] = {}
    for alias, name in TEMPLATE_ALIASES.items():
        aliases.setdefault(name, []).append(alias)
    for name in builtin_template_sets():
        count = len(load_builtin("templates", name))
        names = ", ".join([name] + aliases.get(name, []))
        typer.echo(f"{names}\t{count} template{'s' if count != 1 else ''}\t{describe_builtin('templates', name)}")


@templates_app.command("show")
def templates_show(
    name: Annotated[str, typer.Argument(help="A built-in set name or alias, or a template file.")],
) -> None:
    """Print the templates of one set, one per line."""
    from ..prompts import resolve_templates

    with cli_errors():
        for template in resolve_templates(name, option="templates show").templates:
            typer.echo(template)
