"""``zeroshot eval``: zero-shot accuracy on labelled datasets.

Options in, :mod:`zeroshot.tasks.evaluate` calls, rendering out; the metrics table is the command's
data (stdout), progress, skipped images and the summary go to stderr.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..data.decode import DEFAULT_MAX_PIXELS
from ..errors import UsageError
from ..models import DEFAULT_MODEL, DEFAULT_PRETRAINED
from .console import EXIT_PARTIAL, Progress, cli_errors, printable, rate_text, say, status
from .options import (
    DATASET_PANEL,
    INPUT_PANEL,
    OUTPUT_PANEL,
    PROMPT_PANEL,
    BatchOpt,
    DatasetName,
    DeviceOpt,
    HiddenOpt,
    ModelOpt,
    NoCacheOpt,
    Precision,
    PrecisionOpt,
    PretrainedOpt,
    QuietOpt,
    RawCsvOpt,
    WorkersOpt,
    fast_decode_option,
)
from .store import StoreOpt, command_store

EvalTemplatesOpt = Annotated[Optional[list[str]], typer.Option("--templates", "-t", rich_help_panel=PROMPT_PANEL,
    help="Template set to score (repeatable: every set is scored against the same image embeddings). Built-in set "
         "(80/openai-80, 7/openai-7, 1/photo, none, cifar), a file, or one template with {}. "
         "Default: openai-80 (cifar for CIFAR).")]


def _check_output(option: str, path: Optional[Path]) -> None:
    if path is not None and not (path.parent if str(path.parent) else Path(".")).is_dir():
        raise UsageError(f"{option} {path}: folder {path.parent} does not exist")


def _location(dataset: DatasetName, path: Optional[str], root: Optional[str]) -> str:
    if path and root and Path(path).expanduser() != Path(root).expanduser():
        raise UsageError(f"give the dataset location once: PATH {path!r} or --root {root!r}, not both")
    where = path or root
    if not where:
        example = "PATH" if dataset in (DatasetName.folder, DatasetName.csv) else "--root DIR"
        raise UsageError(f"eval {dataset.value}: say where the dataset is: zeroshot eval {dataset.value} {example}")
    return where


def _cell(value: Optional[float], percent: bool) -> str:
    if value is None:
        return "n/a"
    return f"{100 * value:.2f}" if percent else repr(float(value))  # piped: exactly the JSON's number


def _print_table(result) -> None:
    """A table on a terminal (percent); tab-separated fractions, as in the JSON, when piped."""
    percent = sys.stdout.isatty()
    unit = "%" if percent else "fraction"
    header = ("template set", "templates", f"top-1 ({unit})", f"top-5 ({unit})", f"mean per-class recall ({unit})")
    rows = [(r.templates, str(r.num_templates), _cell(r.acc1, percent), _cell(r.acc5, percent),
             _cell(r.mean_per_class_recall, percent)) for r in result.results]
    if percent:
        from rich.console import Console
        from rich.table import Table

        table = Table(*header, show_edge=False, header_style="bold",
                      caption=f"{result.dataset}: {result.num_images} images, {len(result.classnames)} classes, "
                              f"{result.model} ({result.pretrained or 'random init'})")
        for column in table.columns[1:]:
            column.justify = "right"
        for row in rows:
            table.add_row(*row)
        Console(highlight=False).print(table)
    else:
        typer.echo("\t".join(header))
        for row in rows:
            typer.echo("\t".join(printable(c) for c in row))


def eval_command(
    dataset: Annotated[DatasetName, typer.Argument(show_default=False,
        help="imagenet (ImageNet-1k val, wnid folders), cifar10, cifar100, folder (class = sub-folder), csv (path,label manifest).")],
    path: Annotated[Optional[str], typer.Argument(metavar="PATH", show_default=False,
        help="Dataset location: the folder (imagenet, cifar, folder) or the manifest file (csv). Same as --root.")] = None,
    root: Annotated[Optional[str], typer.Option("--root", "-r", rich_help_panel=DATASET_PANEL,
        help="Dataset location (alternative to PATH).")] = None,
    classnames: Annotated[Optional[Path], typer.Option("--classnames", rich_help_panel=DATASET_PANEL, dir_okay=False,
        help="folder/csv: file mapping folder (or label) -> class name, 'key,name' per line or a JSON object; "
             "every class listed competes.")] = None,
    download: Annotated[bool, typer.Option("--download", rich_help_panel=DATASET_PANEL,
        help="cifar10/cifar100: download the dataset into --root if it is not there.")] = False,
    limit: Annotated[Optional[int], typer.Option("--limit", "-n", min=1, rich_help_panel=DATASET_PANEL,
        help="Evaluate only the first N images of every class (quick runs).")] = None,
    hidden: HiddenOpt = False,
    max_pixels: Annotated[int, typer.Option("--max-pixels", min=1, rich_help_panel=INPUT_PANEL,
        help="Skip (and count as wrong) images with more pixels than this.")] = DEFAULT_MAX_PIXELS,
    fast_decode: Annotated[bool, fast_decode_option(False)] = False,
    labels: Annotated[Optional[str], typer.Option("--labels", "-L", rich_help_panel=PROMPT_PANEL,
        help="Override the class names: a file with one label per class, in class-index order, or a built-in class set.")] = None,
    templates: EvalTemplatesOpt = None,
    model: ModelOpt = DEFAULT_MODEL,
    pretrained: PretrainedOpt = DEFAULT_PRETRAINED,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = Precision.auto,
    batch_size: BatchOpt = None,
    workers: WorkersOpt = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", rich_help_panel=OUTPUT_PANEL, dir_okay=False,
        help="Write the results JSON here (.json; CLIP_benchmark keys plus every template set, counts, skipped images).")] = None,
    predictions: Annotated[Optional[Path], typer.Option("--predictions", rich_help_panel=OUTPUT_PANEL, dir_okay=False,
        help="Per image and template set: path, true label, predicted label, score, correct, error; the format "
             "from the extension (.csv .tsv .jsonl .json .parquet).")] = None,
    per_class: Annotated[Optional[Path], typer.Option("--per-class", rich_help_panel=OUTPUT_PANEL, dir_okay=False,
        help="Per-class accuracy (fraction), worst first; the format from the extension.")] = None,
    raw_csv: RawCsvOpt = False,
    no_cache: NoCacheOpt = False,
    store: StoreOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Zero-shot accuracy (top-1, top-5, mean per-class recall) of a model on a labelled dataset,
    for one or several template sets in one pass over the images. Images of folder, csv and
    imagenet datasets already in the embedding store are not encoded again."""
    from ..data.datasets import DEFAULT_TEMPLATES, load_dataset
    from ..encode.embed import EmbedSettings
    from ..models import load_model, resolve_weights
    from ..output.writers import format_for_path
    from ..prompts import resolve_labels, resolve_templates
    from ..tasks.evaluate import evaluate, write_per_class_file, write_predictions_file, write_results_json

    started = time.perf_counter()
    result = None
    embeddings = None
    with cli_errors(quiet):
        where = _location(dataset, path, root)
        if classnames is not None and dataset not in (DatasetName.folder, DatasetName.csv):
            raise UsageError(f"--classnames is for folder and csv datasets; {dataset.value} has its own class names (use --labels to override)")
        if download and dataset not in (DatasetName.cifar10, DatasetName.cifar100):
            raise UsageError(f"--download is only for cifar10 and cifar100; put the {dataset.value} data in place yourself")
        for option, target in (("--output", output), ("--predictions", predictions), ("--per-class", per_class)):
            _check_output(option, target)
            if target is not None:
                fmt = format_for_path(target, option)
                if option == "--output" and fmt.name != "json":
                    raise UsageError(f"--output {target}: the results file is JSON; name it .json "
                                     "(per-image rows go to --predictions)")
        if store is not None and no_cache:
            raise UsageError("--store and --no-cache contradict each other: --no-cache uses no store")
        if store is not None and dataset in (DatasetName.cifar10, DatasetName.cifar100):
            raise UsageError(f"--store is for datasets of image files; {dataset.value} is held in memory and always encoded")
        template_sets = [resolve_templates(t) for t in (templates or [DEFAULT_TEMPLATES[dataset.value]])]
        data = load_dataset(dataset.value, where, classnames=classnames, download=download, include_hidden=hidden)
        if labels:
            data = data.with_classnames(resolve_labels(labels), f"--labels {labels}")
        data = data.limit(limit)

        weights = resolve_weights(model, pretrained)
        files = dataset not in (DatasetName.cifar10, DatasetName.cifar100)
        if files:
            embeddings = command_store(store, no_cache, quiet)
        with status(f"loading {model} ({pretrained or 'random init'})", quiet):
            loaded = load_model(weights, device=device, precision=precision.value)
        say(f"evaluating {len(data)} images, {len(data.classnames)} classes, "
            f"{len(template_sets)} template set(s) on {loaded.device} ({loaded.describe_precision()})", quiet)

        with Progress(quiet) as progress:
            text_tasks: dict[str, int] = {}

            def text_progress(name: str, done: int, total: int) -> None:
                if name not in text_tasks:
                    text_tasks[name] = progress.add_task(f"prompts {name}", total=total)
                progress.update(text_tasks[name], done, total)

            image_progress = progress.tracker("images", rate_unit="img")
            skip = progress.skipping

            settings = EmbedSettings(batch_size, workers, max_pixels, fast_decode)
            try:
                result = evaluate(loaded, data, template_sets, settings, cache=not no_cache,
                                  on_text_progress=text_progress, on_image_progress=image_progress, on_skip=skip,
                                  store=embeddings)
            finally:
                if embeddings is not None:
                    embeddings.close()

        _print_table(result)
        written = []
        if output is not None:
            write_results_json(result, output)
            written.append(str(output))
        if predictions is not None:
            write_predictions_file(result, predictions, safe_csv=not raw_csv)
            written.append(str(predictions))
        if per_class is not None:
            write_per_class_file(result, per_class, safe_csv=not raw_csv)
            written.append(str(per_class))

        encoded = int(result.encoded.sum())
        summary = (f"evaluated {result.num_images} images ({len(result.classnames)} classes) in "
                   f"{time.perf_counter() - started:.1f}s (images {result.image_seconds:.1f}s, "
                   f"{rate_text(encoded, result.image_seconds) or '-'}; precision {loaded.describe_precision()})")
        for note in loaded.notes:
            say(f"note: {note}", quiet)
        if embeddings is not None:
            summary += f"; encoded {result.images_encoded}, {result.images_from_store} from the store"
        if result.skipped:
            summary += f"; skipped {len(result.skipped)} unreadable image(s), counted as wrong"
        if written:
            summary += f"; wrote {', '.join(printable(w) for w in written)}"
        say(summary, quiet)
    if result is not None and result.skipped:
        raise typer.Exit(EXIT_PARTIAL)
