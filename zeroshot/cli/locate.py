"""``zeroshot locate``: where in each image is each label? Heatmaps and boxes."""

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
)

METHOD_PANEL = "Method"
Method = Enum("Method", {n: n for n in ("auto", "dense", "crops", "fused")}, type=str)  # type: ignore[misc]


def parse_scales(text: str) -> tuple[float, ...]:
    try:
        scales = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise UsageError(f"--scales {text!r}: give factors separated by commas, e.g. 1,0.5") from None
    if not scales:
        raise UsageError("--scales is empty; give factors separated by commas, e.g. 1,0.5")
    return scales


def locate_background(texts: Optional[list[str]], none: bool) -> tuple[str, ...]:
    from ..tasks.locate import DEFAULT_BACKGROUND

    return () if none else tuple(texts) if texts else DEFAULT_BACKGROUND


def locate(
    images: Annotated[list[str], typer.Argument(metavar="IMAGE...", show_default=False,
        help="Image files, folders or glob patterns (- reads paths from stdin).")],
    label: Annotated[Optional[list[str]], typer.Option("--label", "-l", rich_help_panel=PROMPT_PANEL,
        help="A text to locate (repeatable). Several labels compete for every pixel (softmax across labels).")] = None,
    labels: Annotated[Optional[str], typer.Option("--labels", "-L", rich_help_panel=PROMPT_PANEL,
        help="File with one label per line; adds to --label.")] = None,
    templates: Annotated[str, typer.Option("--templates", "-t", rich_help_panel=PROMPT_PANEL,
        help="Expand each label through a template set (e.g. openai-7, photo, or a template with {}); "
             "default none: the text as given.")] = "none",
    out: Annotated[Path, typer.Option("--out", "-O", rich_help_panel=OUTPUT_PANEL, file_okay=False,
        help="Folder for the pictures (<image>.<label>.png: heatmap, colour bar, box) and raw grids (.npy); "
             "created if missing.")] = Path("heatmaps"),
    no_plot: Annotated[bool, typer.Option("--no-plot", rich_help_panel=OUTPUT_PANEL,
        help="Write only the .npy grids and the rows, no pictures (no matplotlib needed).")] = False,
    method: Annotated[Method, typer.Option("--method", rich_help_panel=METHOD_PANEL,
        help="dense: one forward pass per image through a changed last block (k-k attention, no residual, no "
             "MLP; open_clip ViTs). "
             "crops: encode overlapping crops (any model; one forward pass per crop). fused: the dense map "
             "times the crops map (ViTs; both costs; the best boxes on the shapes benchmark). auto: dense where "
             "it applies, else crops.")] = Method.auto,
    resolution: Annotated[Optional[int], typer.Option("--resolution", min=16, rich_help_panel=METHOD_PANEL,
        help="dense: the input's shorter side in pixels (position embeddings are interpolated); "
             "default twice the model's input size.")] = None,
    patch: Annotated[Optional[int], typer.Option("--patch", min=1, rich_help_panel=METHOD_PANEL,
        help="crops: crop side in pixels of the original image; default a third of the shorter side.")] = None,
    stride: Annotated[Optional[int], typer.Option("--stride", min=1, rich_help_panel=METHOD_PANEL,
        help="crops: step between crops in pixels; default half of --patch.")] = None,
    scales: Annotated[str, typer.Option("--scales", rich_help_panel=METHOD_PANEL,
        help="Factors to repeat the work at and average: crops: of --patch/--stride, e.g. 1,0.5; dense: of "
             "--resolution, e.g. 0.67,1,1.33 (one forward pass each); fused: both.")] = "1",
    threshold: Annotated[Optional[float], typer.Option("--threshold", min=0.0, max=1.0, rich_help_panel=METHOD_PANEL,
        help="Box: the map refined 4x per cell side (bilinear), then the points scoring at least base + "
             "T*(max - base), base = the map's median (the background's level), connected to the hottest one; "
             "default 0.3 for dense and fused, 0.7 for crops.")] = None,
    sharpness: Annotated[Optional[float], typer.Option("--sharpness",
        rich_help_panel=METHOD_PANEL,
        help="dense and fused: factor on the changed block's attention logits (larger: each patch pools over "
             "fewer, more similar patches); default 1 for dense, 2 for fused.")] = None,
    background: Annotated[Optional[list[str]], typer.Option("--background", rich_help_panel=PROMPT_PANEL,
        help="A background prompt that competes with the labels for every pixel and is not reported "
             "(repeatable); default: 'a photo of a background.'. Keeps empty regions from going to a label.")
        ] = None,
    no_background: Annotated[bool, typer.Option("--no-background", rich_help_panel=PROMPT_PANEL,
        help="No background prompt: the labels alone split every pixel (one label alone: the cosine map).")
        ] = False,
    output_format: Annotated[OutputFormat, typer.Option("--format", "-f", rich_help_panel=OUTPUT_PANEL,
        help="Rows (one per image and label): auto = from --output's extension, else a table on a terminal and "
             "CSV when piped.")] = OutputFormat.auto,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", rich_help_panel=OUTPUT_PANEL, dir_okay=False,
        help="Write the rows here (atomically) instead of stdout.")] = None,
    raw_csv: RawCsvOpt = False,
    model: ModelOpt = None,
    pretrained: PretrainedOpt = DEFAULT_PRETRAINED,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = Precision.auto,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", "-b", min=1, rich_help_panel="Model and device",
        help="crops: crops per forward pass (default: 32 on CPU, 256 on GPU).")] = None,
    recursive: RecursiveOpt = True,
    hidden: HiddenOpt = False,
    max_pixels: MaxPixelsOpt = DEFAULT_MAX_PIXELS,
    quiet: QuietOpt = False,
) -> None:
    """Locate labels in images: for every image and label a heatmap picture and raw grid in --out, and
    a row with the box around the hottest region (x0, y0, x1, y1 in pixels of the original image) and
    its score."""
    import warnings

    from ..data.discover import discover
    from ..models import load_model, resolve_weights
    from ..output.writers import choose_format, write_records
    from ..prompts import SingleLabelWarning, resolve_labels, resolve_templates
    from ..tasks.locate import COLUMNS, LocateSettings, OutputNames, save_located
    from ..tasks.locate import locate as run_locate

    started = time.perf_counter()
    skipped = 0
    with cli_errors(quiet):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SingleLabelWarning)  # one label: the map is a cosine, fine
            label_list = list(resolve_labels(labels, label))
        if no_background and background:
            raise UsageError("--background and --no-background contradict each other; give one")
        settings = LocateSettings(method.value, resolution, patch, stride, parse_scales(scales), threshold,
                                  batch_size, max_pixels, locate_background(background, no_background), sharpness)
        template_set = resolve_templates(templates)
        fmt = choose_format(output_format.value, output, sys.stdout.isatty())
        require_parent("--output", output)
        if not no_plot:
            from ..output.plots import pyplot

            pyplot("--out", " (or pass --no-plot for the grids and rows only)")  # refuse before any work when matplotlib is missing
        found = discover(images, recursive=recursive, include_hidden=hidden)
        require_images(found, images)
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise UsageError(f"--out {out}: cannot create the folder: {err.strerror or err}") from None
        weights_ref = resolve_weights(model, pretrained)
        with status(f"loading {weights_ref.name} ({pretrained or 'random init'})", quiet):
            loaded = load_model(weights_ref, device=device, precision=precision.value)
        from ..tasks.locate import resolve_method

        chosen = resolve_method(loaded, settings.method)
        if settings.method == "auto" and chosen == "crops":
            say(f"note: {loaded.name} is not an open_clip ViT; using --method crops", quiet)
        rows = []
        names = OutputNames()
        with Progress(quiet) as progress:
            for result in run_locate(loaded, found.items, label_list, template_set, settings,
                                     on_progress=progress.tracker("locating", rate_unit="img"),
                                     on_skip=progress.skipping):
                skipped += result.error is not None
                rows += save_located(result, out, names, plot=not no_plot)
        if output is None:
            stdout_keeps_bytes()
        write_records(rows, fmt, COLUMNS, output, safe_csv=not raw_csv)
        summary = (f"locate: {len(found.items) - skipped} image(s) x {len(label_list)} label(s) by {chosen} in "
                   f"{time.perf_counter() - started:.1f}s; pictures and grids in {printable(str(out))}")
        if skipped:
            summary += f"; skipped {skipped} (see 'skipping' lines)"
        say(summary, quiet)
    if skipped:
        raise typer.Exit(EXIT_PARTIAL)
