"""The ``zeroshot`` command line: options in, library calls, rendering out. No model math here."""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from . import __version__
from .console import (
    EXIT_PARTIAL,
    cli_errors,
    printable,
    progress_bar,
    rate_text,
    say,
    stderr,
)
from .errors import UsageError
from .images import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, discover
from .models import DEFAULT_MODEL, DEFAULT_PRETRAINED

app = typer.Typer(
    name="zeroshot",
    help="Zero-shot image classification with CLIP models: classify images into labels nobody trained on.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
templates_app = typer.Typer(help="List the built-in template sets, or show one.", invoke_without_command=True)
app.add_typer(templates_app, name="templates")

MODEL_PANEL = "Model and device"
PROMPT_PANEL = "Labels and prompts"
INPUT_PANEL = "Inputs"
OUTPUT_PANEL = "Output"


class Precision(str, Enum):
    auto = "auto"
    fp32 = "fp32"
    fp16 = "fp16"
    bf16 = "bf16"


class OutputFormat(str, Enum):
    auto = "auto"
    table = "table"
    csv = "csv"
    tsv = "tsv"
    jsonl = "jsonl"
    json = "json"
    parquet = "parquet"


# Options shared by classify and eval.
ModelOpt = Annotated[str, typer.Option("--model", "-m", envvar="ZEROSHOT_MODEL", rich_help_panel=MODEL_PANEL,
    help="open_clip architecture (ViT-B-32, ViT-L-14, ...) or hf-hub:org/name.")]
PretrainedOpt = Annotated[str, typer.Option("--pretrained", "-p", envvar="ZEROSHOT_PRETRAINED", rich_help_panel=MODEL_PANEL,
    help="Pretrained tag (openai, laion2b_s34b_b79k, ...) or a local checkpoint (.pt/.bin/.safetensors).")]
DeviceOpt = Annotated[str, typer.Option("--device", "-d", envvar="ZEROSHOT_DEVICE", rich_help_panel=MODEL_PANEL,
    help="auto | cpu | cuda | cuda:N | mps. auto picks CUDA, then MPS, then CPU.")]
PrecisionOpt = Annotated[Precision, typer.Option("--precision", envvar="ZEROSHOT_PRECISION", rich_help_panel=MODEL_PANEL,
    help="auto: fp32 on CPU, bf16 (or fp16) autocast on GPU.")]
BatchOpt = Annotated[Optional[int], typer.Option("--batch-size", "-b", min=1, rich_help_panel=MODEL_PANEL,
    help="Images per forward pass (default: 32 on CPU, 256 on GPU).")]
WorkersOpt = Annotated[Optional[int], typer.Option("--workers", "-j", min=0, rich_help_panel=MODEL_PANEL,
    help="Image decoding processes (default: sized to the machine; 0 decodes in the main process).")]
TemplatesOpt = Annotated[str, typer.Option("--templates", "-t", rich_help_panel=PROMPT_PANEL,
    help="Built-in set (80/openai-80, 7/openai-7, 1/photo, none, cifar), a file of templates, or one template with {}.")]
NoCacheOpt = Annotated[bool, typer.Option("--no-cache", rich_help_panel=PROMPT_PANEL,
    help="Do not read or write the on-disk class-weight cache.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress, warnings or summary on stderr (errors still print).")]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"zeroshot {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")] = False,
) -> None:
    """Zero-shot image classification with CLIP models."""


def _load_classifier(labels, templates, model, pretrained, device, precision, no_cache, quiet, check=None):
    """Load the model and build the class weights, with a spinner and a text progress bar.

    ``check(loaded)`` runs between the two (e.g. to refuse a --resume before encoding prompts)."""
    from .classifier import ZeroShotClassifier
    from .models import load_model

    with stderr.status(f"loading {model} ({pretrained or 'random init'})", spinner="dots") if not quiet and stderr.is_terminal else _null():
        loaded = load_model(model, pretrained, device, precision)
    if check is not None:
        check(loaded)
    with progress_bar(quiet) as bar:
        task = bar.add_task("encoding prompts", total=None, rate="")

        def advance(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        return ZeroShotClassifier(
            labels, templates, model=loaded, cache=not no_cache, text_progress=advance,
            allow_duplicate_labels=True,  # already validated by resolve_labels
        )


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@app.command()
def classify(
    inputs: Annotated[list[str], typer.Argument(metavar="PATH...", show_default=False,
        help="Image files, folders, glob patterns, or - to read paths from stdin.")],
    labels: Annotated[Optional[str], typer.Option("--labels", "-L", rich_help_panel=PROMPT_PANEL,
        help="File with one label per line, or a built-in class set (imagenet, cifar10, cifar100).")] = None,
    label: Annotated[Optional[list[str]], typer.Option("--label", "-l", rich_help_panel=PROMPT_PANEL,
        help="A label (repeatable); adds to --labels.")] = None,
    templates: TemplatesOpt = "openai-80",
    model: ModelOpt = DEFAULT_MODEL,
    pretrained: PretrainedOpt = DEFAULT_PRETRAINED,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = Precision.auto,
    batch_size: BatchOpt = None,
    workers: WorkersOpt = None,
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=1, rich_help_panel=OUTPUT_PANEL,
        help="Labels to report per image, best first.")] = 1,
    min_score: Annotated[Optional[float], typer.Option("--min-score", min=0.0, max=1.0, rich_help_panel=OUTPUT_PANEL,
        help="When the best score is below this, the label is --unknown-label.")] = None,
    unknown_label: Annotated[str, typer.Option("--unknown-label", rich_help_panel=OUTPUT_PANEL,
        help="Label used below --min-score.")] = "unknown",
    output_format: Annotated[OutputFormat, typer.Option("--format", "-f", rich_help_panel=OUTPUT_PANEL,
        help="auto: from --output's extension, else a table on a terminal and CSV when piped.")] = OutputFormat.auto,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", rich_help_panel=OUTPUT_PANEL, dir_okay=False,
        help="Write here (atomically) instead of stdout.")] = None,
    resume: Annotated[bool, typer.Option("--resume", rich_help_panel=OUTPUT_PANEL,
        help="Continue an interrupted run writing the same --output: rows already done are kept, the rest "
             "classified. Refused when model, weights, labels or templates changed.")] = False,
    raw_csv: Annotated[bool, typer.Option("--raw-csv", rich_help_panel=OUTPUT_PANEL,
        help="Do not neutralise spreadsheet formulas (cells starting with = + - @) in CSV/TSV.")] = False,
    recursive: Annotated[bool, typer.Option("--recursive/--no-recursive", rich_help_panel=INPUT_PANEL,
        help="Descend into sub-folders of folder inputs.")] = True,
    hidden: Annotated[bool, typer.Option("--hidden", rich_help_panel=INPUT_PANEL,
        help="Include dot-files and dot-folders (skipped by default, e.g. macOS ._x.jpg).")] = False,
    max_pixels: Annotated[int, typer.Option("--max-pixels", min=1, rich_help_panel=INPUT_PANEL,
        help="Skip images with more pixels than this (decompression-bomb guard), checked before decoding.")] = DEFAULT_MAX_PIXELS,
    exact_preprocess: Annotated[bool, typer.Option("--exact-preprocess", rich_help_panel=INPUT_PANEL,
        help="Decode large JPEGs at full size (bit-exact with open_clip's preprocessing; slower).")] = False,
    no_cache: NoCacheOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Classify images: print the most likely label(s) and probabilities for every image."""
    from .output import choose_format, write_predictions
    from .prompts import resolve_labels, resolve_templates

    session = _Session(quiet)
    with cli_errors(quiet):
        if resume and output is None:
            raise UsageError("--resume needs --output FILE: the file the interrupted run was writing")
        label_set = resolve_labels(labels, label)
        template_set = resolve_templates(templates)
        fmt = choose_format(output_format.value, output, sys.stdout.isatty())
        if output is not None and not (output.parent if str(output.parent) else Path(".")).is_dir():
            raise UsageError(f"--output {output}: folder {output.parent} does not exist")
        found = discover(inputs, recursive=recursive, include_hidden=hidden)
        if not found.sources:
            exts = " ".join(sorted(IMAGE_EXTENSIONS))
            why = f" ({printable(found.problems[0][0])}: {found.problems[0][1]})" if found.problems else ""
            raise UsageError(f"found 0 images in {', '.join(inputs)}{why}; supported extensions are {exts}")

        def open_journal(loaded) -> None:
            if output is not None:
                from .resume import fingerprint

                fp = fingerprint(loaded.name, loaded.weights_id, label_set, template_set.templates,
                                 top_k, min_score, unknown_label)
                session.open_journal(output, fp, resume, len(found.sources) + len(found.problems))

        clf = _load_classifier(label_set, template_set, model, pretrained, device, precision.value, no_cache, quiet,
                               check=open_journal)
        if output is None:
            _stdout_keeps_raw_names()

        with progress_bar(quiet) as bar:
            task = bar.add_task("classifying", total=len(found.sources) + len(found.problems), rate="")
            if session.done:
                bar.update(task, total=len(found.sources) + len(found.problems) - len(session.done))

            def advance(done: int, total: int) -> None:
                session.sync()
                bar.update(task, completed=done, rate=rate_text(clf.last_run.classified, clf.last_run.seconds))

            def report(pred):
                if pred.error is not None:
                    bar.console.print(f"skipping {printable(pred.path)}: {printable(pred.error)}", markup=False, highlight=False)
                session.record(pred)
                return pred

            fresh = (report(p) for p in clf.classify_paths(
                found, top_k=top_k, min_score=min_score, unknown_label=unknown_label,
                batch_size=batch_size, workers=workers, max_pixels=max_pixels,
                exact_preprocess=exact_preprocess, on_progress=advance,
                skip=(session.done.__contains__ if session.done else None),
            ))
            order = [path for path, _ in found.problems] + [source.path for source in found.sources]
            try:
                write_predictions(session.merged(order, fresh), fmt, top_k=top_k, output=output, safe_csv=not raw_csv)
            except KeyboardInterrupt:
                session.interrupted(output)
                raise
            except BaseException:
                session.close()
                raise
        session.finished()

        stats = clf.last_run
        summary = f"classified {stats.classified} of {stats.total} images in {stats.seconds:.1f}s ({rate_text(stats.classified, stats.seconds) or '-'})"
        if session.done:
            summary += f"; {len(session.done)} rows kept from the interrupted run"
        if session.skipped:
            summary += f"; skipped {session.skipped} (see 'skipping' lines and the error column)"
        if output is not None:
            summary += f"; wrote {output}"
        say(summary, quiet)
    if session.skipped:
        raise typer.Exit(EXIT_PARTIAL)


def _stdout_keeps_raw_names() -> None:
    """File names that are not valid UTF-8 go to stdout as their original bytes (not a crash)."""
    try:
        sys.stdout.reconfigure(errors="surrogateescape")
    except (AttributeError, ValueError, OSError):
        pass


class _Session:
    """The journal side of a ``classify --output`` run (see :mod:`zeroshot.resume`)."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.journal = None
        self.done: dict = {}
        self.skipped = 0

    def open_journal(self, output: Path, fp: dict, resume: bool, inputs: int) -> None:
        from .resume import Journal, check_resumable, journal_path, read_journal, remove_stale_temporaries

        path = journal_path(output)
        if path.exists():
            state = read_journal(path) if resume else None
            if state is not None:
                check_resumable(state, fp, output)
                self.journal = Journal.reopen(path, state)
                self.done = state.rows
                torn = f" (dropped {state.dropped} torn row{'s' if state.dropped != 1 else ''})" if state.dropped else ""
                say(f"resuming {output}: {len(state.rows)} of {inputs} inputs already done{torn}", self.quiet)
            else:
                say(f"note: starting over; an unfinished run of {output} is discarded (use --resume to continue it)",
                    self.quiet)
            remove_stale_temporaries(output)
        elif resume:
            say(f"note: no unfinished run of {output} to resume; classifying everything", self.quiet)
        if self.journal is None:
            self.journal = Journal.create(path, fp)

    def record(self, pred) -> None:
        if self.journal is not None:
            self.journal.record(pred)

    def sync(self) -> None:
        if self.journal is not None:
            self.journal.sync()

    def merged(self, order, fresh):
        from .resume import merge_in_order

        rows = merge_in_order(order, self.done, fresh) if self.done else fresh
        for pred in rows:
            self.skipped += pred.error is not None
            yield pred

    def close(self) -> None:
        if self.journal is not None:
            self.journal.close()
            self.journal = None

    def interrupted(self, output: Path | None) -> None:
        self.close()
        if output is not None:
            stderr.print(f"interrupted: finished rows are kept; rerun the same command with --resume to continue {printable(str(output))}",
                         markup=False)

    def finished(self) -> None:
        if self.journal is not None:
            self.journal.remove()
            self.journal = None


@app.command()
def models(
    cached: Annotated[bool, typer.Option("--cached", help="Only those whose weights are in the local cache.")] = False,
) -> None:
    """List open_clip architectures with their pretrained tags, marking those already cached."""
    from .models import list_pretrained_models

    with cli_errors():
        entries = list_pretrained_models(cached_only=cached)
        if sys.stdout.isatty():
            from rich.console import Console
            from rich.table import Table

            table = Table("model", "pretrained", "cached", show_edge=False, header_style="bold")
            for e in entries:
                table.add_row(e.arch, e.tag, "yes" if e.cached else "")
            Console().print(table)
        else:
            typer.echo("model\tpretrained\tcached")
            for e in entries:
                typer.echo(f"{e.arch}\t{e.tag}\t{'yes' if e.cached else 'no'}")


@templates_app.callback()
def templates_list(ctx: typer.Context) -> None:
    """List the built-in template sets."""
    from .prompts import TEMPLATE_ALIASES, builtin_template_sets, describe_builtin, load_builtin

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
    from .prompts import resolve_templates

    with cli_errors():
        for template in resolve_templates(name).templates:
            typer.echo(template)


def main() -> None:
    """Console-script entry point."""
    app(prog_name="zeroshot")


# Sub-commands that live in their own modules register themselves on ``app``.
from . import cli_eval  # noqa: E402,F401
