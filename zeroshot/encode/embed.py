"""THE image -> embedding loop: every command that looks at images goes through here.

    for batch in embed_images(loaded, discover(["photos/"]).items, EmbedSettings(fast_decode=True)):
        batch.indices, batch.embeddings, batch.errors

Decoding runs in worker processes (:mod:`zeroshot.data.loader`), pixels travel as uint8 and are
normalised on the model's device, and the model runs the class-token shortcut where it applies.
Batches come out in input order; inputs that failed (already at discovery, or while decoding)
are reported in ``errors`` at their place, never dropped and never fatal. Nothing here knows
about labels.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..data.decode import DEFAULT_MAX_PIXELS
from ..data.discover import Source
from ..data.loader import ImageDataset, MemoryImages, default_workers, iterate_batches
from ..data.preprocess import Preprocessor
from ..models import LoadedModel
from .text import NonFiniteError
from .vision import encode_images


def default_batch_size(device: torch.device) -> int:
    return 256 if device.type == "cuda" else 32


@dataclass(frozen=True)
class EmbedSettings:
    """How images are read and batched. ``fast_decode`` lets large JPEGs decode at a reduced
    scale (DCT scaling, down to twice the model input): faster, not bit-exact with the model's
    own preprocessing. ``None`` batch size and workers are sized to the device."""

    batch_size: int | None = None
    workers: int | None = None
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    fast_decode: bool = False
    decode_timeout: float = 300.0


@dataclass
class Embedded:
    """One batch of results: L2-normalised float32 embeddings (on the CPU) for ``indices`` and
    ``(index, "code: detail")`` for the inputs that could not be used. Indices are positions in
    the input sequence; every input appears in exactly one batch, in ascending order."""

    indices: list[int] = field(default_factory=list)
    embeddings: torch.Tensor | None = None
    errors: list[tuple[int, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.indices) + len(self.errors)


def known_failures(inputs: Sequence[Source] | Sequence[Any]) -> tuple[dict[int, str], list[int]]:
    """``({index: "code: detail"}, [indices to decode])``: image files that failed already at
    discovery are reported as they are, never decoded."""
    files = all(isinstance(item, Source) for item in inputs)
    known = {i: str(item.error) for i, item in enumerate(inputs) if files and item.error is not None}
    return known, [i for i in range(len(inputs)) if i not in known]


def with_known(errors: list[tuple[int, str]], indices: list[int], pending: list[int],
               known: dict[int, str]) -> list[tuple[int, str]]:
    """A batch's errors plus the known failures (``pending``, ascending; taken from it) that come
    before its last input, sorted: every input is reported at its place in input order."""
    last = max(indices + [i for i, _ in errors])
    errors = list(errors)
    while pending and pending[0] < last:
        index = pending.pop(0)
        errors.append((index, known[index]))
    return sorted(errors)


def embed_images(
    loaded: LoadedModel,
    inputs: Sequence[Source] | Sequence[Any],
    settings: EmbedSettings = EmbedSettings(),
    preprocessor: Preprocessor | None = None,
) -> Iterator[Embedded]:
    """Embed ``inputs`` in order: :class:`~zeroshot.data.discover.Source` items (image files;
    those carrying an ``error`` are reported as such) or images in memory (PIL images or HxWxC
    uint8 arrays, or items read in the decode worker by their ``load(max_pixels, draft_size)``,
    e.g. :class:`~zeroshot.data.decode.Member` of a WebDataset shard)."""
    for (batch,) in embed_images_many([loaded], inputs, settings, preprocessor):
        yield batch


def embed_images_many(
    models: Sequence[LoadedModel],
    inputs: Sequence[Source] | Sequence[Any],
    settings: EmbedSettings = EmbedSettings(),
    preprocessor: Preprocessor | None = None,
) -> Iterator[list[Embedded]]:
    """:func:`embed_images` for several models that share one preprocessing: every image is
    decoded and preprocessed once, then encoded by each model; yields one :class:`Embedded`
    per model (same indices and errors). The first model's preprocessing (and device, for the
    decode workers) is used: group models by preprocessing before calling this."""
    if not models:
        raise ValueError("embed_images_many needs at least one model")
    first = models[0]
    pre = preprocessor or Preprocessor(first.preprocess)
    known, todo = known_failures(inputs)
    if all(isinstance(item, Source) for item in inputs):
        dataset: torch.utils.data.Dataset = ImageDataset([inputs[i] for i in todo], pre, settings.max_pixels,
                                                         settings.fast_decode)
    else:
        dataset = MemoryImages(list(inputs), pre, settings.max_pixels, settings.fast_decode)
    device = first.device
    batch_size = settings.batch_size or default_batch_size(device)
    workers = default_workers(device) if settings.workers is None else settings.workers
    workers = min(workers, max(0, (len(todo) + batch_size - 1) // batch_size))
    pending = sorted(known)  # known failures not yet reported, ascending
    batches = iterate_batches(dataset, batch_size, workers, pin_memory=device.type == "cuda",
                              timeout=settings.decode_timeout if workers else 0,
                              low_priority=device.type == "cpu")
    for batch in batches:
        indices = [todo[i] for i in batch.indices]
        errors = with_known([(todo[i], e) for i, e in batch.errors], indices, pending, known)
        outs = [Embedded(indices=list(indices), errors=list(errors)) for _ in models]
        if batch.pixels is not None:
            for loaded, out in zip(models, outs):
                out.embeddings = encode_images(loaded, pre.finish(batch.pixels, loaded.device)).cpu()
                if not torch.isfinite(out.embeddings).all():
                    raise NonFiniteError(loaded, "the image tower")
        yield outs
    if pending:
        yield [Embedded(errors=[(i, known[i]) for i in pending]) for _ in models]
