"""``zeroshot similarity``: the matrix of cosine similarities between images and texts."""

from __future__ import annotations

import sys
import time
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..data.decode import DEFAULT_MAX_PIXELS
from ..errors import UsageError
from ..models import DEFAULT_PRETRAINED
from .console import (
    EXIT_PARTIAL,
    Progress,
    cli_errors,
    printable,
    require_images,
    require_parent,
    say,
    status,
    stdout_keeps_bytes,
)
from .options import (
    OUTPUT_PANEL,
    PROMPT_PANEL,
    BatchOpt,
    DeviceOpt,
    HiddenOpt,
    MaxPixelsOpt,
    ModelOpt,
    OutputFormat,
    Precision,
    PrecisionOpt,
    PretrainedOpt,
    QuietOpt,
    RawCsvOpt,
    RecursiveOpt,
    WorkersOpt,
    fast_decode_option,
)

Layout = Enum("Layout", {n: n for n in ("long", "wide")}, type=str)  # type: ignore[misc]
Value = Enum("Value", {n: n for n in ("cosine", "softmax_texts", "softmax_images")}, type=str)  # type: ignore[misc]


def similarity(
    images: Annotated[list[str], typer.Argument(metavar="IMAGE...", show_default=False,
        help="Image files, folders or glob patterns (- reads paths from stdin).")],
    text: Annotated[Optional[list[str]], typer.Option("--text", "-t", metavar="TEXT", rich_help_panel=PROMPT_PANEL,
        help="A text to compare with every image (repeatable).")] = None,
    texts: Annotated[Optional[Path], typer.Option("--texts", metavar="FILE", rich_help_panel=PROMPT_PANEL,
        dir_okay=False, help="File with one text per line (# comments and blank lines ignored); adds to --text.")] = None,
    templates: Annotated[str, typer.Option("--templates", rich_help_panel=PROMPT_PANEL,
        help="Expand each text through a template set (e.g. openai-7); default none: the text as given.")] = "none",
    layout: Annotated[Layout, typer.Option("--layout", rich_help_panel=OUTPUT_PANEL,
        help="long: one row per image and text (path, text, cosine, softmax_texts, softmax_images). "
             "wide: the matrix, one row per image and a column per text holding --value.")] = Layout.long,
    value: Annotated[Value, typer.Option("--value", rich_help_panel=OUTPUT_PANEL,
        help="wide layout and --plot: which matrix: cosine, softmax_texts (over texts, per image) or "
             "softmax_images (over images, per text).")] = Value.cosine,
    plot: Annotated[Optional[Path], typer.Option("--plot", metavar="FILE.png", rich_help_panel=OUTPUT_PANEL,
        dir_okay=False, help="Also draw the matrix as a heatmap with image thumbnails and the texts (PNG).")] = None,
    output_format: Annotated[OutputFormat, typer.Option("--format", "-f", rich_help_panel=OUTPUT_PANEL,
        help="auto: from --output's extension, else a table on a terminal and CSV when piped. json with "
             "--layout long writes rows; a .json --output with --layout wide too.")] = OutputFormat.auto,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", rich_help_panel=OUTPUT_PANEL, dir_okay=False,
        help="Write here (atomically) instead of stdout.")] = None,
    raw_csv: RawCsvOpt = False,
    model: ModelOpt = None,
    pretrained: PretrainedOpt = DEFAULT_PRETRAINED,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = Precision.auto,
    batch_size: BatchOpt = None,
    workers: WorkersOpt = None,
    recursive: RecursiveOpt = True,
    hidden: HiddenOpt = False,
    max_pixels: MaxPixelsOpt = DEFAULT_MAX_PIXELS,
    fast_decode: Annotated[bool, fast_decode_option(False)] = False,
    quiet: QuietOpt = False,
) -> None:
    """Compare every image with every text: the matrix of cosine similarities, with the softmax over
    texts per image and over images per text (the model's temperature), as rows or a matrix."""
    from ..data.decode import open_image
    from ..data.discover import discover
    from ..encode.embed import EmbedSettings
    from ..errors import ImageError
    from ..models import load_model, resolve_weights
    from ..output.rows import dict_records
    from ..output.writers import choose_format, write_records
    from ..prompts import read_entries, resolve_templates
    from ..tasks.similarity import similarity as run_similarity

    started = time.perf_counter()
    result = None
    with cli_errors(quiet):
        text_list = list(text or [])
        if texts is not None:
            text_list = read_entries(texts, "texts") + text_list
        if not text_list:
            raise UsageError("give the texts to compare with: -t TEXT (repeatable) or --texts FILE")
        template_set = resolve_templates(templates)
        fmt = choose_format(output_format.value, output, sys.stdout.isatty())
        require_parent("--output", output)
        require_parent("--plot", plot)
        if plot is not None:
            if plot.suffix.lower() != ".png":
                raise UsageError(f"--plot {plot}: the picture is a PNG; name it .png")
            from ..output.plots import pyplot

            pyplot("--plot")
        found = discover(images, recursive=recursive, include_hidden=hidden)
        require_images(found, images)
        weights_ref = resolve_weights(model, pretrained)
        with status(f"loading {weights_ref.name} ({pretrained or 'random init'})", quiet):
            loaded = load_model(weights_ref, device=device, precision=precision.value)
        with Progress(quiet) as progress:
            result = run_similarity(loaded, found.items, text_list, template_set,
                                    EmbedSettings(batch_size, workers, max_pixels, fast_decode),
                                    on_progress=progress.tracker("reading images", rate_unit="img"),
                                    on_skip=progress.skipping)
        if output is None:
            stdout_keeps_bytes()
        rows = result.long_rows() if layout.value == "long" else result.wide_rows(value.value)
        columns, records = dict_records(rows)
        write_records(records, fmt, columns, output, safe_csv=not raw_csv)
        if plot is not None:
            from ..output.plots import save_similarity_plot

            sources = {s.path: s for s in found.items}
            thumbs = []
            for path in result.paths:
                try:
                    thumbs.append(open_image(sources[path].fs_path, max_pixels))
                except ImageError:
                    thumbs.append(None)
            save_similarity_plot(result.matrix(value.value).numpy(), thumbs, result.texts, plot,
                                 title=f"{value.value.replace('_', ' over ')} ({loaded.name})")
        summary = (f"similarity: {len(result.paths)} image(s) x {len(text_list)} text(s) in "
                   f"{time.perf_counter() - started:.1f}s")
        if plot is not None:
            summary += f"; drew {printable(str(plot))}"
        if result.skipped:
            summary += f"; skipped {len(result.skipped)} (see 'skipping' lines)"
        say(summary, quiet)
    if result is not None and result.skipped:
        raise typer.Exit(EXIT_PARTIAL)
