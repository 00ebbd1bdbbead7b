"""Decoding bad images (design.md section 5, #1-#13): truncated files, empty and non-image
files, content over extension, colour modes (CMYK, 16-bit, transparency, animation, EXIF
orientation), HEIC/AVIF without a plugin, decompression bombs, --max-pixels, tiny and extreme
aspect images. Each is skipped with its reason code or classified correctly, never a crash."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import pytest
from PIL import Image, ImageFile

from zeroshot.data.decode import open_image
from zeroshot.data.discover import discover
from zeroshot.data.preprocess import Preprocessor, crop_extreme_aspect
from zeroshot.errors import ImageError

from conftest import RED, classify, code_of, encoded, make_image


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




def test_11_decompression_bomb_is_skipped_before_decoding(bomb, monkeypatch):
    assert bomb.stat().st_size < 200_000

    def no_decoding(self, *args, **kwargs):
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)  # the header alone must decide
    assert code_of(bomb) == "too_large"


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
    pixels = clf.preprocessor.pixels(strip)  # uncropped this would be a 32 x 16M image
    assert tuple(pixels.shape) == (3, 32, 32)
    normal = Image.new("RGB", (300, 100), RED)
    assert crop_extreme_aspect(normal) is normal  # ordinary images are untouched (exact)
