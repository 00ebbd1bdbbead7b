"""Writers for every output format, and atomic files.

One table (:data:`FORMATS`) maps a format name to its file extensions and writer, so ``--format``
and ``--output`` can never disagree, and every command (classify's rows, eval's predictions and
per-class files) writes through it. Files are written to a temporary file beside the target and
renamed into place when complete, so an interrupted run never leaves a torn file; the new file
gets the permissions a shell redirect would give it (the existing file's mode, or 0666 less the
umask).

Text is written as UTF-8. A file name whose bytes are not UTF-8 (Python holds those bytes as the
lone surrogates U+DC80..U+DCFF) is written back as the same bytes by CSV, TSV and the table, and as
``\\udcXX`` escapes by JSON and JSONL, which stay valid UTF-8. Any other lone surrogate (from a
Windows file name, or a string passed to the Python API) JSON escapes too; CSV, TSV and the table
cannot write it, and Parquet holds no lone surrogate at all. Such text, or text that stdout's
encoding cannot hold, is refused with a one-line :class:`OutputError` naming the row and its path,
raised before that row is written: a file output is left as it was.
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


def shown(text: str) -> str:
    """``text`` for a one-line message: controls and lone surrogates as escapes."""
    return "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in text)


class UnwritableText(Exception):
    """A cell the target cannot encode (internal: :func:`write_records` turns it into an
    :class:`OutputError` that names the target)."""

    def __init__(self, row: int | None, column: str, path: str | None, text: str, char: str, fmt: str,
                 encoding: str) -> None:
        super().__init__(row, column, char)
        self.row, self.column, self.path, self.text, self.char = row, column, path, text, char
        self.fmt, self.encoding = fmt, encoding

    def message(self, target: str, written_before: bool) -> str:
        where = f"row {self.row}" if self.row is not None else f"the {self.column} '{shown(self.text)}'"
        if self.path is not None:
            where += f" (path '{shown(self.path)}')"
        code = f"U+{ord(self.char):04X}"
        name = "the table" if self.fmt == "table" else self.fmt.upper()
        if 0xD800 <= ord(self.char) <= 0xDFFF and self.fmt == "parquet":
            what = f"{code} in the {self.column} is not UTF-8 text (a file name's undecodable bytes or a lone surrogate)"
            todo = "Parquet holds only UTF-8 text: write CSV or TSV, which keep a file name's bytes, or JSON lines"
        elif 0xD800 <= ord(self.char) <= 0xDFFF:
            what = f"{code} in the {self.column} is a lone surrogate, which {name} cannot write as UTF-8"
            fix = "rename the file" if self.column == "path" else f"fix the {self.column}"
            todo = f"{fix}, or write JSON lines (--format jsonl), which escape it"
        else:
            what = f"{code} in the {self.column} cannot be written in {self.encoding}"
            todo = "make the output UTF-8 (e.g. PYTHONIOENCODING=utf-8) or write to a file with --output"
        if not written_before:
            done = "nothing was written"
        else:
            done = "the rows before it were written" if (self.row or 0) > 1 else "only the header was written"
        return f"{target}: {where}: {what}; {todo}; {done}"


def _fits(text: str, codec: tuple[str, str]) -> bool:
    if text.isascii():
        return True
    try:
        text.encode(*codec)
    except UnicodeError:
        return False
    return True


# ------------------------------------------------------------------------------------ writers


class Writer:
    """Writes records to a text or binary stream; ``begin``/``write``/``end`` may stream."""

    binary = False
    collects = False  # needs every row before it can write anything
    escapes = False  # can write any str (JSON escapes): nothing to check

    def __init__(self, stream: IO, columns: Sequence[str], safe_csv: bool = True) -> None:
        self.stream = stream
        self.columns = list(columns)
        self.safe_csv = safe_csv
        self.codec = stream_codec(stream, self.binary)

    def check(self, record: Record, row: int | None) -> None:
        """Raise :class:`UnwritableText` when a cell of ``record`` cannot be written."""
        if self.escapes or self.codec is None:
            return
        cells = record.flat()
        for column, cell in zip(self.columns, cells):
            if isinstance(cell, str) and not _fits(cell, self.codec):
                char = next(c for c in cell if not _fits(c, self.codec))
                path = cells[self.columns.index("path")] if "path" in self.columns else None
                raise UnwritableText(row, column, path if isinstance(path, str) else None, cell, char,
                                     self.format_name, self.codec[0])

    @property
    def format_name(self) -> str:
        known = [*FORMATS.values(), *PATH_FORMATS.values()]
        return next((f.name for f in known if f.writer is type(self)), type(self).__name__)

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


def to_json(record: Any, indent: int | None = None, encoding: str = "utf-8") -> str:
    """JSON text, readable Unicode; names that are not valid Unicode (undecodable bytes in a
    file name, kept by Python as lone surrogates) are written as ``\\udcXX`` escapes instead of
    making the file invalid UTF-8 (and so is any text ``encoding`` cannot hold)."""
    text = json.dumps(record, ensure_ascii=False, indent=indent)
    if not _fits(text, (encoding, "strict")):
        return json.dumps(record, ensure_ascii=True, indent=indent)
    return text


def _csv_cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return value


class JsonlWriter(Writer):
    escapes = True

    def json(self, record: Record) -> str:
        return to_json(record.as_dict(), encoding=self.codec[0] if self.codec else "utf-8")

    def write(self, record: Record) -> None:
        self.stream.write(self.json(record) + "\n")


class JsonWriter(JsonlWriter):
    def begin(self) -> None:
        self.stream.write("[")
        self.first = True

    def write(self, record: Record) -> None:
        self.stream.write(("\n" if self.first else ",\n") + self.json(record))
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


class PathsWriter(Writer):
    """Only the ``path`` column, one per line, no header: for pipes (``| xargs -d '\\n' ...``).
    A path holding a newline cannot be written (:meth:`check`): use ``paths0``."""

    separator = "\n"

    def check(self, record: Record, row: int | None) -> None:
        path = self._path(record)
        if self.separator == "\n" and ("\n" in path or "\r" in path):
            raise OutputError(f"row {row}: the path '{shown(path)}' holds a line break, which --format paths cannot "
                              "write; use --format paths0 (NUL-separated, for xargs -0)")
        super().check(record, row)

    def _path(self, record: Record) -> str:
        return record.flat()[self.columns.index("path")]

    def write(self, record: Record) -> None:
        self.stream.write(self._path(record) + self.separator)


class Paths0Writer(PathsWriter):
    """Only the ``path`` column, each followed by a NUL byte (``| xargs -0 ...``): any name."""

    separator = "\0"


# Formats for commands that output a list of files (search): not in FORMATS, which classify,
# eval and the file-name extensions use.
PATH_FORMATS: dict[str, Format] = {f.name: f for f in (Format("paths", (), PathsWriter),
                                                       Format("paths0", (), Paths0Writer))}


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


def stream_codec(stream: IO, binary: bool = False) -> tuple[str, str] | None:
    """``(encoding, errors)`` text written to ``stream`` goes through: UTF-8 (strict) for the
    strings of a binary format, the stream's own for a text stream, None when it takes any str
    (a StringIO)."""
    if binary:
        return ("utf-8", "strict")
    encoding = getattr(stream, "encoding", None)
    if not isinstance(encoding, str) or not encoding:
        return None
    errors = getattr(stream, "errors", None)
    return (encoding, errors if isinstance(errors, str) and errors else "strict")


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
    row by row for streaming formats). A row with text the output cannot hold (see the module
    docstring) raises :class:`OutputError` before the row is written; ``output`` is then left
    as it was."""
    if output is not None:
        try:
            with atomic_file(output, binary=fmt.writer.binary, option=option) as handle:
                _drive(fmt.writer(handle, columns, safe_csv), records)
        except UnwritableText as err:
            raise OutputError(err.message(f"{option} {shown(str(output))}", written_before=False)) from None
        return
    target = open_target(fmt, stream)
    writer = fmt.writer(target, columns, safe_csv)
    try:
        _drive(writer, records, flush=True)
    except UnwritableText as err:
        raise OutputError(err.message(_stream_name(target), written_before=not writer.collects)) from None


def _stream_name(stream: IO) -> str:
    return "stdout" if stream in (sys.stdout, getattr(sys.stdout, "buffer", None)) else "the output stream"


def check_writable(
    column: str,
    texts: Sequence[str],
    fmt: Format,
    output: Path | None = None,
    stream: IO | None = None,
    option: str = "--output",
    rows: bool = True,
) -> None:
    """Raise the :class:`OutputError` that writing ``texts`` in ``column`` to ``output`` or
    ``stream`` would raise for text it cannot hold, without writing anything, so a long run can
    refuse its inputs before its work instead of after. ``texts[i]`` is row ``i + 1``'s cell
    (``rows``), or a value that may appear in any row (a label: ``rows=False``)."""
    if fmt.writer.escapes:
        return
    if output is not None:
        codec: tuple[str, str] | None = ("utf-8", "strict") if fmt.writer.binary else ("utf-8", "surrogateescape")
        target = f"{option} {shown(str(output))}"
    else:
        sink = open_target(fmt, stream)
        codec = stream_codec(sink, fmt.writer.binary)
        target = _stream_name(sink)
    if codec is None or _fits("\n".join(texts), codec):  # one pass for a million names
        return
    for number, text in enumerate(texts, 1):
        if not _fits(text, codec):
            char = next(c for c in text if not _fits(c, codec))
            err = UnwritableText(number if rows else None, column, text if rows and column == "path" else None,
                                 text, char, fmt.name, codec[0])
            raise OutputError(err.message(target, written_before=False))


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
    for row, record in enumerate(records, 1):
        writer.check(record, row)
        writer.write(record)
        if flush and not writer.collects:
            writer.stream.flush()
    writer.end()
    if flush:
        writer.stream.flush()
