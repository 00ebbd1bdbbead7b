"""Crash safety and --resume (design.md section 5, #23-#24): an interrupted write keeps the
previous file, the journal survives a torn last line, a killed run resumes to exactly the
uninterrupted output, and --resume refuses a journal from different settings."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from zeroshot.errors import OutputError
from zeroshot.output.journal import (
    Journal,
    fingerprint,
    journal_path,
    merge_in_order,
    read_journal,
)
from zeroshot.output.rows import Prediction
from zeroshot.output.writers import FORMATS, atomic_file, write_predictions

from conftest import LABELS, classify_cli, make_image

# -------------------------------------------------------------------- #23-#24 crash and resume


def test_23_interrupted_write_keeps_the_previous_file(tmp_path):
    out = tmp_path / "out.csv"
    out.write_text("previous\n")

    def rows():
        yield Prediction("a.jpg", ("x",), (1.0,))
        raise OSError(28, "No space left on device")

    with pytest.raises(OutputError, match="No space left on device"):
        write_predictions(rows(), FORMATS["csv"], output=out)
    assert out.read_text() == "previous\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.csv"]  # no temporary left behind
    with pytest.raises(KeyboardInterrupt), atomic_file(out) as handle:
        handle.write("half")
        raise KeyboardInterrupt
    assert out.read_text() == "previous\n"


def test_23_journal_tolerates_a_torn_last_line(tmp_path):
    path = tmp_path / ".out.csv.zeroshot-journal"
    fp = fingerprint("zs-tiny", "w", ["a", "b"], ["{}"], 1, None, "unknown")
    journal = Journal.create(path, fp)
    for i in range(3):
        journal.record(Prediction(f"{i}.jpg", ("a",), (0.1 * i + 0.123456789,)))
    journal.record(Prediction("odd\n\udcff.jpg", error="truncated: x"))
    journal.close()
    with open(path, "ab") as handle:
        handle.write(b'{"path": "torn.jpg", "lab')
    state = read_journal(path)
    assert list(state.rows) == ["0.jpg", "1.jpg", "2.jpg", "odd\n\udcff.jpg"] and state.dropped == 1
    assert state.rows["2.jpg"].scores == (0.2 + 0.123456789,)  # exact, not rounded
    Journal.reopen(path, state).close()
    assert path.read_bytes().endswith(b"}\n")
    assert read_journal(path).dropped == 0


def test_23_merge_keeps_the_uninterrupted_order():
    order = ["p1", "a", "b", "c", "d", "e"]
    done = {p: Prediction(p, error="old") for p in ("p1", "b", "c", "gone")}
    fresh = [Prediction(p) for p in ("a", "d", "e")]
    merged = list(merge_in_order(order, done, fresh))
    assert [p.path for p in merged] == ["p1", "a", "b", "c", "d", "e", "gone"]


_SLOW_CHILD = textwrap.dedent("""
    import os, sys, time
    import zeroshot.data.loader as images
    real = images.open_image
    def open_image(path, *args, **kwargs):
        if os.path.basename(path) == "img30.png":
            while not os.path.exists(os.environ["RELEASE"]):  # held here until the test kills us
                time.sleep(0.05)
        return real(path, *args, **kwargs)
    images.open_image = open_image
    from zeroshot.cli import main
    sys.argv[0] = "zeroshot"
    main()
""")


def test_23_kill_midway_then_resume_equals_uninterrupted_run(tiny_ckpt, labels_file, tmp_path):
    folder = tmp_path / "many"
    for i in range(60):
        make_image(folder / f"img{i}.png", ((i * 37) % 256, (i * 91) % 256, (i * 53) % 256), size=(40, 30))
    (folder / "img7.png").write_bytes(b"broken")
    base = [str(folder), "-L", str(labels_file), "-m", "zs-tiny", "-p", str(tiny_ckpt), "-t", "photo",
            "-b", "4", "-j", "0", "--format", "csv"]
    reference = tmp_path / "reference.csv"
    # The reference's vectors go to a store of its own: the killed run must decode (and be held
    # at img30), not read them from the default store.
    subprocess.run([sys.executable, "-m", "zeroshot", "classify", *base, "-o", str(reference),
                    "--store", str(tmp_path / "reference-store")], capture_output=True, check=False, timeout=120)
    assert reference.exists() and not journal_path(reference).exists()

    out = tmp_path / "out.csv"
    out.write_text("previous complete output\n")
    env = dict(os.environ, RELEASE=str(tmp_path / "never"))
    child = subprocess.Popen([sys.executable, "-c", _SLOW_CHILD, "classify", *base, "-o", str(out)],
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    journal = journal_path(out)
    deadline = time.monotonic() + 90
    try:
        while time.monotonic() < deadline:
            if journal.exists() and journal.read_bytes().count(b"\n") >= 1 + 28:
                break
            assert child.poll() is None, child.stderr.read().decode()
            time.sleep(0.05)
        else:
            pytest.fail("the run never reached image 30")
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(30)
    assert child.returncode == -signal.SIGKILL
    assert out.read_text() == "previous complete output\n"  # never a torn file
    assert len(read_journal(journal).rows) == 28  # the batches before img30 (28..31) were saved

    resumed = subprocess.run([sys.executable, "-m", "zeroshot", "classify", *base, "-o", str(out), "--resume"],
                             capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 3, resumed.stderr
    assert "resuming" in resumed.stderr and "28 of 60 inputs already done" in resumed.stderr
    assert not [line for line in resumed.stderr.splitlines() if line.startswith("skipping ")]  # img7 was done before
    assert out.read_text() == reference.read_text()
    assert not journal.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".out")) == []




def test_24_resume_refuses_when_labels_templates_or_model_changed(tiny_ckpt, labels_file, image_dir, tmp_path):
    out = tmp_path / "out.csv"
    base = [str(image_dir), "-m", "zs-tiny", "-p", str(tiny_ckpt), "-j", "0", "-o", str(out)]
    state = {"labels": list(LABELS), "templates": ["a photo of a {}."]}
    fp = fingerprint("zs-tiny", __import__("zeroshot.models", fromlist=["x"]).file_identity(tiny_ckpt),
                     state["labels"], state["templates"], 1, None, "unknown")
    journal = Journal.create(journal_path(out), fp)
    journal.record(Prediction(str(image_dir / "img2.jpg"), ("stale",), (1.0,)))
    journal.close()

    other_labels = tmp_path / "other.txt"
    other_labels.write_text("cat\ndog\n")
    for extra, what in (
        (["-L", str(other_labels), "-t", "photo"], "labels"),
        (["-L", str(labels_file), "-t", "openai-7"], "templates"),
        (["-L", str(labels_file), "-t", "photo", "-k", "2"], "--top-k"),
    ):
        result = classify_cli(base + extra + ["--resume"])
        assert result.exit_code == 2, result.output
        assert f"different {what}" in result.stderr and "Traceback" not in result.output
        assert len(result.stderr.strip().splitlines()) == 1
    wide = tmp_path / "wide.pt"
    from conftest import save_random_model

    save_random_model("zs-tiny-wide", wide)
    result = classify_cli([str(image_dir), "-m", "zs-tiny-wide", "-p", str(wide), "-j", "0", "-o", str(out),
                   "-L", str(labels_file), "-t", "photo", "--resume"])
    assert result.exit_code == 2 and "different model" in result.stderr

    # Same settings: the stale-looking row is trusted (it is the same run) and nothing is recomputed.
    result = classify_cli(base + ["-L", str(labels_file), "-t", "photo", "--resume"])
    assert result.exit_code == 0, result.output
    with open(out, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 6 and [r["label"] for r in rows].count("stale") == 1
    # Without --resume an unfinished journal is discarded and everything recomputed.
    Journal.create(journal_path(out), fp).close()
    result = classify_cli(base + ["-L", str(labels_file), "-t", "photo"])
    assert result.exit_code == 0 and "starting over" in result.stderr
    with open(out, newline="", encoding="utf-8") as handle:
        assert "stale" not in handle.read()


def test_24_resume_needs_output(labels_file, image_dir):
    result = classify_cli([str(image_dir), "-L", str(labels_file), "--resume"])
    assert result.exit_code == 2 and "--resume needs --output" in result.stderr
