"""Messages the user sees: once, one line, naming the file or option and what to do."""

from __future__ import annotations

from typer.testing import CliRunner

from zeroshot.cli import app


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


def tiny(ckpt):
    return ["-m", "zs-tiny", "-p", ckpt, "-d", "cpu", "-t", "photo", "-j", "0"]


# -------------------------------------------------------------------------------- single label


def test_single_label_warns_exactly_once(tiny_ckpt, image_dir):
    result = run("classify", image_dir / "img2.jpg", "-l", "cat", *tiny(tiny_ckpt))
    assert result.exit_code == 0, result.output
    assert result.stderr.count("only one label") == 1
    assert result.stderr.count("warning:") == 1
