"""Every file zeroshot writes gets the permissions a shell redirect would give it: a new file is
0666 less the umask, an existing file keeps its mode (classify -o, eval -o/--predictions/--per-class,
the resume journal)."""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from zeroshot.cli import app
from zeroshot.output.journal import Journal, ResumableOutput, fingerprint, journal_path, read_journal
from zeroshot.output.rows import Prediction
from zeroshot.output.writers import atomic_file, new_file_mode

from conftest import LABELS, make_image

UMASKS = [pytest.param(0o022, 0o644, id="umask022"), pytest.param(0o027, 0o640, id="umask027")]


@contextlib.contextmanager
def umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def no_temporaries(folder: Path) -> bool:
    return not [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


def tiny(ckpt: Path) -> list[str]:
    return ["-m", "zs-tiny", "-p", str(ckpt), "-t", "photo", "--device", "cpu", "-j", "0", "-q"]


FP = fingerprint("zs-tiny", "w", LABELS, ["a photo of a {}."], 1, None, "unknown")


# ------------------------------------------------------------------------------ the primitives


@pytest.mark.parametrize(("mask", "expected"), UMASKS)
def test_atomic_file_new_file_gets_0666_less_umask(tmp_path, mask, expected):
    target = tmp_path / "new.csv"
    with umask(mask):
        assert new_file_mode(target) == expected
        with atomic_file(target) as handle:
            handle.write("x\n")
    # mkstemp creates 0600: without the chmod this would fail for both umasks.
    assert mode(target) == expected
    assert target.read_text() == "x\n" and no_temporaries(tmp_path)


@pytest.mark.parametrize("existing", [0o644, 0o600, 0o664])
@pytest.mark.parametrize("mask", [0o022, 0o077])
def test_atomic_file_rewrite_keeps_the_existing_mode(tmp_path, existing, mask):
    target = tmp_path / "old.csv"
    target.write_text("before\n")
    os.chmod(target, existing)
    with umask(mask), atomic_file(target) as handle:
        handle.write("after\n")
    assert mode(target) == existing
    assert target.read_text() == "after\n" and no_temporaries(tmp_path)


@pytest.mark.parametrize(("mask", "expected"), UMASKS)
def test_journal_new_file_gets_0666_less_umask(tmp_path, mask, expected):
    out = tmp_path / "out.csv"
    with umask(mask):
        run = ResumableOutput.open(out, FP, resume=False)
        run.record(Prediction("a.jpg", ("red square",), (0.9,)))
        run.close()
    path = journal_path(out)
    assert path.name == ".out.csv.zeroshot-journal"
    assert mode(path) == expected
    assert list(read_journal(path).rows) == ["a.jpg"]

    # Continuing it (--resume) appends and keeps its mode, whatever the umask is then.
    with umask(0o077):
        again = ResumableOutput.open(out, FP, resume=True)
        again.record(Prediction("b.jpg", ("red square",), (0.8,)))
        again.close()
    assert mode(path) == expected
    assert list(read_journal(path).rows) == ["a.jpg", "b.jpg"]


def test_journal_create_over_an_existing_journal_keeps_its_mode(tmp_path):
    path = tmp_path / ".out.csv.zeroshot-journal"
    path.write_text("junk\n")
    os.chmod(path, 0o600)
    with umask(0o022):
        Journal.create(path, FP).close()
    assert mode(path) == 0o600
    assert read_journal(path).fingerprint == FP


# ------------------------------------------------------------------------------- the commands


@pytest.fixture()
def images(tmp_path) -> Path:
    folder = tmp_path / "imgs"
    for i, colour in enumerate([(200, 30, 30), (30, 200, 30), (30, 30, 200)]):
        make_image(folder / f"img{i}.png", colour)
    return folder


@pytest.mark.parametrize(("mask", "expected"), UMASKS)
@pytest.mark.parametrize("name", ["out.csv", "out.jsonl", "out.json", "out.tsv"])
def test_classify_output_new_file_mode(tmp_path, tiny_ckpt, labels_file, images, mask, expected, name):
    out = tmp_path / name
    with umask(mask):
        result = CliRunner().invoke(app, ["classify", str(images), "-L", str(labels_file), *tiny(tiny_ckpt),
                                          "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert mode(out) == expected
    assert not journal_path(out).exists() and no_temporaries(tmp_path)


@pytest.mark.parametrize("existing", [0o644, 0o600])
def test_classify_output_rewrite_keeps_mode(tmp_path, tiny_ckpt, labels_file, images, existing):
    out = tmp_path / "out.csv"
    out.write_text("previous\n")
    os.chmod(out, existing)
    with umask(0o077 if existing == 0o644 else 0o022):  # a umask that would give a different mode
        result = CliRunner().invoke(app, ["classify", str(images), "-L", str(labels_file), *tiny(tiny_ckpt),
                                          "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert out.read_text().startswith("path,label,score,error\n")
    assert mode(out) == existing


def _folder_dataset(root: Path) -> Path:
    for ci, name in enumerate(["red", "green"]):
        for j in range(2):
            make_image(root / name / f"img{j}.png", (200 * (ci == 0), 200 * (ci == 1), 40 * j))
    return root


@pytest.mark.parametrize(("mask", "expected"), UMASKS)
def test_eval_output_files_new_mode(tmp_path, tiny_ckpt, mask, expected):
    root = _folder_dataset(tmp_path / "ds")
    out, preds, per_class = tmp_path / "results.json", tmp_path / "preds.csv", tmp_path / "classes.jsonl"
    with umask(mask):
        result = CliRunner().invoke(app, ["eval", "folder", str(root), "-o", str(out), "--predictions", str(preds),
                                          "--per-class", str(per_class), *tiny(tiny_ckpt)])
    assert result.exit_code == 0, result.output
    assert {p.name: mode(p) for p in (out, preds, per_class)} == {p.name: expected for p in (out, preds, per_class)}
    assert no_temporaries(tmp_path)


def test_eval_output_files_rewrite_keeps_mode(tmp_path, tiny_ckpt):
    root = _folder_dataset(tmp_path / "ds")
    files = {tmp_path / "results.json": 0o600, tmp_path / "preds.csv": 0o644, tmp_path / "classes.tsv": 0o640}
    for path, existing in files.items():
        path.write_text("previous\n")
        os.chmod(path, existing)
    out, preds, per_class = files
    with umask(0o077):
        result = CliRunner().invoke(app, ["eval", "folder", str(root), "-o", str(out), "--predictions", str(preds),
                                          "--per-class", str(per_class), *tiny(tiny_ckpt)])
    assert result.exit_code == 0, result.output
    assert {p: mode(p) for p in files} == files
    assert all(p.read_text() != "previous\n" for p in files)
