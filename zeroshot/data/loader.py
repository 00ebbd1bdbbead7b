"""Batches of preprocessed pixels from files or in-memory images, decoded in worker processes.

A decoder that crashes or hangs cannot take a run down: the loader is restarted, the batch that
was due is decoded again one file per process, and only the culprit is reported
(``worker_failed``). Every batch carries the pixels of the good inputs and the errors of the
others, in input order.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from ..errors import DECODE_ERROR, WORKER_FAILED, ImageError
from .decode import DEFAULT_MAX_PIXELS, open_image, to_rgb
from .discover import Source
from .preprocess import Preprocessor

_POLL_SECONDS = 2.0  # how often a waiting loader checks that its workers are alive
Item = tuple[int, "torch.Tensor | None", "str | None"]  # (index, uint8 pixels, "code: detail")


@dataclass
class Batch:
    """Decoded pixels for the good images of one batch plus the errors of the others."""

    indices: list[int]
    pixels: torch.Tensor | None
    errors: list[tuple[int, str]]


class ImageDataset(torch.utils.data.Dataset):
    """Image files (``Source.fs_path``) -> preprocessed uint8 pixels, or the reason they failed."""

    def __init__(self, sources: Sequence[Source], pre: Preprocessor, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                 fast_decode: bool = False) -> None:
        self.sources = sources
        self.pre = pre
        self.max_pixels = max_pixels
        self.draft_size = pre.draft_size(fast_decode)

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, index: int) -> Item:
        try:
            img = open_image(self.sources[index].fs_path, self.max_pixels, self.draft_size)
            return index, self.pre.pixels(img), None
        except ImageError as err:
            return index, None, str(err)
        except Exception as err:  # noqa: BLE001 - e.g. a transform failing on a 1x1 image
            return index, None, f"{DECODE_ERROR}: {type(err).__name__}: {err}"


class MemoryImages(torch.utils.data.Dataset):
    """Same contract as :class:`ImageDataset` for images held in memory (PIL images or HxWxC
    uint8 arrays, e.g. CIFAR) or read lazily in the worker (items with a ``load(max_pixels,
    draft_size)`` method, e.g. archive members)."""

    def __init__(self, images: Sequence[Any], pre: Preprocessor, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                 fast_decode: bool = False) -> None:
        self.images, self.pre = images, pre
        self.max_pixels = max_pixels
        self.draft_size = pre.draft_size(fast_decode)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Item:
        try:
            img = self.images[index]
            if hasattr(img, "load") and not isinstance(img, Image.Image):
                img = img.load(self.max_pixels, self.draft_size)
            img = img if isinstance(img, Image.Image) else Image.fromarray(img)
            return index, self.pre.pixels(to_rgb(img)), None
        except ImageError as err:
            return index, None, str(err)
        except Exception as err:  # noqa: BLE001
            return index, None, f"{DECODE_ERROR}: {type(err).__name__}: {err}"


def image_dataset(inputs: Sequence[Any], pre: Preprocessor, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                  fast_decode: bool = False) -> torch.utils.data.Dataset:
    """:class:`ImageDataset` for image files (:class:`~zeroshot.data.discover.Source`), else
    :class:`MemoryImages`."""
    if all(isinstance(item, Source) for item in inputs):
        return ImageDataset(inputs, pre, max_pixels, fast_decode)
    return MemoryImages(list(inputs), pre, max_pixels, fast_decode)


def decode_here(inputs: Sequence[Any], pre: Preprocessor, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                fast_decode: bool = False) -> Batch:
    """One batch decoded in this process (for callers that bring their own processes, e.g. Ray
    tasks): the same decoding, checks and reason codes as the worker processes."""
    dataset = image_dataset(inputs, pre, max_pixels, fast_decode)
    return collate([dataset[i] for i in range(len(inputs))])


def collate(items: list[Item]) -> Batch:
    good = [(i, t) for i, t, e in items if e is None]
    errors = [(i, e) for i, _, e in items if e is not None]
    pixels = torch.stack([t for _, t in good]) if good else None
    return Batch([i for i, _ in good], pixels, errors)


WORKER_NICENESS_ON_CPU = 19


def _worker_init(_: int, niceness: int = 0) -> None:
    prepare_decoder(niceness)


def prepare_decoder(niceness: int = 0) -> None:
    """One thread per decode process; on a CPU run the decoders also yield to the model, which
    needs every core: a decoder at normal priority stalls all of the model's threads (they
    wait for each other at every operation) while it holds one core."""
    torch.set_num_threads(1)
    if niceness:
        try:
            os.nice(niceness)
        except OSError:  # pragma: no cover - not permitted: keep the normal priority
            pass


def default_workers(device: torch.device) -> int:
    """Decode workers: all cores on GPU hosts; on CPU the model needs the cores, leave it most."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if device.type == "cpu":
        return 1 if cores <= 4 else max(1, cores // 4)
    return max(1, min(cores, 32))


def _keep_sigchld_default() -> None:
    """torch installs a SIGCHLD handler that raises "worker exited unexpectedly" *anywhere* in
    the main thread (even inside the model's forward pass). Without it a dead worker is still
    noticed, by the loader itself, within a few seconds, where :func:`iterate_batches` handles it."""
    try:
        from torch.utils.data._utils import signal_handling
    except ImportError:  # pragma: no cover - private module moved
        return
    if hasattr(signal_handling, "_SIGCHLD_handler_set"):
        signal_handling._SIGCHLD_handler_set = True


def _load(dataset: torch.utils.data.Dataset, plan: list[list[int]], workers: int, pin_memory: bool,
          timeout: float, niceness: int = 0) -> Iterator[Batch]:
    """One DataLoader over ``plan``. It polls every few seconds, so a dead worker is noticed
    within seconds; a batch that takes longer than ``timeout`` in all raises "timed out"."""
    poll = min(timeout, _POLL_SECONDS) if timeout and timeout > 0 else _POLL_SECONDS
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_sampler=plan,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=pin_memory,
        worker_init_fn=functools.partial(_worker_init, niceness=niceness),
        prefetch_factor=4,
        timeout=poll,
    )
    iterator = iter(loader)
    try:
        while True:
            started = time.monotonic()
            while True:
                try:
                    batch = next(iterator)
                    break
                except StopIteration:
                    return
                except RuntimeError as err:
                    # A poll expired: keep waiting unless the real limit is spent (no limit: forever).
                    if "timed out" in str(err) and (not timeout or time.monotonic() - started < timeout):
                        continue
                    raise
            yield batch
    finally:
        shutdown = getattr(iterator, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()  # terminates a hung worker now rather than at garbage collection


def _failure_reason(err: BaseException, timeout: float) -> str:
    if "timed out" in str(err):
        return f"{WORKER_FAILED}: decoding did not finish within {timeout:g}s (worker hung; killed)"
    return f"{WORKER_FAILED}: the decoding process died (crashed or was killed) on this file"


def iterate_batches(
    dataset: torch.utils.data.Dataset,
    batch_size: int,
    workers: int,
    pin_memory: bool = False,
    timeout: float = 0,
    low_priority: bool = False,
) -> Iterator[Batch]:
    """Batches in order. Decoding runs in ``workers`` processes so that a decoder that crashes
    or hangs (past ``timeout`` seconds) cannot take the run down: the loader is restarted, the
    batch that was due is decoded again one file per process, and only the files that crash or
    hang again are reported as ``worker_failed``. With ``workers=0`` decoding is in-process.
    ``low_priority`` runs the workers niced (for CPU inference, where the model needs the cores)."""
    niceness = WORKER_NICENESS_ON_CPU if low_priority else 0
    n = len(dataset)
    plan = [list(range(s, min(s + batch_size, n))) for s in range(0, n, batch_size)]
    if workers <= 0:
        for indices in plan:
            yield collate([dataset[i] for i in indices])
        return
    _keep_sigchld_default()
    position = 0
    while position < len(plan):
        try:
            for batch in _load(dataset, plan[position:], workers, pin_memory, timeout, niceness):
                position += 1
                yield batch
        except RuntimeError as err:
            if "DataLoader" not in str(err) and "worker" not in str(err):
                raise
            yield _isolate(dataset, plan[position], pin_memory, timeout, _failure_reason(err, timeout), niceness)
            position += 1


def _isolate(dataset: torch.utils.data.Dataset, indices: list[int], pin_memory: bool, timeout: float, reason: str,
             niceness: int = 0) -> Batch:
    """Decode each file of a failed batch in its own process: the culprit fails alone."""
    items: list[Item] = []
    for index in indices:
        single = _load(dataset, [[index]], 1, False, timeout, niceness)
        try:
            batch = next(single)
        except RuntimeError as err:
            items.append((index, None, _failure_reason(err, timeout) if "DataLoader" in str(err) else reason))
            continue
        finally:
            single.close()
        if batch.errors:
            items.append((index, None, batch.errors[0][1]))
        else:
            items.append((index, batch.pixels[0], None))
    return collate(items)

