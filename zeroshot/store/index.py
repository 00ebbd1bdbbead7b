"""Incremental indexing: bring a store up to date with the images under some folders.

For every image found: unchanged (same path, size, mtime) -> nothing to do; otherwise the
content hash decides: the same content as its own entry (a touched file) -> kept; the content
of an entry whose file is gone -> a rename (the entry moves, its vector is kept); the content
of another existing entry -> a copy (the vector is copied); else the image is encoded. Entries
under the folders indexed whose file is gone are dropped. Bookkeeping is written in one
transaction, then each encoded batch in its own, so a run killed at any point leaves a sound
store and the next run only does what is left.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..data.discover import Discovery, Source, discover
from ..encode.embed import EmbedSettings, embed_images
from ..errors import NOT_FOUND
from .files import content_hash
from .keys import EmbeddingKey, embedding_key

if TYPE_CHECKING:
    from ..models import LoadedModel
    from .db import Store
    from .reuse import Encoder

IndexProgress = Callable[[str, int, int], None]  # (stage: "checking" | "encoding", done, total)
SkipHook = Callable[[str, str], None]  # (path as given, "code: detail")
HASH_THREADS = 4


@dataclass
class IndexStats:
    """What an index run did. Every input lands in exactly one of ``encoded``, ``reused``,
    ``renamed``, ``copied`` and ``skipped``; ``dropped`` counts entries removed because their
    file is gone (a renamed file's old entry is not counted there)."""

    total: int = 0  # inputs considered: usable files and problems
    encoded: int = 0  # new or changed content, run through the model
    reused: int = 0  # the entry of the same path still holds (unchanged, or touched with the same content)
    renamed: int = 0  # the content of an entry whose file is gone: the entry moved here
    copied: int = 0  # the content of another entry whose file still exists: its vector copied
    dropped: int = 0  # entries removed: their file under an indexed folder is gone
    skipped: int = 0  # inputs that could not be used (reported through on_skip)
    seconds: float = 0.0
    key: EmbeddingKey | None = None

    @property
    def done(self) -> int:
        return self.encoded + self.reused + self.renamed + self.copied


@dataclass
class _Item:
    source: Source
    stat: os.stat_result
    stored: bytes  # the path as the store writes it
    digest: bytes | None = None


def _gone(path: str) -> bool:
    try:
        os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return True
    except OSError:
        return False  # unreadable is not gone
    return False


def index_files(store: Store, loaded: LoadedModel, inputs: Sequence[str | os.PathLike],
                settings: EmbedSettings | None = None, *, recursive: bool = True, include_hidden: bool = False,
                found: Discovery | None = None, on_progress: IndexProgress | None = None,
                on_skip: SkipHook | None = None, encoder: Encoder | None = None) -> IndexStats:
    """Index the images under ``inputs`` (files, folders, glob patterns) into ``store`` for
    ``loaded`` with ``settings`` (its ``fast_decode`` is part of the key). ``found`` is the
    discovery of ``inputs`` when the caller already made it. ``on_progress(stage, done, total)``
    reports the content check ("checking") and the encoding ("encoding"); ``on_skip(path,
    "code: detail")`` every input that could not be used. ``encoder`` replaces the local
    embedding loop (same contract; e.g. :class:`zeroshot.scale.RayEncoder`)."""
    started = time.perf_counter()
    settings = settings or EmbedSettings()
    key = embedding_key(loaded, settings.fast_decode)
    found = found if found is not None else discover(inputs, recursive=recursive, include_hidden=include_hidden)
    stats = IndexStats(total=len(found.items), key=key)
    progress = on_progress or (lambda stage, done, total: None)
    paths = store.paths

    def skip(path: str, reason: str) -> None:
        stats.skipped += 1
        if on_skip is not None:
            on_skip(path, reason)

    # --- what is there
    items: list[_Item] = []
    seen: set[bytes] = set()
    missing_explicit: list[bytes] = []
    for source in found.items:
        if source.error is not None:
            if source.error.code == NOT_FOUND and source.path == source.fs_path and not _has_glob(source.path):
                missing_explicit.append(paths.to_db(os.path.realpath(source.fs_path)))
            skip(source.path, str(source.error))
            continue
        try:
            st = os.stat(source.fs_path)
        except OSError as err:
            skip(source.path, f"{NOT_FOUND}: {err.strerror or err} (gone before it could be read)")
            continue
        stored = paths.to_db(os.path.realpath(source.fs_path))
        if stored in seen:
            stats.total -= 1  # the same file through another route: one entry, counted once
            continue
        seen.add(stored)
        items.append(_Item(source, st, stored))
    roots = [os.path.realpath(p) for p in map(os.fspath, inputs) if p != "-" and os.path.isdir(p)]

    # --- what the store holds for them
    keyrow = store._key_row(key)
    key_id = keyrow[0] if keyrow else None
    held: dict[bytes, tuple[int, int, bytes]] = {}
    under_roots: set[bytes] = set()
    if key_id is not None:
        with store._errors("read"):
            for path, size, mtime, digest in store._select_in(
                    "SELECT path, size, mtime_ns, hash FROM files WHERE key_id = ? AND path IN ({})",
                    (key_id,), [it.stored for it in items]):
                held[path] = (size, mtime, digest)
            for root in roots:
                for low, high in paths.ranges_under(root):
                    sql = "SELECT path FROM files WHERE key_id = ? AND path >= ?" + (" AND path < ?" if high else "")
                    under_roots.update(r[0] for r in store.conn.execute(sql, (key_id, low, *([high] if high else []))))
            under_roots.update(r[0] for r in store._select_in(
                "SELECT path FROM files WHERE key_id = ? AND path IN ({})", (key_id,), missing_explicit))

    # --- fast check, then the content hash for the rest
    to_hash: list[_Item] = []
    for it in items:
        row = held.get(it.stored)
        if row is not None and row[0] == it.stat.st_size and row[1] == it.stat.st_mtime_ns:
            stats.reused += 1
        else:
            to_hash.append(it)
    progress("checking", 0, len(to_hash))
    hashed: list[_Item] = []
    with ThreadPoolExecutor(HASH_THREADS) as pool:
        futures = [pool.submit(content_hash, it.source.fs_path, it.stat.st_size) for it in to_hash]
        for done, (it, future) in enumerate(zip(to_hash, futures), 1):
            try:
                it.digest = future.result()
                hashed.append(it)
            except OSError as err:
                skip(it.source.path, f"{NOT_FOUND if isinstance(err, FileNotFoundError) else 'unreadable'}: "
                                     f"{err.strerror or err}")
            progress("checking", done, len(to_hash))

    touched: list[_Item] = []
    moved: list[tuple[_Item, bytes]] = []  # (item, stored path of the entry whose content it has)
    copies: list[tuple[_Item, bytes]] = []
    todo: list[_Item] = []
    taken: set[bytes] = set()  # entries already moved by this run
    for it in hashed:
        row = held.get(it.stored)
        if row is not None and row[2] == it.digest:
            touched.append(it)
            continue
        donors = [] if key_id is None else [r[0] for r in store.conn.execute(
            "SELECT path FROM files WHERE key_id = ? AND hash = ? AND path != ? ORDER BY path",
            (key_id, it.digest, it.stored))]
        gone = [d for d in donors if d not in taken and d not in seen and _gone(paths.from_db(d))]
        if gone:
            taken.add(gone[0])
            moved.append((it, gone[0]))
        elif donors:
            copies.append((it, donors[0]))
        else:
            todo.append(it)

    drops = [] if key_id is None else sorted(
        p for p in under_roots - seen - taken if _gone(paths.from_db(p)))

    # --- bookkeeping: one transaction
    if touched or moved or copies or drops:
        now = time.time()
        with store._transaction() as conn:
            for it in touched:
                conn.execute("UPDATE files SET size = ?, mtime_ns = ? WHERE key_id = ? AND path = ?",
                             (it.stat.st_size, it.stat.st_mtime_ns, key_id, it.stored))
            for it, donor in moved:
                conn.execute("DELETE FROM files WHERE key_id = ? AND path = ?", (key_id, it.stored))
                cursor = conn.execute(
                    "UPDATE files SET path = ?, size = ?, mtime_ns = ?, added = ? WHERE key_id = ? AND path = ?",
                    (it.stored, it.stat.st_size, it.stat.st_mtime_ns, now, key_id, donor))
                if cursor.rowcount:
                    stats.renamed += 1
                else:  # another process moved or removed it meanwhile
                    todo.append(it)
            for it, donor in copies:
                conn.execute("DELETE FROM files WHERE key_id = ? AND path = ?", (key_id, it.stored))
                cursor = conn.execute(
                    "INSERT INTO files (key_id, path, size, mtime_ns, hash, vector, added) "
                    "SELECT key_id, ?, ?, ?, hash, vector, ? FROM files WHERE key_id = ? AND path = ?",
                    (it.stored, it.stat.st_size, it.stat.st_mtime_ns, now, key_id, donor))
                if cursor.rowcount:
                    stats.copied += 1
                else:
                    todo.append(it)
            for path in drops:
                conn.execute("DELETE FROM files WHERE key_id = ? AND path = ?", (key_id, path))
            stats.dropped = len(drops)
        stats.reused += len(touched)

    # --- encoding: one transaction per batch
    progress("encoding", 0, len(todo))
    processed = 0
    for batch in (encoder or embed_images)(loaded, [it.source for it in todo], settings):
        rows = []
        if batch.embeddings is not None:
            rows = [(todo[i], vector) for i, vector in zip(batch.indices, batch.embeddings)]
        failed = [todo[i] for i, _ in batch.errors]
        with store._transaction() as conn:
            if rows:
                batch_key_id, dtype = store._ensure_key(conn, key, int(batch.embeddings.shape[1]))
                blobs = store._blobs([vector for _, vector in rows], dtype)
                store._upsert(conn, batch_key_id, [(it.stored, it.stat.st_size, it.stat.st_mtime_ns, it.digest, blob)
                                                   for (it, _), blob in zip(rows, blobs)])
            for it in failed:  # a changed file that cannot be read: its old vector is stale
                if it.stored in held:
                    conn.execute("DELETE FROM files WHERE path = ? AND key_id = (SELECT id FROM keys WHERE digest = ?)",
                                 (it.stored, key.digest))
        stats.encoded += len(rows)
        for i, reason in batch.errors:
            skip(todo[i].source.path, reason)
        processed += len(batch)
        progress("encoding", processed, len(todo))
    stats.seconds = time.perf_counter() - started
    return stats


def _has_glob(text: str) -> bool:
    return any(c in text for c in "*?[")
