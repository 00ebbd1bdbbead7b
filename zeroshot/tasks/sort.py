"""File images into one folder per label: plan, execute (with a manifest), undo.

    from zeroshot import ZeroShotClassifier, plan_sort, undo_sort
    clf = ZeroShotClassifier(["cat", "dog"], templates="openai-7")
    plan = plan_sort(clf, ["photos/"], "sorted", op="move", min_score=0.5)   # writes nothing
    for item in plan.items:
        print(item.source, "->", item.destination, item.status)
    result = plan.execute()          # sorted/cat/..., sorted/dog/..., sorted/unsorted/...
    undo_sort(result.manifest)       # every file back where it was

**Plan.** Every image is classified (skipped inputs keep their reason code and are never
touched); its folder is the decision's label (``unknown_label`` below ``min_score``) mapped by
:func:`folder_name`, its file name the source's, numbered ``name (2).jpg``, ``name (3).jpg``...
when the name is taken in that folder (by a file already there or an earlier image of the run;
compared case-insensitively so the plan holds on any file system).

**Execute.** Four operations: ``copy``, ``move``, ``link`` (hard link) and ``symlink`` (an
absolute link to the source). Nothing is ever overwritten: a destination name is claimed with an
exclusive create (``O_EXCL``; ``link``/``symlink`` are exclusive by nature) and a name that
turns out to be taken gets the next number. A copy is written to a hidden temporary file beside
its destination, fsynced, re-read and compared (size and SHA-256) with what was read from the
source, and only then renamed onto the claimed name. A move is a rename; across file systems
(``EXDEV``) it becomes that verified copy, and the source is deleted only after the copy is
durable and verified (if the source cannot be deleted, the copy is removed and the move is
reported failed). Nothing is written outside ``into``: folder names are made safe, and a folder
whose name is taken by a file or a link is never written into (the label gets the next number).

**Manifest.** Every operation is recorded, as it happens, in a JSON-lines file (fsynced after each
line; default ``into/.zeroshot-sort-<UTC time>.jsonl``): a header with the settings and the
label -> folder map, ``mkdir`` lines for created folders, and for each image a ``started`` line
before anything is touched and a ``done`` (or ``failed``) line after, each with ``op, source,
destination, size, sha256, label, score, status, error``. An interrupted sort (Ctrl-C, SIGTERM,
``kill -9``, power loss) is finished by running it again (the unfinished manifest in ``into`` is
found and continued; the operation in flight is inspected on disk and either completed or rolled
back) or put back with :func:`undo_sort`, which appends its own records, so an interrupted undo
can be run again too.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..data.discover import Discovery, discover
from ..encode.embed import EmbedSettings
from ..errors import OutputError, UsageError

OPS = ("copy", "move", "link", "symlink")
MANIFEST_VERSION = 1
MANIFEST_PREFIX = ".zeroshot-sort-"
MANIFEST_SUFFIX = ".jsonl"
DEFAULT_UNKNOWN_LABEL = "unsorted"
MAX_FOLDER_BYTES = 100  # a folder name's UTF-8 length (file systems allow 255; room for " (N)")
MAX_NAME_BYTES = 255
_CHUNK = 1 << 20

# Called as ``fault_hook(stage, n)`` at every step of an operation (tests inject crashes here):
# "started" (recorded, nothing touched), "claimed" (empty placeholder at the destination),
# "copied" (temporary copy written and fsynced, not yet verified), "replaced" (destination in
# place, source not yet deleted / not yet recorded), "unlinked" (cross-device source deleted).
fault_hook: Callable[[str, int], None] | None = None


def _fault(stage: str, n: int) -> None:
    if fault_hook is not None:
        fault_hook(stage, n)


# ------------------------------------------------------------------------------ folder names

_FORBIDDEN = frozenset('<>:"/\\|?*')
_INVISIBLE = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
_KEEP = frozenset({"\u200c", "\u200d"})  # zero-width (non-)joiner: part of emoji and of some scripts
_WINDOWS_DEVICES = frozenset(
    ["CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"]
    + [f"{p}{d}" for p in ("COM", "LPT") for d in (*"0123456789", "\u00b9", "\u00b2", "\u00b3")]
)
_SPACES = re.compile(" +")


def folder_name(label: str) -> str:
    """The folder a label's images go to, the same on every operating system:

    1. Unicode NFC;
    2. path separators ``/ \\``, the characters Windows forbids ``< > : " | ? *``, and control or
       invisible format characters (Unicode categories Cc, Cf, Cs, Zl, Zp, except the zero-width
       joiners U+200C/U+200D) each become ``_``; other spaces (tab is a control) become `` ``;
    3. runs of spaces become one; leading and trailing spaces and dots are removed (so ``.``,
       ``..`` and hidden names cannot occur);
    4. nothing left: ``_``;
    5. a Windows device name (CON, PRN, AUX, NUL, COM0-9, LPT0-9, also with an extension such as
       ``nul.txt``) gets a leading ``_``;
    6. longer than 100 bytes of UTF-8: cut to 91 bytes (whole characters), then ``~`` and the
       first 8 hex digits of the label's SHA-256 (distinct long labels stay distinct).

    ``../../etc`` -> ``_.._etc``, ``a/b`` -> ``a_b``, ``.`` -> ``_``, ``CON`` -> ``_CON``.
    Labels whose names collide are told apart by :func:`folder_names`.
    """
    chars = []
    for char in unicodedata.normalize("NFC", label):
        category = unicodedata.category(char)
        if char in _FORBIDDEN or (category in _INVISIBLE and char not in _KEEP):
            chars.append("_")
        elif category == "Zs":
            chars.append(" ")
        else:
            chars.append(char)
    name = _SPACES.sub(" ", "".join(chars)).strip(" .")
    if not name:
        name = "_"
    if name.split(".")[0].rstrip(" ").upper() in _WINDOWS_DEVICES:
        name = "_" + name
    if len(name.encode("utf-8")) > MAX_FOLDER_BYTES:
        digest = hashlib.sha256(label.encode("utf-8", "surrogatepass")).hexdigest()[:8]
        cut = name
        while len(cut.encode("utf-8")) > MAX_FOLDER_BYTES - 9:
            cut = cut[:-1]
        name = cut.rstrip(" .") + "~" + digest
    return name


def _name_key(name: str) -> str:
    """Names that are the same file on a case-insensitive or normalising file system."""
    return unicodedata.normalize("NFC", name).casefold()


def _blocked(folder: str) -> bool:
    """A name in OUT taken by something that is not a real folder (a file, or a link that could
    point outside OUT): never written into."""
    return os.path.lexists(folder) and (os.path.islink(folder) or not os.path.isdir(folder))


def folder_names(labels: Sequence[str], into: str | os.PathLike | None = None) -> dict[str, str]:
    """``label -> folder`` for every label, in order: :func:`folder_name`, and when that name is
    already taken (by an earlier label, compared case-insensitively, or in ``into`` by a file or
    a link) `` (2)``, `` (3)``... is added: two labels never share a folder silently."""
    used: set[str] = set()
    result: dict[str, str] = {}
    for label in labels:
        if label in result:
            continue
        base = folder_name(label)
        candidate, number = base, 1
        while _name_key(candidate) in used or (into is not None and _blocked(os.path.join(into, candidate))):
            number += 1
            candidate = f"{base} ({number})"
        used.add(_name_key(candidate))
        result[label] = candidate
    return result


def numbered(name: str, number: int) -> str:
    """``name`` for the ``number``-th image of that name in a folder: ``photo.jpg``,
    ``photo (2).jpg``, ``photo (3).jpg``... (the stem is shortened to keep 255 bytes)."""
    if number <= 1:
        return name
    stem, ext = os.path.splitext(name)
    suffix = f" ({number})"
    while len(os.fsencode(stem + suffix + ext)) > MAX_NAME_BYTES and stem:
        stem = stem[:-1]
    return stem + suffix + ext


# ----------------------------------------------------------------------------- plan & result


@dataclass
class SortItem:
    """One input of a sort: where it goes (``destination``, under ``into`` as given) and what
    happened: ``planned`` (dry run), ``done``, ``failed`` or ``skipped`` (``error`` says why: a
    reason code as in classify for a skipped image)."""

    source: str
    label: str | None = None
    score: float | None = None
    destination: str | None = None
    status: str = "planned"
    error: str | None = None
    size: int | None = None
    sha256: str | None = None

    def row(self) -> dict[str, Any]:
        """The report row: source, destination, label, score, status, error."""
        return {"source": self.source, "destination": self.destination, "label": self.label,
                "score": self.score, "status": self.status, "error": self.error}


REPORT_COLUMNS = ["source", "destination", "label", "score", "status", "error"]


@dataclass
class SortResult:
    manifest: Path
    op: str
    items: list[SortItem] = field(default_factory=list)
    resumed: int = 0  # images the interrupted run(s) of this manifest had already done
    seconds: float = 0.0

    def count(self, status: str) -> int:
        return sum(1 for item in self.items if item.status == status)

    @property
    def done(self) -> int:
        return self.count("done")

    @property
    def failed(self) -> int:
        return self.count("failed")

    @property
    def skipped(self) -> int:
        return self.count("skipped")


@dataclass
class SortPlan:
    """What a sort will do; :meth:`execute` does it. Making a plan writes nothing."""

    into: str
    op: str
    items: list[SortItem]
    folders: dict[str, str]
    manifest: Path
    settings: dict[str, Any]
    resume: ManifestState | None = None
    left_alone: int = 0  # images already inside a label folder of ``into``

    def execute(self, on_item: Callable[[SortItem], None] | None = None,
                on_progress: Callable[[int, int], None] | None = None) -> SortResult:
        return execute_sort(self, on_item=on_item, on_progress=on_progress)

    @property
    def resumed(self) -> int:
        return len(self.resume.done_sources) if self.resume else 0


def _settings(classifier: Any, op: str, min_score: float | None, unknown_label: str) -> dict[str, Any]:
    return {"op": op, "labels": list(classifier.labels), "templates": list(classifier.templates),
            "model": classifier.loaded.name, "weights": classifier.loaded.weights_id,
            "min_score": min_score, "unknown_label": unknown_label}


def _difference(old: dict[str, Any], new: dict[str, Any]) -> str | None:
    names = {"op": "operation", "labels": "labels", "templates": "templates", "model": "model",
             "weights": "weights (--pretrained)", "min_score": "--min-score", "unknown_label": "--unknown-label"}
    changed = [name for key, name in names.items() if old.get(key) != new.get(key)]
    return ", ".join(changed) or None


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def default_manifest(into: str | os.PathLike) -> Path:
    """``into/.zeroshot-sort-<UTC time>.jsonl`` (a new name: never an existing file's)."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    base = Path(into) / f"{MANIFEST_PREFIX}{stamp}"
    path, number = base.with_name(base.name + MANIFEST_SUFFIX), 1
    while os.path.lexists(path):
        number += 1
        path = base.with_name(f"{base.name}-{number}{MANIFEST_SUFFIX}")
    return path


def unfinished_manifests(into: str | os.PathLike) -> list[Path]:
    """Manifests in ``into`` of sorts that were interrupted (neither finished nor undone), newest first."""
    try:
        names = sorted((n for n in os.listdir(into) if n.startswith(MANIFEST_PREFIX) and n.endswith(MANIFEST_SUFFIX)),
                       reverse=True)
    except OSError:
        return []
    found = []
    for name in names:
        path = Path(into) / name
        try:
            state = read_manifest(path)
        except (UsageError, OutputError):
            continue
        if not state.finished and not state.undo_begun:
            found.append(path)
    return found


def plan_sort(
    classifier: Any,
    inputs: Sequence[str | os.PathLike] | Discovery,
    into: str | os.PathLike,
    op: str = "copy",
    *,
    min_score: float | None = None,
    unknown_label: str = DEFAULT_UNKNOWN_LABEL,
    settings: EmbedSettings = EmbedSettings(fast_decode=True),
    recursive: bool = True,
    include_hidden: bool = False,
    manifest: str | os.PathLike | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    on_prediction: Callable[[Any], None] | None = None,
) -> SortPlan:
    """Classify ``inputs`` with ``classifier`` (a :class:`~zeroshot.tasks.classify.ZeroShotClassifier`)
    and choose every image's destination under ``into``. Writes nothing.

    When ``into`` holds an unfinished manifest (an interrupted sort), or ``manifest`` names one,
    the plan continues it: images it already did are left out, and its settings must match
    (else :class:`UsageError`: finish it with the same settings or undo it)."""
    from .classify import RankSettings

    if op not in OPS:
        raise UsageError(f"sort: op {op!r} is not one of {', '.join(OPS)}")
    into = os.fspath(into)
    if os.path.lexists(into) and not os.path.isdir(into):
        raise UsageError(f"--into {into}: is a file, not a folder")
    labels = list(classifier.labels)
    unknown_label = unknown_label.strip() if isinstance(unknown_label, str) else unknown_label
    if not unknown_label:
        raise UsageError("--unknown-label is empty; give the name of the folder for images below --min-score")
    wanted = _settings(classifier, op, min_score, unknown_label)

    state = _find_resumable(into, manifest, wanted)
    if state is not None:
        folders = dict(state.header["folders"])
        manifest_path = state.path
    else:
        folders = folder_names(labels + [unknown_label], into)
        manifest_path = Path(manifest) if manifest is not None else default_manifest(into)

    real_into = os.path.realpath(into)
    label_dirs = [os.path.join(real_into, name) for name in folders.values()]
    found = inputs if isinstance(inputs, Discovery) else discover(inputs, recursive, include_hidden)
    done = state.done_sources if state else set()
    todo, left_alone = [], 0
    for source in found.items:
        if source.ok and any(_inside(os.path.realpath(source.fs_path), d) for d in label_dirs):
            left_alone += 1  # already sorted (e.g. OUT inside PATH): never re-sorted
            continue
        if os.path.abspath(source.fs_path) in done:
            continue
        todo.append(source)
    if op == "link":
        _check_same_device(todo, into)

    rank = RankSettings(1, min_score, unknown_label)
    taken: dict[str, set[str]] = {}
    items: list[SortItem] = []
    fs_paths = {s.path: s.fs_path for s in todo}
    for pred in classifier.predict(Discovery(todo), settings, rank, on_progress=on_progress):
        if on_prediction is not None:
            on_prediction(pred)
        if pred.error is not None:
            items.append(SortItem(pred.path, status="skipped", error=pred.error))
            continue
        folder = os.path.join(into, folders[pred.label])
        name = os.path.basename(fs_paths[pred.path])
        dest, _ = _free_name(folder, name, taken.setdefault(folder, set()))
        items.append(SortItem(pred.path, pred.label, pred.score, dest))
    return SortPlan(into, op, items, folders, manifest_path, wanted, state, left_alone)


def _free_name(folder: str, name: str, taken: set[str], start: int = 1) -> tuple[str, int]:
    """The first of ``name``, ``name (2)``... from ``start`` that is neither in ``taken`` nor on disk."""
    number = start
    while True:
        candidate = numbered(name, number)
        if _name_key(candidate) not in taken and not os.path.lexists(os.path.join(folder, candidate)):
            taken.add(_name_key(candidate))
            return os.path.join(folder, candidate), number
        number += 1


def _check_same_device(sources: Sequence[Any], into: str) -> None:
    """Hard links cannot cross file systems: refuse before anything is done."""
    anchor = os.path.abspath(into)
    while not os.path.exists(anchor):
        anchor = os.path.dirname(anchor)
    device = os.stat(anchor).st_dev
    for source in sources:
        if not source.ok:
            continue
        try:
            if os.stat(source.fs_path).st_dev != device:
                raise UsageError(f"--link: {source.path} is on another file system than --into {into}, and hard "
                                 "links cannot cross file systems; use --copy or --symlink")
        except OSError:
            continue


def _find_resumable(into: str, manifest: str | os.PathLike | None, wanted: dict[str, Any]) -> ManifestState | None:
    if manifest is not None:
        path = Path(manifest)
        if not os.path.lexists(path):
            return None
        state = read_manifest(path)
        if state.finished or state.undo_begun:
            raise UsageError(f"--manifest {path} is the record of a {'finished' if state.finished else 'undone'} "
                             "sort; give a new file name")
        candidates = [state]
    else:
        candidates = [read_manifest(p) for p in unfinished_manifests(into)]
    for state in candidates:
        if os.path.realpath(state.header.get("into", "")) != os.path.realpath(into):
            raise UsageError(f"the manifest {state.path} is of a sort into {state.header.get('into')}, not {into}")
        changed = _difference(state.header.get("settings", {}), wanted)
        if changed is None:
            return state
        raise UsageError(
            f"--into {into} holds an interrupted sort with other settings ({changed} differ; manifest "
            f"{state.path}): finish it by running the same command again, or put it back with "
            f"'zeroshot sort --undo {state.path}'"
        )
    return None


# ----------------------------------------------------------------------------------- manifest


@dataclass
class ManifestState:
    """An existing manifest, read: the last record of every image (``ops`` by number), folders
    created, and whether the sort finished or was undone."""

    path: Path
    header: dict[str, Any]
    ops: dict[int, dict[str, Any]] = field(default_factory=dict)
    order: list[int] = field(default_factory=list)
    mkdirs: list[str] = field(default_factory=list)
    undo: dict[int, dict[str, Any]] = field(default_factory=dict)
    finished: bool = False
    undone: bool = False
    undo_runs: int = 0
    good_bytes: int = 0

    @property
    def done_sources(self) -> set[str]:
        return {r["source"] for r in self.ops.values() if r.get("status") == "done"}

    @property
    def undo_begun(self) -> bool:
        """An undo ran on it (maybe only partly): it can no longer be resumed."""
        return self.undone or bool(self.undo) or self.undo_runs > 0

    @property
    def next_number(self) -> int:
        return max(self.order, default=-1) + 1


def read_manifest(path: str | os.PathLike) -> ManifestState:
    """Parse a manifest; a torn last line (a crash while writing it) is ignored."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UsageError(f"manifest {path}: no such file") from None
    except OSError as err:
        raise OutputError(f"manifest {path}: cannot read: {err.strerror or err}") from None
    lines = data.split(b"\n")
    try:
        header = json.loads(lines[0].decode("utf-8"))
        if header.get("type") != "header" or header.get("tool") != "zeroshot sort":
            raise ValueError
    except (ValueError, UnicodeDecodeError, AttributeError):
        raise UsageError(f"{path} is not a zeroshot sort manifest") from None
    if header.get("version") != MANIFEST_VERSION:
        raise UsageError(f"{path} was written by another version of zeroshot (manifest version "
                         f"{header.get('version')}, this one reads {MANIFEST_VERSION})")
    state = ManifestState(path, header, good_bytes=len(lines[0]) + 1)
    body = lines[1:]
    for i, line in enumerate(body):
        if i == len(body) - 1:  # no newline after it: empty, or torn by a crash
            break
        try:
            record = json.loads(line.decode("utf-8"))
            kind = record["type"]
        except (ValueError, UnicodeDecodeError, TypeError, KeyError):
            break
        if kind == "op":
            if record["n"] not in state.ops:
                state.order.append(record["n"])
            state.ops[record["n"]] = record
        elif kind == "mkdir":
            state.mkdirs.append(record["destination"])
        elif kind == "undo":
            state.undo[record["n"]] = record
        elif kind == "end":
            state.finished = True
        elif kind == "undo-end":
            state.undo_runs += 1
            state.undone = state.undone or record.get("status") == "complete"
        state.good_bytes += len(line) + 1
    return state


class ManifestWriter:
    """Append-only JSON lines, each fsynced before the next step; locked (``flock``) for the
    run, so two processes never work from one manifest."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self.fd = fd

    @classmethod
    def create(cls, path: Path, header: dict[str, Any]) -> ManifestWriter:
        path = Path(path)
        folder = path.parent if str(path.parent) else Path(".")
        if os.path.lexists(path):
            raise UsageError(f"--manifest {path} already exists; give a new file name")
        text = _line(header)
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
        except OSError as err:
            raise OutputError(f"manifest {path}: cannot write in {folder}: {err.strerror or err}") from None
        try:
            _write_all(fd, text)
            os.fsync(fd)
            os.close(fd)
            try:
                os.link(tmp, path)  # never replaces a file that appeared meanwhile
            except FileExistsError:
                raise UsageError(f"--manifest {path} already exists; give a new file name") from None
            except OSError:  # no hard links on this file system
                fd2 = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                _write_all(fd2, text)
                os.fsync(fd2)
                os.close(fd2)
        except OSError as err:
            raise OutputError(f"manifest {path}: cannot write: {err.strerror or err}") from None
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        _fsync_dir(str(folder))
        return cls.open(path, len(text.encode("utf-8")))

    @classmethod
    def open(cls, path: Path, good_bytes: int) -> ManifestWriter:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        except OSError as err:
            raise OutputError(f"manifest {path}: cannot write: {err.strerror or err}") from None
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: no lock
            fcntl = None
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                raise UsageError(f"manifest {path} is in use by another zeroshot sort; wait for it to finish") from None
        try:
            if os.fstat(fd).st_size > good_bytes:
                os.ftruncate(fd, good_bytes)  # a torn last line
        except OSError as err:
            os.close(fd)
            raise OutputError(f"manifest {path}: cannot write: {err.strerror or err}") from None
        return cls(Path(path), fd)

    def write(self, record: dict[str, Any]) -> None:
        try:
            _write_all(self.fd, _line(record))
            os.fsync(self.fd)
        except OSError as err:
            raise OutputError(f"manifest {self.path}: cannot write: {err.strerror or err}; "
                              "the sort stopped after the last recorded operation") from None

    def close(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = None


def _line(record: dict[str, Any]) -> str:
    # ASCII escapes: any path (even one whose bytes are not UTF-8) round-trips exactly.
    return json.dumps(record, ensure_ascii=True) + "\n"


def _write_all(fd: int, text: str) -> None:
    data = text.encode("utf-8")
    while data:
        data = data[os.write(fd, data):]


# ------------------------------------------------------------------------------- file system


class _Taken(Exception):
    """The destination name exists: try the next number."""


class VerifyError(OSError):
    """A copy read back differs from its source: it is removed and the source left alone."""


def _fsync_dir(folder: str) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder or ".", os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def file_digest(path: str, drop_cache: bool = False) -> tuple[int, str]:
    """``(size, SHA-256 hex)`` of a file's bytes, read now (``drop_cache``: from the disk, not
    the page cache, where the OS allows)."""
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as handle:
        if drop_cache and hasattr(os, "posix_fadvise"):
            with contextlib.suppress(OSError):
                os.posix_fadvise(handle.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def _unlink_quiet(path: str | None) -> None:
    if path:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def _claim(dest: str) -> None:
    """Create ``dest`` empty, exclusively: the name is ours, nobody's file is replaced."""
    try:
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise _Taken() from None
    os.close(fd)


def _copy_verified(src: str, partial: str, dest: str, n: int, expect: tuple[int, str] | None = None) -> tuple[int, str]:
    """Copy ``src`` to ``partial`` (fsynced, times and mode kept), read it back and compare size
    and SHA-256, then rename it onto ``dest`` (claimed by us). Leaves no ``partial`` behind."""
    try:
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        digest, size = hashlib.sha256(), 0
        with open(src, "rb") as source, os.fdopen(fd, "wb") as target:
            while chunk := source.read(_CHUNK):
                digest.update(chunk)
                target.write(chunk)
                size += len(chunk)
            target.flush()
            os.fsync(target.fileno())
        shutil.copystat(src, partial)
        _fault("copied", n)
        read = (size, digest.hexdigest())
        if expect is not None and read != expect:
            raise VerifyError(errno.EIO, f"{src} changed while it was being copied; it was left as it is")
        if file_digest(partial, drop_cache=True) != read:
            raise VerifyError(errno.EIO, f"the copy of {src} read back differs from the source (size or SHA-256); "
                                         "the copy was removed and the source left as it is")
        os.replace(partial, dest)
    except BaseException:
        _unlink_quiet(partial)
        raise
    _fsync_dir(os.path.dirname(dest))
    return read


def _move(src: str, dest: str, partial: str, n: int) -> tuple[int, str]:
    """Move ``src`` to the free name ``dest`` without ever replacing a file: claim ``dest``, then
    rename over the claim; across file systems copy, verify, and only then delete ``src``."""
    read = file_digest(src)
    _claim(dest)
    _fault("claimed", n)
    try:
        os.replace(src, dest)
    except OSError as err:
        if err.errno != errno.EXDEV:
            _unlink_quiet(dest)
            raise
    else:
        _fault("replaced", n)
        _fsync_dir(os.path.dirname(dest))
        _fsync_dir(os.path.dirname(src))
        return read
    try:
        _copy_verified(src, partial, dest, n, expect=read)
    except BaseException:
        _unlink_quiet(dest)  # still our empty claim: the copy never reached it
        raise
    _fault("replaced", n)
    try:
        os.unlink(src)
    except OSError as err:
        _unlink_quiet(dest)
        raise OSError(err.errno, f"copied across file systems but cannot delete the source ({err.strerror}); "
                                 "the copy was removed and the source left as it is") from None
    _fault("unlinked", n)
    _fsync_dir(os.path.dirname(src))
    return read


def _copy(src: str, dest: str, partial: str, n: int) -> tuple[int, str]:
    _claim(dest)
    _fault("claimed", n)
    try:
        return _copy_verified(src, partial, dest, n)
    except BaseException:
        _unlink_quiet(dest)
        raise


def _link(src: str, dest: str, partial: str, n: int) -> tuple[int, str]:
    read = file_digest(src)
    try:
        os.link(src, dest)
    except FileExistsError:
        raise _Taken() from None
    except OSError as err:
        if err.errno == errno.EXDEV:
            raise OSError(err.errno, "hard links cannot cross file systems; use --copy or --symlink") from None
        raise
    _fsync_dir(os.path.dirname(dest))
    return read


def _symlink(src: str, dest: str, partial: str, n: int) -> tuple[int, str]:
    read = file_digest(src)
    try:
        os.symlink(os.path.abspath(src), dest)
    except FileExistsError:
        raise _Taken() from None
    _fsync_dir(os.path.dirname(dest))
    return read


_DO = {"copy": _copy, "move": _move, "link": _link, "symlink": _symlink}

DONE, NOT_DONE, PROBLEM = "done", "not done", "problem"
_SETTLED = {DONE: "done", NOT_DONE: "rolled-back", PROBLEM: "failed"}  # the record a settled operation gets


def _same_content(a: str, b: str) -> bool:
    try:
        return os.path.getsize(a) == os.path.getsize(b) and file_digest(a) == file_digest(b)
    except OSError:
        return False


def settle_move(src: str, dest: str, partial: str | None = None) -> tuple[str, str | None]:
    """Where a move from ``src`` to ``dest`` that was cut short stands, made clean: ``done`` (the
    file is at ``dest`` only) or ``not done`` (it is at ``src``, our claim or verified copy at
    ``dest`` removed), or ``problem`` with a message (nothing touched)."""
    _unlink_quiet(partial)
    if os.path.lexists(src):
        if not os.path.lexists(dest):
            return NOT_DONE, None
        if os.path.isfile(dest) and not os.path.islink(dest):
            if os.path.getsize(dest) == 0 and os.path.getsize(src) != 0:
                os.unlink(dest)  # our empty claim
                return NOT_DONE, None
            if _same_content(src, dest):
                os.unlink(dest)  # a verified copy whose source was not deleted yet
                return NOT_DONE, None
        return PROBLEM, f"{dest} is not the file being moved from {src}; both left as they are"
    if os.path.lexists(dest):
        return DONE, None
    return PROBLEM, f"neither {src} nor {dest} exists"


def settle(record: dict[str, Any]) -> tuple[str, str | None]:
    """The state of an operation recorded as ``started`` but never finished (the run was
    killed), made clean: ``done``, ``not done`` (no trace left) or ``problem``."""
    op, src, dest = record["op"], record["source"], record["destination"]
    if op == "move":
        return settle_move(src, dest, record.get("partial"))
    _unlink_quiet(record.get("partial"))
    if not os.path.lexists(dest):
        return NOT_DONE, None
    if op == "copy":
        if os.path.isfile(dest) and not os.path.islink(dest):
            if _same_content(src, dest):
                return DONE, None
            if os.path.getsize(dest) == 0:
                os.unlink(dest)  # our empty claim
                return NOT_DONE, None
        return PROBLEM, f"{dest} is not a copy of {src}; left as it is"
    if op == "link":
        with contextlib.suppress(OSError):
            if os.path.samefile(src, dest):
                return DONE, None
        return PROBLEM, f"{dest} is not a hard link to {src}; left as it is"
    if os.path.islink(dest) and os.readlink(dest) == os.path.abspath(src):
        return DONE, None
    return PROBLEM, f"{dest} is not a link to {src}; left as it is"


# ------------------------------------------------------------------------------------ execute


class _Run:
    def __init__(self, plan: SortPlan) -> None:
        self.plan = plan
        self.writer: ManifestWriter | None = None
        self.token = ""
        self.n = plan.resume.next_number if plan.resume else 0
        self.ready: set[str] = set()
        self.taken: dict[str, set[str]] = {}

    def open(self) -> list[SortItem]:
        """Create ``into`` (and the manifest), or reopen the interrupted run's manifest and
        settle the operation that was in flight. Returns the items of settled operations."""
        plan = self.plan
        created = _make_folders(plan.into)
        if plan.resume is not None:
            state = read_manifest(plan.resume.path)  # again: it may have changed since planning
            if state.finished or state.undo_begun:
                raise UsageError(f"the sort recorded in {state.path} is no longer unfinished")
            self.writer = ManifestWriter.open(state.path, state.good_bytes)
            self.n = state.next_number
        else:
            header = {"type": "header", "tool": "zeroshot sort", "version": MANIFEST_VERSION,
                      "into": os.path.abspath(plan.into), "op": plan.op, "folders": plan.folders,
                      "settings": plan.settings, "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}
            self.writer = ManifestWriter.create(plan.manifest, header)
            state = None
        self.token = hashlib.sha256(str(os.path.abspath(self.writer.path)).encode("utf-8", "surrogatepass")).hexdigest()[:8]
        for folder in created:
            self.writer.write({"type": "mkdir", "destination": os.path.abspath(folder), "status": "done"})
        settled = []
        if state is not None:
            for n in state.order:
                record = state.ops[n]
                if record.get("status") != "started":
                    continue
                verdict, message = settle(record)
                self.writer.write(dict(record, status=_SETTLED[verdict], error=message))
                if verdict == DONE:
                    settled.append(SortItem(record["source"], record.get("label"), record.get("score"),
                                            record["destination"], "done", size=record.get("size")))
        return settled

    def folder(self, label: str) -> str:
        name = self.plan.folders[label]
        folder = os.path.join(self.plan.into, name)
        if folder in self.ready:
            return folder
        if not os.path.lexists(folder):
            self.writer.write({"type": "mkdir", "destination": os.path.abspath(folder), "status": "done"})
            with contextlib.suppress(FileExistsError):
                os.mkdir(folder)
            _fsync_dir(self.plan.into)
        expected = os.path.join(os.path.realpath(self.plan.into), name)
        if os.path.islink(folder) or not os.path.isdir(folder) or os.path.realpath(folder) != expected:
            raise OSError(errno.ENOTDIR, f"{folder} is not a real folder inside {self.plan.into} (a file or a link); "
                                         "nothing is written into it")
        self.ready.add(folder)
        return folder

    def record(self, n: int, item: SortItem, dest: str | None, status: str, error: str | None = None,
               partial: str | None = None, op: str | None = None) -> dict[str, Any]:
        record = {"type": "op", "n": n, "op": op or self.plan.op,
                  "source": os.path.abspath(item.source),
                  "destination": os.path.abspath(dest) if dest else None,
                  "size": item.size, "sha256": item.sha256, "label": item.label, "score": item.score,
                  "status": status, "error": error}
        if partial:
            record["partial"] = os.path.abspath(partial)
        self.writer.write(record)
        return record

    def perform(self, item: SortItem) -> None:
        n, self.n = self.n, self.n + 1
        if item.status == "skipped":
            self.record(n, item, None, "skipped", item.error, op="skip")
            return
        assert item.destination is not None and item.label is not None
        src = item.source
        try:
            folder = self.folder(item.label)
            item.size = os.stat(src).st_size
        except OSError as err:
            item.status, item.error = "failed", _os_message(err)
            self.record(n, item, None, "failed", item.error)
            return
        name = os.path.basename(src)
        dest, number = item.destination, _number_of(item.destination, name)
        while True:
            partial = os.path.join(folder, f".zeroshot-part-{self.token}-{n}") if self.plan.op in ("copy", "move") else None
            record = self.record(n, item, dest, "started", partial=partial)
            try:
                _fault("started", n)
                item.size, item.sha256 = _DO[self.plan.op](src, dest, partial or "", n)
            except _Taken:  # the name was taken since the plan: the next free number
                dest, number = _free_name(folder, name, self.taken_in(folder), number + 1)
                continue
            except OSError as err:
                item.status, item.error = "failed", _os_message(err)
                self.record(n, item, dest, "failed", item.error)
                return
            except BaseException:
                # Interrupted in the middle: leave the disk clean and the manifest exact.
                verdict, message = settle(record)
                with contextlib.suppress(Exception):
                    self.record(n, item, dest, _SETTLED[verdict], message)
                raise
            break
        item.destination, item.status = dest, "done"
        self.record(n, item, dest, "done")

    def taken_in(self, folder: str) -> set[str]:
        """Names planned in ``folder`` (a clash never takes another image's planned name)."""
        if folder not in self.taken:
            self.taken[folder] = {_name_key(os.path.basename(i.destination)) for i in self.plan.items
                                  if i.destination and os.path.dirname(i.destination) == folder}
        return self.taken[folder]

    def close(self, finished: bool, counts: dict[str, int]) -> None:
        if self.writer is None:
            return
        try:
            if finished:
                self.writer.write({"type": "end", "status": "complete", **counts})
        finally:
            self.writer.close()


def _number_of(dest: str, name: str) -> int:
    base = os.path.basename(dest)
    if base == name:
        return 1
    stem, ext = os.path.splitext(base)
    match = re.search(r" \((\d+)\)$", stem)
    return int(match.group(1)) if match else 1


def _os_message(err: OSError) -> str:
    text = err.strerror or str(err)
    return f"{text} ({err.filename})" if err.filename else text


def _make_folders(into: str) -> list[str]:
    """Create ``into`` and any missing parent; the ones created, top first."""
    missing = []
    path = os.path.abspath(into)
    while not os.path.lexists(path):
        missing.append(path)
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    created = []
    for folder in reversed(missing):
        try:
            os.mkdir(folder)
        except FileExistsError:
            continue
        except OSError as err:
            raise OutputError(f"--into {into}: cannot create {folder}: {err.strerror or err}") from None
        created.append(folder)
    if not os.path.isdir(into):
        raise UsageError(f"--into {into}: is a file, not a folder")
    return created


def iter_sort(plan: SortPlan, on_progress: Callable[[int, int], None] | None = None,
              result: SortResult | None = None) -> Iterator[SortItem]:
    """Carry out ``plan``, yielding every item once it is done, failed or skipped (in plan
    order); ``result`` (if given) is filled in as it goes."""
    started = time.perf_counter()
    result = result if result is not None else SortResult(plan.manifest, plan.op)
    run = _Run(plan)
    finished = False
    try:
        settled = run.open()
        result.manifest = run.writer.path
        result.resumed = plan.resumed + len(settled)
        settled_sources = {item.source for item in settled}
        items = [i for i in plan.items if os.path.abspath(i.source) not in settled_sources]
        total = len(items)
        for count, item in enumerate(items, 1):
            run.perform(item)
            result.items.append(item)
            if on_progress is not None:
                on_progress(count, total)
            yield item
        finished = True
    finally:
        result.seconds = time.perf_counter() - started
        run.close(finished, {"done": result.done, "failed": result.failed, "skipped": result.skipped,
                             "resumed": result.resumed})


def execute_sort(plan: SortPlan, on_item: Callable[[SortItem], None] | None = None,
                 on_progress: Callable[[int, int], None] | None = None) -> SortResult:
    """Carry out ``plan`` (see the module docstring for the guarantees); ``on_item`` sees every
    item once it is done, failed or skipped."""
    result = SortResult(plan.manifest, plan.op)
    items = iter_sort(plan, on_progress, result)
    try:
        for item in items:
            if on_item is not None:
                on_item(item)
    finally:
        items.close()  # an exception from on_item still closes (and unlocks) the manifest now
    return result


def sort_images(classifier: Any, inputs: Sequence[str | os.PathLike] | Discovery, into: str | os.PathLike,
                op: str = "copy", **kwargs: Any) -> SortResult:
    """:func:`plan_sort` then :func:`execute_sort`."""
    return execute_sort(plan_sort(classifier, inputs, into, op, **kwargs))


# --------------------------------------------------------------------------------------- undo


@dataclass
class UndoItem:
    """One operation of the manifest, undone (``undone``), found already gone (``gone``: the copy
    or link it made was removed since), or not undone (``failed``, with the reason)."""

    op: str
    source: str
    destination: str
    status: str
    error: str | None = None

    def row(self) -> dict[str, Any]:
        return {"op": self.op, "source": self.source, "destination": self.destination, "status": self.status,
                "error": self.error}


UNDO_COLUMNS = ["op", "source", "destination", "status", "error"]


@dataclass
class UndoResult:
    manifest: Path
    items: list[UndoItem] = field(default_factory=list)
    folders_removed: list[str] = field(default_factory=list)
    folders_kept: list[str] = field(default_factory=list)
    manifest_removed: bool = False

    @property
    def failed(self) -> list[UndoItem]:
        return [item for item in self.items if item.status == "failed"]

    @property
    def complete(self) -> bool:
        return not self.failed


class _Refused(Exception):
    pass


def _undo_one(record: dict[str, Any], partial: str, n: int) -> str:
    op, src, dest = record["op"], record["source"], record["destination"]
    if op == "move":
        if not os.path.lexists(dest):
            raise _Refused(f"{dest} is gone: it cannot be put back")
        if os.path.lexists(src):
            raise _Refused(f"something now exists at {src}; {dest} was left where it is")
        os.makedirs(os.path.dirname(src), exist_ok=True)
        try:
            _move(dest, src, partial, n)
        except _Taken:
            raise _Refused(f"something now exists at {src}; {dest} was left where it is") from None
        return "undone"
    if not os.path.lexists(dest):
        return "gone"
    if op == "copy":
        if os.path.isfile(dest) and not os.path.islink(dest) and file_digest(dest) == (record["size"], record["sha256"]):
            os.unlink(dest)
            _fsync_dir(os.path.dirname(dest))
            return "undone"
        raise _Refused(f"{dest} was changed since the sort (its SHA-256 differs); kept")
    if op == "link":
        if not os.path.lexists(src):
            raise _Refused(f"the original {src} is gone and {dest} is its only copy; kept")
        same = False
        with contextlib.suppress(OSError):
            same = os.path.samefile(src, dest)
        if not same:
            raise _Refused(f"{dest} is no longer a hard link to {src}; kept")
        os.unlink(dest)
        _fsync_dir(os.path.dirname(dest))
        return "undone"
    if os.path.islink(dest) and os.readlink(dest) == os.path.abspath(src):
        os.unlink(dest)
        _fsync_dir(os.path.dirname(dest))
        return "undone"
    raise _Refused(f"{dest} is no longer the link the sort made; kept")


def undo_sort(manifest: str | os.PathLike, on_item: Callable[[UndoItem], None] | None = None,
              on_progress: Callable[[int, int], None] | None = None) -> UndoResult:
    """Put back everything the sort recorded in ``manifest`` did, newest first: moved files move
    back (never over a file that has appeared at the original place since), copies and links it
    made are removed (a copy only if its SHA-256 is unchanged, a hard link only while the
    original exists), then the folders it created are removed if empty. An interrupted sort is
    undone as well (the operation in flight is inspected on disk); an interrupted undo can be
    run again. What cannot be undone is reported (``failed`` items) and left as it is. A complete
    undo deletes a manifest that lies in the sort's ``into`` folder (the default place), so the
    tree is as it was; otherwise the manifest is kept with the undo recorded in it."""
    path = Path(manifest)
    state = read_manifest(path)
    writer = ManifestWriter.open(path, state.good_bytes)
    result = UndoResult(path)
    token = hashlib.sha256(str(os.path.abspath(path)).encode("utf-8", "surrogatepass")).hexdigest()[:8]
    try:
        todo = [n for n in reversed(state.order)
                if state.ops[n].get("status") in ("done", "started")
                and state.undo.get(n, {}).get("status") != "undone"]
        for count, n in enumerate(todo, 1):
            record = state.ops[n]
            partial = os.path.join(os.path.dirname(record["source"]), f".zeroshot-undo-{token}-{n}")
            item = UndoItem(record["op"], record["source"], record["destination"], "undone")
            try:
                item.status = _undo_record(writer, state, n, record, partial)
            except _Refused as err:
                item.status, item.error = "failed", str(err)
            except OSError as err:
                item.status, item.error = "failed", _os_message(err)
            writer.write({"type": "undo", "n": n, "status": "undone" if item.status != "failed" else "failed",
                          "error": item.error})
            result.items.append(item)
            if on_item is not None:
                on_item(item)
            if on_progress is not None:
                on_progress(count, len(todo))
        here = os.path.dirname(os.path.abspath(path))
        into = state.header.get("into", "")
        later = []
        for folder in reversed(state.mkdirs):
            if _inside(here, folder):
                later.append(folder)  # holds the manifest: removed after it, if at all
                continue
            _remove_folder(folder, result)
        writer.write({"type": "undo-end", "status": "complete" if result.complete else "incomplete",
                      "failed": len(result.failed)})
    finally:
        writer.close()
    if result.complete and os.path.realpath(here) == os.path.realpath(into):
        _unlink_quiet(str(path))
        result.manifest_removed = True
        for folder in later:
            _remove_folder(folder, result)
    return result


def _undo_record(writer: ManifestWriter, state: ManifestState, n: int, record: dict[str, Any], partial: str) -> str:
    if record.get("status") == "started":  # in flight when the sort was killed
        verdict, message = settle(record)
        if verdict == NOT_DONE:
            return "undone"
        if verdict == PROBLEM:
            raise _Refused(message)
        if record["op"] in ("copy", "link", "symlink") and record.get("sha256") is None:
            record = dict(record)
            record["size"], record["sha256"] = file_digest(record["destination"])
    previous = state.undo.get(n)
    if previous is not None and previous.get("status") == "started" and record["op"] == "move":
        # an undo that was killed while moving this file back
        verdict, message = settle_move(record["destination"], record["source"], previous.get("partial"))
        if verdict == DONE:
            return "undone"
        if verdict == PROBLEM:
            raise _Refused(message)
    if record["op"] == "move":
        writer.write({"type": "undo", "n": n, "status": "started", "partial": partial})
    return _undo_one(record, partial, n)


def _remove_folder(folder: str, result: UndoResult) -> None:
    try:
        os.rmdir(folder)
    except FileNotFoundError:
        return
    except OSError:
        result.folders_kept.append(folder)
        return
    _fsync_dir(os.path.dirname(folder))
    result.folders_removed.append(folder)
