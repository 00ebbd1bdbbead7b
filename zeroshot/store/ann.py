"""An approximate nearest-neighbour index over one key of a store, for libraries past about a
million images, where one exact matrix-vector product per query (and the float32 matrix in
memory) becomes the cost. Optional: ``pip install "zeroshot[ann]"`` (usearch, an HNSW graph).

    index = ApproximateIndex(store, key)
    if not index.is_fresh():
        index.build()                      # minutes for a million vectors; kept on disk
    row_ids = index.candidates(query, 100) # the store's row ids of the ~100 nearest vectors

The index lives beside the database (``ann-<key>.usearch`` plus a ``.json`` note of what it was
built from) and is rebuilt whenever the store's entries of that key changed since (added,
replaced or removed: :meth:`Store.fingerprint`). It is a derived file: deleting it loses
nothing. Candidates are always re-scored exactly from the store's vectors, so the scores a
search reports are the exact cosine similarities; only which images make the list is
approximate (its recall is measured in ``benchmarks/store.py --approximate``).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import UsageError
from .keys import EmbeddingKey

if TYPE_CHECKING:
    import numpy as np

    from .db import Store

INSTALL_HINT = 'approximate search needs usearch: pip install "zeroshot[ann]"'
MIN_ENTRIES_ENV = "ZEROSHOT_ANN_MIN_ENTRIES"
DEFAULT_MIN_ENTRIES = 1_000_000  # below this, exact search is fast enough (~250 ms at 1M on 2 cores)
CONNECTIVITY = 16  # graph degree: usearch's default; more costs memory and build time
EXPANSION_ADD = 64  # build-time beam: a better graph for a slower build
EXPANSION_SEARCH = 128  # query-time beam (at least the number of candidates asked for)
DTYPES = ("bf16", "f16", "f32")  # how the graph stores vectors: the first this CPU has a kernel for
FORMAT = 1


def usearch_available() -> bool:
    try:
        import usearch.index  # noqa: F401
    except ImportError:
        return False
    return True


def min_entries() -> int:
    """Store size from which ``search`` uses the index by default (``ZEROSHOT_ANN_MIN_ENTRIES``)."""
    text = os.environ.get(MIN_ENTRIES_ENV, "").strip()
    if not text:
        return DEFAULT_MIN_ENTRIES
    try:
        value = int(text)
    except ValueError:
        raise UsageError(f"{MIN_ENTRIES_ENV}={text!r} is not a whole number of entries") from None
    return max(value, 0)


def use_approximate(wanted: bool | None, entries: int) -> bool:
    """``wanted`` True/False forces it (True needs usearch); None: when usearch is installed
    and the key has at least :func:`min_entries` entries."""
    if wanted is None:
        return entries >= min_entries() and entries > 0 and usearch_available()
    if wanted and not usearch_available():
        raise UsageError(INSTALL_HINT)
    return wanted


class ApproximateIndex:
    """The HNSW index of one key of ``store`` (see the module docstring)."""

    def __init__(self, store: Store, key: EmbeddingKey) -> None:
        self.store = store
        self.key = key
        stem = f"ann-{key.digest[:16]}"
        self.path = Path(store.location) / f"{stem}.usearch"
        self.note = Path(store.location) / f"{stem}.json"
        self._index: Any = None

    def _read_note(self) -> dict[str, Any]:
        try:
            return json.loads(self.note.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}

    def is_fresh(self) -> bool:
        """The file exists and was built from the store's current entries of this key."""
        note = self._read_note()
        return (self.path.is_file() and note.get("format") == FORMAT and note.get("key") == self.key.digest
                and note.get("fingerprint") == list(self.store.fingerprint(self.key)))

    def build(self, on_progress: Callable[[int, int], None] | None = None) -> int:
        """(Re)build from the store's entries of the key; returns how many vectors it holds.
        Written to a temporary file and renamed: a reader never sees a half-written index."""
        from usearch.index import Index

        fingerprint = self.store.fingerprint(self.key)  # before reading: a write meanwhile makes it stale
        total = fingerprint[0]
        index: Any = None
        done = 0
        if on_progress:
            on_progress(0, total)
        for ids, vectors in self.store.iter_vectors(self.key):
            if index is None:
                index = _new_index(Index, vectors.shape[1])
            index.add(ids, vectors)
            done += len(ids)
            if on_progress:
                on_progress(done, total)
        if index is None:
            return 0
        _replace(self.path, lambda tmp: index.save(str(tmp)))
        note = {"format": FORMAT, "key": self.key.digest, "fingerprint": list(fingerprint), "entries": done,
                "built": time.time(), "dtype": str(index.dtype), "connectivity": CONNECTIVITY,
                "expansion_add": EXPANSION_ADD}
        _replace(self.note, lambda tmp: tmp.write_text(json.dumps(note), encoding="utf-8"))
        self._index = index
        return done

    def _loaded(self) -> Any:
        if self._index is None:
            from usearch.index import Index

            self._index = Index.restore(str(self.path), view=True)  # memory-mapped: no load time
            if self._index is None:
                raise UsageError(f"{self.path}: not a usable index; delete it (it is rebuilt from the store)")
        return self._index

    def __len__(self) -> int:
        return len(self._loaded())

    def candidates(self, query: np.ndarray, count: int) -> np.ndarray:
        """Row ids of (about) the ``count`` entries with the highest dot product with ``query``."""
        index = self._loaded()
        count = min(count, len(index))
        if count <= 0:
            import numpy as np

            return np.zeros(0, np.uint64)
        index.expansion_search = max(EXPANSION_SEARCH, count)
        return index.search(query.astype("float32"), count).keys


def _new_index(index_class: Any, dim: int) -> Any:
    """An empty graph storing vectors in the first of :data:`DTYPES` that this CPU computes
    natively (usearch names its kernel; "serial" means emulated: bf16 on a CPU without it is
    slower than float32)."""
    for dtype in DTYPES:
        index = index_class(ndim=dim, metric="ip", dtype=dtype, connectivity=CONNECTIVITY,
                            expansion_add=EXPANSION_ADD, expansion_search=EXPANSION_SEARCH)
        if dtype == DTYPES[-1] or getattr(index, "hardware_acceleration", "serial") != "serial":
            return index
    raise AssertionError("unreachable")


def remove_indexes(location: str | os.PathLike, keep_digests: set[str]) -> list[Path]:
    """Delete the index files in a store folder whose key is not in ``keep_digests``."""
    removed = []
    for path in sorted(Path(location).glob("ann-*.*")):
        if path.suffix not in (".usearch", ".json") or path.stem[4:] in {d[:16] for d in keep_digests}:
            continue
        with contextlib.suppress(OSError):
            path.unlink()
            removed.append(path)
    return removed


def _replace(path: Path, write: Callable[[Path], Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
