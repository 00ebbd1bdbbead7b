"""Output text (design.md section 5, #21-#22): odd file names (commas, quotes, newlines, CR,
Unicode, undecodable bytes) round-trip exactly through every text format and the CLI, and
spreadsheet formulas are neutralised in CSV/TSV."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from zeroshot.cli import app
from zeroshot.errors import OutputError
from zeroshot.output.rows import Prediction
from zeroshot.output.writers import FORMATS, write_predictions

from conftest import classify_cli, make_image

# ------------------------------------------------------------------------ #21-#22 output text

ODD_NAMES = ["comma,name.jpg", 'quote"d.jpg', "new\nline.jpg", "tab\tname.jpg", "cr\rname.jpg", "ünï códe 🐱.jpg",
             "  spaced  .jpg", "back\\slash.jpg", "semi;colon.jpg", "bad-bytes-\udcff.jpg"]


def _rows_for(names):
    return [Prediction(n, ("lab,el \"x\"\nq", "ünï"), (0.75, 0.25)) for n in names] + [Prediction("x.jpg", error="truncated: a, \"b\"\n")]


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl", "json"])
def test_21_odd_names_round_trip_exactly(tmp_path, fmt):
    preds = _rows_for(ODD_NAMES)
    out = tmp_path / f"out.{fmt}"
    write_predictions(preds, FORMATS[fmt], top_k=2, output=out)
    if fmt in ("csv", "tsv"):
        with open(out, encoding="utf-8", errors="surrogateescape", newline="") as handle:
            rows = list(csv.DictReader(handle, delimiter="," if fmt == "csv" else "\t"))
        assert [r["path"] for r in rows] == [p.path for p in preds]
        assert [r["label"] for r in rows] == [p.label or "" for p in preds]
        assert rows[-1]["error"] == preds[-1].error
    else:
        text = out.read_text(encoding="utf-8")  # strict: valid UTF-8 even for undecodable names
        records = [json.loads(line) for line in text.split("\n") if line] if fmt == "jsonl" else json.loads(text)
        assert [r["path"] for r in records] == [p.path for p in preds]
        assert records[0]["predictions"][0]["label"] == preds[0].label


def test_21_odd_file_names_on_disk_through_the_cli(tiny_ckpt, labels_file, tmp_path):
    folder = tmp_path / "odd"
    for name in ODD_NAMES:
        try:
            make_image(folder / name)
        except (OSError, UnicodeEncodeError):
            pytest.skip(f"file system cannot hold {name!r}")
    out = tmp_path / "out.csv"
    result = CliRunner().invoke(app, ["classify", str(folder), "-L", str(labels_file), "-m", "zs-tiny", "-p",
                                      str(tiny_ckpt), "-t", "photo", "-j", "0", "-o", str(out), "-q"])
    assert result.exit_code == 0, result.output
    with open(out, encoding="utf-8", errors="surrogateescape", newline="") as handle:
        paths = {r["path"] for r in csv.DictReader(handle)}
    assert paths == {str(folder / n) for n in ODD_NAMES}


FORMULAS = ["=1+2", "+1", "-1", "@SUM(A1)", "\tx", "\rx", "=HYPERLINK(\"http://x\")"]


@pytest.mark.parametrize("fmt,delim", [("csv", ","), ("tsv", "\t")])
def test_22_spreadsheet_formulas_are_neutralised(tmp_path, fmt, delim):
    preds = [Prediction(f + ".jpg", (f,), (0.5,)) for f in FORMULAS] + [Prediction("=x.jpg", error="=cmd|' /C calc'!A0")]
    safe, raw = tmp_path / f"safe.{fmt}", tmp_path / f"raw.{fmt}"
    write_predictions(preds, FORMATS[fmt], output=safe)
    write_predictions(preds, FORMATS[fmt], output=raw, safe_csv=False)
    for target, expect in ((safe, lambda s: "'" + s), (raw, lambda s: s)):
        with open(target, encoding="utf-8", newline="") as handle:
            rows = list(csv.DictReader(handle, delimiter=delim))
        assert [r["path"] for r in rows] == [expect(p.path) for p in preds]
        assert [r["label"] for r in rows[:-1]] == [expect(p.label) for p in preds[:-1]]
        assert rows[-1]["error"] == expect(preds[-1].error)
        assert rows[0]["score"] == "0.5"  # numbers stay numbers


# ------------------------------------------- #21 text an output cannot hold as UTF-8, end to end


def _no_images_please(*args, **kwargs):
    raise AssertionError("images were classified before the output was checked")


def test_21_parquet_refuses_undecodable_name_bytes_before_classifying(tiny_ckpt, labels_file, tmp_path, monkeypatch):
    """A file name that is not UTF-8 cannot go into Parquet: refused before any image is
    classified, with the row and path; nothing written, no journal or temporary left."""
    from zeroshot.tasks.classify import ZeroShotClassifier

    folder = tmp_path / "imgs"
    make_image(folder / "a.png")
    make_image(folder / "b-\udcff.png")  # the bytes b"b-\xff.png" on disk
    monkeypatch.setattr(ZeroShotClassifier, "predict", _no_images_please)
    base = [str(folder), "-L", str(labels_file), "-m", "zs-tiny", "-p", str(tiny_ckpt), "-t", "photo", "-j", "0", "-q"]
    out = tmp_path / "out.parquet"
    result = classify_cli([*base, "-o", str(out)])
    assert result.exit_code == 1, result.output
    assert result.stderr == (
        f"error: --output {out}: row 2 (path '{folder}/b-\\udcff.png'): U+DCFF in the path is not UTF-8 text "
        "(a file name's undecodable bytes or a lone surrogate); Parquet holds only UTF-8 text: write CSV or TSV, "
        "which keep a file name's bytes, or JSON lines; nothing was written\n")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(("out", "."))] == []  # no journal or temporary

    result = classify_cli([*base, "--format", "parquet"])  # to stdout
    assert result.exit_code == 1 and result.stdout_bytes == b""
    assert result.stderr.startswith(f"error: stdout: row 2 (path '{folder}/b-\\udcff.png'): U+DCFF in the path")
    assert result.stderr.endswith("; nothing was written\n")


def test_21_stdout_that_cannot_encode_a_name_is_an_error_not_a_traceback(tiny_ckpt, labels_file, image_dir):
    """stdout in a legacy encoding (here ASCII; e.g. a redirected stdout on Windows): one line
    naming the row, before any image is classified, instead of a UnicodeEncodeError."""
    env = dict(os.environ, PYTHONIOENCODING="ascii")
    proc = subprocess.run([sys.executable, "-m", "zeroshot", "classify", str(image_dir), "-L", str(labels_file),
                           "-m", "zs-tiny", "-p", str(tiny_ckpt), "-t", "photo", "-j", "0", "-q", "--format", "csv"],
                          capture_output=True, env=env, timeout=120)
    assert proc.returncode == 1 and proc.stdout == b""
    stderr = proc.stderr.decode("ascii")
    assert len(stderr.splitlines()) == 1 and "Traceback" not in stderr
    assert stderr.startswith("error: stdout: row 6 (path '")
    assert stderr.endswith("): U+00FC in the path cannot be written in ascii; make the output UTF-8 "
                           "(e.g. PYTHONIOENCODING=utf-8) or write to a file with --output; nothing was written\n")


def test_21_a_label_no_utf8_file_can_hold_is_refused_before_classifying(tmp_path, image_dir):
    from types import SimpleNamespace

    from zeroshot.tasks.classify import classify_to_file

    fake = SimpleNamespace(labels=("cat", "x\ud800"), fingerprint=lambda rank: {}, predict=_no_images_please)
    out = tmp_path / "out.csv"
    with pytest.raises(OutputError) as info:
        classify_to_file(fake, [str(image_dir)], out)
    assert str(info.value) == (
        f"--output {out}: the label 'x\\ud800': U+D800 in the label is a lone surrogate, which CSV cannot write "
        "as UTF-8; fix the label, or write JSON lines (--format jsonl), which escape it; nothing was written")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["imgs"]
