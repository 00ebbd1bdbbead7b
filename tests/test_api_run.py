"""``zeroshot.classify_to_file``: the CLI's resumable run to a file, in one library call."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import pytest

import zeroshot
from zeroshot import RankSettings, UsageError, ZeroShotClassifier, classify_to_file
from zeroshot.encode.embed import EmbedSettings
from zeroshot.output.journal import journal_path, read_journal

from conftest import LABELS, make_image

SETTINGS = EmbedSettings(batch_size=2, workers=0)
RANK = RankSettings(top_k=2)
BROKEN = "img3.png"
IMAGES = 11


@pytest.fixture()
def folder(tmp_path) -> Path:
    root = tmp_path / "imgs"
    for i in range(IMAGES):
        if f"img{i}.png" == BROKEN:
            (root / BROKEN).write_bytes(b"not an image")
            continue
        make_image(root / f"img{i}.png", ((i * 37) % 256, (i * 91) % 256, (i * 53) % 256), size=(40 + i, 30))
    return root


@pytest.fixture()
def clf(tiny_loaded) -> ZeroShotClassifier:
    return ZeroShotClassifier(LABELS, templates="photo", model=tiny_loaded, cache=False)


def paths(folder: Path) -> list[str]:
    return [str(folder / f"img{i}.png") for i in range(IMAGES)]


class Interrupt:
    """An ``on_prediction`` hook that presses Ctrl-C after ``after`` rows."""

    def __init__(self, after: int) -> None:
        self.after, self.seen = after, []

    def __call__(self, pred) -> None:
        self.seen.append(pred.path)
        if len(self.seen) == self.after:
            raise KeyboardInterrupt


def test_public_names():
    assert zeroshot.classify_to_file is classify_to_file and "classify_to_file" in zeroshot.__all__


def test_uninterrupted_run_stats_and_file(tmp_path, folder, clf):
    out = tmp_path / "out.csv"
    seen = []
    stats = classify_to_file(clf, [folder], out, settings=SETTINGS, rank=RANK, on_prediction=seen.append)
    assert (stats.total, stats.classified, stats.skipped, stats.kept, stats.error_rows) == (IMAGES, IMAGES - 1, 1, 0, 1)
    with open(out, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [r["path"] for r in rows] == paths(folder)
    assert list(rows[0]) == ["path", "label", "score", "label_2", "score_2", "error"]
    assert [r["path"] for r in rows if r["error"]] == [str(folder / BROKEN)]
    assert [p.path for p in seen] == paths(folder)
    assert not journal_path(out).exists()


def complete_batches(after: int) -> int:
    """Rows journalled when the hook interrupts on row ``after``: the batches finished before it."""
    return (after - 1) // SETTINGS.batch_size * SETTINGS.batch_size


# Interrupted mid-batch, with the broken image (img3) among the kept rows or among the new ones.
@pytest.mark.parametrize("after", [6, 3])
def test_interrupted_run_resumes_to_the_same_bytes(tmp_path, folder, clf, after):
    reference = tmp_path / "reference.csv"
    classify_to_file(clf, [folder], reference, settings=SETTINGS, rank=RANK)

    out = tmp_path / "out.csv"
    hook = Interrupt(after)
    old = os.umask(0o027)
    try:
        with pytest.raises(KeyboardInterrupt):
            classify_to_file(clf, [folder], out, settings=SETTINGS, rank=RANK, resume=True, on_prediction=hook)
    finally:
        os.umask(old)
    journal = journal_path(out)
    assert journal.exists() and not out.exists()
    assert os.stat(journal).st_mode & 0o777 == 0o640  # 0666 less the umask, like any file we write
    assert not list(tmp_path.glob(".out.csv.*.tmp"))
    kept = list(read_journal(journal).rows)
    done = complete_batches(after)
    assert kept == paths(folder)[:done]  # whole batches only (see classify_to_file)

    resumed_rows = []
    stats = classify_to_file(clf, [folder], out, settings=SETTINGS, rank=RANK, resume=True,
                             on_prediction=resumed_rows.append)
    assert out.read_bytes() == reference.read_bytes()
    assert not journal.exists() and not list(tmp_path.glob(".out.csv.*"))
    assert [p.path for p in resumed_rows] == paths(folder)[done:]  # only the new rows
    broken_kept = str(folder / BROKEN) in kept
    assert broken_kept == (after == 6)
    assert stats.kept == done
    assert stats.total == IMAGES - done
    assert stats.classified == IMAGES - done - (not broken_kept)
    assert stats.skipped == (not broken_kept)
    assert stats.error_rows == 1  # the broken image's row, kept or new


def test_resume_with_different_settings_is_refused(tmp_path, folder, clf, tiny_loaded):
    out = tmp_path / "out.csv"
    with pytest.raises(KeyboardInterrupt):
        classify_to_file(clf, [folder], out, settings=SETTINGS, rank=RANK, on_prediction=Interrupt(4))
    before = journal_path(out).read_bytes()

    other = ZeroShotClassifier(["cat", "dog"], templates="photo", model=tiny_loaded, cache=False)
    with pytest.raises(UsageError, match=r"different labels") as refused:
        classify_to_file(other, [folder], out, settings=SETTINGS, rank=RANK, resume=True)
    assert refused.value.exit_code == 2 and str(out) in str(refused.value)
    with pytest.raises(UsageError, match=r"different --top-k \(2 -> 1\)"):
        classify_to_file(clf, [folder], out, settings=SETTINGS, rank=RANK_1, resume=True)
    other_templates = ZeroShotClassifier(LABELS, templates="openai-7", model=tiny_loaded, cache=False)
    with pytest.raises(UsageError, match=r"different templates"):
        classify_to_file(other_templates, [folder], out, settings=SETTINGS, rank=RANK, resume=True)
    # Nothing was touched by the refusals: the interrupted run can still be resumed.
    assert journal_path(out).read_bytes() == before and not out.exists()
    assert classify_to_file(clf, [folder], out, settings=SETTINGS, rank=RANK, resume=True).kept == complete_batches(4)


RANK_1 = RankSettings(top_k=1)


def test_without_resume_an_unfinished_run_is_started_over(tmp_path, folder, clf):
    out = tmp_path / "out.csv"
    with pytest.raises(KeyboardInterrupt):
        classify_to_file(clf, [folder], out, settings=SETTINGS, rank=RANK, on_prediction=Interrupt(4))
    seen = []
    stats = classify_to_file(clf, [folder], out, settings=SETTINGS, rank=RANK, on_prediction=seen.append)
    assert stats.kept == 0 and len(seen) == IMAGES and not journal_path(out).exists()


def test_to_a_stream(tmp_path, folder, clf):
    reference = tmp_path / "reference.csv"
    classify_to_file(clf, [folder], reference, settings=SETTINGS, rank=RANK)

    buffer = io.StringIO()
    stats = classify_to_file(clf, [folder], None, stream=buffer, settings=SETTINGS, rank=RANK)
    assert buffer.getvalue() == reference.read_text(encoding="utf-8")
    assert (stats.kept, stats.error_rows) == (0, 1)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no journal without a file

    lines = io.StringIO()
    classify_to_file(clf, [folder], stream=lines, format="jsonl", settings=SETTINGS, rank=RANK)
    rows = [json.loads(line) for line in lines.getvalue().splitlines()]
    assert [r["path"] for r in rows] == paths(folder) and len(rows[0]["predictions"]) == 2

    binary = io.BytesIO()
    classify_to_file(clf, [folder], stream=binary, format="parquet", settings=SETTINGS, rank=RANK)
    assert binary.getvalue()[:4] == b"PAR1"


def test_stdout_by_default(folder, clf, capsys):
    classify_to_file(clf, [folder], settings=SETTINGS, rank=RANK_1)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "path,label,score,error" and len(lines) == 1 + IMAGES


def test_misuse_is_a_usage_error(tmp_path, folder, clf):
    with pytest.raises(UsageError, match="resume"):
        classify_to_file(clf, [folder], None, resume=True, settings=SETTINGS)
    with pytest.raises(UsageError, match="stream"):
        classify_to_file(clf, [folder], tmp_path / "out.csv", stream=io.StringIO(), settings=SETTINGS)
    assert not (tmp_path / "out.csv").exists() and not journal_path(tmp_path / "out.csv").exists()
