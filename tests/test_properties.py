"""Property-based tests (hypothesis) over arbitrary text: label/template parsers, output
round-trips, text an output cannot hold, formula neutralising, the resume journal and path
handling. Deterministic by default; ``HYPOTHESIS_PROFILE=explore`` searches at random (see
conftest.py)."""

from __future__ import annotations

import csv
import json
import os
import tempfile
import unicodedata
import warnings
from pathlib import Path

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from zeroshot.data.discover import discover, natural_key
from zeroshot.errors import OutputError, UsageError
from zeroshot.output.journal import Journal, fingerprint, merge_in_order, read_journal
from zeroshot.output.rows import Prediction
from zeroshot.output.writers import FORMATS, FORMULA_PREFIXES, neutralize_formula, write_predictions
from zeroshot.prompts import PLACEHOLDER, fill, normalize_template, parse_lines, validate_labels, validate_templates

from conftest import examples

FAST = settings(max_examples=examples(60))
# Any Unicode text, including lone surrogates (undecodable bytes in file names) and controls.
any_text = st.text(st.characters(codec=None), max_size=40)
valid_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
# The lone surrogates that stand for a file name's undecodable bytes (surrogateescape)...
escaped_byte = st.characters(min_codepoint=0xDC80, max_codepoint=0xDCFF)
# ...and the others, which no UTF-8 file can hold.
lone_surrogate = st.one_of(st.characters(min_codepoint=0xD800, max_codepoint=0xDC7F),
                           st.characters(min_codepoint=0xDD00, max_codepoint=0xDFFF))
# What CSV/TSV can write: valid Unicode and a file name's undecodable bytes.
byte_text = st.text(st.one_of(st.characters(blacklist_categories=("Cs",)), escaped_byte), max_size=40)
names = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="/\x00"), min_size=1, max_size=30)


@FAST
@given(st.lists(valid_text, max_size=20), st.sampled_from(["\n", "\r\n"]), st.booleans())
def test_parse_lines_never_keeps_blanks_comments_or_outer_space(lines, eol, bom):
    text = ("\ufeff" if bom else "") + eol.join(lines)
    entries = parse_lines(text)
    assert all(e and e == e.strip() and not e.startswith("#") for e in entries)
    # every real entry written one per line comes back, in order
    simple = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")
              and not any(c in line for c in "\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029")]
    clean = "\n".join(simple)
    assert parse_lines(clean) == simple


@FAST
@given(st.lists(valid_text, max_size=12))
def test_validate_labels_accepts_or_raises_a_usage_error(labels):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a single label only warns
            out = validate_labels(labels, "test")
    except UsageError as err:
        assert "\n" not in str(err)  # one line whatever the label holds
        stripped = [label.strip() for label in labels]
        controls = any(unicodedata.category(c) == "Cc" for label in stripped for c in label)
        assert not labels or "" in stripped or len(set(stripped)) < len(stripped) or controls
        return
    assert out == tuple(label.strip() for label in labels)
    assert len(set(out)) == len(out) and all(out)
    assert not any(unicodedata.category(c) == "Cc" for label in out for c in label)


@FAST
@given(st.lists(valid_text, min_size=1, max_size=8))
def test_validate_templates_needs_placeholders(templates):
    try:
        out = validate_templates(templates, "test")
    except UsageError as err:
        message = str(err)
        assert "no placeholder" in message or "duplicate template" in message or "no templates" in message
        return
    assert all(PLACEHOLDER in t for t in out)


@FAST
@given(valid_text, valid_text, valid_text)
def test_fill_puts_the_label_verbatim(prefix, suffix, label):
    assume("{" not in prefix + suffix)
    template = normalize_template(prefix + "{}" + suffix)
    assert fill(template, label) == prefix + label + suffix  # braces in labels are safe


@FAST
@given(any_text)
def test_neutralize_formula(cell):
    out = neutralize_formula(cell)
    if cell.startswith((*FORMULA_PREFIXES, "'")):  # a leading quote is escaped too: reversible
        assert out == "'" + cell
    else:
        assert out == cell
    assert not out.startswith(FORMULA_PREFIXES)


def _read_back(path: Path, fmt: str):
    if fmt in ("csv", "tsv"):
        with open(path, encoding="utf-8", errors="surrogateescape", newline="") as handle:
            return [(r["path"], r["label"], r["error"])
                    for r in csv.DictReader(handle, delimiter="," if fmt == "csv" else "\t")]
    text = path.read_text(encoding="utf-8")
    records = [json.loads(line) for line in text.split("\n") if line] if fmt == "jsonl" else json.loads(text)
    return [(r["path"], r["predictions"][0]["label"] if r["predictions"] else "", r["error"] or "") for r in records]


def _rows(text):
    return st.lists(st.tuples(text, text, st.one_of(st.none(), text)), min_size=1, max_size=6)


def _predictions(rows):
    return [Prediction(p, (label,), (0.5,)) if err is None else Prediction(p, error=err) for p, label, err in rows]


@settings(max_examples=examples(40))
@given(st.one_of(st.tuples(st.sampled_from(["jsonl", "json"]), _rows(any_text)),
                 st.tuples(st.sampled_from(["csv", "tsv"]), _rows(byte_text))))
def test_any_path_label_and_error_round_trip_exactly(case):
    """JSON escapes any text; CSV/TSV hold valid Unicode and a file name's undecodable bytes
    (written back as those bytes, read back through surrogateescape)."""
    fmt, rows = case
    preds = _predictions(rows)
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / f"out.{fmt}"
        write_predictions(preds, FORMATS[fmt], output=out, safe_csv=False)
        back = _read_back(out, fmt)
    assert back == [(p.path, p.label or "", p.error or "") for p in preds]


@settings(max_examples=examples(40))
@given(st.sampled_from(["csv", "tsv", "table", "parquet"]), _rows(byte_text), st.data())
def test_text_an_output_cannot_hold_is_refused_before_the_file_is_touched(fmt, rows, data):
    """A lone surrogate outside the file-name-bytes range (for Parquet, any lone surrogate):
    one-line OutputError naming the row, the target unchanged, no temporary left."""
    row = data.draw(st.integers(0, len(rows) - 1), label="row")
    cell = data.draw(st.integers(0, 2), label="cell")
    bad = data.draw(st.one_of(lone_surrogate, escaped_byte) if fmt == "parquet" else lone_surrogate, label="bad")
    cells = list(rows[row])
    cells[cell] = (cells[cell] or "") + bad
    if cell == 1:
        cells[2] = None  # a row with a label, not an error
    rows = [*rows[:row], tuple(cells), *rows[row + 1:]]
    preds = _predictions(rows)
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "out.data"
        out.write_bytes(b"previous")
        try:
            write_predictions(preds, FORMATS[fmt], output=out)
        except OutputError as err:
            message = str(err)
        else:
            raise AssertionError("unwritable text was written")
        assert out.read_bytes() == b"previous" and os.listdir(folder) == ["out.data"]
    assert message.isprintable()  # one line: controls and surrogates in names are escaped
    first_bad = next(i for i, p in enumerate(preds)
                     if any(_unwritable(c, fmt) for cell in (p.path, *p.labels, p.error or "") for c in cell))
    assert f"row {first_bad + 1} " in message and "nothing was written" in message


def _unwritable(char, fmt):
    return 0xD800 <= ord(char) <= 0xDFFF and (fmt == "parquet" or not 0xDC80 <= ord(char) <= 0xDCFF)


@settings(max_examples=examples(40))
@given(st.lists(st.tuples(any_text, st.one_of(st.none(), any_text),
                          st.floats(0, 1, allow_nan=False)), max_size=8, unique_by=lambda r: r[0]),
       st.integers(0, 60))
def test_journal_round_trips_any_row_and_survives_a_torn_tail(rows, cut):
    preds = [Prediction(p, ("a",), (s,)) if e is None else Prediction(p, error=e) for p, e, s in rows]
    fp = fingerprint("m", "w", ["a", "b"], ["{}"], 1, None, "unknown")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "j"
        journal = Journal.create(path, fp)
        for pred in preds:
            journal.record(pred)
        journal.close()
        state = read_journal(path)
        assert list(state.rows.values()) == preds and state.fingerprint == fp
        data = path.read_bytes()
        path.write_bytes(data[: max(len(data.split(b"\n")[0]) + 1, len(data) - cut)])
        torn = read_journal(path)
        assert list(torn.rows.values()) == preds[: len(torn.rows)]


@FAST
@given(st.lists(st.text("abcdef", min_size=1, max_size=3), unique=True, max_size=12), st.data())
def test_merge_in_order_is_the_uninterrupted_order(order, data):
    done_paths = data.draw(st.sets(st.sampled_from(order))) if order else set()
    done = {p: Prediction(p, error="old") for p in done_paths}
    fresh = [Prediction(p) for p in order if p not in done_paths]
    assert [p.path for p in merge_in_order(order, done, fresh)] == order


@settings(max_examples=examples(25))
@given(st.lists(names, min_size=1, max_size=6, unique_by=lambda n: n.lower()))
def test_any_file_name_is_found_once_in_natural_order(file_names):
    assume(all(n not in (".", "..") for n in file_names))
    with tempfile.TemporaryDirectory() as folder:
        created = []
        for name in file_names:
            try:
                (Path(folder) / (name + ".jpg")).write_bytes(b"x")
            except (OSError, UnicodeEncodeError, ValueError):
                continue
            created.append(name + ".jpg")
        assume(created)
        found = discover([folder])
        paths = [os.path.basename(s.path) for s in found.sources]
        visible = [n for n in created if not n.startswith(".")]
        assert sorted(paths) == sorted(visible) and len(paths) == len(set(paths))
        assert paths == sorted(paths, key=natural_key)
        hidden = [os.path.basename(s.path) for s in discover([folder], include_hidden=True).sources]
        assert sorted(hidden) == sorted(created)


@FAST
@given(st.lists(valid_text, max_size=10))
def test_label_file_round_trip_through_the_parser(labels):
    cleaned = [label.strip() for label in labels]
    assume(all(label and not label.startswith("#") for label in cleaned))
    assume(not any(ch in label for label in labels for ch in "\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"))
    text = "\n".join(labels)
    assert parse_lines(text) == cleaned


def test_natural_key_sorts_non_ascii_digits_as_text():
    """Found by the property above: "²" is a digit to str.isdigit() but not to int()."""
    assert sorted(["img10", "x²", "img2", "a٣"], key=natural_key) == ["a٣", "img2", "img10", "x²"]
