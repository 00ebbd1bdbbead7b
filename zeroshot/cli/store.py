"""``zeroshot store info|check|prune|export``: look after an embedding store."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .console import EXIT_FATAL, cli_errors, printable, say

STORE_PANEL = "Store"

StoreOpt = Annotated[Optional[Path], typer.Option("--store", metavar="DIR", rich_help_panel=STORE_PANEL,
    help="The store folder (e.g. photos/.zeroshot, a portable library beside the photos). Default: "
         "$ZEROSHOT_STORE_DIR, else the user data folder (~/.local/share/zeroshot/store on Linux).")]

store_app = typer.Typer(help="Look after an embedding store: its size and models, integrity, pruning, export.",
                        no_args_is_help=True, context_settings={"help_option_names": ["-h", "--help"]})


def open_store(store: Path | None, create: bool = False):
    from ..store.db import Store

    return Store.open(store, create=create)


def human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{size} B"


@store_app.command("info")
def info(store: StoreOpt = None) -> None:
    """Where the store is, its size on disk, and its entries per embedding key (model, weights, decode, precision)."""
    with cli_errors():
        with open_store(store) as st:
            about = st.info()
        typer.echo(f"location\t{printable(str(about.location))}")
        typer.echo(f"database\t{printable(str(about.database))}")
        typer.echo(f"size\t{human_size(about.size_bytes)}")
        typer.echo(f"schema\t{about.schema}")
        typer.echo(f"entries\t{about.entries}")
        typer.echo("key\tmodel\tpretrained\tdecode\tprecision\tdim\tstored as\tentries")
        for k in about.keys:
            typer.echo(f"{k.id}\t{printable(k.key.model)}\t{printable(k.key.pretrained or k.key.weights)}\t"
                       f"{k.key.decode}\t{k.key.precision}\t{k.dim}\t{k.dtype}\t{k.entries}")


@store_app.command("check")
def check(store: StoreOpt = None) -> None:
    """Verify the store (SQLite integrity, orphan entries, duplicates, vector sizes, NaN): one line per problem, exit 1 if any."""
    with cli_errors(), open_store(store) as st:
        problems = st.check()
        for line in problems:
            typer.echo(printable(line))
        if problems:
            say(f"store {printable(str(st.location))}: {len(problems)} problem{'s' if len(problems) != 1 else ''}")
            raise typer.Exit(EXIT_FATAL)
        say(f"store {printable(str(st.location))}: ok ({st.count()} entries)")


@store_app.command("prune")
def prune(
    store: StoreOpt = None,
    missing: Annotated[bool, typer.Option("--missing", help="Remove entries of files that are gone.")] = False,
    gone_folders: Annotated[bool, typer.Option("--gone-folders",
        help="With --missing, also remove files whose folder is gone too (kept by default: an unmounted drive "
             "looks the same).")] = False,
    other_models: Annotated[bool, typer.Option("--other-models",
        help="Remove every embedding key except those given with --keep.")] = False,
    keep: Annotated[Optional[list[str]], typer.Option("--keep", metavar="KEY",
        help="A key to keep with --other-models (the id 'zeroshot store info' shows; a unique prefix is enough; "
             "repeatable).")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what would be removed; change nothing.")] = False,
    vacuum: Annotated[bool, typer.Option("--vacuum", help="Afterwards, give the freed space back to the disk "
                                                          "(rewrites the database file).")] = False,
) -> None:
    """Remove entries of files that are gone (--missing) or of other models (--other-models --keep KEY); prints each removal."""
    from ..errors import UsageError

    with cli_errors():
        if keep and not other_models:
            raise UsageError("--keep goes with --other-models")
        if not (missing or other_models):
            raise UsageError("say what to prune: --missing (files that are gone) and/or --other-models --keep KEY")
        if other_models and not keep:
            raise UsageError("--other-models needs --keep KEY: the key to keep (ids from 'zeroshot store info')")
        if gone_folders and not missing:
            raise UsageError("--gone-folders goes with --missing")
        with open_store(store) as st:
            removed = st.prune(missing_files=missing, keep=keep if other_models else None, gone_folders=gone_folders,
                               dry_run=dry_run)
            verb = "would remove" if dry_run else "removed"
            for k in removed.keys:
                typer.echo(f"{verb} key\t{k.id}\t{printable(k.key.describe())}\t{k.entries} entries")
            for key_id, path in removed.files:
                typer.echo(f"{verb}\t{key_id}\t{printable(path)}")
            if removed.unreachable:
                say(f"kept {len(removed.unreachable)} entries of files whose folder is gone too (an unmounted "
                    f"drive?), e.g. {printable(removed.unreachable[0][1])}; --gone-folders removes them")
            if vacuum and not dry_run:
                st.vacuum()
        say(f"{verb} {removed.entries_removed} entries ({len(removed.files)} of files that are gone, "
            f"{len(removed.keys)} keys)" + ("" if dry_run else f" from {printable(str(st.location))}"))


@store_app.command("export")
def export(
    output: Annotated[Path, typer.Option("--output", "-o", dir_okay=False, metavar="FILE.parquet",
        help="The Parquet file to write (atomically).")],
    store: StoreOpt = None,
    key: Annotated[Optional[str], typer.Option("--key", metavar="KEY",
        help="Only this key (id from 'zeroshot store info'); default: every key.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No summary on stderr.")] = False,
) -> None:
    """Export path, model, pretrained, key, embedding rows to Parquet (for pandas, DuckDB, Ray)."""
    from ..errors import UsageError

    with cli_errors(quiet):
        if output.suffix.lower() not in (".parquet", ".pq"):
            raise UsageError(f"--output {output}: export writes Parquet; name the file .parquet")
        with open_store(store) as st:
            chosen = st.find_key(key).key if key else None
            rows = st.export_parquet(output, chosen)
        say(f"exported {rows} vectors to {printable(str(output))}", quiet)


def command_store(store: Path | None, no_cache: bool, quiet: bool = False):
    """The embedding store ``classify``, ``eval`` and ``search`` read and add to: none with
    ``--no-cache``; ``--store DIR`` (a problem opening it is an error); else the default store,
    whose problems only cost a warning (the command runs without it)."""
    from ..store.db import Store, StoreError

    if no_cache:
        return None
    if store is not None:
        return Store.open(store)
    try:
        return Store.open()
    except StoreError as err:
        say(f"warning: {printable(str(err))}; continuing without the embedding store", quiet)
        return None
