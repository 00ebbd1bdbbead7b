"""``zeroshot index``: encode images once into an embedding store (incremental)."""

from __future__ import annotations

import os
import time
from typing import Annotated

import typer

from ..data.decode import DEFAULT_MAX_PIXELS
from ..data.discover import IMAGE_EXTENSIONS
from ..errors import UsageError
from ..models import DEFAULT_PRETRAINED
from .cluster import ray_encoder
from .console import EXIT_PARTIAL, Progress, cli_errors, printable, rate_text, say, status
from .options import (
    BatchOpt,
    DeviceOpt,
    HiddenOpt,
    MaxPixelsOpt,
    ModelOpt,
    Precision,
    PrecisionOpt,
    PretrainedOpt,
    QuietOpt,
    RayActorCpusOpt,
    RayActorsOpt,
    RayDecodeCpusOpt,
    RayOpt,
    RecursiveOpt,
    Runtime,
    RuntimeOpt,
    WorkersOpt,
    fast_decode_option,
)
from .store import StoreOpt

_STAGES = {"checking": "checking files", "encoding": "encoding"}


def index(
    inputs: Annotated[list[str], typer.Argument(metavar="PATH...", show_default=False,
        help="Image files, folders, glob patterns, or - to read paths from stdin.")],
    store: StoreOpt = None,
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
    ray: RayOpt = None,
    ray_actors: RayActorsOpt = None,
    ray_decode_cpus: RayDecodeCpusOpt = 1.0,
    ray_actor_cpus: RayActorCpusOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Encode images into the embedding store once; reruns encode only new and changed files and drop those gone."""
    from ..data.discover import discover
    from ..encode.embed import EmbedSettings
    from ..models import load_model, resolve_weights
    from ..store.db import Store

    started = time.perf_counter()
    stats = None
    with cli_errors(quiet, interrupted="interrupted; every finished batch is stored: rerun to continue"):
        found = discover(inputs, recursive=recursive, include_hidden=hidden)
        folders = [p for p in inputs if p != "-" and os.path.isdir(p)]
        if not found.sources and not folders:
            exts = " ".join(sorted(IMAGE_EXTENSIONS))
            problems = found.problems
            why = f" ({printable(problems[0][0])}: {problems[0][1]})" if problems else ""
            raise UsageError(f"found 0 images in {', '.join(inputs)}{why}; supported extensions are {exts}")
        weights = resolve_weights(model, pretrained)  # an empty --pretrained is a usage error there
        encoder = ray_encoder(ray, ray_actors, ray_decode_cpus, ray_actor_cpus, quiet)
        with Store.open(store) as st:
            with status(f"loading {weights.name} ({pretrained})", quiet):
                loaded = load_model(weights, device=device, precision=precision.value, runtime=runtime.value)
            with Progress(quiet) as progress:
                tasks: dict[str, int] = {}
                encode_started = [0.0]

                def on_progress(stage: str, done: int, total: int) -> None:
                    if stage not in tasks:
                        if not total:
                            return
                        tasks[stage] = progress.add_task(_STAGES.get(stage, stage), total=total)
                        encode_started[0] = time.perf_counter()
                    rate = rate_text(done, time.perf_counter() - encode_started[0]) if stage == "encoding" else ""
                    progress.update(tasks[stage], done, total, rate)

                def on_skip(path: str, reason: str) -> None:
                    progress.skipping(path, reason)

                settings = EmbedSettings(batch_size, workers, max_pixels, fast_decode)
                stats = st.index(loaded, inputs, settings, found=found, on_progress=on_progress, on_skip=on_skip,
                                  encoder=encoder)
            held = st.count(stats.key)
        seconds = time.perf_counter() - started
        rate = rate_text(stats.encoded, stats.seconds)
        say(f"index: {stats.encoded} encoded, {stats.reused} reused, {stats.renamed} renamed, {stats.copied} copied, "
            f"{stats.dropped} dropped, {stats.skipped} skipped of {stats.total} inputs in {seconds:.1f}s"
            f"{' (' + rate + ')' if stats.encoded and rate else ''}; store {printable(str(st.location))} holds "
            f"{held} for {printable(stats.key.describe())} (key {stats.key.id})", quiet)
    if stats is not None and stats.skipped:
        raise typer.Exit(EXIT_PARTIAL)
