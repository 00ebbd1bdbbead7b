"""The embedding store: one SQLite database (standard library, WAL) of image vectors.

    store = Store.open("photos/.zeroshot")               # or Store.open() for the default place
    stats = store.index(loaded, ["photos/"])              # incremental: only new/changed files encoded
    key = embedding_key(loaded, fast_decode=True)
    paths, matrix = store.matrix(key)                     # every vector of one key, float32, loaded once
    found, vectors = store.vectors(key, ["photos/a.jpg"]) # what exists; encode the rest and store.add(...)

Layout: ``keys`` (one row per embedding key) and ``files`` (one row per key and file: path, size,
mtime_ns, content hash, vector as a float16 blob). Every write is one transaction (``BEGIN
IMMEDIATE``), so a reader or a process killed with ``kill -9`` never sees a half-written batch,
and ``UNIQUE (key_id, path)`` makes two processes indexing the same files converge on one entry
per file. The schema version is SQLite's ``user_version``; ``application_id`` marks the file.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import UsageError, ZeroshotError
from .ann import remove_indexes
from .files import DB_NAME, FileRecord, PathMap, content_hash, default_store_dir
from .keys import EmbeddingKey

if TYPE_CHECKING:
    import numpy as np
    import torch

    from ..data.discover import Discovery
    from ..encode.embed import EmbedSettings
    from ..models import LoadedModel
    from .index import IndexProgress, IndexStats, SkipHook
    from .reuse import Encoder

SCHEMA_VERSION = 1
APPLICATION_ID = 0x7A735431  # "zsT1": marks the file as a zeroshot store
BUSY_TIMEOUT = 60.0  # seconds a writer waits for another process's transaction
DTYPES = {"float16": "<f2", "float32": "<f4"}
_CHUNK = 500  # parameters per IN (...) query
PAGE_SIZE = 16384  # a 512-value float16 row is ~1.1 KB: 4 KB pages waste a fifth of the file
_NORM_TOLERANCE = 0.02  # stored vectors are unit length; float16 rounding moves that ~1e-3

_SCHEMA = """
CREATE TABLE IF NOT EXISTS keys (
    id INTEGER PRIMARY KEY,
    digest TEXT NOT NULL UNIQUE,
    model TEXT NOT NULL,
    pretrained TEXT NOT NULL,
    weights TEXT NOT NULL,
    preprocess TEXT NOT NULL,
    decode TEXT NOT NULL,
    precision TEXT NOT NULL,
    pipeline INTEGER NOT NULL,
    dim INTEGER NOT NULL,
    dtype TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS files (
    id INTEGER PRIMARY KEY,
    key_id INTEGER NOT NULL REFERENCES keys (id),
    path BLOB NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    hash BLOB NOT NULL,
    vector BLOB NOT NULL,
    added REAL NOT NULL,
    UNIQUE (key_id, path)
);
CREATE INDEX IF NOT EXISTS files_by_hash ON files (key_id, hash);
"""


class StoreError(ZeroshotError):
    """The store cannot be opened, read or written (one line naming the store). Exit code 1."""


@dataclass(frozen=True)
class KeyStats:
    """One embedding key in a store and how many entries it holds."""

    key: EmbeddingKey
    entries: int
    dim: int
    dtype: str
    created: float
    row_id: int = field(default=0, repr=False)

    @property
    def id(self) -> str:
        return self.key.id


@dataclass(frozen=True)
class StoreInfo:
    location: Path  # the store folder
    database: Path
    size_bytes: int  # database + WAL + shared-memory files
    schema: int
    keys: list[KeyStats]

    @property
    def entries(self) -> int:
        return sum(k.entries for k in self.keys)


@dataclass
class PruneStats:
    """What :meth:`Store.prune` removed: file entries as ``(key id, path)``, whole keys, and the
    entries kept because their folder is gone too (an unmounted drive?)."""

    files: list[tuple[str, str]] = field(default_factory=list)
    keys: list[KeyStats] = field(default_factory=list)
    unreachable: list[tuple[str, str]] = field(default_factory=list)

    @property
    def entries_removed(self) -> int:
        return len(self.files) + sum(k.entries for k in self.keys)


def _store_paths(path: str | os.PathLike | None) -> tuple[Path, Path]:
    """(store folder, database file) for ``path``: a folder, or the database file itself."""
    location = (Path(path).expanduser() if path is not None else default_store_dir()).absolute()
    if location.is_file() or location.suffix in (".sqlite3", ".sqlite", ".db"):
        return location.parent, location
    return location, location / DB_NAME


class Store:
    """An embedding store (see the module docstring). Open with :meth:`open`; one instance per
    thread; close it (or use ``with``)."""

    def __init__(self, path: str | os.PathLike | None = None, *, create: bool = True, dtype: str = "float16",
                 busy_timeout: float = BUSY_TIMEOUT) -> None:
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}")
        self.location, self.database = _store_paths(path)
        self.dtype = dtype
        self.paths = PathMap(self.location)
        self._matrices: dict[str, tuple[int, list[str], Any]] = {}
        self._writes = 0
        if not self.database.exists():
            if not create:
                raise StoreError(f"no embedding store at {self.location}: create one with "
                                 f"'zeroshot index PATH --store {self.location}'")
            try:
                self.location.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise StoreError(f"store {self.location}: cannot create the folder: {err.strerror or err}") from None
        elif self.database.is_dir():
            raise StoreError(f"store {self.database} is a folder, not a database file")
        else:
            _check_header(self.database)
        with self._errors("open"):
            self.conn = sqlite3.connect(str(self.database), timeout=busy_timeout, isolation_level=None,
                                        check_same_thread=False)
        try:
            with self._errors("open"):
                self.conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
                self._prepare()
        except BaseException:
            self.conn.close()
            raise

    @classmethod
    def open(cls, path: str | os.PathLike | None = None, *, create: bool = True, dtype: str = "float16",
             busy_timeout: float = BUSY_TIMEOUT) -> Store:
        """The store in folder ``path`` (default: :func:`default_store_dir`), created when
        missing unless ``create=False``. ``dtype`` is how new keys store their vectors."""
        return cls(path, create=create, dtype=dtype, busy_timeout=busy_timeout)

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self.conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({str(self.location)!r})"

    # ---------------------------------------------------------------------------- plumbing

    @contextlib.contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        """SQLite failures as one line naming the store."""
        try:
            yield
        except sqlite3.Error as err:
            text = str(err).strip() or type(err).__name__
            where = f"store {self.database}"
            if "locked" in text or "busy" in text:
                raise StoreError(f"{where}: busy: another process held it longer than the timeout; try again") from None
            if "not a database" in text:
                raise StoreError(f"{where}: not a zeroshot store (not an SQLite database)") from None
            if "malformed" in text or "corrupt" in text:
                raise StoreError(f"{where}: the database is damaged ({text}); 'zeroshot store check' "
                                 "lists the problems; move the file away to start a new store") from None
            if "full" in text:
                raise StoreError(f"{where}: cannot {doing}: the disk is full; nothing of this batch was written") from None
            if "readonly" in text or "unable to open" in text:
                raise StoreError(f"{where}: cannot {doing}: {text} (check permissions)") from None
            raise StoreError(f"{where}: cannot {doing}: {text}") from None

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: all of it or nothing, also for readers in other processes."""
        with self._errors("write"):
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    self.conn.execute("ROLLBACK")
                raise
            self.conn.execute("COMMIT")
            self._writes += 1

    def _prepare(self) -> None:
        conn = self.conn
        conn.execute(f"PRAGMA page_size = {PAGE_SIZE}")  # only takes effect on a new file
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")  # in WAL: consistent after any crash
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        app = conn.execute("PRAGMA application_id").fetchone()[0]
        if version == 0:
            conn.execute("BEGIN IMMEDIATE")
            try:  # checked again under the write lock: another process may have just made it
                version = conn.execute("PRAGMA user_version").fetchone()[0]
                app = conn.execute("PRAGMA application_id").fetchone()[0]
                tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
                if version == 0:
                    if tables:
                        raise StoreError(f"store {self.database}: an SQLite database that is not a zeroshot store")
                    for statement in filter(str.strip, _SCHEMA.split(";")):
                        conn.execute(statement)
                    conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                    version, app = SCHEMA_VERSION, APPLICATION_ID
                conn.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise
        if app != APPLICATION_ID:
            raise StoreError(f"store {self.database}: an SQLite database that is not a zeroshot store")
        if version > SCHEMA_VERSION:
            raise StoreError(f"store {self.database}: written by a newer zeroshot (schema {version}, this one "
                             f"reads {SCHEMA_VERSION}); upgrade zeroshot")
        self.schema = version

    def _key_row(self, key: EmbeddingKey) -> tuple[int, int, str] | None:
        """``(row id, dim, dtype)`` of ``key``, or None when the store has no entry of it."""
        with self._errors("read"):
            row = self.conn.execute("SELECT id, dim, dtype FROM keys WHERE digest = ?", (key.digest,)).fetchone()
        return None if row is None else (row[0], row[1], row[2])

    def _ensure_key(self, conn: sqlite3.Connection, key: EmbeddingKey, dim: int) -> tuple[int, str]:
        """Inside a transaction: the key's ``(row id, dtype)``, created with ``dim`` if new."""
        row = conn.execute("SELECT id, dim, dtype FROM keys WHERE digest = ?", (key.digest,)).fetchone()
        if row is not None:
            if row[1] != dim:
                raise StoreError(f"store {self.database}: vectors of {dim} values for key {key.id}, "
                                 f"which holds vectors of {row[1]}")
            return row[0], row[2]
        cursor = conn.execute(
            "INSERT INTO keys (digest, model, pretrained, weights, preprocess, decode, precision, pipeline, dim, "
            "dtype, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (key.digest, key.model, key.pretrained, key.weights, key.preprocess, key.decode, key.precision,
             key.pipeline, dim, self.dtype, time.time()))
        return int(cursor.lastrowid), self.dtype

    @staticmethod
    def _blobs(vectors: Sequence[Any], dtype: str) -> list[bytes]:
        import numpy as np
        import torch

        if vectors and all(isinstance(v, torch.Tensor) for v in vectors):
            values = torch.stack([v.detach().float().cpu() for v in vectors]).numpy()
        else:
            values = np.stack([np.asarray(v, np.float32) for v in vectors])
        data = np.ascontiguousarray(values, dtype=DTYPES[dtype]).tobytes()
        width = len(data) // len(vectors)
        return [data[i:i + width] for i in range(0, len(data), width)]

    @staticmethod
    def _decode(blobs: Sequence[bytes], dim: int, dtype: str) -> np.ndarray:
        import numpy as np

        if not blobs:
            return np.zeros((0, dim), np.float32)
        return np.frombuffer(b"".join(blobs), dtype=DTYPES[dtype]).reshape(len(blobs), dim).astype(np.float32)

    def _upsert(self, conn: sqlite3.Connection, key_id: int, rows: Iterable[tuple[bytes, int, int, bytes, bytes]]) -> None:
        """Inside a transaction: ``(stored path, size, mtime_ns, hash, blob)`` rows, replacing
        any entry of the same key and path (so concurrent writers converge on one entry)."""
        now = time.time()
        conn.executemany(
            "INSERT INTO files (key_id, path, size, mtime_ns, hash, vector, added) VALUES (?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (key_id, path) DO UPDATE SET size = excluded.size, mtime_ns = excluded.mtime_ns, "
            "hash = excluded.hash, vector = excluded.vector, added = excluded.added",
            [(key_id, path, size, mtime, digest, blob, now) for path, size, mtime, digest, blob in rows])

    def _select_in(self, sql: str, head: tuple, values: Sequence[Any]) -> Iterator[tuple]:
        """Rows of ``sql`` (ending in ``IN ({})``) for ``values``, a chunk at a time."""
        for start in range(0, len(values), _CHUNK):
            chunk = list(values[start:start + _CHUNK])
            yield from self.conn.execute(sql.format(",".join("?" * len(chunk))), (*head, *chunk))

    # ---------------------------------------------------------------------------- reading

    def list_keys(self) -> list[KeyStats]:
        """Every key in the store with its number of entries, oldest first."""
        with self._errors("read"):
            rows = self.conn.execute(
                "SELECT k.id, k.model, k.pretrained, k.weights, k.preprocess, k.decode, k.precision, k.pipeline, "
                "k.dim, k.dtype, k.created, (SELECT count(*) FROM files f WHERE f.key_id = k.id) "
                "FROM keys k ORDER BY k.id").fetchall()
        return [KeyStats(EmbeddingKey(model=r[1], weights=r[3], preprocess=r[4], decode=r[5], precision=r[6],
                                      pipeline=r[7], pretrained=r[2]), r[11], r[8], r[9], r[10], r[0]) for r in rows]

    def find_key(self, id_prefix: str) -> KeyStats:
        """The key whose id (as ``store info`` shows it) starts with ``id_prefix``."""
        text = id_prefix.strip().lower()
        matches = [k for k in self.list_keys() if text and k.key.digest.startswith(text)]
        if len(matches) != 1:
            known = ", ".join(k.id for k in self.list_keys()) or "none"
            why = "matches several keys" if matches else "matches no key"
            raise UsageError(f"key {id_prefix!r} {why} of store {self.location} (keys: {known})")
        return matches[0]

    def count(self, key: EmbeddingKey | None = None) -> int:
        """Entries of ``key`` (all entries when None)."""
        with self._errors("read"):
            if key is None:
                return self.conn.execute("SELECT count(*) FROM files").fetchone()[0]
            return self.conn.execute("SELECT count(*) FROM files f JOIN keys k ON k.id = f.key_id "
                                     "WHERE k.digest = ?", (key.digest,)).fetchone()[0]

    def dtype_of(self, key: EmbeddingKey) -> str:
        """How vectors of ``key`` are stored ("float16" or "float32"): the key's own type when
        the store has it, else the type new keys get (``Store.open(dtype=...)``)."""
        keyrow = self._key_row(key)
        return self.dtype if keyrow is None else keyrow[2]

    def vectors(self, key: EmbeddingKey, paths: Sequence[str | os.PathLike],
                by_content: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """``(found, matrix)`` for ``paths`` in order: ``found[i]`` is True when the store holds a
        vector of ``key`` for ``paths[i]`` *as the file is now* (same size and mtime; or, with
        ``by_content``, another entry with the same content hash: a renamed or copied file).
        ``matrix`` is float32 ``[len(paths), dim]`` with zero rows where nothing was found (dim
        0 when the store has no entry of ``key``). Encode the rest and :meth:`add` them."""
        import numpy as np
        import torch

        found = np.zeros(len(paths), dtype=bool)
        keyrow = self._key_row(key)
        if keyrow is None:
            return torch.from_numpy(found), torch.zeros(len(paths), 0)
        key_id, dim, dtype = keyrow
        matrix = np.zeros((len(paths), dim), np.float32)
        wanted: dict[bytes, list[tuple[int, os.stat_result]]] = {}
        for i, path in enumerate(paths):
            real = os.path.realpath(os.fspath(path))
            try:
                st = os.stat(real)
            except OSError:
                continue
            wanted.setdefault(self.paths.to_db(real), []).append((i, st))
        with self._errors("read"):
            for path, size, mtime, blob in self._select_in(
                    "SELECT path, size, mtime_ns, vector FROM files WHERE key_id = ? AND path IN ({})",
                    (key_id,), list(wanted)):
                for i, st in wanted[path]:
                    if st.st_size == size and st.st_mtime_ns == mtime:
                        matrix[i] = self._decode([blob], dim, dtype)[0]
                        found[i] = True
            if by_content:
                for path, places in wanted.items():
                    for i, st in places:
                        if found[i]:
                            continue
                        try:
                            digest = content_hash(self.paths.from_db(path), st.st_size)
                        except OSError:
                            continue
                        row = self.conn.execute("SELECT vector FROM files WHERE key_id = ? AND hash = ? LIMIT 1",
                                                (key_id, digest)).fetchone()
                        if row is not None:
                            matrix[i] = self._decode([row[0]], dim, dtype)[0]
                            found[i] = True
        return torch.from_numpy(found), torch.from_numpy(matrix)

    def vectors_by_hash(self, key: EmbeddingKey, digests: Sequence[bytes]) -> dict[bytes, torch.Tensor]:
        """The vector of an entry of ``key`` with each content hash (:func:`~.files.content_hash`)
        the store holds, float32: what a renamed or copied file can reuse."""
        import torch

        keyrow = self._key_row(key)
        if keyrow is None or not digests:
            return {}
        key_id, dim, dtype = keyrow
        out: dict[bytes, torch.Tensor] = {}
        with self._errors("read"):
            for digest, blob in self._select_in("SELECT hash, vector FROM files WHERE key_id = ? AND hash IN ({})",
                                                (key_id,), sorted(set(digests))):
                if digest not in out:
                    out[digest] = torch.from_numpy(self._decode([blob], dim, dtype)[0])
        return out

    def matrix(self, key: EmbeddingKey) -> tuple[list[str], torch.Tensor]:
        """Every entry of ``key``: ``(paths, float32 [N, dim])``, paths absolute and in a fixed
        order. Read once and kept for this Store's life; read again only after a write (by this
        process or another)."""
        import torch

        keyrow = self._key_row(key)
        if keyrow is None:
            return [], torch.zeros(0, 0)
        key_id, dim, dtype = keyrow
        with self._errors("read"):
            version = self.conn.execute("PRAGMA data_version").fetchone()[0] * 1_000_000 + self._writes
            cached = self._matrices.get(key.digest)
            if cached is not None and cached[0] == version:
                return cached[1], cached[2]
            self.conn.execute("BEGIN")  # one snapshot: the count and the rows agree
            try:
                count = self.conn.execute("SELECT count(*) FROM files WHERE key_id = ?", (key_id,)).fetchone()[0]
                matrix = torch.empty(count, dim)  # filled a chunk at a time: no second copy
                paths: list[str] = []
                source = torch.float16 if dtype == "float16" else torch.float32
                cursor = self.conn.execute("SELECT path, vector FROM files WHERE key_id = ? ORDER BY path", (key_id,))
                while rows := cursor.fetchmany(16384):
                    blob = b"".join(blob for _, blob in rows)
                    if len(blob) != len(rows) * dim * torch.tensor([], dtype=source).element_size():
                        raise StoreError(f"store {self.database}: vectors of the wrong size in key {key.id}; "
                                         "run 'zeroshot store check'")
                    with warnings.catch_warnings():  # read-only bytes: only ever read here
                        warnings.simplefilter("ignore")
                        chunk = torch.frombuffer(blob, dtype=source).view(len(rows), dim)
                    matrix[len(paths):len(paths) + len(rows)].copy_(chunk)
                    paths += self.paths.from_db_many([path for path, _ in rows])
            finally:
                self.conn.execute("COMMIT")
        self._matrices[key.digest] = (version, paths, matrix)
        return paths, matrix

    def fingerprint(self, key: EmbeddingKey) -> tuple[int, int, float, float]:
        """Changes whenever an entry of ``key`` is added, replaced or removed: what tells a
        derived file (the approximate index) that it is out of date."""
        keyrow = self._key_row(key)
        if keyrow is None:
            return (0, 0, 0.0, 0.0)
        with self._errors("read"):
            count, last, ids, added = self.conn.execute(
                "SELECT count(*), coalesce(max(id), 0), total(id), total(added) FROM files WHERE key_id = ?",
                (keyrow[0],)).fetchone()
        return (count, last, ids, added)

    def iter_vectors(self, key: EmbeddingKey, chunk: int = 16384) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Every entry of ``key`` as ``(row ids uint64 [n], float32 [n, dim])`` chunks, in row order."""
        import numpy as np

        keyrow = self._key_row(key)
        if keyrow is None:
            return
        key_id, dim, dtype = keyrow
        last = 0
        while True:
            with self._errors("read"):
                rows = self.conn.execute("SELECT id, vector FROM files WHERE key_id = ? AND id > ? ORDER BY id LIMIT ?",
                                         (key_id, last, chunk)).fetchall()
            if not rows:
                return
            last = rows[-1][0]
            yield np.array([r[0] for r in rows], np.uint64), self._decode([r[1] for r in rows], dim, dtype)

    def rows(self, key: EmbeddingKey, row_ids: Sequence[int]) -> tuple[list[str], torch.Tensor]:
        """``(paths, float32 [n, dim])`` of the entries of ``key`` with these row ids (those that
        still exist), in the order given."""
        import torch

        keyrow = self._key_row(key)
        if keyrow is None or not len(row_ids):
            return [], torch.zeros(0, 0 if keyrow is None else keyrow[1])
        key_id, dim, dtype = keyrow
        found: dict[int, tuple[bytes, bytes]] = {}
        with self._errors("read"):
            # by primary key alone: with "key_id = ?" SQLite would walk the key's (key_id, path) index
            for row_id, row_key, path, blob in self._select_in("SELECT id, key_id, path, vector FROM files WHERE id IN ({})",
                                                               (), [int(i) for i in row_ids]):
                if row_key == key_id:
                    found[row_id] = (path, blob)
        order = [int(i) for i in row_ids if int(i) in found]
        paths = self.paths.from_db_many([found[i][0] for i in order])
        matrix = self._decode([found[i][1] for i in order], dim, dtype) if order else None
        return paths, torch.from_numpy(matrix) if matrix is not None else torch.zeros(0, dim)

    def info(self) -> StoreInfo:
        size = 0
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(OSError):
                size += os.stat(f"{self.database}{suffix}").st_size
        return StoreInfo(self.location, self.database, size, self.schema, self.list_keys())

    # ---------------------------------------------------------------------------- writing

    def add(self, key: EmbeddingKey, records: Iterable[FileRecord]) -> int:
        """Store ``records`` under ``key`` in one transaction, replacing entries of the same
        paths. Record paths must be resolved (:meth:`FileRecord.of` does it: symlinks followed),
        else the same file could get two entries. Returns how many were written."""
        records = list(records)
        if not records:
            return 0
        dims = {len(r.vector) for r in records}
        if len(dims) != 1:
            raise ValueError("records of one add() must have vectors of one length")
        with self._transaction() as conn:
            key_id, dtype = self._ensure_key(conn, key, dims.pop())
            blobs = self._blobs([r.vector for r in records], dtype)
            self._upsert(conn, key_id, [(self.paths.to_db(os.path.abspath(r.path)), r.size, r.mtime_ns, r.hash, blob)
                                        for r, blob in zip(records, blobs)])
        return len(records)

    def index(self, loaded: LoadedModel, inputs: Sequence[str | os.PathLike], settings: EmbedSettings | None = None,
              *, recursive: bool = True, include_hidden: bool = False, found: Discovery | None = None,
              on_progress: IndexProgress | None = None, on_skip: SkipHook | None = None,
              encoder: Encoder | None = None) -> IndexStats:
        """Bring the store up to date with the images under ``inputs`` for ``loaded`` (see
        :func:`zeroshot.store.index.index_files`)."""
        from .index import index_files

        return index_files(self, loaded, inputs, settings, recursive=recursive, include_hidden=include_hidden,
                           found=found, on_progress=on_progress, on_skip=on_skip, encoder=encoder)

    # ---------------------------------------------------------------------------- upkeep

    def check(self) -> list[str]:
        """Integrity problems, one line each (empty: the store is sound): SQLite's own
        ``integrity_check``, entries of keys that do not exist, duplicate entries, vectors of the
        wrong size, non-finite or not unit-length vectors, malformed content hashes."""
        problems: list[str] = []
        try:
            problems += [f"database: {row[0]}" for row in self.conn.execute("PRAGMA integrity_check")
                         if row[0] != "ok"]
            orphans = self.conn.execute(
                "SELECT count(*), min(path) FROM files WHERE key_id NOT IN (SELECT id FROM keys)").fetchone()
            if orphans[0]:
                problems.append(f"{orphans[0]} entries belong to no key (e.g. {self.paths.from_db(orphans[1])})")
            for key_id, path, n in self.conn.execute(
                    "SELECT key_id, path, count(*) FROM files NOT INDEXED GROUP BY key_id, path HAVING count(*) > 1"):
                problems.append(f"duplicate entries ({n}) for {self.paths.from_db(path)} (key row {key_id})")
            for stats in self.list_keys():
                problems += self._check_key(stats)
        except sqlite3.DatabaseError as err:
            problems.append(f"database: {err}")
        return problems

    def _check_key(self, stats: KeyStats) -> list[str]:
        import numpy as np

        name = f"key {stats.id} ({stats.key.model})"
        if stats.dtype not in DTYPES or stats.dim <= 0:
            return [f"{name}: unknown vector type {stats.dtype!r} or size {stats.dim}"]
        width = stats.dim * np.dtype(DTYPES[stats.dtype]).itemsize
        bad: dict[str, list[str]] = {}
        last = 0
        while True:
            rows = self.conn.execute("SELECT id, path, hash, vector FROM files WHERE key_id = ? AND id > ? "
                                     "ORDER BY id LIMIT 4096", (stats.row_id, last)).fetchall()
            if not rows:
                break
            last = rows[-1][0]
            sized = [r for r in rows if len(r[3]) == width]
            for r in rows:
                if len(r[3]) != width:
                    bad.setdefault(f"vector of {len(r[3])} bytes, expected {width}", []).append(r[1])
                if not isinstance(r[2], bytes) or len(r[2]) != 32:
                    bad.setdefault("malformed content hash", []).append(r[1])
            values = self._decode([r[3] for r in sized], stats.dim, stats.dtype)
            finite = np.isfinite(values).all(axis=1)
            norms = np.linalg.norm(np.where(np.isfinite(values), values, 0), axis=1)
            for r, ok, norm in zip(sized, finite, norms):
                if not ok:
                    bad.setdefault("vector holds NaN or infinity", []).append(r[1])
                elif abs(norm - 1) > _NORM_TOLERANCE:
                    bad.setdefault("vector is not unit length", []).append(r[1])
        lines = []
        for what, paths in bad.items():
            shown = ", ".join(self.paths.from_db(p) for p in paths[:3])
            more = f" and {len(paths) - 3} more" if len(paths) > 3 else ""
            lines.append(f"{name}: {what}: {len(paths)} entr{'ies' if len(paths) != 1 else 'y'} ({shown}{more})")
        return lines

    def prune(self, missing_files: bool = False, keep: Iterable[str | EmbeddingKey] | None = None,
              gone_folders: bool = False, dry_run: bool = False) -> PruneStats:
        """Remove entries: with ``keep``, every key except those (ids as ``store info`` shows
        them, or keys); with ``missing_files``, entries whose file is gone. A file whose folder
        is gone too (an unmounted drive?) is only removed with ``gone_folders``. Keys left
        without entries are removed. ``dry_run`` reports without removing."""
        stats = PruneStats()
        all_keys = self.list_keys()
        if keep is not None:
            kept = {k.digest if isinstance(k, EmbeddingKey) else self.find_key(k).key.digest for k in keep}
            stats.keys = [k for k in all_keys if k.key.digest not in kept]
        doomed_keys = {k.row_id for k in stats.keys}
        short = {k.row_id: k.id for k in all_keys}
        doomed_files: list[int] = []
        if missing_files:
            last = 0
            while True:
                with self._errors("read"):
                    rows = self.conn.execute("SELECT id, key_id, path FROM files WHERE id > ? ORDER BY id LIMIT 4096",
                                             (last,)).fetchall()
                if not rows:
                    break
                last = rows[-1][0]
                for row_id, key_id, stored in rows:
                    if key_id in doomed_keys:
                        continue
                    path = self.paths.from_db(stored)
                    if os.path.exists(path):
                        continue
                    if gone_folders or os.path.isdir(os.path.dirname(path)):
                        doomed_files.append(row_id)
                        stats.files.append((short.get(key_id, "?"), path))
                    else:
                        stats.unreachable.append((short.get(key_id, "?"), path))
        if dry_run:
            return stats
        with self._transaction() as conn:
            for start in range(0, len(doomed_files), _CHUNK):
                chunk = doomed_files[start:start + _CHUNK]
                conn.execute(f"DELETE FROM files WHERE id IN ({','.join('?' * len(chunk))})", chunk)
            for key_id in doomed_keys:
                conn.execute("DELETE FROM files WHERE key_id = ?", (key_id,))
            emptied = [k for k in all_keys if k.row_id not in doomed_keys and
                       conn.execute("SELECT 1 FROM files WHERE key_id = ? LIMIT 1", (k.row_id,)).fetchone() is None]
            for k in emptied:
                stats.keys.append(KeyStats(k.key, 0, k.dim, k.dtype, k.created, k.row_id))
            for key_id in doomed_keys | {k.row_id for k in emptied}:
                conn.execute("DELETE FROM keys WHERE id = ?", (key_id,))
        remove_indexes(self.location, {k.key.digest for k in self.list_keys()})
        return stats

    def vacuum(self) -> None:
        """Give the space of removed entries back to the file system (rewrites the file)."""
        with self._errors("vacuum"):
            self.conn.execute("VACUUM")

    def export_parquet(self, path: str | os.PathLike, key: EmbeddingKey | None = None,
                       on_progress: Callable[[int, int], None] | None = None) -> int:
        """Write ``path, model, pretrained, key, embedding`` (float32 list) rows to a Parquet
        file, atomically; all keys unless ``key``. Returns the number of rows."""
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise StoreError("export needs pyarrow: pip install 'zeroshot[parquet]'") from None
        import numpy as np

        from ..output.writers import atomic_file

        keys = [k for k in self.list_keys() if key is None or k.key.digest == key.digest]
        schema = pa.schema([("path", pa.string()), ("model", pa.string()), ("pretrained", pa.string()),
                            ("key", pa.string()), ("embedding", pa.list_(pa.float32()))])
        total, written = sum(k.entries for k in keys), 0
        with atomic_file(Path(path), binary=True, option="-o") as handle:
            writer = pq.ParquetWriter(handle, schema)
            for stats in keys:
                last = 0
                while True:
                    with self._errors("read"):
                        rows = self.conn.execute("SELECT id, path, vector FROM files WHERE key_id = ? AND id > ? "
                                                 "ORDER BY id LIMIT 8192", (stats.row_id, last)).fetchall()
                    if not rows:
                        break
                    last = rows[-1][0]
                    values = self._decode([r[2] for r in rows], stats.dim, stats.dtype).reshape(-1)
                    offsets = np.arange(len(rows) + 1, dtype=np.int32) * stats.dim
                    n = len(rows)
                    writer.write_table(pa.table({
                        "path": pa.array([_text(self.paths.from_db(r[1])) for r in rows], pa.string()),
                        "model": pa.array([stats.key.model] * n, pa.string()),
                        "pretrained": pa.array([stats.key.pretrained] * n, pa.string()),
                        "key": pa.array([stats.id] * n, pa.string()),
                        "embedding": pa.ListArray.from_arrays(pa.array(offsets), pa.array(values)),
                    }, schema=schema))
                    written += n
                    if on_progress:
                        on_progress(written, total)
            writer.close()
        return written


def _check_header(database: Path) -> None:
    """Refuse a file that is not SQLite before SQLite sees it (it would take a tiny file for an
    empty database and write over it)."""
    try:
        with open(database, "rb") as handle:
            head = handle.read(16)
    except OSError as err:
        raise StoreError(f"store {database}: cannot read: {err.strerror or err}") from None
    if head and head != b"SQLite format 3\x00":
        raise StoreError(f"store {database}: not a zeroshot store (not an SQLite database)")


def _text(path: str) -> str:
    """A path as valid UTF-8 text (bytes of non-UTF-8 names become U+FFFD in exports)."""
    try:
        path.encode("utf-8")
        return path
    except UnicodeEncodeError:
        return path.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
