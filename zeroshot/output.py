"""Prediction rows and the writers for every output format.

One table maps a format name to its file extension and writer, so ``--format`` and ``--output``
can never disagree. Files are written to a temporary file beside the target and renamed into
place when complete, so an interrupted run never leaves a torn file.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import sys
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from .errors import OutputError, UsageError

FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


@dataclass(frozen=True)
class Prediction:
    """The result for one input: best labels with scores, or an error (``code: detail``)."""

    path: str
    labels: tuple[str, ...] = ()
    scores: tuple[float, ...] = ()
    error: str | None = None

    @property
    def label(self) -> str | None:
        return self.labels[0] if self.labels else None

    @property
    def score(self) -> float | None:
        return self.scores[0] if self.scores else None

    @property
    def ok(self) -> bool:
        return self.error is None

    def as_dict(self) -> dict[str, Any]:
        """The JSON shape: ``{"path", "predictions": [{"label", "score"}...], "error"}``."""
        return {
            "path": self.path,
            "predictions": [
                {"label": label, "score": round_score(score)}
                for label, score in zip(self.labels, self.scores)
            ],
            "error": self.error,
        }


def round_score(score: float) -> float:
    """Six significant digits: enough for any probability, short enough to read."""
    return float(f"{score:.6g}")


def columns(top_k: int) -> list[str]:
    """CSV/TSV/DataFrame columns: path,label,score[,label_2,score_2...],error."""
    cols = ["path", "label", "score"]
    for rank in range(2, top_k + 1):
        cols += [f"label_{rank}", f"score_{rank}"]
    return cols + ["error"]


def flat_row(pred: Prediction, top_k: int) -> list[Any]:
    row: list[Any] = [pred.path]
    for rank in range(top_k):
        if rank < len(pred.labels):
            row += [pred.labels[rank], round_score(pred.scores[rank])]
        else:
            row += [None, None]
    return row + [pred.error]


def neutralize_formula(cell: str) -> str:
    """Prefix a quote to cells a spreadsheet would evaluate as a formula (CSV injection)."""
    return "'" + cell if cell.startswith(FORMULA_PREFIXES) else cell


def to_dataframe(predictions: Iterable[Prediction], top_k: int = 1):
    import pandas as pd

    return pd.DataFrame([flat_row(p, top_k) for p in predictions], columns=columns(top_k))


# ------------------------------------------------------------------------------------ writers


class Writer:
    """Writes predictions to a text or binary stream; ``begin``/``write``/``end`` may stream."""

    binary = False

    def __init__(self, stream: IO, top_k: int, safe_csv: bool = True) -> None:
        self.stream = stream
        self.top_k = top_k
        self.safe_csv = safe_csv

    def begin(self) -> None: ...

    def write(self, pred: Prediction) -> None: ...

    def end(self) -> None: ...


class DelimitedWriter(Writer):
    delimiter = ","

    def begin(self) -> None:
        self.csv = csv.writer(self.stream, delimiter=self.delimiter, lineterminator="\n")
        # QUOTE_MINIMAL only quotes the line terminator's characters, so a lone CR in a name
        # would be written bare and split the row when read back: such rows quote every cell.
        self.csv_quoted = csv.writer(self.stream, delimiter=self.delimiter, lineterminator="\n",
                                     quoting=csv.QUOTE_ALL)
        self.csv.writerow(columns(self.top_k))

    def write(self, pred: Prediction) -> None:
        cells = ["" if c is None else c for c in flat_row(pred, self.top_k)]
        if self.safe_csv:
            cells = [neutralize_formula(c) if isinstance(c, str) else c for c in cells]
        has_cr = any(isinstance(c, str) and "\r" in c for c in cells)
        (self.csv_quoted if has_cr else self.csv).writerow(cells)


class TsvWriter(DelimitedWriter):
    delimiter = "\t"


def to_json(record: Any) -> str:
    """JSON text, readable Unicode; names that are not valid Unicode (undecodable bytes in a
    file name, kept by Python as lone surrogates) are written as ``\\udcXX`` escapes instead of
    making the file invalid UTF-8."""
    text = json.dumps(record, ensure_ascii=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(record, ensure_ascii=True)
    return text


class JsonlWriter(Writer):
    def write(self, pred: Prediction) -> None:
        self.stream.write(to_json(pred.as_dict()) + "\n")


class JsonWriter(Writer):
    def begin(self) -> None:
        self.stream.write("[")
        self.first = True

    def write(self, pred: Prediction) -> None:
        self.stream.write(("\n" if self.first else ",\n") + to_json(pred.as_dict()))
        self.first = False

    def end(self) -> None:
        self.stream.write("\n]\n")


class CollectingWriter(Writer):
    """Formats that need every row before writing anything (parquet, the terminal table)."""

    def begin(self) -> None:
        self.rows: list[Prediction] = []

    def write(self, pred: Prediction) -> None:
        self.rows.append(pred)


class ParquetWriter(CollectingWriter):
    binary = True

    def end(self) -> None:
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise UsageError(
                "--format parquet needs pyarrow: pip install 'zeroshot[parquet]'"
            ) from None
        to_dataframe(self.rows, self.top_k).to_parquet(self.stream, index=False)


class TableWriter(CollectingWriter):
    def end(self) -> None:
        from rich.console import Console
        from rich.table import Table
        from rich.text import Text

        table = Table(show_edge=False, header_style="bold")
        table.add_column("path", overflow="fold")
        for rank in range(1, self.top_k + 1):
            table.add_column("label" if rank == 1 else f"label {rank}")
            table.add_column("score" if rank == 1 else f"score {rank}", justify="right")
        table.add_column("error", style="red")
        for pred in self.rows:
            cells = [pred.path]
            for rank in range(self.top_k):
                if rank < len(pred.labels):
                    cells += [pred.labels[rank], f"{pred.scores[rank]:.3f}"]
                else:
                    cells += ["", ""]
            table.add_row(*(Text(c) for c in cells), Text(pred.error or ""))
        Console(file=self.stream, soft_wrap=False).print(table)


@dataclass(frozen=True)
class Format:
    name: str
    extensions: tuple[str, ...]
    writer: type[Writer]
    streaming: bool = field(default=True)


FORMATS: dict[str, Format] = {
    f.name: f
    for f in (
        Format("csv", (".csv",), DelimitedWriter),
        Format("tsv", (".tsv", ".tab"), TsvWriter),
        Format("jsonl", (".jsonl", ".ndjson"), JsonlWriter),
        Format("json", (".json",), JsonWriter),
        Format("parquet", (".parquet", ".pq"), ParquetWriter, streaming=False),
        Format("table", (".txt",), TableWriter, streaming=False),
    )
}


def choose_format(requested: str, output: Path | None, stdout_is_tty: bool) -> Format:
    """Resolve ``--format auto``: the output file's extension, else table on a TTY, else CSV."""
    if requested != "auto":
        try:
            return FORMATS[requested]
        except KeyError:
            raise UsageError(
                f"--format {requested!r} is not one of auto, {', '.join(FORMATS)}"
            ) from None
    if output is not None:
        suffix = output.suffix.lower()
        for fmt in FORMATS.values():
            if suffix in fmt.extensions:
                return fmt
        raise UsageError(
            f"--output {output}: cannot tell the format from {suffix or 'no extension'!r}; "
            f"use --format ({', '.join(FORMATS)})"
        )
    return FORMATS["table"] if stdout_is_tty else FORMATS["csv"]


@contextlib.contextmanager
def atomic_file(path: Path, binary: bool = False) -> Iterator[IO]:
    """Open a temporary file beside ``path``; rename it over ``path`` only on success."""
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        raise OutputError(f"--output {path}: folder {directory} does not exist")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    except OSError as err:
        raise OutputError(f"--output {path}: cannot write in {directory}: {err.strerror}") from None
    try:
        # surrogateescape: a file name with bytes that are not UTF-8 is written back as those bytes.
        text_args = {"encoding": "utf-8", "newline": "", "errors": "surrogateescape"}
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else text_args)) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_predictions(
    predictions: Iterable[Prediction],
    fmt: Format,
    top_k: int = 1,
    output: Path | None = None,
    stream: IO | None = None,
    safe_csv: bool = True,
) -> None:
    """Write every prediction in ``fmt`` to ``output`` (atomically) or ``stream`` (stdout)."""
    if output is not None:
        with atomic_file(output, binary=fmt.writer.binary) as handle:
            _drive(fmt.writer(handle, top_k, safe_csv), predictions)
        return
    target = stream if stream is not None else sys.stdout
    if fmt.writer.binary:
        target = getattr(target, "buffer", target)
        if not hasattr(target, "write") or isinstance(target, io.TextIOBase):
            raise UsageError(f"--format {fmt.name} is binary: write it to a file with --output")
    _drive(fmt.writer(target, top_k, safe_csv), predictions, flush=True)


def _drive(writer: Writer, predictions: Iterable[Prediction], flush: bool = False) -> None:
    writer.begin()
    for pred in predictions:
        writer.write(pred)
        if flush and not isinstance(writer, CollectingWriter):
            writer.stream.flush()
    writer.end()
    if flush:
        writer.stream.flush()
