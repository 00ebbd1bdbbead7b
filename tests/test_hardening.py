"""Runs and files under hostile conditions: two runs on one output, a full disk under the
journal, a path given twice, absurd --top-k."""

from __future__ import annotations

import csv
import errno
import io
import os

import pytest
from typer.testing import CliRunner

from zeroshot.cli import app
from zeroshot.errors import OutputError
from zeroshot.output.journal import Journal, OutputLock, ResumableOutput, journal_path
from zeroshot.tasks.classify import RankSettings, ZeroShotClassifier, classify_to_file

from conftest import LABELS, make_image


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture()
def base(tiny_ckpt, labels_file):
    return ["--labels", labels_file, "-m", "zs-tiny", "-p", tiny_ckpt, "-t", "photo", "-j", "0", "--no-cache"]


@pytest.fixture()
def clf(tiny_loaded):
    return ZeroShotClassifier(LABELS, templates="photo", model=tiny_loaded, cache=False)


def test_a_second_run_on_the_same_output_stops_with_one_line(base, image_dir, tmp_path):
    """It used to delete the first run's temporary as 'stale' and truncate its journal."""
    out = tmp_path / "out.csv"
    lock = OutputLock.acquire(out)  # the first run, still going
    first_tmp = tmp_path / ".out.csv.first.tmp"
    first_tmp.write_text("half-written by the first run")
    try:
        result = cli("classify", image_dir, *base, "-o", out)
        assert result.exit_code == 1, result.output
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "being written by another zeroshot run" in lines[0] and ".out.csv.zeroshot-lock" in lines[0]
        assert first_tmp.read_text() == "half-written by the first run"  # untouched
        assert not out.exists() and not journal_path(out).exists()
    finally:
        lock.release()
    first_tmp.unlink()
    result = cli("classify", image_dir, *base, "-o", out)
    assert result.exit_code == 0, result.output
    assert len(out.read_text().splitlines()) == 7
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".out")) == []  # lock removed too


def test_the_lock_is_released_when_a_run_is_interrupted(clf, image_dir, tmp_path):
    out = tmp_path / "out.csv"

    def stop(pred):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        classify_to_file(clf, [image_dir], out, settings=_settings(), on_prediction=stop)
    assert journal_path(out).exists()
    classify_to_file(clf, [image_dir], out, settings=_settings(), resume=True)  # not refused as locked
    assert len(out.read_text().splitlines()) == 7


def _settings():
    from zeroshot.encode.embed import EmbedSettings

    return EmbedSettings(batch_size=2, workers=0)


def test_full_disk_while_creating_the_journal_leaves_nothing(base, image_dir, tmp_path, monkeypatch):
    """It left a 0-byte journal that --resume then rejected."""
    out = tmp_path / "out.csv"
    real_fsync = os.fsync

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    result = cli("classify", image_dir, *base, "-o", out)
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot write the journal") and "No space left" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["imgs", "labels.txt"]  # no journal, lock or temporary


def test_full_disk_while_appending_to_the_journal_is_one_line(tmp_path):
    path = tmp_path / ".x.zeroshot-journal"
    journal = Journal.create(path, {"k": 1})

    class Full(io.StringIO):
        def write(self, text):
            raise OSError(errno.ENOSPC, "No space left on device")

    journal.handle.close()
    journal.handle = Full()
    from zeroshot.output.rows import Prediction

    with pytest.raises(OutputError, match="cannot write the journal .*No space left on device"):
        journal.record(Prediction("a.jpg", ("cat",), (1.0,)))


def test_a_missing_path_given_twice_resumes_to_the_uninterrupted_rows(clf, tmp_path):
    good = [make_image(tmp_path / f"{name}.png", colour) for name, colour in (("a", (200, 20, 20)), ("b", (20, 200, 20)))]
    inputs = [str(good[0]), str(tmp_path / "nope.jpg"), str(tmp_path / "nope.jpg"), str(good[1])]
    reference = tmp_path / "reference.csv"
    classify_to_file(clf, inputs, reference, settings=_settings())
    assert [r["path"] for r in csv.DictReader(reference.open(newline=""))] == inputs

    # An interrupted run that had finished the first two inputs (one of the two 'nope' rows).
    out = tmp_path / "out.csv"
    rows = list(clf.classify(inputs, workers=0))
    opened = ResumableOutput.open(out, clf.fingerprint(RankSettings()), resume=False)
    for pred in rows[:2]:
        opened.record(pred)
    opened.close()
    stats = classify_to_file(clf, inputs, out, settings=_settings(), resume=True)
    assert stats.kept == 2 and stats.total == 2
    assert out.read_text() == reference.read_text()  # both 'nope' rows, as uninterrupted


def test_top_k_is_capped_at_the_number_of_labels_with_a_note(base, image_dir, tmp_path):
    out = tmp_path / "out.csv"
    result = cli("classify", image_dir, *base, "--top-k", "100000", "-o", out)
    assert result.exit_code == 0, result.output
    assert "note: --top-k 100000 is more than the 3 labels; reporting all 3" in result.stderr
    header = out.read_text().splitlines()[0].split(",")
    assert header == ["path", "label", "score", "label_2", "score_2", "label_3", "score_3", "error"]


def test_top_k_cap_in_the_library(clf, image_dir):
    buffer = io.StringIO()
    classify_to_file(clf, [image_dir], stream=buffer, format="csv", rank=RankSettings(top_k=50), settings=_settings())
    assert buffer.getvalue().splitlines()[0].count("label") == 3
    assert list(clf.classify_dataframe([image_dir], top_k=50, workers=0).columns).count("error") == 1
    assert len(clf.classify_dataframe([image_dir], top_k=50, workers=0).columns) == 8
