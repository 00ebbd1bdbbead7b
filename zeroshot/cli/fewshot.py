"""``zeroshot fewshot``: fit a linear head on a few labelled images per class."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..data.decode import DEFAULT_MAX_PIXELS
from ..errors import UsageError
from ..models import DEFAULT_PRETRAINED
from .console import EXIT_PARTIAL, Progress, cli_errors, printable, say, status
from .options import (
    INPUT_PANEL,
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
    TemplatesOpt,
    WorkersOpt,
)
from .store import StoreOpt, command_store

HEAD_PANEL = "Head"


def fewshot(
    data: Annotated[str, typer.Argument(metavar="DATA", show_default=False,
        help="Labelled images: a folder of class sub-folders, or a CSV manifest with path and label columns.")],
    out: Annotated[Path, typer.Option("--out", "-o", dir_okay=False, rich_help_panel=HEAD_PANEL,
        help="The head (.safetensors; OUT.json beside it holds labels, model and fitting settings).")],
    reg: Annotated[str, typer.Option("--reg", rich_help_panel=HEAD_PANEL,
        help="Pull toward the zero-shot weights: reg * (||W - W_zs||^2 + ||b||^2), large = stay zero-shot; "
             "auto = chosen by 4-fold cross-validation on DATA's images.")] = "auto",
    shots: Annotated[Optional[int], typer.Option("--shots", "-k", min=1, rich_help_panel=HEAD_PANEL,
        help="Use only K images per class (seeded sample; default: all of DATA).")] = None,
    seed: Annotated[int, typer.Option("--seed", rich_help_panel=HEAD_PANEL, help="Seed of the --shots sample.")] = 0,
    classnames: Annotated[Optional[Path], typer.Option("--classnames", dir_okay=False, rich_help_panel=INPUT_PANEL,
        help="File mapping folder (or label) -> class name.")] = None,
    templates: TemplatesOpt = "openai-80",
    model: ModelOpt = None,
    pretrained: PretrainedOpt = DEFAULT_PRETRAINED,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = Precision.auto,
    batch_size: BatchOpt = None,
    workers: WorkersOpt = None,
    hidden: HiddenOpt = False,
    max_pixels: MaxPixelsOpt = DEFAULT_MAX_PIXELS,
    no_cache: NoCacheOpt = False,
    store: StoreOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Fit a linear head on a few labelled images per class, starting from (and regularised toward)
    the zero-shot classifier; use it with 'zeroshot classify --head OUT'."""
    from dataclasses import replace

    from ..data.catalog import load_dataset
    from ..encode.cache import ClassWeightCache
    from ..encode.embed import EmbedSettings
    from ..encode.text import build_class_weights
    from ..models import load_model, resolve_weights
    from ..prompts import resolve_templates
    from ..train.fewshot import embed_dataset, fit_head, parse_reg, sample_shots, save_head

    started = time.perf_counter()
    skipped = 0
    with cli_errors(quiet):
        if out.suffix.lower() != ".safetensors":
            raise UsageError(f"--out {out}: the head is written as safetensors; name the file *.safetensors")
        if not (out.parent if str(out.parent) else Path(".")).is_dir():
            raise UsageError(f"--out {out}: folder {out.parent} does not exist")
        if store is not None and no_cache:
            raise UsageError("--store and --no-cache contradict each other: --no-cache uses no store")
        reg = parse_reg(reg)
        template_set = resolve_templates(templates)
        kind = "folder" if Path(data).expanduser().is_dir() else "csv"
        dataset = load_dataset(kind, data, classnames=classnames, include_hidden=hidden)
        if shots is not None:
            keep = sample_shots(dataset.targets, shots, seed)
            dataset = replace(dataset, samples=[dataset.samples[i] for i in keep])
        weights = resolve_weights(model, pretrained)
        with status(f"loading {weights.name} ({pretrained or 'random init'})", quiet):
            loaded = load_model(weights, device=device, precision=precision.value)
        embeddings = command_store(store, no_cache, quiet)
        try:
            with Progress(quiet) as progress:
                cache = None if no_cache else ClassWeightCache()
                zero_shot = build_class_weights(loaded, dataset.classnames, template_set,
                                                progress=progress.tracker("encoding prompts"), cache=cache)
                embedded = embed_dataset(loaded, dataset, EmbedSettings(batch_size, workers, max_pixels), embeddings,
                                         progress.skipping, progress.tracker("images", rate_unit="img"))
        finally:
            if embeddings is not None:
                embeddings.close()
        skipped = len(embedded.errors)
        head = fit_head(loaded, embedded, template_set, reg, classnames=dataset.classnames, zero_shot=zero_shot)
        head.info["data"] = str(data)
        head.info["shots"] = shots
        head.info["seed"] = seed
        save_head(head, out)
        per_class = sorted(set(head.info["images_per_class"].values()))
        counts = f"{per_class[0]}" if len(per_class) == 1 else f"{per_class[0]}-{per_class[-1]}"
        summary = (f"fitted a head for {len(head.labels)} classes on {len(embedded.rows)} images ({counts} per class) "
                   f"in {time.perf_counter() - started:.1f}s; wrote {printable(str(out))} and {printable(out.name)}.json")
        if skipped:
            summary += f"; skipped {skipped} unreadable image(s)"
        say(summary, quiet)
    if skipped:
        raise typer.Exit(EXIT_PARTIAL)
