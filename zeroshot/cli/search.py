"""``zeroshot search``: find images by a description or by an example image."""

from __future__ import annotations

import os
import sys
import time
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..data.decode import DEFAULT_MAX_PIXELS
from ..data.discover import IMAGE_EXTENSIONS
from ..errors import UsageError
from ..models import DEFAULT_PRETRAINED
from ..output.writers import FORMAT_NAMES
from .console import EXIT_PARTIAL, Progress, cli_errors, printable, say, status
from .options import (
    OUTPUT_PANEL,
    BatchOpt,
    DeviceOpt,
    HiddenOpt,
    MaxPixelsOpt,
    ModelOpt,
    NoCacheOpt,
    Precision,
    PrecisionOpt,
    PretrainedOpt,
    QuietOpt,
    RawCsvOpt,
    RecursiveOpt,
    ReportOpt,
    Runtime,
    RuntimeOpt,
    WorkersOpt,
    fast_decode_option,
)
from .store import StoreOpt, command_store

QUERY_PANEL = "Query"
SearchFormat = Enum("SearchFormat", {n: n for n in ("auto", *FORMAT_NAMES, "paths", "paths0")}, type=str)  # type: ignore[misc]


def search(
    arguments: Annotated[Optional[list[str]], typer.Argument(metavar="QUERY/PATH", show_default=False,
        help="The query text, then the images to search (files, folders, glob patterns, - for stdin), like grep's "
             "PATTERN FILE...; with -e/--query or --image every argument is a PATH. No PATH: every image in the store.")] = None,
    query: Annotated[Optional[list[str]], typer.Option("--query", "-e", metavar="TEXT", rich_help_panel=QUERY_PANEL,
        help="A text to search for (repeatable).")] = None,
    image: Annotated[Optional[list[str]], typer.Option("--image", "-i", metavar="FILE", rich_help_panel=QUERY_PANEL,
        help="Find images like this one (repeatable).")] = None,
    avoid: Annotated[Optional[list[str]], typer.Option("--not", metavar="TEXT", rich_help_panel=QUERY_PANEL,
        help="A text to avoid: its cosine similarity is subtracted (weight -1; repeatable).")] = None,
    avoid_image: Annotated[Optional[list[str]], typer.Option("--not-image", metavar="FILE", rich_help_panel=QUERY_PANEL,
        help="Avoid images like this one (weight -1; repeatable).")] = None,
    weight: Annotated[Optional[list[float]], typer.Option("--weight", "-w", metavar="W", rich_help_panel=QUERY_PANEL,
        help="The weights of the queries to look for, one per query in order: the query texts first (QUERY or "
             "--query), then the --image files. Default 1 each.")] = None,
    templates: Annotated[str, typer.Option("--templates", "-t", rich_help_panel=QUERY_PANEL,
        help="Expand each text through a template set (e.g. openai-80, photo, or a template with {}); "
             "default none: the text as given.")] = "none",
    top: Annotated[int, typer.Option("--top", "-n", min=0, rich_help_panel=OUTPUT_PANEL,
        help="How many results, best first (0: every image).")] = 20,
    min_score: Annotated[Optional[float], typer.Option("--min-score", rich_help_panel=OUTPUT_PANEL,
        help="Only results scoring at least this: the cosine similarity (-1..1), or the combined score of "
             "several queries.")] = None,
    output_format: Annotated[SearchFormat, typer.Option("--format", "-f", rich_help_panel=OUTPUT_PANEL,
        help="auto: from --output's extension, else a table on a terminal and CSV when piped. paths: one path "
             "per line, nothing else (for pipes); paths0: NUL after each path (xargs -0).")] = SearchFormat.auto,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", rich_help_panel=OUTPUT_PANEL, dir_okay=False,
        help="Write here (atomically) instead of stdout.")] = None,
    raw_csv: RawCsvOpt = False,
    html_report: ReportOpt = None,
    store: StoreOpt = None,
    approximate: Annotated[Optional[bool], typer.Option("--approximate/--exact", show_default=False,
        help="Searching the whole store: rank through an approximate index (pip install \"zeroshot[ann]\"; built "
             "once, rebuilt when the store changes; scores stay exact) or exactly. Default: approximate from "
             "ZEROSHOT_ANN_MIN_ENTRIES (1,000,000) images when usearch is installed.")] = None,
    model: ModelOpt = None,
    pretrained: PretrainedOpt = DEFAULT_PRETRAINED,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = Precision.auto,
    runtime: RuntimeOpt = Runtime.auto,
    batch_size: BatchOpt = None,
    workers: WorkersOpt = None,
    recursive: RecursiveOpt = True,
    hidden: HiddenOpt = False,
    max_pixels: MaxPixelsOpt = DEFAULT_MAX_PIXELS,
    fast_decode: Annotated[bool, fast_decode_option(True)] = True,
    no_cache: NoCacheOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Find images by a description ("a dog on a beach") or like an example image (--image), best first.
    Scores are cosine similarities; several queries add up with their weights, --not ones are subtracted.
    Images are read from the embedding store where it has them; the others are encoded and added."""
    from ..data.discover import discover
    from ..encode.embed import EmbedSettings
    from ..models import load_model, resolve_weights
    from ..output.report import check_report_path
    from ..output.writers import PATH_FORMATS, choose_format, write_records
    from ..prompts import resolve_templates
    from ..tasks.report import write_search_report
    from ..tasks.search import COLUMNS, Query
    from ..tasks.search import search as run_search

    started = time.perf_counter()
    results = None
    embeddings = None
    with cli_errors(quiet):
        arguments = list(arguments or [])
        texts = list(query or [])
        if not texts and not image:
            if not arguments:
                raise UsageError("give a query: zeroshot search TEXT [PATH...], or --query TEXT / --image FILE")
            first = arguments.pop(0)
            if os.path.exists(first) and not arguments:
                say(f"note: searching for the text {printable(first)!r} in the store; to search the images in "
                    f"{printable(first)}, give the query first or with --query", quiet)
            texts = [first]
        positives = [*texts, *(image or [])]
        if weight and len(weight) != len(positives):
            raise UsageError(f"--weight given {len(weight)} time(s) for {len(positives)} queries; give one weight per "
                             "query, in order: the texts first, then the --image files")
        weights = list(weight or [1.0] * len(positives))
        queries = [Query(text=t, weight=w) for t, w in zip(texts, weights)]
        queries += [Query(image=p, weight=w) for p, w in zip(image or [], weights[len(texts):])]
        queries += [Query(text=t, weight=-1.0) for t in avoid or []]
        queries += [Query(image=p, weight=-1.0) for p in avoid_image or []]
        for option, files in (("--image", image), ("--not-image", avoid_image)):
            for path in files or []:
                if not os.path.isfile(path):
                    what = "is a folder" if os.path.isdir(path) else "does not exist"
                    raise UsageError(f"{option} {printable(path)}: {what}; give an image file")
        if store is not None and no_cache:
            raise UsageError("--store and --no-cache contradict each other: --no-cache uses no store")
        if not arguments and no_cache:
            raise UsageError("search without PATH searches the embedding store, which --no-cache turns off; "
                             "give the PATHs to search")
        template_set = resolve_templates(templates)
        if output_format.value in PATH_FORMATS:
            fmt = PATH_FORMATS[output_format.value]
        else:
            fmt = choose_format(output_format.value, output, sys.stdout.isatty())
        if output is not None and not (output.parent if str(output.parent) else Path(".")).is_dir():
            raise UsageError(f"--output {output}: folder {output.parent} does not exist")
        check_report_path(html_report)
        found = discover(arguments, recursive=recursive, include_hidden=hidden) if arguments else None
        if found is not None and not found.sources:
            exts = " ".join(sorted(IMAGE_EXTENSIONS))
            problems = found.problems
            why = f" ({printable(problems[0][0])}: {problems[0][1]})" if problems else ""
            raise UsageError(f"found 0 images in {', '.join(arguments)}{why}; supported extensions are {exts}")
        weights_ref = resolve_weights(model, pretrained)
        try:
            embeddings = command_store(store, no_cache, quiet)
            if embeddings is None and found is None:
                raise UsageError("search without PATH needs the embedding store, which cannot be opened (see "
                                 "the warning); give the PATHs to search")
            with status(f"loading {weights_ref.name} ({pretrained or 'random init'})", quiet):
                loaded = load_model(weights_ref, device=device, precision=precision.value, runtime=runtime.value)
            with Progress(quiet) as progress:
                settings = EmbedSettings(batch_size, workers, max_pixels, fast_decode)
                results = run_search(loaded, queries, found, store=embeddings, top=top, min_score=min_score,
                                     templates=template_set, settings=settings, cache=not no_cache,
                                     on_progress=progress.tracker("reading images", rate_unit="img"),
                                     on_skip=progress.skipping, approximate=approximate,
                                     on_build=progress.tracker("building the approximate index", rate_unit="vec"))
        finally:
            if embeddings is not None:
                embeddings.close()
        if output is None:
            try:
                sys.stdout.reconfigure(errors="surrogateescape")
            except (AttributeError, ValueError, OSError):
                pass
        write_records(results.hits, fmt, COLUMNS, output, safe_csv=not raw_csv)
        if html_report is not None:
            with Progress(quiet) as progress:
                write_search_report(html_report, results, queries, model=f"{model} ({pretrained or 'random init'})",
                                    on_progress=progress.tracker("report"))
        where = " of the store" if found is None else ""
        where += " (approximate index)" if results.approximate else ""
        summary = (f"search: ranked {results.searched} images{where}, showing {len(results.hits)}, in "
                   f"{time.perf_counter() - started:.1f}s")
        if embeddings is not None and found is not None:
            summary += f"; encoded {results.encoded}, {results.from_store} from the store"
        if results.gone:
            summary += (f"; left out {results.gone} stored image(s) whose file is gone "
                        "('zeroshot store prune --missing' drops them)")
        if results.skipped:
            summary += f"; skipped {len(results.skipped)} (see 'skipping' lines)"
        if output is not None or html_report is not None:
            summary += "; wrote " + ", ".join(printable(str(p)) for p in (output, html_report) if p is not None)
        say(summary, quiet)
    if results is not None and results.skipped:
        raise typer.Exit(EXIT_PARTIAL)
