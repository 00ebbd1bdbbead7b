"""Issue #5: every bad input of design.md section 5 (numbered #1..#30 below), crash safety and
--resume, safe checkpoint loading. Inputs are generated; the model is the tiny random 'zs-tiny'."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import struct
import subprocess
import sys
import textwrap
import threading
import time
import warnings
import zlib
from pathlib import Path

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from zeroshot.cli import app
from zeroshot.data.decode import open_image
from zeroshot.data.discover import discover
from zeroshot.data.loader import ImageDataset, iterate_batches
from zeroshot.data.preprocess import Preprocessor, crop_extreme_aspect
from zeroshot.errors import ImageError, ModelLoadError, OutputError, UsageError, ZeroshotWarning
from zeroshot.output.journal import (
    Journal,
    fingerprint,
    journal_path,
    merge_in_order,
    read_journal,
)
from zeroshot.output.rows import Prediction
from zeroshot.output.writers import FORMATS, atomic_file, write_predictions
from zeroshot.tasks.classify import ZeroShotClassifier

from conftest import LABELS, make_image

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
RED = (220, 30, 30)


@pytest.fixture(scope="module")
def clf(tiny_loaded):
    return ZeroShotClassifier(LABELS, templates="photo", model=tiny_loaded, cache=False)


def code_of(path, **kwargs) -> str:
    with pytest.raises(ImageError) as info:
        open_image(str(path), **kwargs)
    return info.value.code


def classify(clf, paths, **kwargs) -> dict[str, Prediction]:
    kwargs.setdefault("workers", 0)
    return {p.path: p for p in clf.classify_paths([str(p) for p in paths], **kwargs)}


def encoded(fmt: str, colour=RED, size=(64, 48), mode="RGB", **save) -> bytes:
    buf = io.BytesIO()
    img = Image.new("RGB", size, colour)
    img.convert(mode).save(buf, format=fmt, **save)
    return buf.getvalue()


def near(pixel, colour, tol=12) -> bool:
    return all(abs(a - b) <= tol for a, b in zip(pixel, colour))


# --------------------------------------------------------------------------- #1 truncated files


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_01_truncated_image_is_skipped_at_decode(clf, tmp_path, fmt):
    data = encoded(fmt, size=(300, 200))
    bad = tmp_path / f"cut.{fmt.lower()}"
    bad.write_bytes(data[: len(data) // 2])
    Image.open(bad)  # opening succeeds: the error only appears when decoding
    good = make_image(tmp_path / "good.png")
    rows = classify(clf, [bad, good])
    assert rows[str(bad)].error.startswith("truncated: ")
    assert rows[str(good)].ok


def test_01_error_during_resize_is_caught(clf, tmp_path, monkeypatch):
    paths = [make_image(tmp_path / f"{i}.png") for i in range(3)]
    original = Preprocessor.pixels

    def failing(self, img):
        if img.size == (96, 64) and getattr(failing, "calls", 0) == 1:
            failing.calls += 1
            raise ValueError("resize exploded")
        failing.calls = getattr(failing, "calls", 0) + 1
        return original(self, img)

    monkeypatch.setattr(Preprocessor, "pixels", failing)
    rows = list(clf.classify_paths([str(p) for p in paths], workers=0))
    assert [r.ok for r in rows] == [True, False, True]
    assert rows[1].error == "decode_error: ValueError: resize exploded"


# ------------------------------------------------------------------ #2 empty, #3 not an image


def test_02_zero_byte_file(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    assert code_of(tmp_path / "empty.jpg") == "empty"


def test_03_text_named_jpg_and_apple_double(tmp_path):
    (tmp_path / "page.jpg").write_text("<html><body>404</body></html>")
    (tmp_path / "._photo.jpg").write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        ")
    make_image(tmp_path / "photo.jpg")
    assert code_of(tmp_path / "page.jpg") == "not_an_image"
    names = [os.path.basename(s.path) for s in discover([tmp_path]).sources]
    assert names == ["page.jpg", "photo.jpg"]  # dot-files skipped by default
    hidden = [os.path.basename(s.path) for s in discover([tmp_path], include_hidden=True).sources]
    assert "._photo.jpg" in hidden
    assert code_of(tmp_path / "._photo.jpg") == "not_an_image"


# ------------------------------------------------------------------- #4 content, not extension


def test_04_png_named_jpg_and_upper_case_extensions(clf, tmp_path):
    reference = make_image(tmp_path / "ref.png", (30, 200, 40))
    disguised = [tmp_path / "a.jpg", tmp_path / "b.JPG", tmp_path / "c.jpeg"]
    for path in disguised:
        path.write_bytes(reference.read_bytes())
    rows = classify(clf, [reference] + disguised)
    for path in disguised:
        assert rows[str(path)].ok
        assert rows[str(path)].labels == rows[str(reference)].labels
        assert rows[str(path)].scores == pytest.approx(rows[str(reference)].scores)
    assert {os.path.basename(s.path) for s in discover([tmp_path]).sources} == {"ref.png", "a.jpg", "b.JPG", "c.jpeg"}


# --------------------------------------------------------------------- #5..#9 colour handling


def test_05_cmyk_jpeg_has_correct_colours(clf, tmp_path):
    path = tmp_path / "cmyk.jpg"
    Image.new("RGB", (64, 64), RED).convert("CMYK").save(path, quality=95)
    assert Image.open(path).mode == "CMYK"
    img = open_image(str(path))
    assert img.mode == "RGB" and near(img.getpixel((32, 32)), RED, tol=20)
    assert classify(clf, [path])[str(path)].ok


def _png_rgb48(path: Path, width: int, height: int, rgb16: tuple[int, int, int]) -> None:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    row = b"\x00" + struct.pack(">HHH", *rgb16) * width
    ihdr = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(row * height))
                     + chunk(b"IEND", b""))


def test_06_sixteen_bit_png_is_scaled_not_white(clf, tmp_path):
    grey = tmp_path / "grey16.png"
    Image.fromarray(__import__("numpy").full((40, 60), 20000, dtype="uint16")).save(grey)
    assert Image.open(grey).mode.startswith("I")
    assert near(open_image(str(grey)).getpixel((5, 5)), (78, 78, 78), tol=2)  # 20000/257, not 255
    colour = tmp_path / "rgb48.png"
    _png_rgb48(colour, 50, 30, (65535, 32768, 0))
    assert near(open_image(str(colour)).getpixel((5, 5)), (255, 128, 0), tol=2)
    rows = classify(clf, [grey, colour])
    assert all(r.ok for r in rows.values())


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_07_transparency_is_composited_on_white(tmp_path, mode):
    img = Image.new("RGBA", (40, 40), RED + (255,))
    for x in range(20):
        for y in range(40):
            img.putpixel((x, y), (0, 0, 0, 0))  # left half transparent black
    path = tmp_path / f"alpha-{mode}.png"
    if mode == "P":
        pal = Image.new("P", (40, 40), 1)
        pal.putpalette([0, 0, 0] + list(RED) + [0] * (254 * 3))
        for x in range(20):
            for y in range(40):
                pal.putpixel((x, y), 0)
        pal.save(path, transparency=0)
    else:
        img.convert(mode).save(path)
    rgb = open_image(str(path))
    assert rgb.mode == "RGB"
    assert rgb.getpixel((5, 5)) == (255, 255, 255)  # not black
    right = rgb.getpixel((30, 5))
    assert near(right, RED) if mode != "LA" else near(right, (Image.new("RGB", (1, 1), RED).convert("L").getpixel((0, 0)),) * 3)


@pytest.mark.parametrize("fmt", ["GIF", "WEBP"])
def test_08_animation_uses_first_frame(clf, tmp_path, fmt):
    frames = [Image.new("RGB", (48, 48), c) for c in (RED, (30, 60, 220), (30, 200, 40))]
    path = tmp_path / f"anim.{fmt.lower()}"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0, format=fmt,
                   **({"lossless": True} if fmt == "WEBP" else {}))
    assert getattr(Image.open(path), "n_frames", 1) == 3
    assert near(open_image(str(path)).getpixel((10, 10)), RED, tol=25)
    assert classify(clf, [path])[str(path)].ok


def test_09_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (60, 40), (255, 255, 255))
    for x in range(30):
        for y in range(40):
            img.putpixel((x, y), RED)  # left half red as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise
    path = tmp_path / "rotated.jpg"
    img.save(path, exif=exif.tobytes(), quality=95)
    upright = open_image(str(path))
    assert upright.size == (40, 60)
    assert near(upright.getpixel((20, 5)), RED, tol=30)  # stored left is now the top
    assert near(upright.getpixel((20, 55)), (255, 255, 255), tol=30)


# ------------------------------------------------------------------------------ #10 HEIC/AVIF


@pytest.mark.parametrize("brand,name,hint", [(b"heic", "x.heic", "pillow-heif"), (b"avif", "x.avif", "AVIF"),
                                             (b"mif1", "x.HEIF", "pillow-heif")])
def test_10_heic_avif_without_plugin_skip_with_hint(tmp_path, brand, name, hint):
    path = tmp_path / name
    path.write_bytes(struct.pack(">I", 24) + b"ftyp" + brand + b"\x00\x00\x00\x00mif1" + brand + b"\x00" * 200)
    with pytest.raises(ImageError) as info:
        open_image(str(path))
    assert info.value.code == "unsupported_format" and hint in info.value.detail


# -------------------------------------------------------------------- #11-#13 size extremes


def _bomb(path: Path, side: int = 20000) -> Path:
    Image.new("1", (side, side)).save(path)  # 400 Mpx in ~50 kB
    return path


@pytest.fixture(scope="module")
def bomb(tmp_path_factory) -> Path:
    return _bomb(tmp_path_factory.mktemp("bomb") / "bomb.png")


def test_11_decompression_bomb_is_skipped_before_decoding(bomb):
    assert bomb.stat().st_size < 200_000
    started = time.perf_counter()
    assert code_of(bomb) == "too_large"
    assert time.perf_counter() - started < 1.0


def test_11_bomb_memory_stays_bounded(bomb):
    script = textwrap.dedent(f"""
        import resource, sys
        from zeroshot.data.decode import open_image
        from zeroshot.errors import ImageError
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        try:
            open_image({str(bomb)!r})
        except ImageError as err:
            print(err.code)
        print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.split()
    assert out[0] == "too_large"
    assert int(out[1]) < 50  # MiB; decoding it would take 400 MB+


def test_12_max_pixels_is_configurable_and_applies_in_workers(clf, tmp_path):
    path = make_image(tmp_path / "mid.png", size=(200, 100))
    assert open_image(str(path)).size == (200, 100)
    assert code_of(path, max_pixels=19_999) == "too_large"
    open_image(str(path), max_pixels=20_000)
    rows = classify(clf, [path, make_image(tmp_path / "small.png", size=(50, 50))], max_pixels=10_000, workers=1)
    assert rows[str(path)].error.startswith("too_large: 200x100 pixels exceeds --max-pixels 10000")
    assert rows[str(tmp_path / "small.png")].ok
    # Raising the limit above Pillow's own (~179 Mpx) is honoured: no DecompressionBombError.
    assert Image.MAX_IMAGE_PIXELS and code_of(path, max_pixels=10) == "too_large"


@pytest.mark.parametrize("size", [(1, 1), (20, 100_000), (100_000, 3)])
def test_13_tiny_and_extreme_aspect_images(clf, tmp_path, size):
    path = tmp_path / f"{size[0]}x{size[1]}.png"
    Image.new("RGB", size, RED).save(path)
    row = classify(clf, [path])[str(path)]
    assert row.ok and 0.0 <= row.score <= 1.0


def test_13_extreme_aspect_is_cropped_before_resize(clf):
    strip = Image.new("RGB", (2, 1_000_000), RED)
    cropped = crop_extreme_aspect(strip)
    assert cropped.size == (2, 8)
    assert clf.preprocessor.crop_extremes
    started = time.perf_counter()
    pixels = clf.preprocessor.pixels(strip)  # uncropped this would be a 32 x 16M image
    assert tuple(pixels.shape) == (3, 32, 32) and time.perf_counter() - started < 2
    normal = Image.new("RGB", (300, 100), RED)
    assert crop_extreme_aspect(normal) is normal  # ordinary images are untouched (exact)


# ---------------------------------------------------------------- #14-#16 batches and workers


@pytest.mark.parametrize("workers", [0, 1])
def test_14_batch_where_every_image_fails(clf, tmp_path, workers):
    bad = []
    for i in range(4):
        path = tmp_path / f"bad{i}.jpg"
        path.write_bytes(b"not an image %d" % i)
        bad.append(path)
    good = [make_image(tmp_path / f"good{i}.png") for i in range(2)]
    rows = list(clf.classify_paths([str(p) for p in bad + good], batch_size=2, workers=workers))
    assert [r.path for r in rows] == [str(p) for p in bad + good]
    assert all(r.error.startswith("not_an_image") for r in rows[:4]) and all(r.ok for r in rows[4:])


class _Sabotaged(ImageDataset):
    """Index 5 kills its worker process (like a segfaulting decoder); index 9 hangs."""

    def __getitem__(self, index):
        if index == 5:
            os._exit(1)
        if index == 9:
            time.sleep(60)
        return super().__getitem__(index)


def _sabotaged_dataset(clf, tmp_path, n=12):
    sources = discover([make_image(tmp_path / f"{i:02d}.png", size=(40, 40)) for i in range(n)]).sources
    return _Sabotaged(sources, clf.preprocessor, None, fast_decode=False)


def test_15_16_dead_or_hung_worker_is_a_named_error(clf, tmp_path):
    dataset = _sabotaged_dataset(clf, tmp_path)
    started = time.perf_counter()
    batches = list(iterate_batches(dataset, batch_size=4, workers=2, timeout=3))
    assert time.perf_counter() - started < 45
    errors = dict(e for b in batches for e in b.errors)
    good = [i for b in batches for i in b.indices]
    assert set(errors) == {5, 9}  # only the culprits; their batch-mates are decoded again
    assert errors[5].startswith("worker_failed: the decoding process died")
    assert errors[9].startswith("worker_failed: decoding did not finish within 3s")
    assert sorted(good) == [i for i in range(12) if i not in (5, 9)]


class _ReportsPriority(ImageDataset):
    """Reports, as each item's error, the niceness and torch threads of the process decoding it."""

    def __getitem__(self, index):
        return index, None, f"nice={os.nice(0)} threads={torch.get_num_threads()}"


@pytest.mark.parametrize("low_priority", [False, True])
def test_decode_workers_single_threaded_and_niced_for_cpu_runs(clf, tmp_path, low_priority):
    sources = discover([make_image(tmp_path / f"{i}.png", size=(8, 8)) for i in range(4)]).sources
    dataset = _ReportsPriority(sources, clf.preprocessor, None, fast_decode=True)
    base = os.nice(0)
    reports = {e for b in iterate_batches(dataset, batch_size=2, workers=2, low_priority=low_priority) for _, e in b.errors}
    expected = min(19, base + 19) if low_priority else base
    assert reports == {f"nice={expected} threads=1"}
    assert os.nice(0) == base  # the main process keeps its priority


def test_15_dead_worker_through_the_classifier(clf, tmp_path, monkeypatch):
    import zeroshot.encode.embed as embed_module

    class Dataset(ImageDataset):
        def __getitem__(self, index):
            if index == 2:
                os._exit(3)
            return super().__getitem__(index)

    monkeypatch.setattr(embed_module, "ImageDataset", Dataset)
    paths = [make_image(tmp_path / f"{i}.png", size=(40, 40)) for i in range(6)]
    rows = list(clf.classify_paths([str(p) for p in paths], batch_size=2, workers=1))
    assert [r.path for r in rows] == [str(p) for p in paths]
    assert [r.ok for r in rows] == [True, True, False, True, True, True]
    assert rows[2].error.startswith("worker_failed")


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
    subprocess.run([sys.executable, "-m", "zeroshot", "classify", *base, "-o", str(reference)],
                   capture_output=True, check=False, timeout=120)
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


def _cli(args, **kwargs):
    return CliRunner().invoke(app, ["classify", *args], **kwargs)


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
        result = _cli(base + extra + ["--resume"])
        assert result.exit_code == 2, result.output
        assert f"different {what}" in result.stderr and "Traceback" not in result.output
        assert len(result.stderr.strip().splitlines()) == 1
    wide = tmp_path / "wide.pt"
    from conftest import save_random_model

    save_random_model("zs-tiny-wide", wide)
    result = _cli([str(image_dir), "-m", "zs-tiny-wide", "-p", str(wide), "-j", "0", "-o", str(out),
                   "-L", str(labels_file), "-t", "photo", "--resume"])
    assert result.exit_code == 2 and "different model" in result.stderr

    # Same settings: the stale-looking row is trusted (it is the same run) and nothing is recomputed.
    result = _cli(base + ["-L", str(labels_file), "-t", "photo", "--resume"])
    assert result.exit_code == 0, result.output
    with open(out, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 6 and [r["label"] for r in rows].count("stale") == 1
    # Without --resume an unfinished journal is discarded and everything recomputed.
    Journal.create(journal_path(out), fp).close()
    result = _cli(base + ["-L", str(labels_file), "-t", "photo"])
    assert result.exit_code == 0 and "starting over" in result.stderr
    with open(out, newline="", encoding="utf-8") as handle:
        assert "stale" not in handle.read()


def test_24_resume_needs_output(labels_file, image_dir):
    result = _cli([str(image_dir), "-L", str(labels_file), "--resume"])
    assert result.exit_code == 2 and "--resume needs --output" in result.stderr


# --------------------------------------------------------------------- #25-#27 model loading


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_25_malicious_pickle_checkpoint_does_not_run(tmp_path):
    from zeroshot.models import load_model

    marker = tmp_path / "pwned"
    ckpt = tmp_path / "evil.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "hook": _Payload(marker)}, ckpt)
    with pytest.raises(ModelLoadError) as info:
        load_model("zs-tiny", str(ckpt), device="cpu")
    assert not marker.exists()
    assert "\n" not in str(info.value) and "unsafe pickle" in str(info.value)
    # A bare pickle (not a torch zip) carrying the payload.
    raw = tmp_path / "evil.bin"
    import pickle

    raw.write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(ModelLoadError):
        load_model("zs-tiny", str(raw), device="cpu")
    assert not marker.exists()


@pytest.mark.parametrize("kind", ["not-a-state-dict", "other-architecture", "garbage", "truncated-safetensors"])
def test_25_27_bad_checkpoints_are_one_line_errors(tiny_ckpt, tmp_path, kind):
    from zeroshot.models import load_model

    if kind == "not-a-state-dict":
        path = tmp_path / "list.pt"
        torch.save([torch.zeros(2), torch.ones(3)], path)
    elif kind == "other-architecture":
        from conftest import save_random_model

        path = save_random_model("zs-tiny-wide", tmp_path / "wide.pt")
    elif kind == "garbage":
        path = tmp_path / "garbage.pt"
        path.write_bytes(b"<html>502 Bad Gateway</html>")
    else:
        from conftest import save_random_model

        full = save_random_model("zs-tiny", tmp_path / "full.safetensors")
        path = tmp_path / "cut.safetensors"
        path.write_bytes(full.read_bytes()[: full.stat().st_size // 3])
    with pytest.raises(ModelLoadError) as info:
        load_model("zs-tiny", str(path), device="cpu")
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_26_offline_cold_cache_fails_fast(tmp_path, monkeypatch):
    from zeroshot.models import load_model

    monkeypatch.setenv("HF_HOME", str(tmp_path / "cold"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()
    with pytest.raises(ModelLoadError) as info:
        load_model("RN50", "openai", device="cpu")
    assert time.perf_counter() - started < 5
    assert "not in the local cache" in str(info.value) and "--pretrained FILE" in str(info.value)
    assert "\n" not in str(info.value)


def test_27_truncated_cached_weights(tiny_ckpt, tmp_path, monkeypatch):
    """A weights file cut short in the Hugging Face cache (interrupted download)."""
    import open_clip.pretrained as pretrained_module

    from zeroshot.models import load_model

    repo = "zeroshot-test/zs-tiny-weights"
    monkeypatch.setitem(pretrained_module._PRETRAINED, "zs-tiny",
                        {"cut": pretrained_module._pcfg(hf_hub=f"{repo}/", quick_gelu=False)})
    hub = tmp_path / "hf" / "hub" / f"models--{repo.replace('/', '--')}"
    revision = "0" * 40
    (hub / "refs").mkdir(parents=True)
    (hub / "refs" / "main").write_text(revision)
    snapshot = hub / "snapshots" / revision
    snapshot.mkdir(parents=True)
    (snapshot / "open_clip_pytorch_model.bin").write_bytes(tiny_ckpt.read_bytes()[:30_000])
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    with pytest.raises(ModelLoadError) as info:
        load_model("zs-tiny", "cut", device="cpu")
    assert "\n" not in str(info.value)
    assert "truncated or corrupt" in str(info.value) or "not in the local cache" not in str(info.value)


# -------------------------------------------------------------------- #28-#29 labels, prompts


def test_28_label_longer_than_context_warns(tiny_loaded):
    from zeroshot.encode.text import warn_truncated

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cut = warn_truncated(tiny_loaded, ["cat", "word " * 100], ["a photo of a {}."])
    assert cut == ["word " * 100]
    assert any(issubclass(w.category, ZeroshotWarning) and "77-token" in str(w.message) for w in caught)


@pytest.mark.parametrize("text,message", [
    ("cat\ncat\n", "duplicate label 'cat'"),
    ("# only comments\n\n   \n", "no labels"),
    ("", "no labels"),
])
def test_29_bad_label_files(tmp_path, text, message):
    from zeroshot.prompts import resolve_labels

    path = tmp_path / "labels.txt"
    path.write_text(text)
    with pytest.raises(UsageError, match=message):
        resolve_labels(str(path))


def test_29_empty_inline_label_and_single_label():
    from zeroshot.prompts import SingleLabelWarning, resolve_labels

    with pytest.raises(UsageError, match="empty label"):
        resolve_labels(None, ["cat", "   "])
    with pytest.warns(SingleLabelWarning):
        resolve_labels(None, ["cat"])


def test_29_templates_without_placeholder_or_duplicated(tmp_path):
    from zeroshot.prompts import resolve_templates

    path = tmp_path / "t.txt"
    path.write_text("a photo of a {}.\nno placeholder here\n")
    with pytest.raises(UsageError, match="has no placeholder"):
        resolve_templates(str(path))
    path.write_text("a {}\na {c}\n")
    with pytest.raises(UsageError, match="duplicate template"):
        resolve_templates(str(path))


# ---------------------------------------------------------------------- #30 reduced precision


def _fixed_set(tmp_path) -> list[Path]:
    from conftest import COLOURS

    return [make_image(tmp_path / f"{i}.png", colour, size=(48 + 8 * i, 40)) for i, colour in enumerate(COLOURS * 2)]


def test_30_bf16_autocast_on_cpu_matches_fp32_top1(tiny_ckpt, tmp_path):
    from zeroshot.models import load_model

    paths = _fixed_set(tmp_path)
    results = {}
    for precision in ("fp32", "bf16"):
        loaded = load_model("zs-tiny", str(tiny_ckpt), device="cpu", precision=precision)
        model = ZeroShotClassifier(LABELS, templates="photo", model=loaded, cache=False)
        results[precision] = list(model.classify_paths([str(p) for p in paths], workers=0, top_k=3))
    for a, b in zip(results["fp32"], results["bf16"]):
        assert not any(s != s for s in b.scores)  # no NaN
        # random tiny weights give near-uniform scores; require the same top-1 unless it is a near tie
        if a.scores[0] - a.scores[1] > 0.02:
            assert a.label == b.label
        assert b.scores == pytest.approx(a.scores, abs=0.05)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (fp16 is GPU-only)")
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_30_gpu_reduced_precision_matches_fp32_top1(tiny_ckpt, tmp_path, precision):
    from zeroshot.models import load_model

    paths = _fixed_set(tmp_path)
    out = {}
    for p in ("fp32", precision):
        loaded = load_model("zs-tiny", str(tiny_ckpt), device="cuda", precision=p)
        out[p] = list(ZeroShotClassifier(LABELS, templates="photo", model=loaded, cache=False)
                      .classify_paths([str(x) for x in paths], workers=0, top_k=3))
    for a, b in zip(out["fp32"], out[precision]):
        assert not any(s != s for s in b.scores)
        if a.scores[0] - a.scores[1] > 0.02:
            assert a.label == b.label


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
    result = _cli([str(root), missing, "-L", str(labels_file), "-m", "zs-tiny", "-p", str(tiny_ckpt),
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
