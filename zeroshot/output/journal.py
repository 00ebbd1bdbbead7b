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

import json
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from ..errors import OutputError, UsageError
from .rows import Prediction

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
    """What an existing journal holds: its fingerprint, its rows by path, and where it ends."""

    def __init__(self, fingerprint: dict[str, Any], rows: dict[str, Prediction], good_bytes: int,
                 dropped: int) -> None:
        self.fingerprint = fingerprint
        self.rows = rows
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
    rows: dict[str, Prediction] = {}
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
        rows[pred.path] = pred
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
        try:
            handle = open(path, "w", encoding="utf-8", newline="\n")
        except OSError as err:
            raise OutputError(f"cannot write the journal {path}: {err.strerror or err}") from None
        journal = cls(path, handle)
        handle.write(json.dumps({"zeroshot_journal": JOURNAL_VERSION, "fingerprint": fp}, ensure_ascii=True) + "\n")
        journal.sync(force=True)
        return journal

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
        self.handle.write(json.dumps(_record(pred), ensure_ascii=True) + "\n")
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


def merge_in_order(order: Sequence[str], done: dict[str, Prediction], fresh: Iterable[Prediction]) -> Iterator[Prediction]:
    """Rows from an interrupted run (``done``) and new ones (``fresh``, which yields the paths
    not in ``done`` in ``order``) merged into ``order``; rows for paths no longer among the
    inputs come last, in their original order. Each path appears once."""
    done = dict(done)
    position = {}
    for i, path in enumerate(order):
        position.setdefault(path, i)
    waiting = sorted((position[p], p) for p in done if p in position)
    cursor = 0
    for pred in fresh:
        if pred.path in done and pred.path in position:
            continue  # already finished before the interruption
        at = position.get(pred.path, len(order))
        while cursor < len(waiting) and waiting[cursor][0] < at:
            yield done.pop(waiting[cursor][1])
            cursor += 1
        yield pred
    for _, path in waiting[cursor:]:
        yield done.pop(path)
    yield from done.values()


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

    After :meth:`open`: ``done`` holds the rows an interrupted run finished (empty unless
    resuming); ``resumed``, ``dropped`` (torn rows discarded), ``discarded`` (an unfinished run
    was thrown away because ``resume`` was not asked for) and ``nothing_to_resume`` say what
    happened, for the caller to report."""

    def __init__(self, output: Path, fp: dict[str, Any], journal: Journal, done: dict[str, Prediction],
                 dropped: int = 0, discarded: bool = False, nothing_to_resume: bool = False) -> None:
        self.output = Path(output)
        self.fingerprint = fp
        self.journal: Journal | None = journal
        self.done = done
        self.dropped = dropped
        self.discarded = discarded
        self.nothing_to_resume = nothing_to_resume

    @property
    def resumed(self) -> bool:
        return bool(self.done) or self.dropped > 0

    @classmethod
    def open(cls, output: Path, fp: dict[str, Any], resume: bool) -> ResumableOutput:
        """Start a journal for ``output``, or continue the existing one when ``resume``
        (refused with :class:`UsageError` when its fingerprint differs from ``fp``)."""
        path = journal_path(output)
        if not path.exists():
            return cls(output, fp, Journal.create(path, fp), {}, nothing_to_resume=resume)
        if not resume:
            remove_stale_temporaries(output)
            return cls(output, fp, Journal.create(path, fp), {}, discarded=True)
        state = read_journal(path)
        check_resumable(state, fp, output)
        remove_stale_temporaries(output)
        return cls(output, fp, Journal.reopen(path, state), state.rows, dropped=state.dropped)

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
            self.journal.close()
            self.journal = None

    def finish(self) -> None:
        """The output file is complete: the journal is no longer needed."""
        if self.journal is not None:
            self.journal.remove()
            self.journal = None
