"""``zeroshot classify``: options in, one library call, progress and messages out."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..data.decode import DEFAULT_MAX_PIXELS
from ..data.discover import IMAGE_EXTENSIONS
from ..errors import UsageError
from ..models import DEFAULT_PRETRAINED
from .cluster import ray_encoder
from .console import EXIT_PARTIAL, Progress, cli_errors, printable, rate_text, say, status
from .options import (
    OUTPUT_PANEL,
    PROMPT_PANEL,
    BatchOpt,
    DeviceOpt,
    HiddenOpt,
    MaxPixelsOpt,
    ModelOpt,
    NoCacheOpt,
    OutputFormat,
    Precision,
    PrecisionOpt,
    PretrainedOpt,
    QuietOpt,
    RawCsvOpt,
    RayActorCpusOpt,
    RayActorsOpt,
    RayDecodeCpusOpt,
    RayOpt,
    RecursiveOpt,
    ReportOpt,
    Runtime,
    RuntimeOpt,
    TemplatesOpt,
    WorkersOpt,
    fast_decode_option,
)
from .store import StoreOpt, command_store


def classify(
    inputs: Annotated[list[str], typer.Argument(metavar="PATH", show_default=False,
        help="Image files, folders, glob patterns, or - to read paths from stdin.")],
    labels: Annotated[Optional[str], typer.Option("--labels", "-L", rich_help_panel=PROMPT_PANEL,
        help="File with one label per line, or a built-in class set (imagenet, cifar10, cifar100).")] = None,
    label: Annotated[Optional[list[str]], typer.Option("--label", "-l", rich_help_panel=PROMPT_PANEL,
        help="A label (repeatable); adds to --labels.")] = None,
    templates: TemplatesOpt = "openai-80",
    model: ModelOpt = None,
    pretrained: PretrainedOpt = DEFAULT_PRETRAINED,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = Precision.auto,
    runtime: RuntimeOpt = Runtime.auto,
    batch_size: BatchOpt = None,
    workers: WorkersOpt = None,
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=1, rich_help_panel=OUTPUT_PANEL,
        help="Labels to report per image, best first.")] = 1,
    min_score: Annotated[Optional[float], typer.Option("--min-score", min=0.0, max=1.0, rich_help_panel=OUTPUT_PANEL,
        help="When the best score is below this, the label column says --unknown-label; score and the "
             "ranked columns are unchanged, and a top_label column names the model's best label.")] = None,
    unknown_label: Annotated[str, typer.Option("--unknown-label", rich_help_panel=OUTPUT_PANEL,
        help="The label column's value below --min-score.")] = "unknown",
    output_format: Annotated[OutputFormat, typer.Option("--format", "-f", rich_help_panel=OUTPUT_PANEL,
        help="auto: from --output's extension, else a table on a terminal and CSV when piped.")] = OutputFormat.auto,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", rich_help_panel=OUTPUT_PANEL, dir_okay=False,
        help="Write here (atomically) instead of stdout.")] = None,
    resume: Annotated[bool, typer.Option("--resume", rich_help_panel=OUTPUT_PANEL,
        help="Continue an interrupted run writing the same --output: rows already done are kept, the rest "
             "classified. Refused when model, weights, labels or templates changed.")] = False,
    raw_csv: RawCsvOpt = False,
    html_report: ReportOpt = None,
    recursive: RecursiveOpt = True,
    hidden: HiddenOpt = False,
    max_pixels: MaxPixelsOpt = DEFAULT_MAX_PIXELS,
    fast_decode: Annotated[bool, fast_decode_option(True)] = True,
    no_cache: NoCacheOpt = False,
    store: StoreOpt = None,
    head: Annotated[Optional[Path], typer.Option("--head", rich_help_panel=PROMPT_PANEL, dir_okay=False,
        help="A linear head from 'zeroshot fewshot' instead of the text side: its labels, its weights.")] = None,
    ray: RayOpt = None,
    ray_actors: RayActorsOpt = None,
    ray_decode_cpus: RayDecodeCpusOpt = 1.0,
    ray_actor_cpus: RayActorCpusOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Classify images: print the most likely label(s) and probabilities for every image.
    Images already in the embedding store are not encoded again (see 'zeroshot index')."""
    from ..data.discover import discover
    from ..encode.embed import EmbedSettings
    from ..models import load_model, resolve_weights
    from ..output.journal import ResumableOutput, fingerprint
    from ..output.report import check_report_path
    from ..output.writers import choose_format
    from ..prompts import resolve_labels, resolve_templates
    from ..tasks.classify import RankSettings, ZeroShotClassifier, classify_to_file

    started = time.perf_counter()
    stats = None
    embeddings = None
    hint = f"; finished rows are kept: rerun with --resume to continue {printable(str(output))}" if output else ""
    with cli_errors(quiet, interrupted="interrupted" + hint):
        if resume and output is None:
            raise UsageError("--resume needs --output FILE: the file the interrupted run was writing")
        fitted = None
        if head is not None:
            from ..heads import read_head

            if labels or label:
                raise UsageError("--head brings its own labels; drop --labels/--label")
            fitted = read_head(head)
            label_set = fitted.labels
            template_set = resolve_templates("{}")
        else:
            label_set = resolve_labels(labels, label)
            template_set = resolve_templates(templates)
        fmt = choose_format(output_format.value, output, sys.stdout.isatty())
        if output is not None and not (output.parent if str(output.parent) else Path(".")).is_dir():
            raise UsageError(f"--output {output}: folder {output.parent} does not exist")
        check_report_path(html_report)
        found = discover(inputs, recursive=recursive, include_hidden=hidden)
        if not found.sources:
            exts = " ".join(sorted(IMAGE_EXTENSIONS))
            problems = found.problems
            why = f" ({printable(problems[0][0])}: {problems[0][1]})" if problems else ""
            raise UsageError(f"found 0 images in {', '.join(inputs)}{why}; supported extensions are {exts}")
        rank = RankSettings(top_k, min_score, unknown_label).capped(len(label_set))
        if rank.top_k < top_k:
            say(f"note: --top-k {top_k} is more than the {len(label_set)} labels; reporting all {rank.top_k}", quiet)
        weights = resolve_weights(model, pretrained)

        journal = None
        if output is not None:  # checked before the model loads: a refused --resume fails fast
            fp_templates = template_set.templates if fitted is None else (f"<head {fitted.digest}>",)
            fp = fingerprint(weights.name, weights.weights_id, label_set, fp_templates,
                             rank.top_k, min_score, unknown_label)
            journal = ResumableOutput.open(output, fp, resume)
            _report_journal(journal, len(found), quiet)

        if store is not None and no_cache:
            raise UsageError("--store and --no-cache contradict each other: --no-cache uses no store")
        encoder = ray_encoder(ray, ray_actors, ray_decode_cpus, ray_actor_cpus, quiet)
        try:
            embeddings = command_store(store, no_cache, quiet)
            with status(f"loading {weights.name} ({pretrained or 'random init'})", quiet):
                loaded = load_model(weights, device=device, precision=precision.value, runtime=runtime.value)
            model_seconds = time.perf_counter() - started
            with Progress(quiet) as progress:
                clf = ZeroShotClassifier(label_set, template_set, model=loaded, cache=not no_cache,
                                         text_progress=progress.tracker("encoding prompts"), store=embeddings,
                                         allow_duplicate_labels=True,  # already validated by resolve_labels
                                         head=fitted, encoder=encoder)
            text_seconds = time.perf_counter() - started - model_seconds
            if output is None:
                _stdout_keeps_raw_names()

            with Progress(quiet) as progress:
                todo = len(found) - (len(journal.done) if journal else 0)
                task = progress.add_task("classifying", total=todo)

                def advance(done: int, total: int) -> None:
                    progress.update(task, done, total, rate_text(clf.last_run.classified, clf.last_run.seconds))

                def report(pred) -> None:
                    if pred.error is not None:
                        progress.skipping(pred.path, pred.error)

                settings = EmbedSettings(batch_size, workers, max_pixels, fast_decode)
                stats = classify_to_file(clf, found, output, format=fmt, settings=settings, rank=rank,
                                         journal=journal, safe_csv=not raw_csv,
                                         on_progress=advance, on_prediction=report,
                                         report=html_report, on_report_progress=progress.tracker("report"))
        except BaseException:
            if journal is not None:  # a fresh journal with no rows is not worth keeping
                if journal.resumed or journal.journal is None:
                    journal.close()
                else:
                    journal.finish()
            raise
        finally:
            if embeddings is not None:
                embeddings.close()
        total_seconds = time.perf_counter() - started
        summary = (f"classified {stats.classified} of {stats.total} images in {total_seconds:.1f}s "
                   f"(model {model_seconds:.1f}s, prompts {text_seconds:.1f}s, images {stats.seconds:.1f}s"
                   f"{', ' + rate_text(stats.classified, stats.seconds) if stats.seconds else ''}"
                   f"; precision {loaded.describe_precision()})")
        for note in loaded.notes:
            say(f"note: {note}", quiet)
        if stats.store_used:
            summary += f"; encoded {stats.encoded}, {stats.from_store} from the store"
        if stats.kept:
            summary += f"; {stats.kept} rows kept from the interrupted run"
        if stats.error_rows:
            summary += f"; skipped {stats.error_rows} (see 'skipping' lines and the error column)"
        if output is not None or html_report is not None:
            summary += "; wrote " + ", ".join(printable(str(p)) for p in (output, html_report) if p is not None)
        say(summary, quiet)
    if stats is not None and stats.error_rows:
        raise typer.Exit(EXIT_PARTIAL)


def _report_journal(journal, inputs: int, quiet: bool) -> None:
    output = printable(str(journal.output))
    if journal.resumed:
        torn = f" (dropped {journal.dropped} torn row{'s' if journal.dropped != 1 else ''})" if journal.dropped else ""
        say(f"resuming {output}: {len(journal.done)} of {inputs} inputs already done{torn}", quiet)
    elif journal.discarded:
        say(f"note: starting over; an unfinished run of {output} is discarded (use --resume to continue it)", quiet)
    elif journal.nothing_to_resume:
        say(f"note: no unfinished run of {output} to resume; classifying everything", quiet)


def _stdout_keeps_raw_names() -> None:
    """File names that are not valid UTF-8 go to stdout as their original bytes (not a crash)."""
    try:
        sys.stdout.reconfigure(errors="surrogateescape")
    except (AttributeError, ValueError, OSError):
        pass
