"""Writers for every output format, and atomic files.

One table (:data:`FORMATS`) maps a format name to its file extensions and writer, so ``--format``
and ``--output`` can never disagree, and every command (classify's rows, eval's predictions and
per-class files) writes through it. Files are written to a temporary file beside the target and
renamed into place when complete, so an interrupted run never leaves a torn file; the new file
gets the permissions a shell redirect would give it (the existing file's mode, or 0666 less the
umask).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import sys
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from ..errors import OutputError, UsageError
from .rows import Prediction, PredictionRecord, Record, columns, dict_records

FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
QUOTE = "'"


def neutralize_formula(cell: str) -> str:
    """Prefix a quote to cells a spreadsheet would evaluate as a formula (CSV injection), and to
    cells that already start with a quote, so the escape is reversible: see :func:`restore_cell`."""
    return QUOTE + cell if cell.startswith((*FORMULA_PREFIXES, QUOTE)) else cell


def restore_cell(cell: str) -> str:
    """The original text of a cell of the default (spreadsheet-safe) CSV/TSV: one leading quote
    removed. ``restore_cell(neutralize_formula(x)) == x`` for every string."""
    return cell[1:] if cell.startswith(QUOTE) else cell


# ------------------------------------------------------------------------------------ writers


class Writer:
    """Writes records to a text or binary stream; ``begin``/``write``/``end`` may stream."""

    binary = False
    collects = False  # needs every row before it can write anything

    def __init__(self, stream: IO, columns: Sequence[str], safe_csv: bool = True) -> None:
        self.stream = stream
        self.columns = list(columns)
        self.safe_csv = safe_csv

    def begin(self) -> None: ...

    def write(self, record: Record) -> None: ...

    def end(self) -> None: ...


class DelimitedWriter(Writer):
    delimiter = ","

    def begin(self) -> None:
        self.csv = csv.writer(self.stream, delimiter=self.delimiter, lineterminator="\n")
        # QUOTE_MINIMAL only quotes the line terminator's characters, so a lone CR in a name
        # would be written bare and split the row when read back: such rows quote every cell.
        self.csv_quoted = csv.writer(self.stream, delimiter=self.delimiter, lineterminator="\n",
                                     quoting=csv.QUOTE_ALL)
        self.csv.writerow(self.columns)

    def write(self, record: Record) -> None:
        cells = [_csv_cell(c) for c in record.flat()]
        if self.safe_csv:
            cells = [neutralize_formula(c) if isinstance(c, str) else c for c in cells]
        has_cr = any(isinstance(c, str) and "\r" in c for c in cells)
        (self.csv_quoted if has_cr else self.csv).writerow(cells)


class TsvWriter(DelimitedWriter):
    delimiter = "\t"


def to_json(record: Any, indent: int | None = None) -> str:
    """JSON text, readable Unicode; names that are not valid Unicode (undecodable bytes in a
    file name, kept by Python as lone surrogates) are written as ``\\udcXX`` escapes instead of
    making the file invalid UTF-8."""
    text = json.dumps(record, ensure_ascii=False, indent=indent)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(record, ensure_ascii=True, indent=indent)
    return text


def _csv_cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return value


class JsonlWriter(Writer):
    def write(self, record: Record) -> None:
        self.stream.write(to_json(record.as_dict()) + "\n")


class JsonWriter(Writer):
    def begin(self) -> None:
        self.stream.write("[")
        self.first = True

    def write(self, record: Record) -> None:
        self.stream.write(("\n" if self.first else ",\n") + to_json(record.as_dict()))
        self.first = False

    def end(self) -> None:
        self.stream.write("\n]\n")


class CollectingWriter(Writer):
    """Formats that need every row before writing anything (parquet, the terminal table)."""

    collects = True

    def begin(self) -> None:
        self.rows: list[list[Any]] = []

    def write(self, record: Record) -> None:
        self.rows.append(record.flat())


class ParquetWriter(CollectingWriter):
    binary = True

    def end(self) -> None:
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise UsageError("--format parquet needs pyarrow: pip install 'zeroshot[parquet]'") from None
        import pandas as pd

        pd.DataFrame(self.rows, columns=self.columns).to_parquet(self.stream, index=False)


class XlsxWriter(Writer):
    """An Excel workbook (openpyxl, streamed): text cells are always text (never a formula, so
    nothing needs escaping), scores are numbers, Unicode is intact. Control characters that XML
    cannot hold (and undecodable bytes of a file name) are written as visible ``\\xNN`` escapes."""

    binary = True

    def begin(self) -> None:
        try:
            from openpyxl import Workbook
        except ImportError:
            raise UsageError("--format xlsx needs openpyxl: pip install 'zeroshot[xlsx]'") from None
        self.book = Workbook(write_only=True)
        self.sheet = self.book.create_sheet("zeroshot")
        self.sheet.append([self._cell(c) for c in self.columns])
        self.sheet.freeze_panes = "A2"

    def _cell(self, value: Any) -> Any:
        from openpyxl.cell import WriteOnlyCell

        if not isinstance(value, str):
            return value
        cell = WriteOnlyCell(self.sheet, value=_xml_safe(value))
        cell.data_type = "s"  # text, even when it starts with "=": never evaluated
        return cell

    def write(self, record: Record) -> None:
        self.sheet.append([self._cell(c) for c in record.flat()])

    def end(self) -> None:
        self.book.save(self.stream)


def _xml_safe(text: str) -> str:
    """Characters XML 1.0 cannot hold, as visible escapes (tab, newline and CR are kept)."""
    out = []
    for char in text:
        code = ord(char)
        bad = (code < 0x20 and char not in "\t\n\r") or 0xD800 <= code <= 0xDFFF or code in (0xFFFE, 0xFFFF)
        out.append((f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}") if bad else char)
    return "".join(out)


class TableWriter(CollectingWriter):
    """A readable table (rich): for a terminal, not for parsing."""

    def end(self) -> None:
        from rich.console import Console
        from rich.table import Table
        from rich.text import Text

        table = Table(show_edge=False, header_style="bold")
        for name in self.columns:
            numeric = self.rows and any(isinstance(r[len(table.columns)], float) for r in self.rows)
            table.add_column(name.replace("_", " "), justify="right" if numeric else "left",
                             overflow="fold" if name == "path" else "ellipsis", style="red" if name == "error" else None)
        for row in self.rows:
            table.add_row(*(Text(_table_cell(c)) for c in row))
        Console(file=self.stream, soft_wrap=False).print(table)


def _table_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


@dataclass(frozen=True)
class Format:
    name: str
    extensions: tuple[str, ...]
    writer: type[Writer]


FORMATS: dict[str, Format] = {
    f.name: f
    for f in (
        Format("csv", (".csv",), DelimitedWriter),
        Format("tsv", (".tsv", ".tab"), TsvWriter),
        Format("jsonl", (".jsonl", ".ndjson"), JsonlWriter),
        Format("json", (".json",), JsonWriter),
        Format("parquet", (".parquet", ".pq"), ParquetWriter),
        Format("xlsx", (".xlsx",), XlsxWriter),
        Format("table", (), TableWriter),  # for a terminal: never chosen from a file name
    )
}


FORMAT_NAMES = tuple(FORMATS)


def format_for_path(path: Path, option: str = "--output") -> Format:
    """The format a file's extension names; an unknown extension is a usage error."""
    suffix = Path(path).suffix.lower()
    for fmt in FORMATS.values():
        if suffix in fmt.extensions:
            return fmt
    known = ", ".join(f"{f.name} ({' '.join(f.extensions)})" for f in FORMATS.values() if f.extensions)
    raise UsageError(f"{option} {path}: cannot tell the format from {suffix or 'no extension'!r}; "
                     f"use one of {known}, or give --format")


def choose_format(requested: str, output: Path | None, stdout_is_tty: bool, option: str = "--output") -> Format:
    """Resolve ``--format auto``: the output file's extension, else a table on a terminal and
    CSV when piped. A file whose extension names no format needs an explicit ``--format``."""
    if requested != "auto":
        try:
            return FORMATS[requested]
        except KeyError:
            raise UsageError(f"--format {requested!r} is not one of auto, {', '.join(FORMATS)}") from None
    if output is not None:
        return format_for_path(output, option)
    return FORMATS["table"] if stdout_is_tty else FORMATS["csv"]


def new_file_mode(path: Path) -> int:
    """The mode a shell redirect would give ``path``: the existing file's, or 0666 less the umask."""
    try:
        return os.stat(path).st_mode & 0o7777
    except OSError:
        mask = os.umask(0o022)
        os.umask(mask)
        return 0o666 & ~mask


@contextlib.contextmanager
def atomic_file(path: Path, binary: bool = False, option: str = "--output") -> Iterator[IO]:
    """Open a temporary file beside ``path``; rename it over ``path`` only on success. Write
    failures (a full disk, a lost mount) become one-line :class:`OutputError` naming ``option``
    and leave neither the temporary nor a changed ``path`` behind."""
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        raise OutputError(f"{option} {path}: folder {directory} does not exist")
    if path.is_dir():
        raise OutputError(f"{option} {path}: is a folder; give a file name")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    except OSError as err:
        raise OutputError(f"{option} {path}: cannot write in {directory}: {err.strerror}") from None
    try:
        os.fchmod(fd, new_file_mode(path))
        # surrogateescape: a file name with bytes that are not UTF-8 is written back as those bytes.
        text_args = {"encoding": "utf-8", "newline": "", "errors": "surrogateescape"}
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else text_args)) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(err, OSError) and not isinstance(err, BrokenPipeError):
            raise OutputError(f"{option} {path}: cannot write: {err.strerror or err}; nothing was changed") from None
        raise


def open_target(fmt: Format, stream: IO | None) -> IO:
    """stdout (or ``stream``) for ``fmt``: the byte buffer for binary formats."""
    target = stream if stream is not None else sys.stdout
    if fmt.writer.binary:
        terminal = getattr(target, "isatty", lambda: False)()
        target = getattr(target, "buffer", target)
        if terminal or not hasattr(target, "write") or isinstance(target, io.TextIOBase):
            raise UsageError(f"--format {fmt.name} is binary: write it to a file with --output (or redirect stdout)")
    return target


def write_records(
    records: Iterable[Record],
    fmt: Format,
    columns: Sequence[str],
    output: Path | None = None,
    stream: IO | None = None,
    safe_csv: bool = True,
    option: str = "--output",
) -> None:
    """Write records in ``fmt`` to ``output`` (atomically) or ``stream`` (default stdout, flushed
    row by row for streaming formats)."""
    if output is not None:
        with atomic_file(output, binary=fmt.writer.binary, option=option) as handle:
            _drive(fmt.writer(handle, columns, safe_csv), records)
        return
    _drive(fmt.writer(open_target(fmt, stream), columns, safe_csv), records, flush=True)


def write_predictions(
    predictions: Iterable[Prediction],
    fmt: Format,
    top_k: int = 1,
    output: Path | None = None,
    stream: IO | None = None,
    safe_csv: bool = True,
    thresholded: bool = False,
) -> None:
    """Write every prediction in ``fmt`` to ``output`` (atomically) or ``stream`` (stdout).
    ``thresholded`` (the run had a ``--min-score``) adds the ``top_label`` column."""
    records = (PredictionRecord(p, top_k, thresholded) for p in predictions)
    write_records(records, fmt, columns(top_k, thresholded), output, stream, safe_csv)


def write_rows(rows: Sequence[dict[str, Any]], path: Path, option: str = "--output", safe_csv: bool = True,
               fmt: Format | None = None) -> None:
    """Same-keyed dict rows to a file, in the format its extension names (or ``fmt``)."""
    fmt = fmt or format_for_path(Path(path), option)
    cols, records = dict_records(rows)
    write_records(records, fmt, cols, Path(path), safe_csv=safe_csv, option=option)


def write_json_document(document: Any, path: Path, option: str = "--output") -> None:
    """One JSON document (e.g. eval's results), written atomically; the file must be ``.json``."""
    fmt = format_for_path(Path(path), option)
    if fmt.name != "json":
        raise UsageError(f"{option} {path}: this file is JSON; name it .json")
    with atomic_file(Path(path), option=option) as handle:
        handle.write(to_json(document, indent=2) + "\n")


def _drive(writer: Writer, records: Iterable[Record], flush: bool = False) -> None:
    writer.begin()
    for record in records:
        writer.write(record)
        if flush and not writer.collects:
            writer.stream.flush()
    writer.end()
    if flush:
        writer.stream.flush()
