"""The bad inputs of design.md section 5 together, end to end through the CLI: a folder holding
every kind of bad file gives exit code 3 with every input exactly once (each bad one with its
reason code and a 'skipping' line), and a decompression bomb keeps the run's memory bounded."""

from __future__ import annotations

import csv
import io
import os
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

from PIL import Image

from conftest import LABELS, RED, classify_cli, encoded, make_image

# ----------------------------------------------------------- the whole zoo through the CLI


def _zoo(root: Path, bomb_path: Path) -> tuple[list[Path], dict[str, str]]:
    """Good images in every tolerated shape, and one of every bad input with its reason code."""
    good = [make_image(root / "good.jpg"), make_image(root / "good.png")]
    (root / "png-named.jpg").write_bytes(make_image(root / "tmp.png").read_bytes())
    os.unlink(root / "tmp.png")
    Image.new("RGB", (64, 64), RED).convert("CMYK").save(root / "cmyk.jpg")
    Image.fromarray(__import__("numpy").full((40, 60), 20000, dtype="uint16")).save(root / "grey16.png")
    Image.new("RGBA", (40, 40), (0, 0, 0, 0)).save(root / "alpha.png")
    frames = [Image.new("RGB", (32, 32), c) for c in (RED, (0, 0, 255))]
    frames[0].save(root / "anim.gif", save_all=True, append_images=frames[1:])
    Image.new("RGB", (1, 1)).save(root / "one.png")
    Image.new("RGB", (20, 20_000)).save(root / "strip.png")
    good += [root / n for n in ("png-named.jpg", "cmyk.jpg", "grey16.png", "alpha.png", "anim.gif", "one.png", "strip.png")]
    bad = {}
    data = encoded("JPEG", size=(300, 200))
    (root / "truncated.jpg").write_bytes(data[: len(data) // 2])
    bad["truncated.jpg"] = "truncated"
    (root / "empty.jpg").write_bytes(b"")
    bad["empty.jpg"] = "empty"
    (root / "page.jpg").write_text("<html></html>")
    bad["page.jpg"] = "not_an_image"
    (root / "._page.jpg").write_bytes(b"\x00\x05\x16\x07")  # skipped silently: dot-file
    (root / "phone.heic").write_bytes(struct.pack(">I", 24) + b"ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 64)
    bad["phone.heic"] = "unsupported_format"
    (root / "bomb.png").write_bytes(bomb_path.read_bytes())
    bad["bomb.png"] = "too_large"
    os.mkfifo(root / "fifo.jpg")
    bad["fifo.jpg"] = "not_a_file"
    os.symlink(root / "missing.jpg", root / "dangling.jpg")
    bad["dangling.jpg"] = "not_found"
    os.symlink(root, root / "loop")
    os.symlink("/", root / "slash")
    return good, bad


def test_cli_mixed_folder_exit_3_every_input_once(tiny_ckpt, labels_file, bomb, tmp_path):
    root = tmp_path / "zoo"
    root.mkdir()
    good, bad = _zoo(root, bomb)
    missing = str(tmp_path / "not-there.jpg")
    result = classify_cli([str(root), missing, "-L", str(labels_file), "-m", "zs-tiny", "-p", str(tiny_ckpt),
                   "-t", "photo", "-j", "1", "-b", "3", "--format", "csv"])
    assert result.exit_code == 3, result.output
    assert "Traceback" not in result.stdout + result.stderr
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    paths = [r["path"] for r in rows]
    expected = {str(p) for p in good} | {str(root / n) for n in bad} | {missing}
    assert sorted(paths) == sorted(expected)  # every input exactly once
    for row in rows:
        name = os.path.basename(row["path"])
        if row["path"] == missing:
            assert row["error"].startswith("not_found: ")
        elif name in bad:
            assert row["error"].startswith(bad[name] + ": ") and row["label"] == ""
        else:
            assert row["error"] == "" and row["label"] in LABELS, row
    skip_lines = [line for line in result.stderr.splitlines() if line.startswith("skipping ")]
    assert len(skip_lines) == len(bad) + 1
    assert "skipped 8" in result.stderr


def test_cli_bomb_memory_is_bounded_end_to_end(tiny_ckpt, labels_file, bomb, tmp_path):
    """Peak memory of a whole run over the bomb equals that of a run over a 1x1 image."""
    script = textwrap.dedent("""
        import resource, sys
        from zeroshot.cli import main
        try:
            main()
        except SystemExit as exit:
            code = exit.code
        print(code, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024, file=sys.stderr)
    """)
    small = tmp_path / "small.png"
    Image.new("RGB", (1, 1)).save(small)
    peaks = {}
    for name, path in (("bomb", bomb), ("small", small)):
        done = subprocess.run([sys.executable, "-c", script, "classify", str(path), "-L", str(labels_file), "-m",
                               "zs-tiny", "-p", str(tiny_ckpt), "-t", "photo", "-j", "0", "--format", "csv"],
                              capture_output=True, text=True, timeout=120)
        code, peak = done.stderr.split()[-2:]
        assert code == ("3" if name == "bomb" else "0"), done.stderr
        peaks[name] = int(peak)
        assert ("too_large" in done.stdout) == (name == "bomb")
    assert peaks["bomb"] - peaks["small"] < 100  # MiB; decoding 400 Mpx would take 400-1200 MiB
