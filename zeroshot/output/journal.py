"""Crash-safe runs: a journal beside ``--output`` that makes an interrupted run resumable.

While ``classify --output out.csv`` runs, every finished row is appended to
``.out.csv.zeroshot-journal`` (JSON lines, flushed and fsynced after every batch). Its first line
is the run's *fingerprint*: everything that decides the content of a row (model, weights, labels,
templates, top-k, min-score, unknown label). The final file is written atomically at the end and
the journal deleted, so after a crash (Ctrl-C, kill -9, power loss, disk full) there is the
previous ``out.csv`` (or none) plus a journal holding every row finished so far.

``--resume`` reads the journal (a torn last line is dropped), refuses when the fingerprint differs
from the new run, skips the paths already done, and writes the final file with old and new rows
merged in the same order an uninterrupted run would have used.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections import Counter, deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from ..errors import OutputError, UsageError
from .rows import Prediction
from .writers import new_file_mode

JOURNAL_VERSION = 2  # 2: rows record the decision (label) beside the true ranking
JOURNAL_SUFFIX = ".zeroshot-journal"

_FIELD_NAMES = {
    "model": "model",
    "weights": "weights (--pretrained)",
    "labels": "labels",
    "templates": "templates",
    "top_k": "--top-k",
    "min_score": "--min-score",
    "unknown_label": "--unknown-label",
}


def journal_path(output: Path) -> Path:
    output = Path(output)
    return output.with_name(f".{output.name}{JOURNAL_SUFFIX}")


def fingerprint(
    model: str,
    weights_id: str,
    labels: Sequence[str],
    templates: Sequence[str],
    top_k: int,
    min_score: float | None,
    unknown_label: str,
) -> dict[str, Any]:
    """Everything that decides the content of a row; a resumed run must match it exactly."""
    return {
        "model": model,
        "weights": weights_id,
        "labels": list(labels),
        "templates": list(templates),
        "top_k": top_k,
        "min_score": min_score,
        # Only matters when there is a threshold.
        "unknown_label": unknown_label if min_score is not None else None,
    }


def describe_difference(old: dict[str, Any], new: dict[str, Any]) -> str | None:
    """``None`` when the fingerprints match, else a short phrase naming what changed."""
    changed = []
    for key, name in _FIELD_NAMES.items():
        if old.get(key) != new.get(key):
            changed.append(f"{name} ({_short(old.get(key))} -> {_short(new.get(key))})")
    extra = set(old) ^ set(new)
    if extra and not changed:
        changed.append(f"run settings ({', '.join(sorted(extra))})")
    return "; ".join(changed) or None


def _short(value: Any) -> str:
    if isinstance(value, list):
        return f"{len(value)} entries" if len(value) > 3 else json.dumps(value, ensure_ascii=False)
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 60 else text[:57] + "..."


def _record(pred: Prediction) -> dict[str, Any]:
    return {"path": pred.path, "label": pred.label, "labels": list(pred.labels), "scores": list(pred.scores),
            "error": pred.error}


def _prediction(record: dict[str, Any]) -> Prediction:
    labels, scores, error = record.get("labels") or [], record.get("scores") or [], record.get("error")
    label = record.get("label")
    if not isinstance(record.get("path"), str) or len(labels) != len(scores) or "label" not in record:
        raise ValueError("malformed row")
    if (label is None) != (not labels):  # a decision exactly when there is a ranking
        raise ValueError("malformed row")
    return Prediction(record["path"], tuple(str(x) for x in labels), tuple(float(x) for x in scores),
                      None if error is None else str(error), None if label is None else str(label))


class JournalState:
    """What an existing journal holds: its fingerprint, its rows (``entries`` in the order they
    were finished, a path given twice appearing twice; ``rows`` by path), and where it ends."""

    def __init__(self, fingerprint: dict[str, Any], entries: list[Prediction], good_bytes: int,
                 dropped: int) -> None:
        self.fingerprint = fingerprint
        self.entries = entries
        self.rows = {pred.path: pred for pred in entries}
        self.good_bytes = good_bytes
        self.dropped = dropped


def read_journal(path: Path) -> JournalState:
    """Parse a journal, tolerating a torn or corrupt tail (everything after it is dropped)."""
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise OutputError(f"cannot read the journal {path}: {err.strerror or err}") from None
    lines = data.split(b"\n")
    try:
        head = json.loads(lines[0].decode("utf-8"))
        version = head.get("zeroshot_journal")
        if not isinstance(head.get("fingerprint"), dict) or not isinstance(version, int):
            raise ValueError
    except (ValueError, UnicodeDecodeError, AttributeError):
        raise OutputError(f"{path} is not a zeroshot journal; delete it to start over") from None
    if version != JOURNAL_VERSION:
        raise OutputError(f"{path} was written by another version of zeroshot (journal format {version}, "
                          f"this one reads {JOURNAL_VERSION}); run without --resume to start over")
    rows: list[Prediction] = []
    good = len(lines[0]) + 1
    dropped = 0
    body = lines[1:]
    for i, line in enumerate(body):
        complete = i < len(body) - 1  # the last piece has no newline after it: torn (or empty)
        if not line and not complete:
            break
        try:
            if not complete:
                raise ValueError("torn line")
            pred = _prediction(json.loads(line.decode("utf-8")))
        except (ValueError, UnicodeDecodeError, TypeError, AttributeError):
            dropped = sum(1 for rest in body[i:] if rest)
            break
        rows.append(pred)
        good += len(line) + 1
    return JournalState(head["fingerprint"], rows, good, dropped)


class Journal:
    """Append-only record of finished rows; ``sync()`` makes them durable (call once per batch)."""

    def __init__(self, path: Path, handle: IO[str]) -> None:
        self.path = Path(path)
        self.handle = handle
        self.pending = 0

    @classmethod
    def create(cls, path: Path, fp: dict[str, Any]) -> Journal:
        """A new journal holding only its header, made atomically: a full disk leaves no
        empty or torn journal behind (that ``--resume`` would then reject)."""
        path = Path(path)
        header = json.dumps({"zeroshot_journal": JOURNAL_VERSION, "fingerprint": fp}, ensure_ascii=True) + "\n"
        try:
            mode = new_file_mode(path)
            fd, tmp = tempfile.mkstemp(prefix=f"{path.name}.", suffix=".tmp", dir=path.parent)
        except OSError as err:
            raise OutputError(f"cannot write the journal {path}: {err.strerror or err}") from None
        try:
            os.fchmod(fd, mode)
            with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
                handle.write(header)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
            handle = open(path, "a", encoding="utf-8", newline="\n")
        except OSError as err:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise OutputError(f"cannot write the journal {path}: {err.strerror or err}; nothing was changed") from None
        return cls(path, handle)

    @classmethod
    def reopen(cls, path: Path, state: JournalState) -> Journal:
        """Continue an existing journal after its last complete row."""
        try:
            os.truncate(path, state.good_bytes)  # drop a torn last line
            handle = open(path, "a", encoding="utf-8", newline="\n")
        except OSError as err:
            raise OutputError(f"cannot write the journal {path}: {err.strerror or err}") from None
        return cls(path, handle)

    def record(self, pred: Prediction) -> None:
        # ASCII escapes: exact round-trip of any path, even names that are not valid UTF-8.
        try:
            self.handle.write(json.dumps(_record(pred), ensure_ascii=True) + "\n")
        except OSError as err:
            raise OutputError(f"cannot write the journal {self.path}: {err.strerror or err}") from None
        self.pending += 1

    def sync(self, force: bool = False) -> None:
        if not (self.pending or force):
            return
        try:
            self.handle.flush()
            os.fsync(self.handle.fileno())
        except OSError as err:
            raise OutputError(f"cannot write the journal {self.path}: {err.strerror or err}") from None
        self.pending = 0

    def close(self) -> None:
        try:
            self.sync()
        finally:
            self.handle.close()

    def remove(self) -> None:
        self.handle.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


def merge_in_order(order: Sequence[str], done: Mapping[str, Prediction] | Sequence[Prediction],
                   fresh: Iterable[Prediction]) -> Iterator[Prediction]:
    """Rows from an interrupted run (``done``) and new ones merged into ``order``, the inputs of
    the run (a path may appear several times). The done rows of a path stand for its first
    occurrences; ``fresh`` yields the rows of the other occurrences, in order (what
    :class:`Skipper` leaves to do). Done rows of paths no longer among the inputs come last."""
    waiting: dict[str, deque[Prediction]] = {}
    for pred in done.values() if isinstance(done, Mapping) else done:
        waiting.setdefault(pred.path, deque()).append(pred)
    fresh = iter(fresh)
    for path in order:
        queue = waiting.get(path)
        if queue:
            yield queue.popleft()
            continue
        pred = next(fresh, None)
        if pred is not None:
            yield pred
    yield from fresh
    for queue in waiting.values():
        yield from queue


class Skipper:
    """``skip(path)`` for the inputs of a resumed run, asked once per input in order: True for
    the first occurrences of a path that the interrupted run finished, False for the rest."""

    def __init__(self, done: Iterable[Prediction]) -> None:
        self.left = Counter(pred.path for pred in done)

    def __call__(self, path: str) -> bool:
        if self.left[path] > 0:
            self.left[path] -= 1
            return True
        return False


def remove_stale_temporaries(output: Path) -> int:
    """Delete the temporary files that a killed run left beside ``output`` (``.name.XXXX.tmp``)."""
    output = Path(output)
    directory = output.parent if str(output.parent) else Path(".")
    removed = 0
    try:
        candidates = list(directory.glob(f".{_glob_escape(output.name)}.*.tmp"))
    except OSError:
        return 0
    for candidate in candidates:
        try:
            candidate.unlink()
            removed += 1
        except OSError:
            pass
    return removed


def _glob_escape(name: str) -> str:
    import glob

    return glob.escape(name)


def check_resumable(state: JournalState, fp: dict[str, Any], output: Path) -> None:
    difference = describe_difference(state.fingerprint, fp)
    if difference:
        raise UsageError(
            f"--resume: {output} was started with a different {difference}; its rows would be stale. "
            "Run without --resume to start over"
        )


class ResumableOutput:
    """The journal side of a run writing ``output``: opened (or resumed) before the run, fed
    every finished row, removed when the output file is complete.

    After :meth:`open`: ``done`` holds the rows an interrupted run finished, in the order it
    finished them (empty unless resuming); ``resumed``, ``dropped`` (torn rows discarded), ``discarded`` (an unfinished run
    was thrown away because ``resume`` was not asked for) and ``nothing_to_resume`` say what
    happened, for the caller to report."""

    def __init__(self, output: Path, fp: dict[str, Any], journal: Journal, done: list[Prediction],
                 dropped: int = 0, discarded: bool = False, nothing_to_resume: bool = False,
                 lock: OutputLock | None = None) -> None:
        self.output = Path(output)
        self.fingerprint = fp
        self.journal: Journal | None = journal
        self.done = done
        self.dropped = dropped
        self.discarded = discarded
        self.nothing_to_resume = nothing_to_resume
        self.lock = lock

    @property
    def resumed(self) -> bool:
        return bool(self.done) or self.dropped > 0

    @classmethod
    def open(cls, output: Path, fp: dict[str, Any], resume: bool) -> ResumableOutput:
        """Start a journal for ``output``, or continue the existing one when ``resume``
        (refused with :class:`UsageError` when its fingerprint differs from ``fp``)."""
        lock = OutputLock.acquire(output)  # before anything is read or removed: a second run stops here
        try:
            path = journal_path(output)
            if not path.exists():
                remove_stale_temporaries(output)
                return cls(output, fp, Journal.create(path, fp), [], nothing_to_resume=resume, lock=lock)
            if not resume:
                remove_stale_temporaries(output)
                return cls(output, fp, Journal.create(path, fp), [], discarded=True, lock=lock)
            state = read_journal(path)
            check_resumable(state, fp, output)
            remove_stale_temporaries(output)
            return cls(output, fp, Journal.reopen(path, state), state.entries, dropped=state.dropped, lock=lock)
        except BaseException:
            lock.release()
            raise

    def skipper(self) -> Skipper | None:
        """What a resumed run leaves out (None when nothing was done before)."""
        return Skipper(self.done) if self.done else None

    def record(self, pred: Prediction) -> None:
        if self.journal is not None:
            self.journal.record(pred)

    def sync(self) -> None:
        if self.journal is not None:
            self.journal.sync()

    def merged(self, order: Sequence[str], fresh: Iterable[Prediction]) -> Iterator[Prediction]:
        """The rows of the whole run in ``order``: kept ones and ``fresh`` ones."""
        return merge_in_order(order, self.done, fresh) if self.done else iter(fresh)

    def close(self) -> None:
        """Keep the journal (the run was interrupted): everything recorded is made durable."""
        if self.journal is not None:
            try:
                self.journal.close()
            finally:
                self.journal = None
                self._unlock()

    def _unlock(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def finish(self) -> None:
        """The output file is complete: the journal is no longer needed."""
        if self.journal is not None:
            try:
                self.journal.remove()
            finally:
                self.journal = None
                self._unlock()


LOCK_SUFFIX = ".zeroshot-lock"


class OutputLock:
    """An exclusive lock on an output file, held for the whole run: a second run writing the
    same file stops with a one-line error instead of deleting the first one's temporary file
    and truncating its journal. The lock is the kernel's (``flock`` on ``.NAME.zeroshot-lock``),
    so a run killed with ``kill -9`` releases it; where ``fcntl`` is missing (Windows) there is
    no lock."""

    def __init__(self, path: Path, fd: int | None) -> None:
        self.path = path
        self.fd = fd

    @classmethod
    def acquire(cls, output: Path) -> OutputLock:
        output = Path(output)
        path = output.with_name(f".{output.name}{LOCK_SUFFIX}")
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            return cls(path, None)
        while True:
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), new_file_mode(output))
            except OSError as err:
                raise OutputError(f"--output {output}: cannot create the lock {path}: {err.strerror or err}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                raise OutputError(
                    f"--output {output} is being written by another zeroshot run (it holds {path}); "
                    "wait for it to finish, or write to another file"
                ) from None
            try:  # the holder we waited for may have removed the file: lock the one that is there
                if os.fstat(fd).st_ino == os.stat(path).st_ino:
                    return cls(path, fd)
            except FileNotFoundError:
                pass
            os.close(fd)

    def release(self) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.path)  # while still locked, so nobody locks a file about to vanish
        os.close(self.fd)
        self.fd = None
