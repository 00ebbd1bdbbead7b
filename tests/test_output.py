"""Every output format round-trips through pandas / json; format selection; atomic writes."""

from __future__ import annotations

import io
import json

import pandas as pd
import pytest

from zeroshot.errors import OutputError, UsageError
from zeroshot.output.rows import Prediction, columns
from zeroshot.output.writers import FORMATS, choose_format, write_predictions

PREDS = [
    Prediction("dir a/001.jpg", ("cat", "dog"), (0.75, 0.25)),
    Prediction("dir b/001.jpg", ("dog", "cat"), (0.5123456789, 0.4876543211)),
    Prediction('odd, "quoted"\nname ü.png', ("cat, the big one", "dog"), (0.9, 0.1)),
    Prediction("broken.jpg", error="truncated: image file is truncated"),
]


def _write(fmt: str, tmp_path, top_k=2):
    path = tmp_path / f"out{FORMATS[fmt].extensions[0]}"
    write_predictions(PREDS, FORMATS[fmt], top_k=top_k, output=path)
    return path


@pytest.mark.parametrize("fmt, sep", [("csv", ","), ("tsv", "\t")])
def test_delimited_round_trip(tmp_path, fmt, sep):
    df = pd.read_csv(_write(fmt, tmp_path), sep=sep)
    assert list(df.columns) == ["path", "label", "score", "label_2", "score_2", "error"]
    assert df["path"].tolist() == [p.path for p in PREDS]
    assert df["label"].tolist()[:3] == ["cat", "dog", "cat, the big one"]
    assert df["score"].tolist()[1] == pytest.approx(0.512346)
    assert df["error"].fillna("").tolist() == ["", "", "", "truncated: image file is truncated"]
    assert df["score"].isna().tolist() == [False, False, False, True]


def test_columns_for_top_k():
    assert columns(1) == ["path", "label", "score", "error"]
    assert columns(3)[-3:] == ["label_3", "score_3", "error"]


@pytest.mark.parametrize("fmt", ["jsonl", "json"])
def test_json_round_trip(tmp_path, fmt):
    text = _write(fmt, tmp_path).read_text(encoding="utf-8")
    rows = [json.loads(line) for line in text.splitlines()] if fmt == "jsonl" else json.loads(text)
    assert [r["path"] for r in rows] == [p.path for p in PREDS]
    assert rows[0]["predictions"] == [{"label": "cat", "score": 0.75}, {"label": "dog", "score": 0.25}]
    assert rows[0]["label"] == "cat"  # the decision, always present next to the ranking
    assert rows[3] == {"path": "broken.jpg", "label": None, "predictions": [],
                       "error": "truncated: image file is truncated"}
    assert rows[0]["error"] is None


def test_parquet_round_trip(tmp_path):
    df = pd.read_parquet(_write("parquet", tmp_path))
    assert df["path"].tolist() == [p.path for p in PREDS]
    assert df["score_2"].tolist()[0] == pytest.approx(0.25)


def test_table_lists_every_row():
    stream = io.StringIO()
    write_predictions(PREDS[:2], FORMATS["table"], top_k=1, stream=stream)
    text = stream.getvalue()
    assert "dir a/001.jpg" in text and "0.512" in text


def test_json_to_stream_is_valid_when_empty():
    stream = io.StringIO()
    write_predictions([], FORMATS["json"], stream=stream)
    assert json.loads(stream.getvalue()) == []


@pytest.mark.parametrize(
    "requested, output, tty, expected",
    [("auto", None, True, "table"), ("auto", None, False, "csv"), ("auto", "x.JSONL", False, "jsonl"),
     ("auto", "x.parquet", True, "parquet"), ("tsv", "x.csv", False, "tsv")],
)
def test_choose_format(tmp_path, requested, output, tty, expected):
    out = tmp_path / output if output else None
    assert choose_format(requested, out, tty).name == expected


def test_unknown_extension_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="cannot tell the format"):
        choose_format("auto", tmp_path / "out.xyz", False)


def test_failed_write_keeps_the_previous_file(tmp_path):
    path = tmp_path / "out.csv"
    path.write_text("previous\n")

    def rows():
        yield PREDS[0]
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        write_predictions(rows(), FORMATS["csv"], output=path)
    assert path.read_text() == "previous\n"
    assert [p.name for p in tmp_path.iterdir()] == ["out.csv"]  # no temp file left behind


def test_output_folder_must_exist(tmp_path):
    with pytest.raises(OutputError, match="does not exist"):
        write_predictions(PREDS, FORMATS["csv"], output=tmp_path / "nope" / "out.csv")


# ----------------------------------------------------------- text an output cannot hold as UTF-8

# Row 2's name has an undecodable byte (0xff, held as U+DCFF): CSV writes the byte back as it was.
# Row 3's label has a lone surrogate no UTF-8 file can hold.
UNWRITABLE = [Prediction("a.jpg", ("cat",), (0.5,)), Prediction("b-\udcff.jpg", ("dog",), (0.5,)),
              Prediction("c.jpg", ("x\ud800",), (0.5,))]


@pytest.mark.parametrize("fmt", ["csv", "tsv", "table"])
def test_a_lone_surrogate_is_refused_before_the_file_is_touched(tmp_path, fmt):
    path = tmp_path / "out.data"
    path.write_text("previous\n")
    with pytest.raises(OutputError) as info:
        write_predictions(UNWRITABLE, FORMATS[fmt], output=path)
    name = "the table" if fmt == "table" else fmt.upper()
    assert str(info.value) == (
        f"--output {path}: row 3 (path 'c.jpg'): U+D800 in the label is a lone surrogate, which {name} cannot "
        "write as UTF-8; fix the label, or write JSON lines (--format jsonl), which escape it; nothing was written")
    assert path.read_text() == "previous\n"
    assert [p.name for p in tmp_path.iterdir()] == ["out.data"]  # the temporary is gone too


def test_parquet_refuses_a_file_names_undecodable_bytes(tmp_path):
    path = tmp_path / "out.parquet"
    with pytest.raises(OutputError, match=r"^--output .*out\.parquet: row 2 \(path 'b-\\udcff\.jpg'\): U\+DCFF in the "
                       r"path is not UTF-8 text .*; Parquet holds only UTF-8 text: write CSV or TSV.*nothing was written$"):
        write_predictions(UNWRITABLE, FORMATS["parquet"], output=path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("fmt", ["jsonl", "json"])
def test_json_escapes_what_utf8_cannot_hold(tmp_path, fmt):
    path = tmp_path / f"out.{fmt}"
    write_predictions(UNWRITABLE, FORMATS[fmt], output=path)
    text = path.read_text(encoding="utf-8")  # strict: the file is valid UTF-8
    assert "\\udcff" in text and "\\ud800" in text
    records = [json.loads(line) for line in text.splitlines()] if fmt == "jsonl" else json.loads(text)
    assert [r["path"] for r in records] == [p.path for p in UNWRITABLE]
    assert records[2]["predictions"][0]["label"] == "x\ud800"


def _fake_stdout(monkeypatch, encoding="utf-8"):
    out = io.TextIOWrapper(io.BytesIO(), encoding=encoding, errors="surrogateescape", newline="")
    monkeypatch.setattr("sys.stdout", out)
    return out


def test_a_lone_surrogate_on_stdout_stops_before_its_row(monkeypatch):
    out = _fake_stdout(monkeypatch)
    with pytest.raises(OutputError) as info:
        write_predictions(UNWRITABLE, FORMATS["csv"])
    assert str(info.value).startswith("stdout: row 3 (path 'c.jpg'): U+D800 in the label is a lone surrogate")
    assert str(info.value).endswith("; the rows before it were written")
    out.flush()
    assert out.buffer.getvalue() == b"path,label,score,error\na.jpg,cat,0.5,\nb-\xff.jpg,dog,0.5,\n"


def test_stdout_in_an_encoding_without_the_character(monkeypatch):
    _fake_stdout(monkeypatch, "ascii")
    with pytest.raises(OutputError, match=r"^stdout: row 1 \(path 'ü\.jpg'\): U\+00FC in the path cannot be "
                       r"written in ascii; make the output UTF-8 .*only the header was written$"):
        write_predictions([Prediction("ü.jpg")], FORMATS["csv"])
    out = _fake_stdout(monkeypatch, "ascii")
    write_predictions([Prediction("ü.jpg")], FORMATS["jsonl"])  # JSON escapes it instead
    out.flush()
    assert json.loads(out.buffer.getvalue())["path"] == "ü.jpg"
