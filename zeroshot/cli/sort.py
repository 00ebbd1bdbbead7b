"""``zeroshot sort``: file images into one folder per label (and ``--undo`` it)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from ..data.decode import DEFAULT_MAX_PIXELS
from ..data.discover import IMAGE_EXTENSIONS
from ..errors import UsageError
from ..models import DEFAULT_PRETRAINED
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
    RecursiveOpt,
    TemplatesOpt,
    WorkersOpt,
    fast_decode_option,
)

SORT_PANEL = "Sorting"
_PAST = {"copy": "copied", "move": "moved", "link": "hard-linked", "symlink": "symlinked"}
_ING = {"copy": "copying", "move": "moving", "link": "linking", "symlink": "linking"}


def sort(
    inputs: Annotated[Optional[list[str]], typer.Argument(metavar="PATH", show_default=False,
        help="Image files, folders, glob patterns, or - to read paths from stdin.")] = None,
    into: Annotated[Optional[Path], typer.Option("--into", rich_help_panel=SORT_PANEL, show_default=False,
        help="The folder to sort into: one sub-folder per label (created when missing).")] = None,
    copy: Annotated[bool, typer.Option("--copy", rich_help_panel=SORT_PANEL,
        help="Copy every image (each copy fsynced and verified by size and SHA-256).")] = False,
    move: Annotated[bool, typer.Option("--move", rich_help_panel=SORT_PANEL,
        help="Move every image (across file systems: copy, verify, then delete the source).")] = False,
    link: Annotated[bool, typer.Option("--link", rich_help_panel=SORT_PANEL,
        help="Hard-link every image (same file system only; no extra space).")] = False,
    symlink: Annotated[bool, typer.Option("--symlink", rich_help_panel=SORT_PANEL,
        help="Make an absolute symbolic link to every image.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", "-n", rich_help_panel=SORT_PANEL,
        help="Print the plan (source, destination, label, score) and change nothing; with --output, write it there.")] = False,
    undo: Annotated[Optional[Path], typer.Option("--undo", metavar="MANIFEST", rich_help_panel=SORT_PANEL,
        show_default=False, dir_okay=False,
        help="Put back everything the sort recorded in MANIFEST did (moves back, removes its copies, links and "
             "empty folders); never overwrites.")] = None,
    manifest: Annotated[Optional[Path], typer.Option("--manifest", rich_help_panel=SORT_PANEL, show_default=False,
        dir_okay=False,
        help="Record every operation here (JSON lines) instead of OUT/.zeroshot-sort-<time>.jsonl; give the same "
             "file again to resume an interrupted sort.")] = None,
    labels: Annotated[Optional[str], typer.Option("--labels", "-L", rich_help_panel=PROMPT_PANEL,
        help="File with one label per line, or a built-in class set (imagenet, cifar10, cifar100).")] = None,
    label: Annotated[Optional[list[str]], typer.Option("--label", "-l", rich_help_panel=PROMPT_PANEL,
        help="A label (repeatable); adds to --labels.")] = None,
    templates: TemplatesOpt = "openai-80",
    min_score: Annotated[Optional[float], typer.Option("--min-score", min=0.0, max=1.0, rich_help_panel=SORT_PANEL,
        help="Images whose best score is below this go to the --unknown-label folder.")] = None,
    unknown_label: Annotated[str, typer.Option("--unknown-label", rich_help_panel=SORT_PANEL,
        help="The folder (label) for images below --min-score.")] = "unsorted",
    model: ModelOpt = None,
    pretrained: PretrainedOpt = DEFAULT_PRETRAINED,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = Precision.auto,
    batch_size: BatchOpt = None,
    workers: WorkersOpt = None,
    output_format: Annotated[OutputFormat, typer.Option("--format", "-f", rich_help_panel=OUTPUT_PANEL,
        help="Of the plan / report: auto = from --output's extension, else a table on a terminal and CSV when piped.")
        ] = OutputFormat.auto,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", rich_help_panel=OUTPUT_PANEL, dir_okay=False,
        help="Write the plan (--dry-run) or the per-file report here (atomically) instead of stdout.")] = None,
    raw_csv: RawCsvOpt = False,
    recursive: RecursiveOpt = True,
    hidden: HiddenOpt = False,
    max_pixels: MaxPixelsOpt = DEFAULT_MAX_PIXELS,
    fast_decode: Annotated[bool, fast_decode_option(True)] = True,
    no_cache: NoCacheOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Sort images into OUT/<label>/ folders (copy, move, hard-link or symlink), with a manifest to --undo it."""
    code = 0
    with cli_errors(quiet, interrupted="interrupted; nothing was sorted"):
        ops = [name for name, on in (("copy", copy), ("move", move), ("link", link), ("symlink", symlink)) if on]
        if undo is not None:
            given = [name for name, on in (("PATH", inputs), ("--into", into), ("--copy/--move/--link/--symlink", ops),
                                           ("--labels", labels), ("-l", label), ("--dry-run", dry_run),
                                           ("--manifest", manifest), ("--min-score", min_score is not None)) if on]
            if given:
                raise UsageError(f"--undo MANIFEST works from the manifest alone; remove {', '.join(given)}")
            code = _undo(undo, output_format.value, output, raw_csv, quiet)
        else:
            if not inputs:
                raise UsageError("give the images to sort: zeroshot sort PATH... --into OUT --copy|--move|--link|"
                                 "--symlink --labels FILE (or -l LABEL ...); or zeroshot sort --undo MANIFEST")
            if into is None:
                raise UsageError("--into OUT is missing: the folder that gets one sub-folder per label")
            if len(ops) != 1:
                raise UsageError("choose what to do with the images: one of --copy, --move, --link, --symlink"
                                 + (f" (not {' and '.join('--' + o for o in ops)})" if ops else ""))
            code = _sort(inputs, into, ops[0], dry_run, manifest, labels, label, templates, min_score, unknown_label,
                         model, pretrained, device, precision.value, batch_size, workers, output_format.value, output,
                         raw_csv, recursive, hidden, max_pixels, fast_decode, no_cache, quiet)
    if code:
        raise typer.Exit(code)


def _check_output(output: Path | None) -> None:
    if output is not None and not (output.parent if str(output.parent) else Path(".")).is_dir():
        raise UsageError(f"--output {output}: folder {output.parent} does not exist")


def _sort(inputs: list[str], into: Path, op: str, dry_run: bool, manifest: Path | None, labels: str | None,
          label: list[str] | None, templates: str, min_score: float | None, unknown_label: str, model: str | None,
          pretrained: str, device: str, precision: str, batch_size: int | None, workers: int | None,
          output_format: str, output: Path | None, raw_csv: bool, recursive: bool, hidden: bool, max_pixels: int,
          fast_decode: bool, no_cache: bool, quiet: bool) -> int:
    from ..data.discover import discover
    from ..encode.embed import EmbedSettings
    from ..models import load_model, resolve_weights
    from ..output.rows import DictRecord
    from ..output.writers import check_writable, choose_format, write_records
    from ..prompts import resolve_labels, resolve_templates
    from ..tasks.classify import ZeroShotClassifier
    from ..tasks.sort import REPORT_COLUMNS, SortResult, iter_sort, plan_sort

    started = time.perf_counter()
    label_set = resolve_labels(labels, label)
    template_set = resolve_templates(templates)
    fmt = choose_format(output_format, output, sys.stdout.isatty())
    _check_output(output)
    if into.exists() and not into.is_dir():
        raise UsageError(f"--into {into}: is a file, not a folder")
    found = discover(inputs, recursive=recursive, include_hidden=hidden)
    if not found.sources:
        exts = " ".join(sorted(IMAGE_EXTENSIONS))
        problems = found.problems
        why = f" ({printable(problems[0][0])}: {problems[0][1]})" if problems else ""
        raise UsageError(f"found 0 images in {', '.join(inputs)}{why}; supported extensions are {exts}")
    check_writable("source", [s.path for s in found.items], fmt, output)
    weights = resolve_weights(model, pretrained)
    with status(f"loading {weights.name} ({pretrained or 'random init'})", quiet):
        loaded = load_model(weights, device=device, precision=precision)
    with Progress(quiet) as progress:
        clf = ZeroShotClassifier(label_set, template_set, model=loaded, cache=not no_cache,
                                 text_progress=progress.tracker("encoding prompts"), allow_duplicate_labels=True)

    with Progress(quiet) as progress:
        task = progress.add_task("classifying", total=len(found))

        def classified(done: int, total: int) -> None:
            progress.update(task, done, total, rate_text(clf.last_run.classified, clf.last_run.seconds))

        def report(pred: Any) -> None:
            if pred.error is not None:
                progress.skipping(pred.path, pred.error)

        settings = EmbedSettings(batch_size, workers, max_pixels, fast_decode)
        plan = plan_sort(clf, found, into, op, min_score=min_score, unknown_label=unknown_label, settings=settings,
                         manifest=manifest, on_progress=classified, on_prediction=report)
    classify_seconds = time.perf_counter() - started
    shown_manifest = printable(str(plan.manifest))
    if plan.resume is not None and dry_run:
        say(f"note: {printable(str(into))} holds an interrupted sort ({shown_manifest}, {plan.resumed} images done); "
            "this plan is what running the command would still do", quiet)
    elif plan.resume is not None:
        say(f"resuming the interrupted sort recorded in {shown_manifest}: {plan.resumed} images already done", quiet)
    if plan.left_alone:
        say(f"note: {plan.left_alone} images already in a label folder of {printable(str(into))} are left where they are",
            quiet)
    _stdout_keeps_raw_names(output)
    skipped = sum(1 for item in plan.items if item.status == "skipped")
    planned = len(plan.items) - skipped
    folders = len({os.path.dirname(item.destination) for item in plan.items if item.destination})

    if dry_run:
        write_records((DictRecord(item.row()) for item in plan.items), fmt, REPORT_COLUMNS, output,
                      safe_csv=not raw_csv)
        summary = (f"dry run: would {op} {planned} of {len(plan.items)} images into {printable(str(into))} "
                   f"({folders} folder{'s' if folders != 1 else ''}) in {classify_seconds:.1f}s")
        if skipped:
            summary += f"; skipped {skipped} (see 'skipping' lines)"
        summary += "; nothing was changed" + (f"; wrote the plan to {printable(str(output))}" if output else "")
        say(summary, quiet)
        return EXIT_PARTIAL if skipped else 0

    result = SortResult(plan.manifest, op)
    hint = (f"interrupted; every finished file is recorded in {shown_manifest}: run the same command again to "
            f"finish, or put everything back with: zeroshot sort --undo {shown_manifest}")
    with cli_errors(quiet, interrupted=hint), Progress(quiet) as progress:
        task = progress.add_task(_ING[op], total=len(plan.items))

        def advance(done: int, total: int) -> None:
            progress.update(task, done, total)

        items = iter_sort(plan, advance, result)

        def rows():
            for item in items:
                if item.status == "failed":
                    progress.print(f"could not {op} {printable(item.source)}: {printable(item.error or '')}")
                yield DictRecord(item.row())

        try:
            write_records(rows(), fmt, REPORT_COLUMNS, output, safe_csv=not raw_csv)
        finally:
            items.close()  # whatever stopped the writer, the manifest is closed and unlocked now
    seconds = time.perf_counter() - started
    shown_manifest = printable(str(result.manifest))
    summary = (f"{_PAST[op]} {result.done} of {len(plan.items)} images into {printable(str(into))} "
               f"({folders} folder{'s' if folders != 1 else ''}) in {seconds:.1f}s")
    if result.resumed:
        summary += f"; {result.resumed} done before by the interrupted run"
    if result.skipped:
        summary += f"; skipped {result.skipped} (see 'skipping' lines)"
    if result.failed:
        summary += f"; failed {result.failed} (see 'could not' lines; those files were left as they are)"
    if output is not None:
        summary += f"; wrote {printable(str(output))}"
    summary += f"; manifest {shown_manifest} (undo: zeroshot sort --undo {shown_manifest})"
    say(summary, quiet)
    return EXIT_PARTIAL if result.skipped or result.failed else 0


def _undo(manifest: Path, output_format: str, output: Path | None, raw_csv: bool, quiet: bool) -> int:
    from ..output.rows import DictRecord
    from ..output.writers import choose_format, write_records
    from ..tasks.sort import UNDO_COLUMNS, undo_sort

    started = time.perf_counter()
    fmt = choose_format(output_format, output, sys.stdout.isatty())
    _check_output(output)
    shown_manifest = printable(str(manifest))
    hint = f"interrupted; run 'zeroshot sort --undo {shown_manifest}' again to finish putting things back"
    with cli_errors(quiet, interrupted=hint), Progress(quiet) as progress:
        task = progress.add_task("undoing", total=None)

        def report(item: Any) -> None:
            if item.status == "failed":
                progress.print(f"could not undo {item.op} {printable(item.destination or '')}: "
                               f"{printable(item.error or '')}")

        result = undo_sort(manifest, on_item=report, on_progress=lambda done, total: progress.update(task, done, total))
    _stdout_keeps_raw_names(output)
    write_records((DictRecord(item.row()) for item in result.items), fmt, UNDO_COLUMNS, output, safe_csv=not raw_csv)
    seconds = time.perf_counter() - started
    undone = sum(1 for item in result.items if item.status == "undone")
    gone = sum(1 for item in result.items if item.status == "gone")
    if not result.items:
        summary = f"undo: nothing left to undo in {shown_manifest}"
    else:
        summary = f"undo: put back {undone + gone} of {len(result.items)} operations in {seconds:.1f}s"
        if gone:
            summary += f" ({gone} copies or links were already gone)"
    if result.failed:
        summary += (f"; could not undo {len(result.failed)} (see 'could not undo' lines; run --undo again once "
                    "they are fixed)")
    if result.folders_removed:
        summary += f"; removed {len(result.folders_removed)} folders it had created"
    if result.folders_kept:
        summary += f"; kept {len(result.folders_kept)} folders it had created that are not empty"
    summary += "; deleted the manifest" if result.manifest_removed else f"; manifest {shown_manifest} updated"
    say(summary, quiet)
    return EXIT_PARTIAL if result.failed else 0


def _stdout_keeps_raw_names(output: Path | None) -> None:
    """File names that are not valid UTF-8 go to stdout as their original bytes (not a crash)."""
    if output is not None:
        return
    try:
        sys.stdout.reconfigure(errors="surrogateescape")
    except (AttributeError, ValueError, OSError):
        pass
