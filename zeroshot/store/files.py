"""File identity for the store: where a store lives, how paths are recorded, and the two
checks that decide whether a stored vector still belongs to a file.

- Fast check: same path, size and modification time (``st_mtime_ns``): the file is unchanged.
- Content check: SHA-256 of the first 1 MiB, the last 1 KiB and the size. Equal digests mean
  equal content for practical purposes (a renamed or copied photo); it is not a full-file hash,
  so two files that differ only in the middle of a large file would be taken as equal.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

HEAD_BYTES = 1 << 20
TAIL_BYTES = 1 << 10
DB_NAME = "embeddings.sqlite3"


def default_store_dir() -> Path:
    """``$ZEROSHOT_STORE_DIR``, else the platform's user data folder + ``/store``
    (``~/.local/share/zeroshot/store`` on Linux, ``~/Library/Application Support/zeroshot/store``
    on macOS, ``%LOCALAPPDATA%\\zeroshot\\store`` on Windows)."""
    env = os.environ.get("ZEROSHOT_STORE_DIR")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_data_dir

    return Path(user_data_dir("zeroshot", appauthor=False)) / "store"


def content_hash(path: str | os.PathLike, size: int | None = None) -> bytes:
    """SHA-256 of the first 1 MiB + the last 1 KiB + the size (32 bytes). ``size`` is the size
    the caller saw at ``stat`` time; the file is read with ``O_NONBLOCK`` so a FIFO never hangs."""
    digest = hashlib.sha256()
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    fd = os.open(path, flags)
    try:
        if size is None:
            size = os.fstat(fd).st_size
        with os.fdopen(fd, "rb", closefd=False) as handle:
            digest.update(handle.read(HEAD_BYTES))
            if size > HEAD_BYTES:
                handle.seek(max(HEAD_BYTES, size - TAIL_BYTES))
                digest.update(handle.read(TAIL_BYTES))
    finally:
        os.close(fd)
    digest.update(str(size).encode("ascii"))
    return digest.digest()


@dataclass(frozen=True)
class FileRecord:
    """One stored entry: the file's resolved absolute path, its size, ``st_mtime_ns`` and
    content hash when it was read, and its L2-normalised embedding (float32 numpy, 1-D)."""

    path: str
    size: int
    mtime_ns: int
    hash: bytes
    vector: np.ndarray

    @classmethod
    def of(cls, path: str | os.PathLike, vector, stat: os.stat_result | None = None,
           digest: bytes | None = None) -> FileRecord:
        """A record for ``path`` and its ``vector`` (numpy or torch). Pass the ``stat`` taken
        *before* the image was read, so a file changed meanwhile is seen as changed next time."""
        import numpy as np

        real = os.path.realpath(path)
        st = stat or os.stat(real)
        vec = vector.detach().float().cpu().numpy() if hasattr(vector, "detach") else np.asarray(vector, np.float32)
        return cls(real, st.st_size, st.st_mtime_ns, digest or content_hash(real, st.st_size), vec.reshape(-1))


class PathMap:
    """How paths are written in a store: files under the store folder's parent (``--store
    photos/.zeroshot`` -> ``photos/``) relative to it, so a library moved or mounted elsewhere
    with its store keeps working; every other file as its absolute path. Paths are stored as
    the bytes of the file name (``os.fsencode``), so names that are not UTF-8 survive."""

    def __init__(self, store_dir: Path) -> None:
        self.anchor = os.path.dirname(os.path.realpath(store_dir))
        self.prefix = self.anchor.rstrip(os.sep) + os.sep

    def to_db(self, real: str) -> bytes:
        if real.startswith(self.prefix):
            return os.fsencode(real[len(self.prefix):])
        return os.fsencode(real)

    def from_db(self, stored: bytes) -> str:
        text = os.fsdecode(stored)
        return text if os.path.isabs(text) else os.path.join(self.anchor, text)

    def from_db_many(self, stored: Sequence[bytes]) -> list[str]:
        """:meth:`from_db` for many paths (loading a matrix of a million entries)."""
        if os.name != "posix":
            return [self.from_db(p) for p in stored]
        encoding, prefix = sys.getfilesystemencoding(), self.prefix
        texts = [p.decode(encoding, "surrogateescape") for p in stored]
        return [t if t[:1] == "/" else prefix + t for t in texts]

    def ranges_under(self, root: str) -> list[tuple[bytes, bytes | None]]:
        """``[low, high)`` ranges (``None``: no upper bound) of stored paths that lie under the
        folder ``root`` (resolved, absolute): its absolute form, plus the relative forms where
        ``root`` meets the anchor."""
        folder = root.rstrip(os.sep) + os.sep
        ranges = [_prefix_range(os.fsencode(folder))]
        if self.prefix.startswith(folder):  # the anchor lies under root: every relative path
            sep = os.fsencode(os.sep)
            ranges += [(b"", sep), (bytes([sep[0] + 1]), None)]
        elif folder.startswith(self.prefix):
            ranges.append(_prefix_range(os.fsencode(folder[len(self.prefix):])))
        return ranges


def _prefix_range(prefix: bytes) -> tuple[bytes, bytes]:
    """Byte strings starting with ``prefix`` (which ends with a separator)."""
    return prefix, prefix[:-1] + bytes([prefix[-1] + 1])


def is_under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)
