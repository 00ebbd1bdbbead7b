"""Finding the inputs on the file system (design.md section 5, #17-#20): symlink loops and links
to /, unreadable files and folders, a FIFO named .jpg, a file deleted mid-run."""

from __future__ import annotations

import os
import threading
import time

import pytest

from zeroshot.data.decode import open_image
from zeroshot.data.discover import discover
from zeroshot.errors import ImageError

from conftest import classify, code_of, make_image

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0

# ---------------------------------------------------------------------- #17-#20 file system


def test_17_symlink_loops_and_links_to_root_terminate(tmp_path):
    root = tmp_path / "tree"
    make_image(root / "a.jpg")
    make_image(root / "sub" / "b.jpg")
    os.symlink(root, root / "sub" / "loop")  # loop back to the top
    os.symlink("..", root / "sub" / "up")
    os.symlink("/", root / "slash")  # would walk the whole disk
    os.symlink(root / "sub", root / "alias")  # the same folder twice
    os.symlink(root / "a.jpg", root / "link-to-a.jpg")  # the same file twice
    os.link(root / "a.jpg", root / "hard-a.jpg")
    started = time.perf_counter()
    found = discover([root, root / "a.jpg", root / "sub"])
    assert time.perf_counter() - started < 5
    fs = sorted(os.path.realpath(s.path) for s in found.sources)
    assert fs == sorted({os.path.realpath(root / "a.jpg"), os.path.realpath(root / "sub" / "b.jpg")})
    assert not found.problems


@pytest.mark.skipif(IS_ROOT, reason="running as root: chmod 000 does not stop root from reading "
                                    "(the monkeypatched test below covers the same paths)")
def test_18_unreadable_file_and_folder_chmod(clf, tmp_path):
    locked_file = make_image(tmp_path / "locked.jpg")
    locked_dir = tmp_path / "private"
    make_image(locked_dir / "x.jpg")
    os.chmod(locked_file, 0)
    os.chmod(locked_dir, 0)
    try:
        found = discover([tmp_path])
        assert [(p, e.code) for p, e in found.problems] == [(str(locked_dir), "unreadable")]
        assert code_of(locked_file) == "unreadable"
    finally:
        os.chmod(locked_dir, 0o755)


def test_18_unreadable_file_and_folder_simulated(tmp_path, monkeypatch):
    make_image(tmp_path / "ok.jpg")
    make_image(tmp_path / "private" / "x.jpg")
    locked = make_image(tmp_path / "locked.jpg")
    real_scandir, real_open = os.scandir, os.open

    def scandir(path="."):
        if os.fspath(path).endswith("private"):
            raise PermissionError(13, "Permission denied")
        return real_scandir(path)

    def open_(path, *args, **kwargs):
        if os.fspath(path).endswith("locked.jpg"):
            raise PermissionError(13, "Permission denied")
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "scandir", scandir)
    monkeypatch.setattr(os, "open", open_)
    found = discover([tmp_path])
    assert [(os.path.basename(p), e.code) for p, e in found.problems] == [("private", "unreadable")]
    assert "Permission denied" in str(found.problems[0][1])
    with pytest.raises(ImageError, match="unreadable: Permission denied"):
        open_image(str(locked))


def test_19_fifo_named_jpg_never_blocks(clf, tmp_path):
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    make_image(tmp_path / "real.jpg")
    found = discover([tmp_path])
    assert [(os.path.basename(p), e.code) for p, e in found.problems] == [("pipe.jpg", "not_a_file")]
    result: list = []
    worker = threading.Thread(target=lambda: result.append(code_of(fifo)), daemon=True)
    worker.start()
    worker.join(5)
    assert result == ["not_a_file"]  # open_image itself does not block on a FIFO either
    rows = classify(clf, [tmp_path])
    assert rows[str(fifo)].error.startswith("not_a_file") and rows[str(tmp_path / "real.jpg")].ok


def test_20_file_deleted_mid_run(clf, tmp_path):
    paths = [make_image(tmp_path / f"{i}.png") for i in range(3)]
    found = discover([tmp_path])
    paths[1].unlink()
    rows = list(clf.classify_paths(found, workers=0))
    assert [r.ok for r in rows] == [True, False, True]
    assert rows[1].error.startswith("not_found: file disappeared")
