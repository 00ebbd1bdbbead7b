"""SIGTERM and Ctrl-C on a real ``zeroshot classify`` process: the documented exit code, one
line on stderr, the journal kept, no temporary file, the previous output untouched, and a
``--resume`` that finishes with the same bytes as an uninterrupted run.

The child decodes in-process (``-j 0``) and holds the decoding of one file until it is signalled;
the test waits for a marker file that the child writes when it reaches that file (no timing)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from zeroshot.errors import OutputError
from zeroshot.output.journal import journal_path, read_journal

from conftest import make_image

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

IMAGES = 12
BATCH = 4
HOLD_AT = "img9.png"  # in the third batch (img8..img11): the first two batches are journalled
DONE_BEFORE_HOLD = 8

_HELD_CHILD = textwrap.dedent("""
    import os, sys, time
    import zeroshot.data.loader as loader
    real = loader.open_image
    def open_image(path, *args, **kwargs):
        if os.path.basename(path) == os.environ["HOLD_AT"]:
            open(os.environ["HELD"], "w").close()
            while True:  # held here until the test signals us
                time.sleep(0.02)
        return real(path, *args, **kwargs)
    loader.open_image = open_image
    from zeroshot.cli import main
    sys.argv[0] = "zeroshot"
    main()
""")


@pytest.fixture()
def folder(tmp_path) -> Path:
    root = tmp_path / "imgs"
    for i in range(IMAGES):
        make_image(root / f"img{i}.png", ((i * 37) % 256, (i * 91) % 256, (i * 53) % 256), size=(40, 30))
    return root


def base_args(folder: Path, labels_file: Path, ckpt: Path, workers: int = 0) -> list[str]:
    return [str(folder), "-L", str(labels_file), "-m", "zs-tiny", "-p", str(ckpt), "-t", "photo",
            "-b", str(BATCH), "-j", str(workers), "--device", "cpu", "--format", "csv"]


def zeroshot(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "zeroshot", *args], capture_output=True, text=True, timeout=300)


def _default_sigint() -> None:
    # A child started from a non-interactive shell may inherit SIGINT ignored; a terminal user's
    # zeroshot never does. Python installs its KeyboardInterrupt handler only over SIG_DFL.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_until_held(args: list[str], tmp_path: Path, sig: int, output: Path | None = None):
    """Start the held child, wait until it is decoding ``HOLD_AT`` (and, with ``output``, until
    the batches before it are journalled: a decode worker reaches it ahead of the main process),
    send ``sig``; return (exit code, stdout, stderr, temporaries seen while it was held)."""
    held = tmp_path / "held.marker"
    env = dict(os.environ, HOLD_AT=HOLD_AT, HELD=str(held))
    child = subprocess.Popen([sys.executable, "-c", _HELD_CHILD, "classify", *args], env=env, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=_default_sigint)
    temporaries: list[str] = []
    try:
        deadline = time.monotonic() + 240  # generous: only a bound, not a measurement
        while not (held.exists() and (output is None or journalled(output) >= DONE_BEFORE_HOLD)):
            if child.poll() is not None:
                pytest.fail(f"the child exited early ({child.returncode}): {child.stderr.read()}")
            if time.monotonic() > deadline:
                pytest.fail("the child never reached the held image")
            time.sleep(0.05)
        if output is not None:
            temporaries = [p.name for p in output.parent.glob(f".{output.name}.*.tmp")]
        child.send_signal(sig)
        stdout, stderr = child.communicate(timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()
    return child.returncode, stdout, stderr, temporaries


def journalled(output: Path) -> int:
    try:
        return len(read_journal(journal_path(output)).rows)
    except OutputError:  # not there yet (or its first line is being written)
        return 0


def lines_starting(stderr: str, word: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith(word)]


def assert_clean(stderr: str) -> None:
    assert "Traceback" not in stderr and "Exception ignored" not in stderr, stderr
    assert "internal error" not in stderr, stderr


@pytest.fixture()
def reference(tmp_path, folder, labels_file, tiny_ckpt) -> Path:
    """An uninterrupted run's output. Its vectors go to a store of its own: the run under test
    must decode (and be held) rather than read them from the default store."""
    ref = tmp_path / "reference.csv"
    done = zeroshot("classify", *base_args(folder, labels_file, tiny_ckpt), "-o", str(ref),
                    "--store", str(tmp_path / "reference-store"))
    assert done.returncode == 0, done.stderr
    return ref


@pytest.mark.parametrize("workers", [0, 1], ids=["in-process", "decode-worker"])
def test_sigterm_with_output_keeps_journal_and_resume_completes(tmp_path, folder, labels_file, tiny_ckpt, reference,
                                                                workers):
    out = tmp_path / "out.csv"
    out.write_text("previous complete output\n")
    os.chmod(out, 0o600)
    args = base_args(folder, labels_file, tiny_ckpt, workers)

    code, stdout, stderr, temporaries = run_until_held([*args, "-o", str(out)], tmp_path, signal.SIGTERM, out)

    assert code == 143, stderr
    assert temporaries, "the output was not being written to a temporary file while held"
    assert_clean(stderr)
    said = lines_starting(stderr, "terminated")
    assert len(said) == 1, stderr
    assert "--resume" in said[0] and str(out) in said[0]
    assert not lines_starting(stderr, "interrupted")
    assert stdout == ""
    # The previous output is untouched, no temporary is left, the journal holds the finished rows.
    assert out.read_text() == "previous complete output\n" and stat_mode(out) == 0o600
    assert not list(tmp_path.glob(".out.csv.*.tmp"))
    journal = journal_path(out)
    assert journal.exists()
    assert len(read_journal(journal).rows) == DONE_BEFORE_HOLD

    resumed = zeroshot("classify", *args, "-o", str(out), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert f"{DONE_BEFORE_HOLD} of {IMAGES} inputs already done" in resumed.stderr
    assert f"{DONE_BEFORE_HOLD} rows kept from the interrupted run" in resumed.stderr
    assert out.read_bytes() == reference.read_bytes()
    assert stat_mode(out) == 0o600  # the rewritten file keeps the mode of the one it replaces
    assert not journal.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.csv")] == []


def test_sigint_with_output_exits_130_one_line(tmp_path, folder, labels_file, tiny_ckpt):
    out = tmp_path / "out.csv"
    args = base_args(folder, labels_file, tiny_ckpt)

    code, stdout, stderr, temporaries = run_until_held([*args, "-o", str(out)], tmp_path, signal.SIGINT, out)

    assert code == 130, stderr
    assert temporaries
    assert_clean(stderr)
    said = lines_starting(stderr, "interrupted")
    assert len(said) == 1, stderr
    assert "--resume" in said[0]
    assert not lines_starting(stderr, "terminated")
    assert not out.exists()  # there was no previous output, and there is no torn one
    assert not list(tmp_path.glob(".out.csv.*.tmp"))
    assert len(read_journal(journal_path(out)).rows) == DONE_BEFORE_HOLD


def test_sigterm_to_stdout_exits_143_one_line(tmp_path, folder, labels_file, tiny_ckpt):
    args = base_args(folder, labels_file, tiny_ckpt)

    code, stdout, stderr, _ = run_until_held(args, tmp_path, signal.SIGTERM)

    assert code == 143, stderr
    assert_clean(stderr)
    said = lines_starting(stderr, "terminated")
    assert len(said) == 1, stderr
    assert "--resume" not in said[0]  # nothing to resume without --output
    # The rows finished before the signal were streamed whole: header + one line each.
    lines = stdout.splitlines()
    assert stdout.endswith("\n") and lines[0] == "path,label,score,error"
    assert len(lines) == 1 + DONE_BEFORE_HOLD
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith((".zeroshot-journal", ".tmp"))]


def stat_mode(path: Path) -> int:
    return os.stat(path).st_mode & 0o777
