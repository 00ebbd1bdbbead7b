"""Expand user inputs (files, folders, glob patterns, ``-`` for stdin) into an ordered list.

Directory walking follows links but visits each folder and file once, skips dot-files unless
asked, and never opens FIFOs or devices. Inputs that cannot be used (missing, unreadable, not a
regular file) stay in the list at the position the user gave them, carrying their
:class:`~zeroshot.errors.ImageError`, so every consumer reports them in order.
"""

from __future__ import annotations

import glob
import os
import re
import stat
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import IO, Any

from ..errors import NOT_A_FILE, NOT_FOUND, UNREADABLE, ImageError

IMAGE_EXTENSIONS = frozenset(
    ".jpg .jpeg .jpe .jfif .png .apng .gif .bmp .dib .webp .tif .tiff .ppm .pgm .pbm .pnm "
    ".ico .tga .jp2 .j2k .heic .heif .avif .jxl".split()
)
_GLOB_CHARS = re.compile(r"[*?\[]")
_NATURAL = re.compile(r"([0-9]+)")  # ASCII digits only: "²" or "٣" sort as text


@dataclass(frozen=True)
class Source:
    """One input: ``path`` as the user gave it (or as found under a given folder), the file to
    open, and the reason it cannot be used when discovery already knows one."""

    path: str
    fs_path: str
    error: ImageError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class Discovery:
    """Every input in the order given: usable files and known problems interleaved."""

    items: list[Source] = field(default_factory=list)

    @property
    def sources(self) -> list[Source]:
        """The usable files."""
        return [s for s in self.items if s.ok]

    @property
    def problems(self) -> list[tuple[str, ImageError]]:
        """``(path, error)`` for the inputs that cannot be used."""
        return [(s.path, s.error) for s in self.items if s.error is not None]

    def __len__(self) -> int:
        return len(self.items)


def natural_key(text: str) -> list[Any]:
    """Sort key that orders ``img2`` before ``img10``."""
    return [int(part) if i % 2 else part.lower() for i, part in enumerate(_NATURAL.split(text))]


def has_image_extension(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


class _Walker:
    def __init__(self, recursive: bool, include_hidden: bool) -> None:
        self.recursive = recursive
        self.include_hidden = include_hidden
        self.seen_files: set[tuple[int, int]] = set()
        self.seen_dirs: set[tuple[int, int]] = set()
        self.found = Discovery()

    def problem(self, shown: str, code: str, detail: str) -> None:
        self.found.items.append(Source(shown, shown, ImageError(code, detail)))

    def add_file(self, shown: str, st: os.stat_result | None = None) -> None:
        try:
            st = st or os.stat(shown)
        except FileNotFoundError:
            self.problem(shown, NOT_FOUND, "no such file (or a broken link)")
            return
        except OSError as err:
            self.problem(shown, UNREADABLE, err.strerror or str(err))
            return
        if not stat.S_ISREG(st.st_mode):
            self.problem(shown, NOT_A_FILE, "not a regular file (FIFO, device or socket)")
            return
        identity = (st.st_dev, st.st_ino)
        if identity in self.seen_files:
            return
        self.seen_files.add(identity)
        self.found.items.append(Source(shown, shown))

    def add_path(self, shown: str, explicit: bool = True) -> None:
        try:
            st = os.stat(shown)
        except FileNotFoundError:
            if explicit and _GLOB_CHARS.search(shown):
                matches = sorted(glob.glob(shown, recursive=True), key=natural_key)
                if not matches:
                    self.problem(shown, NOT_FOUND, "pattern matched no files")
                for match in matches:
                    self.add_path(match, explicit=False)
                return
            self.problem(shown, NOT_FOUND, "no such file or directory")
            return
        except OSError as err:
            self.problem(shown, UNREADABLE, err.strerror or str(err))
            return
        if stat.S_ISDIR(st.st_mode):
            self.walk(shown, st)
        elif explicit or has_image_extension(shown):
            self.add_file(shown, st)

    @staticmethod
    def _is_ancestor_link(link: str, folder: str) -> bool:
        """A link to ``/``, ``..`` or any folder above ``folder``: following it would walk the
        whole tree again (or the whole disk), so it is not followed."""
        try:
            target = os.path.realpath(link)
            here = os.path.realpath(folder)
        except (OSError, ValueError):
            return True
        return here == target or here.startswith(target.rstrip(os.sep) + os.sep)

    def walk(self, folder: str, st: os.stat_result) -> None:
        identity = (st.st_dev, st.st_ino)
        if identity in self.seen_dirs:
            return  # symlink loop or a folder reached twice
        self.seen_dirs.add(identity)
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: natural_key(e.name))
        except OSError as err:
            self.problem(folder, UNREADABLE, f"cannot list folder: {err.strerror or err}")
            return
        for entry in entries:
            if entry.name.startswith(".") and not self.include_hidden:
                continue
            shown = os.path.join(folder, entry.name)
            try:
                entry_st = os.stat(entry.path)
            except OSError:
                if has_image_extension(entry.name):
                    self.problem(shown, NOT_FOUND, "broken link")
                continue
            if stat.S_ISDIR(entry_st.st_mode):
                if self.recursive and not (entry.is_symlink() and self._is_ancestor_link(entry.path, folder)):
                    self.walk(shown, entry_st)
            elif has_image_extension(entry.name):
                self.add_file(shown, entry_st)


def read_path_list(stream: IO[str]) -> list[str]:
    """Paths from stdin, one per line (``find ... | zeroshot classify -``)."""
    return [line.rstrip("\r\n") for line in stream if line.strip()]


def discover(
    inputs: Sequence[str | os.PathLike],
    recursive: bool = True,
    include_hidden: bool = False,
    stdin: IO[str] | None = None,
) -> Discovery:
    """Expand files, folders, glob patterns and ``-`` (paths on stdin) into image sources.

    Order is deterministic: inputs in the order given (problems included), folder contents in
    natural order; each file appears once even when reached through several inputs or links.
    """
    walker = _Walker(recursive, include_hidden)
    for item in inputs:
        item = os.fspath(item)
        if item == "-":
            for line in read_path_list(stdin or sys.stdin):
                walker.add_path(line, explicit=True)
        else:
            walker.add_path(item)
    return walker.found
