"""Search images by text or by example: rank images by cosine similarity to a query.

    from zeroshot import load_model
    from zeroshot.store.db import Store
    from zeroshot.tasks.search import Query, search

    loaded = load_model("ViT-B-32", "openai")
    with Store.open("photos/.zeroshot") as store:
        for hit in search(loaded, "a dog on a beach", ["photos/"], store=store, top=10):
            print(hit.rank, hit.score, hit.path)
        # several queries, weighted, and one to avoid; no paths: every image of the store
        results = search(loaded, [Query("beach", weight=2), Query("sunset"), Query("people", weight=-1)],
                         store=store)

**Scores.** Every image vector and every query vector is L2-normalised, so the score of image
``x`` for one query ``q`` is the cosine similarity ``cos(q, x)`` (a number in [-1, 1]; CLIP
text-image similarities are typically 0.1-0.4, image-image ones higher). For several queries the
score is the weighted sum ``sum_i w_i * cos(q_i, x)``: a query's weight defaults to 1 and a
negative (``--not``) has weight -1, so ``"beach" --not "people"`` scores ``cos(beach, x) -
cos(people, x)``. A text query expanded through a template set is the normalised mean of its
normalised prompt embeddings (the class weights of ``classify``); without templates it is the
embedding of the text as given. Stored vectors are float16 by default, so scores read from the
store are within about 1e-3 of a full-precision encode (``Store.open(dtype="float32")`` keeps
them exact). Ties are broken by position: the order the images were given in, or the store's
path order.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..data.discover import Discovery, Source, discover
from ..encode.cache import ClassWeightCache
from ..encode.embed import EmbedSettings
from ..encode.text import build_class_weights
from ..errors import UsageError
from ..models import LoadedModel
from ..output.rows import round_score
from ..prompts import TemplateSet, as_template_set
from ..store.ann import ApproximateIndex, use_approximate
from ..store.db import Store
from ..store.keys import RANDOM_WEIGHTS, EmbeddingKey, embedding_key
from ..store.reuse import ReuseStats, as_store, embed_with_store

ProgressHook = Callable[[int, int], None]  # (done, total)
SkipHook = Callable[[str, str], None]  # (path, "code: detail")


@dataclass(frozen=True)
class Query:
    """One part of a search: a ``text`` or an ``image`` file, with its ``weight`` in the
    combined score (negative for something to avoid)."""

    text: str | None = None
    image: str | os.PathLike | None = None
    weight: float = 1.0

    def __post_init__(self) -> None:
        if (self.text is None) == (self.image is None):
            raise UsageError("a query is a text or an image, exactly one of them")
        if self.text is not None and not self.text.strip():
            raise UsageError("a text query is empty; give some words to search for")
        if not isinstance(self.weight, (int, float)) or self.weight != self.weight or abs(self.weight) == float("inf"):
            raise UsageError(f"query weight {self.weight!r} is not a finite number")

    def describe(self) -> str:
        what = repr(self.text) if self.text is not None else f"image {os.fspath(self.image)}"
        return what if self.weight == 1 else f"{what} x {self.weight:g}"


@dataclass(frozen=True)
class Hit:
    """One result: its ``rank`` (1 = best), the image ``path`` and its ``score``."""

    rank: int
    path: str
    score: float

    def flat(self) -> list[Any]:
        return [self.rank, self.path, round_score(self.score)]

    def as_dict(self) -> dict[str, Any]:
        return dict(zip(COLUMNS, self.flat()))


COLUMNS = ("rank", "path", "score")


@dataclass
class SearchResults:
    """The ranked hits (iterate over it like a list) and what the search looked at."""

    hits: list[Hit] = field(default_factory=list)
    searched: int = 0  # images scored
    encoded: int = 0  # images run through the model (queries not counted)
    from_store: int = 0  # images read from the store
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, "code: detail")
    gone: int = 0  # store entries left out because their file no longer exists
    key: EmbeddingKey | None = None
    approximate: bool = False  # ranked through the approximate index
    seconds: float = 0.0

    def __iter__(self) -> Iterator[Hit]:
        return iter(self.hits)

    def __len__(self) -> int:
        return len(self.hits)

    def __getitem__(self, index):
        return self.hits[index]


def as_queries(queries: str | Query | Sequence[str | Query]) -> list[Query]:
    """A list of :class:`Query` from a text, a Query, or a list of either."""
    if isinstance(queries, (str, Query)):
        queries = [queries]
    out = [q if isinstance(q, Query) else Query(text=q) for q in queries]
    if not out:
        raise UsageError("give a query: a text or an image")
    if not any(q.weight > 0 for q in out):
        raise UsageError("every query has a weight of 0 or less: give at least one query to look for "
                         "(negatives are subtracted from it)")
    return out


def search(
    loaded: LoadedModel,
    queries: str | Query | Sequence[str | Query],
    paths: Sequence[str | os.PathLike] | Discovery | None = None,
    *,
    store: Store | str | os.PathLike | bool | None = None,
    top: int | None = 20,
    min_score: float | None = None,
    templates: str | TemplateSet | Sequence[str] | None = None,
    settings: EmbedSettings = EmbedSettings(fast_decode=True),
    cache: bool | str | os.PathLike = True,
    recursive: bool = True,
    include_hidden: bool = False,
    on_progress: ProgressHook | None = None,
    on_skip: SkipHook | None = None,
    approximate: bool | None = None,
    on_build: ProgressHook | None = None,
) -> SearchResults:
    """Rank images by their score for ``queries`` (see the module docstring), best first: the
    ``top`` best (None or 0: all) that score at least ``min_score``.

    With ``paths`` (files, folders, glob patterns, or a :class:`Discovery`) those images are
    searched: read from ``store`` where it holds them, the others encoded (and added to it);
    without a store every image is encoded. Without ``paths`` every image of ``store`` under
    this model's key is searched (entries whose file is gone are left out). ``templates``
    expands text queries (default: the text as given). ``cache`` is the class-weight cache
    used for text queries.

    ``approximate`` (store searches only): True uses the approximate index of
    :mod:`zeroshot.store.ann` (built on first use, rebuilt when the store changed), False the
    exact ranking, None (default) the index when usearch is installed and the store holds at
    least ``ZEROSHOT_ANN_MIN_ENTRIES`` (1,000,000) images of this model. Scores are exact
    either way; which images make the list can differ from the exact one (recall < 1).
    ``on_build`` sees the progress of building that index."""
    started = time.perf_counter()
    query_list = as_queries(queries)
    if top is not None and top < 0:
        raise UsageError(f"top must be 0 (all) or more, not {top}")
    template_set = as_template_set(templates if templates is not None else "none")
    opened = as_store(store)
    try:
        results = SearchResults()
        if paths is None:
            if opened is None:
                raise UsageError("search without paths searches an embedding store: give paths, or a store")
            if loaded.weights_id == RANDOM_WEIGHTS:
                raise UsageError("a model with random weights has no stored images to search; give paths")
            results.key = embedding_key(loaded, settings.fast_decode)
            entries = opened.count(results.key)
            if not entries:
                raise UsageError(_empty_store_message(opened, results.key))
            if top and use_approximate(approximate, entries):
                query = _query_vector(loaded, query_list, template_set, settings, opened, cache)
                results.approximate = True
                results.hits, results.gone, results.searched = _approximate_hits(
                    opened, results.key, query, top, min_score, on_build)
                results.from_store = results.searched
                results.seconds = time.perf_counter() - started
                return results
            names, matrix = opened.matrix(results.key)
            results.from_store = len(names)
            keep: Callable[[int], bool] | None = lambda i: os.path.exists(names[i])  # noqa: E731
        else:
            names, matrix = _embed_paths(loaded, paths, settings, opened, recursive, include_hidden,
                                         on_progress, on_skip, results)
            keep = None
        results.searched = len(names)
        query = _query_vector(loaded, query_list, template_set, settings, opened, cache)
        if len(names):
            scores = matrix @ query.to(matrix.dtype)
            ranked, results.gone = _rank(scores, top or None, min_score, keep)
            results.hits = [Hit(n, names[i], score) for n, (i, score) in enumerate(ranked, 1)]
        results.seconds = time.perf_counter() - started
        return results
    finally:
        if opened is not None and opened is not store:
            opened.close()


def _approximate_hits(store: Store, key: EmbeddingKey, query: torch.Tensor, top: int, min_score: float | None,
                      on_progress: ProgressHook | None) -> tuple[list[Hit], int, int]:
    """The ``top`` hits through the approximate index (built or rebuilt first when the store
    changed): candidates from the graph, re-scored exactly from the store's vectors, files that
    are gone left out (asking for more candidates until ``top`` are found or all were seen)."""
    index = ApproximateIndex(store, key)
    if not index.is_fresh():
        index.build(on_progress)
    size = len(index)
    want = max(4 * top, 64)  # re-scored exactly: a wider net costs little and lifts recall
    while True:
        row_ids = index.candidates(query.numpy(), want)
        names, matrix = store.rows(key, row_ids.tolist())
        scores = matrix @ query if len(names) else torch.zeros(0)
        ranked, gone = _rank(scores, top, min_score, lambda i, names=names: os.path.exists(names[i]))
        below = min_score is not None and len(scores) > 0 and float(scores.min()) < min_score
        if len(ranked) == top or want >= size or below:  # more candidates would score lower still
            return [Hit(n, names[i], score) for n, (i, score) in enumerate(ranked, 1)], gone, size
        want = min(size, want * 4)


# ------------------------------------------------------------------------------------ helpers


def _empty_store_message(store: Store, key: EmbeddingKey) -> str:
    others = [k for k in store.list_keys() if k.entries]
    held = "; it holds " + ", ".join(f"{k.entries} for {k.key.describe()}" for k in others[:3]) if others else ""
    return (f"the embedding store {store.location} has no images for {key.describe()}{held}; index them first "
            f"('zeroshot index PATH' with the same model and decode options) or give the PATHs to search")


def _embed_paths(loaded: LoadedModel, paths, settings: EmbedSettings, store: Store | None, recursive: bool,
                 include_hidden: bool, on_progress: ProgressHook | None, on_skip: SkipHook | None,
                 results: SearchResults) -> tuple[list[str], torch.Tensor]:
    """The images under ``paths`` (each file once, in the order given) and their vectors."""
    found = paths if isinstance(paths, Discovery) else discover(list(paths), recursive, include_hidden)
    items: list[Source] = []
    seen: set[str] = set()
    for source in found.items:
        if source.error is None:
            real = os.path.realpath(source.fs_path)
            if real in seen:
                continue
            seen.add(real)
        items.append(source)
    names: list[str] = []
    rows: list[torch.Tensor] = []
    reuse = ReuseStats()
    done = 0
    if on_progress:
        on_progress(0, len(items))
    for batch in embed_with_store(loaded, items, settings, store, stats=reuse):
        for index, reason in batch.errors:
            results.skipped.append((items[index].path, reason))
            if on_skip:
                on_skip(items[index].path, reason)
        if batch.embeddings is not None:
            names += [items[i].path for i in batch.indices]
            rows.append(batch.embeddings)
        done += len(batch)
        if on_progress:
            on_progress(done, len(items))
    results.encoded, results.from_store = reuse.encoded, reuse.from_store
    matrix = torch.cat(rows) if rows else torch.zeros(0, 0)
    return names, matrix.float()


def _query_vector(loaded: LoadedModel, queries: list[Query], template_set: TemplateSet, settings: EmbedSettings,
                  store: Store | None, cache: bool | str | os.PathLike) -> torch.Tensor:
    """``sum_i w_i * q_i`` of the normalised query vectors (float32, on the CPU)."""
    weight_cache = None if cache is False else ClassWeightCache(None if cache is True else Path(cache))
    total: torch.Tensor | None = None
    for q in queries:
        if q.text is not None:
            vector = build_class_weights(loaded, [q.text], template_set, cache=weight_cache)[0]
        else:
            vector = _image_vector(loaded, q.image, settings, store)
        vector = vector.detach().float().cpu() * float(q.weight)
        total = vector if total is None else total + vector
    assert total is not None
    return total


def _image_vector(loaded: LoadedModel, image: str | os.PathLike, settings: EmbedSettings,
                  store: Store | None) -> torch.Tensor:
    path = os.fspath(image)
    if not os.path.isfile(path):
        what = "is a folder" if os.path.isdir(path) else "does not exist"
        raise UsageError(f"image query {path}: {what}; give an image file")
    found = discover([path], recursive=False)
    items = found.items[:1]
    for batch in embed_with_store(loaded, items, settings, store):
        if batch.errors:
            raise UsageError(f"image query {path}: cannot be used: {batch.errors[0][1]}")
        if batch.embeddings is not None:
            return batch.embeddings[0]
    raise UsageError(f"image query {path}: cannot be used")


def _rank(scores: torch.Tensor, top: int | None, min_score: float | None,
          keep: Callable[[int], bool] | None) -> tuple[list[tuple[int, float]], int]:
    """``(index, score)`` best first (ties by index), at most ``top``, at least ``min_score``,
    only indices ``keep`` accepts; and how many ``keep`` refused on the way."""
    n = scores.shape[0]
    want = n if top is None else min(top, n)
    k = n if top is None else min(n, want + 16)
    while True:
        if k < n:  # the k best, with every tie of the k-th
            threshold = torch.topk(scores, k, sorted=False).values.min()
            candidates = torch.nonzero(scores >= threshold).flatten()
        else:
            candidates = torch.arange(n)
        order = torch.sort(scores[candidates], descending=True, stable=True).indices
        ranked: list[tuple[int, float]] = []
        refused = 0
        for index, score in zip(candidates[order].tolist(), scores[candidates[order]].tolist()):
            if len(ranked) == want or (min_score is not None and score < min_score):
                return ranked, refused
            if keep is not None and not keep(index):
                refused += 1
                continue
            ranked.append((index, score))
        if k >= n or len(ranked) == want:
            return ranked, refused
        k = min(n, k * 4 + refused)
