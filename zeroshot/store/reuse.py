"""The embedding loop with a store in front of it: read what the store holds, encode the rest.

    stats = ReuseStats()
    for batch in embed_with_store(loaded, discover(["photos/"]).items, settings, store, stats=stats):
        batch.indices, batch.embeddings, batch.errors        # as embed_images yields them
    stats.encoded, stats.from_store

This is what ``classify``, ``eval`` (file datasets) and ``search`` run. The batches are those of
:func:`zeroshot.encode.embed.embed_images`: every input in exactly one batch, batches in input
order, errors at their place. Vectors come from the store for the files it holds *as they are
now* (same path, size and modification time, or the same content under another name), the other
files go through the one embedding loop and are added to the store, one transaction per batch.

Vectors are stored under the precision they were encoded at (an ``auto`` precision that falls
back to fp32 on its first batch stores its vectors under the fp32 key; vectors the run read from
the store before that were made, and checked, by an earlier run at the reduced precision).

With a store, every vector has the store's precision: a freshly encoded vector is rounded to
the precision it is stored in (float16 by default) before it is yielded, so a run gives the same
results whether its vectors were encoded just now or read back later. A problem with the store
during a run (busy, damaged, disk full) never stops it: a :class:`StoreWarning`, and the run
goes on without reading or writing the store.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import torch

from ..data.discover import Source
from ..data.preprocess import Preprocessor
from ..encode.embed import Embedded, EmbedSettings, default_batch_size
from ..encode.embed import embed_images as _embed_images
from ..errors import ZeroshotWarning
from .db import Store, StoreError
from .files import FileRecord, content_hash
from .keys import RANDOM_WEIGHTS, EmbeddingKey, embedding_key

if TYPE_CHECKING:
    from ..models import LoadedModel

HASH_THREADS = 4
# embed_images' signature: (loaded, inputs, settings, preprocessor) -> batches
Encoder = Callable[..., Iterator[Embedded]]


class StoreWarning(ZeroshotWarning):
    """The embedding store could not be read or written during a run (the run goes on without it)."""


@dataclass
class ReuseStats:
    """Where the vectors of a run came from: ``encoded`` (run through the model), ``from_store``
    (read from the store), ``added`` (written to the store; fewer than ``encoded`` when the
    store could not be written). ``store_used`` is False when the run had no store (none
    given, random weights, images in memory) or could not use it."""

    encoded: int = 0
    from_store: int = 0
    added: int = 0
    store_used: bool = False


def as_store(store: Store | str | os.PathLike | bool | None) -> Store | None:
    """The store a ``store=`` argument names: None or False for none, True for the default one
    (:func:`zeroshot.store.files.default_store_dir`), a folder, or an open :class:`Store`."""
    if store is None or store is False:
        return None
    if isinstance(store, Store):
        return store
    return Store.open(None if store is True else store)


def store_applies(loaded: LoadedModel, inputs: Sequence) -> bool:
    """Whether a store can hold the vectors of these inputs: image files (not images in
    memory) and pretrained weights (random ones differ at every load)."""
    return loaded.weights_id != RANDOM_WEIGHTS and all(isinstance(item, Source) for item in inputs)


def embed_with_store(
    loaded: LoadedModel,
    inputs: Sequence[Source] | Sequence,
    settings: EmbedSettings = EmbedSettings(),
    store: Store | None = None,
    preprocessor: Preprocessor | None = None,
    stats: ReuseStats | None = None,
    write: bool = True,
    encoder: Encoder | None = None,
) -> Iterator[Embedded]:
    """:func:`~zeroshot.encode.embed.embed_images` of ``inputs``, with the vectors ``store``
    holds read instead of encoded, and the encoded ones added to it (unless ``write=False``).
    Without a store (or where one cannot apply: see :func:`store_applies`) this is
    ``embed_images``. ``stats`` (a :class:`ReuseStats`) is filled in as batches go.
    ``encoder`` replaces ``embed_images`` for the inputs the store does not hold (same
    signature and contract; e.g. vectors computed beforehand for several models at once)."""
    stats = stats if stats is not None else ReuseStats()
    embed_images = encoder or _embed_images
    if store is None or not store_applies(loaded, inputs):
        for batch in embed_images(loaded, inputs, settings, preprocessor):
            stats.encoded += len(batch.indices)
            yield batch
        return
    key = embedding_key(loaded, settings.fast_decode)
    n = len(inputs)
    usable = [i for i in range(n) if inputs[i].error is None]
    try:
        key = _continue_fp32_library(loaded, store, key, settings.fast_decode)
        dtype = store.dtype_of(key)
        # Fast check: same path, size and mtime. The rest: the content hash (needed to store
        # them anyway) may name an entry of a renamed or copied file.
        found, matrix = store.vectors(key, [inputs[i].fs_path for i in usable], by_content=False)
        held = {usable[j]: matrix[j] for j in torch.nonzero(found).flatten().tolist()}
        misses = [i for i in usable if i not in held]
        stat_of = {i: _stat(inputs[i].fs_path) for i in misses}  # before the image is read
        digests = _hashes(inputs, misses, stat_of)
        same = store.vectors_by_hash(key, list(digests.values()))
        moved = [i for i in misses if digests.get(i) in same]
        for i in moved:
            held[i] = same[digests[i]]
    except StoreError as err:
        _warn(f"{err}; encoding every image and not storing them")
        for batch in embed_images(loaded, inputs, settings, preprocessor):
            stats.encoded += len(batch.indices)
            yield batch
        return
    stats.store_used = True
    batch_size = settings.batch_size or default_batch_size(loaded.device)
    # Inputs known now: vectors from the store and discovery errors. The rest are encoded.
    ready = sorted(set(held) | {i for i in range(n) if inputs[i].error is not None})
    misses = [i for i in usable if i not in held]
    position = 0  # next entry of ``ready`` to yield

    def known(limit: int) -> Iterator[Embedded]:
        """Batches of the ready inputs before ``limit`` (an input index), ``batch_size`` each."""
        nonlocal position
        while position < len(ready) and ready[position] < limit:
            end = position
            while end < len(ready) and ready[end] < limit and end - position < batch_size:
                end += 1
            out = _ready_batch(inputs, held, ready[position:end])
            position = end
            stats.from_store += len(out.indices)
            yield out

    writing = write
    if moved and write:  # their own entries, so the next run finds them by path
        writing = _add(store, key, inputs, moved, [held[i] for i in moved], stat_of, digests, stats)
    done = 0  # misses yielded so far (positions in ``misses``)
    batches = embed_images(loaded, [inputs[i] for i in misses], settings, preprocessor)
    try:
        while done < len(misses):
            yield from known(misses[done])
            batch = next(batches)
            done = max(batch.indices + [j for j, _ in batch.errors]) + 1
            indices = [misses[j] for j in batch.indices]
            errors = [(misses[j], reason) for j, reason in batch.errors]
            vectors = batch.embeddings
            if vectors is not None:
                if embedding_key(loaded, settings.fast_decode) != key:
                    # An ``auto`` precision fell back to fp32 on its first batch: the vectors
                    # made from now on belong under the fp32 key, never mixed with the others.
                    key = embedding_key(loaded, settings.fast_decode)
                    try:
                        dtype = store.dtype_of(key)
                    except StoreError as err:
                        _warn(f"{err}; not storing the rest")
                        writing = False
                vectors = _round(vectors, dtype)
                stats.encoded += len(indices)
                if writing:
                    writing = _add(store, key, inputs, indices, vectors, stat_of, digests, stats)
            out = Embedded(indices=indices, embeddings=vectors, errors=errors)
            last = max(indices + [i for i, _ in errors])
            between = []  # ready inputs among this batch's: they travel with it
            while position < len(ready) and ready[position] < last:
                between.append(ready[position])
                position += 1
            if between:
                extra = _ready_batch(inputs, held, between)
                stats.from_store += len(extra.indices)
                out = _merge(out, extra)
            yield out
    finally:
        batches.close()  # stops the decoding workers, also when the consumer stops early
    yield from known(n)


# ------------------------------------------------------------------------------------ helpers


def _continue_fp32_library(loaded: LoadedModel, store: Store, key: EmbeddingKey, fast_decode: bool) -> EmbeddingKey:
    """An unchecked ``auto`` bf16 image tower facing a store that holds this model's vectors at
    fp32 only (a library indexed before, or on a CPU without bf16) runs fp32: the library is
    continued under its key instead of being encoded again under a second one."""
    if not loaded.needs_check("image") or store.count(key):
        return key
    exact = replace(key, precision="fp32")
    if not store.count(exact):
        return key
    loaded.keep_fp32("image", f"as the embedding store's {store.count(exact)} vectors of this model are")
    return embedding_key(loaded, fast_decode)



def _warn(message: str) -> None:
    warnings.warn(message, StoreWarning, stacklevel=3)


def _stat(path: str) -> os.stat_result | None:
    try:
        return os.stat(os.path.realpath(path))
    except OSError:
        return None


def _hashes(inputs: Sequence[Source], misses: list[int], stat_of: dict) -> dict[int, bytes]:
    """Content hashes of ``misses`` (by input index), read in a few threads; files that cannot
    be read have none (the embedding loop reports them)."""
    todo = [i for i in misses if stat_of.get(i) is not None]
    digests: dict[int, bytes] = {}
    if not todo:
        return digests
    with ThreadPoolExecutor(min(HASH_THREADS, len(todo))) as pool:
        futures = {i: pool.submit(content_hash, os.path.realpath(inputs[i].fs_path), stat_of[i].st_size)
                   for i in todo}
        for i, future in futures.items():
            try:
                digests[i] = future.result()
            except OSError:
                pass  # gone or unreadable: the embedding loop reports it; nothing to store
    return digests


def _round(vectors: torch.Tensor, dtype: str) -> torch.Tensor:
    """Vectors as they read back from a store of ``dtype``."""
    return vectors.to(torch.float16).float() if dtype == "float16" else vectors


def _ready_batch(inputs: Sequence[Source], held: dict[int, torch.Tensor], indices: list[int]) -> Embedded:
    good = [i for i in indices if i in held]
    return Embedded(indices=good, embeddings=torch.stack([held[i] for i in good]) if good else None,
                    errors=[(i, str(inputs[i].error)) for i in indices if i not in held])


def _merge(a: Embedded, b: Embedded) -> Embedded:
    """One batch of both, indices ascending."""
    rows = [(i, a.embeddings[k]) for k, i in enumerate(a.indices)] + \
           [(i, b.embeddings[k]) for k, i in enumerate(b.indices)]
    rows.sort(key=lambda row: row[0])
    return Embedded(indices=[i for i, _ in rows], embeddings=torch.stack([v for _, v in rows]) if rows else None,
                    errors=sorted(a.errors + b.errors))


def _add(store: Store, key, inputs: Sequence[Source], indices: list[int], vectors: Sequence[torch.Tensor],
         stat_of: dict, digests: dict, stats: ReuseStats) -> bool:
    """Store the vectors of ``indices`` (one transaction); False when the store cannot be written."""
    records = [FileRecord.of(inputs[i].fs_path, vector, stat=stat_of[i], digest=digests[i])
               for i, vector in zip(indices, vectors) if stat_of.get(i) is not None and i in digests]
    try:
        stats.added += store.add(key, records)
    except StoreError as err:
        _warn(f"{err}; the rest of this run is not stored")
        return False
    return True
