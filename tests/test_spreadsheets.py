"""Results for spreadsheets: the reversible formula escape of the default CSV/TSV, and xlsx,
where text is text and nothing is ever evaluated."""

from __future__ import annotations

import csv
import io

import openpyxl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from zeroshot.cli import app
from zeroshot.output.rows import Prediction
from zeroshot.output.writers import FORMATS, neutralize_formula, restore_cell, write_predictions

from conftest import make_image


@settings(derandomize=True, max_examples=300, database=None)
@given(st.text(max_size=20))
def test_the_csv_escape_is_reversible(text):
    assert restore_cell(neutralize_formula(text)) == text


def test_a_quote_named_file_and_a_formula_named_file_stay_distinct():
    """Both used to come out as "'=x.jpg"; now each restores to its own name."""
    rows = [Prediction("=x.jpg", ("cat",), (0.9,)), Prediction("'=x.jpg", ("cat",), (0.9,)),
            Prediction("'plain.jpg", ("@home",), (0.5,))]
    out = io.StringIO()
    write_predictions(rows, FORMATS["csv"], stream=out)
    read = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert [r["path"] for r in read] == ["'=x.jpg", "''=x.jpg", "''plain.jpg"]
    assert [restore_cell(r["path"]) for r in read] == ["=x.jpg", "'=x.jpg", "'plain.jpg"]
    assert restore_cell(read[2]["label"]) == "@home"


def test_raw_csv_keeps_every_cell_exact():
    out = io.StringIO()
    write_predictions([Prediction("'=x.jpg", ("+1",), (0.9,))], FORMATS["csv"], stream=out, safe_csv=False)
    assert out.getvalue().splitlines()[1] == "'=x.jpg,+1,0.9,"


@pytest.fixture()
def odd_folder(tmp_path):
    root = tmp_path / "sheet"
    for name in ["=1+1.jpg", "-2+3.jpg", "@SUM(A1).jpg", "ünïcødé 猫.jpg", "'quoted.jpg"]:
        make_image(root / name, (200, 40, 40))
    (root / "broken.jpg").write_bytes(b"not an image")
    return root


def test_classify_to_xlsx_keeps_text_as_text_and_scores_as_numbers(tiny_ckpt, odd_folder, tmp_path):
    out = tmp_path / "out.xlsx"
    result = CliRunner().invoke(app, ["classify", str(odd_folder), "-l", "=cat", "-l", "dog", "-k", "2",
                                      "-m", "zs-tiny", "-p", str(tiny_ckpt), "-t", "photo", "-j", "0", "-o", str(out)])
    assert result.exit_code == 3, result.output  # the broken file is reported, the rest written
    sheet = openpyxl.load_workbook(out).active
    rows = list(sheet.iter_rows())
    assert [c.value for c in rows[0]] == ["path", "label", "score", "label_2", "score_2", "error"]
    body = {r[0].value.rsplit("/", 1)[-1]: r for r in rows[1:]}
    assert set(body) == {"=1+1.jpg", "-2+3.jpg", "@SUM(A1).jpg", "ünïcødé 猫.jpg", "'quoted.jpg", "broken.jpg"}
    for name, row in body.items():
        assert row[0].data_type == "s"  # the path: text, never a formula
        if name == "broken.jpg":
            assert row[1].value is None and row[5].value.startswith("not_an_image")
            continue
        assert row[1].data_type == "s" and row[1].value in ("=cat", "dog")
        assert row[2].data_type == "n" and 0.0 <= row[2].value <= 1.0
        assert row[4].data_type == "n" and abs(row[2].value + row[4].value - 1.0) < 1e-5
    assert body["=1+1.jpg"][0].value.endswith("=1+1.jpg")  # no quote added: xlsx needs none


def test_xlsx_writes_control_characters_visibly_instead_of_failing(tmp_path):
    out = tmp_path / "x.xlsx"
    write_predictions([Prediction("a\x01b\nc.jpg", ("cat",), (1.0,))], FORMATS["xlsx"], output=out)
    assert openpyxl.load_workbook(out).active["A2"].value == "a\\x01b\nc.jpg"


def test_xlsx_goes_to_a_redirected_stdout_but_never_to_a_terminal(tiny_ckpt, odd_folder):
    result = CliRunner().invoke(app, ["classify", str(odd_folder), "-l", "a", "-l", "b", "-m", "zs-tiny",
                                      "-p", str(tiny_ckpt), "-t", "photo", "-j", "0", "--format", "xlsx"])
    assert result.exit_code == 3, result.output
    assert openpyxl.load_workbook(io.BytesIO(result.stdout_bytes)).active.max_row == 7

    class Terminal(io.TextIOWrapper):
        def isatty(self):
            return True

    from zeroshot.errors import UsageError

    with pytest.raises(UsageError, match="binary: write it to a file with --output"):
        write_predictions([], FORMATS["xlsx"], stream=Terminal(io.BytesIO()))


def test_eval_predictions_to_xlsx(tiny_ckpt, tmp_path):
    for cls, colour in (("red", (220, 20, 20)), ("blue", (20, 20, 220))):
        for i in range(2):
            make_image(tmp_path / "ds" / cls / f"{i}.png", colour)
    preds = tmp_path / "p.xlsx"
    result = CliRunner().invoke(app, ["eval", "folder", str(tmp_path / "ds"), "-t", "photo", "--predictions", str(preds),
                                      "-m", "zs-tiny", "-p", str(tiny_ckpt), "-j", "0"])
    assert result.exit_code == 0, result.output
    rows = list(openpyxl.load_workbook(preds).active.values)
    assert rows[0] == ("path", "true_label", "predicted_label", "score", "correct", "templates", "error")
    assert len(rows) == 5 and all(isinstance(r[4], bool) and isinstance(r[3], float) for r in rows[1:])


def test_a_file_named_like_an_option_gets_a_hint(tiny_ckpt, tmp_path, monkeypatch):
    """`zeroshot classify *.jpg` expands to `-2+3.jpg`, which the parser takes for options."""
    monkeypatch.chdir(tmp_path)
    make_image(tmp_path / "-2+3.jpg")
    make_image(tmp_path / "a.jpg")
    base = ["-l", "a", "-l", "b", "-m", "zs-tiny", "-p", str(tiny_ckpt), "-t", "photo", "-j", "0", "-f", "csv"]
    result = CliRunner().invoke(app, ["classify", "-2+3.jpg", "a.jpg", *base])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "write ./-2+3.jpg or put -- before the file names" in lines[0], lines
    for ok_args in (["classify", *base, "--", "-2+3.jpg", "a.jpg"], ["classify", "./-2+3.jpg", "a.jpg", *base]):
        ok = CliRunner().invoke(app, ok_args)
        assert ok.exit_code == 0, ok.output
        assert len(ok.stdout.strip().splitlines()) == 3
