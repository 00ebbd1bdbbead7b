"""``zeroshot eval retrieval`` (and retrieval WebDataset folders): recall@k both ways.

Called by :mod:`zeroshot.cli.evaluate` once the dataset turned out to be image-caption pairs;
the metrics table is the command's data (stdout), progress and the summary go to stderr.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Optional

import typer

from .console import Progress, printable, rate_text, say


def _print_table(result: Any) -> None:
    """metric / value rows: percent on a terminal, the JSON's fractions (tab-separated) when piped."""
    percent = sys.stdout.isatty()
    unit = "%" if percent else "fraction"
    rows = [(name, f"{100 * value:.2f}" if percent else repr(float(value))) for name, value in result.metrics.items()]
    if percent:
        from rich.console import Console
        from rich.table import Table

        table = Table("metric", f"value ({unit})", show_edge=False, header_style="bold",
                      caption=f"{result.dataset}: {result.num_images} images, {result.num_texts} captions, "
                              f"{result.model} ({result.pretrained or 'random init'})")
        table.columns[1].justify = "right"
        for row in rows:
            table.add_row(*row)
        Console(highlight=False).print(table)
    else:
        typer.echo(f"metric\tvalue ({unit})")
        for name, value in rows:
            typer.echo(f"{name}\t{value}")


def run_retrieval(loaded: Any, data: Any, settings: Any, recall_k: Optional[list[int]], store: Any,
                  output: Optional[Path], quiet: bool, started: float) -> Any:
    """Run :func:`zeroshot.tasks.retrieval.evaluate_retrieval` with progress, print the table,
    write ``--output`` and say the summary; returns the result."""
    from ..metrics import RECALL_K
    from ..tasks.retrieval import evaluate_retrieval, write_retrieval_json

    ks = tuple(dict.fromkeys(recall_k)) if recall_k else RECALL_K
    say(f"retrieval on {len(data)} images, {len(data.texts)} captions on {loaded.device} ({loaded.precision})", quiet)
    with Progress(quiet) as progress:
        try:
            result = evaluate_retrieval(loaded, data, settings, ks, on_text_progress=progress.tracker("captions"),
                                        on_image_progress=progress.tracker("images", rate_unit="img"),
                                        on_skip=progress.skipping, store=store)
        finally:
            if store is not None:
                store.close()
    _print_table(result)
    summary = (f"evaluated {result.num_images} images and {result.num_texts} captions in "
               f"{time.perf_counter() - started:.1f}s (images {result.image_seconds:.1f}s, "
               f"{rate_text(result.num_images - len(result.skipped), result.image_seconds) or '-'})")
    if store is not None:
        summary += f"; encoded {result.images_encoded}, {result.images_from_store} from the store"
    if result.skipped:
        summary += f"; skipped {len(result.skipped)} unreadable image(s), counted as misses"
    if output is not None:
        write_retrieval_json(result, output)
        summary += f"; wrote {printable(str(output))}"
    say(summary, quiet)
    return result
