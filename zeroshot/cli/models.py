"""``zeroshot models``: the architectures and pretrained tags open_clip knows."""

from __future__ import annotations

import sys
from typing import Annotated, Optional

import typer

from .console import cli_errors


def models(
    name_filter: Annotated[Optional[str], typer.Argument(metavar="FILTER", show_default=False,
        help="Only models whose architecture or tag contains this text (case-insensitive).")] = None,
    cached: Annotated[bool, typer.Option("--cached", help="Only those whose weights are in the local cache.")] = False,
) -> None:
    """List open_clip architectures with their pretrained tags, marking those already cached
    (architectures without a tag take a local checkpoint file)."""
    from ..models import list_pretrained_models

    with cli_errors():
        entries = list_pretrained_models(cached_only=cached, name_filter=name_filter)
        if sys.stdout.isatty():
            from rich.console import Console
            from rich.table import Table

            table = Table("model", "pretrained", "cached", show_edge=False, header_style="bold")
            for e in entries:
                table.add_row(e.arch, e.tag or "(local checkpoint only)", "yes" if e.cached else "")
            Console().print(table)
        else:
            typer.echo("model\tpretrained\tcached")
            for e in entries:
                typer.echo(f"{e.arch}\t{e.tag}\t{'yes' if e.cached else 'no'}")
