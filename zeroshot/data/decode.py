"""Decode one image file safely into an upright 8-bit RGB picture, or raise ImageError.

Every failure to read or decode a file becomes an :class:`~zeroshot.errors.ImageError` with a
stable reason code; the pixel limit is checked from the header before any pixel is decoded, and
FIFOs or devices are never opened for blocking reads.
"""

from __future__ import annotations

import io
import os
import stat
import warnings
from dataclasses import dataclass
from typing import IO

from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import (
    DECODE_ERROR,
    EMPTY,
    NOT_A_FILE,
    NOT_AN_IMAGE,
    NOT_FOUND,
    TOO_LARGE,
    TRUNCATED,
    UNREADABLE,
    UNSUPPORTED,
    ImageError,
)

DEFAULT_MAX_PIXELS = 178_956_970  # Pillow's own hard limit (2 x MAX_IMAGE_PIXELS), ~13k x 13k
BACKGROUND = (255, 255, 255)  # transparent pixels are composited on white


def _sniff_unsupported(fs_path: str) -> str | None:
    try:
        with open(fs_path, "rb") as handle:
            head = handle.read(32)
    except OSError:
        return None
    if head[4:8] == b"ftyp":
        brand = head[8:12].decode("latin-1")
        if brand.startswith(("heic", "heix", "hevc", "heim", "heis", "mif1", "msf1")):
            return "HEIC/HEIF image: pip install pillow-heif to read it"
        if brand.startswith("avi"):
            return "AVIF image: needs Pillow >= 11.2 with AVIF support (or pip install pillow-avif-plugin)"
    if head.startswith(b"\xff\x0a") or head[4:12] == b"JXL \r\n\x87\n":
        return "JPEG XL image: pip install pillow-jxl-plugin to read it"
    return None


def to_rgb(img: Image.Image) -> Image.Image:
    """8-bit RGB: 16-bit scaled down (not clipped white), transparency composited on white."""
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        import numpy as np

        arr = np.asarray(img, dtype=np.float64)
        if img.mode == "F":
            arr = arr * 255.0 if arr.size and arr.max() <= 1.0 else arr
        elif img.mode.startswith("I;16") or (arr.size and arr.max() > 255):
            arr = arr / 257.0
        img = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), mode="L")
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (img.mode == "P" and "transparency" in img.info) or (
        img.mode in ("L", "RGB") and "transparency" in img.info
    ):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, BACKGROUND + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img if img.mode == "RGB" else img.convert("RGB")


def open_image(fs_path: str, max_pixels: int | None = DEFAULT_MAX_PIXELS, draft_size: int | None = None) -> Image.Image:
    """Decode one file into an upright 8-bit RGB image, or raise :class:`ImageError`.

    ``max_pixels`` is checked from the header, before any pixel is decoded. ``draft_size`` lets
    JPEGs decode at a reduced scale (DCT scaling) as long as both sides stay >= that size.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    try:
        # O_NONBLOCK: a FIFO (or a file swapped for one since discovery) never blocks the open.
        fd = os.open(fs_path, flags)
    except FileNotFoundError:
        raise ImageError(NOT_FOUND, "file disappeared before it was read") from None
    except IsADirectoryError:
        raise ImageError(NOT_A_FILE, "is a folder") from None
    except OSError as err:
        raise ImageError(UNREADABLE, err.strerror or str(err)) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ImageError(NOT_A_FILE, "not a regular file (FIFO, device or socket)")
        if st.st_size == 0:
            raise ImageError(EMPTY, "file is empty (0 bytes)")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        handle = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with handle:
        return _decode(handle, fs_path, max_pixels, draft_size)


@dataclass(frozen=True)
class Member:
    """An image stored as ``size`` bytes at ``offset`` of an uncompressed archive (a WebDataset
    ``.tar`` shard): read lazily, in the decode worker, by :func:`open_member`."""

    archive: str
    offset: int
    size: int
    name: str

    def load(self, max_pixels: int | None = DEFAULT_MAX_PIXELS, draft_size: int | None = None) -> Image.Image:
        return open_member(self, max_pixels, draft_size)


def open_member(member: Member, max_pixels: int | None = DEFAULT_MAX_PIXELS, draft_size: int | None = None) -> Image.Image:
    """Decode one archive member like :func:`open_image` decodes a file, or raise :class:`ImageError`."""
    if member.size == 0:
        raise ImageError(EMPTY, "archive member is empty (0 bytes)")
    try:
        with open(member.archive, "rb") as handle:
            handle.seek(member.offset)
            data = handle.read(member.size)
    except FileNotFoundError:
        raise ImageError(NOT_FOUND, f"archive {member.archive} disappeared before it was read") from None
    except OSError as err:
        raise ImageError(UNREADABLE, err.strerror or str(err)) from None
    if len(data) < member.size:
        raise ImageError(TRUNCATED, f"archive ends {member.size - len(data)} bytes before the end of this member")
    return _decode(io.BytesIO(data), member.archive, max_pixels, draft_size)


def _decode(handle: IO[bytes], fs_path: str, max_pixels: int | None, draft_size: int | None) -> Image.Image:
    saved_limit = Image.MAX_IMAGE_PIXELS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # Our own limit is checked below from the header; Pillow's (which raises an error
            # that is not an OSError) is off for the whole decode so --max-pixels can raise it.
            Image.MAX_IMAGE_PIXELS = None
            img = Image.open(handle)
            width, height = img.size
            if max_pixels and width * height > max_pixels:
                raise ImageError(TOO_LARGE, f"{width}x{height} pixels exceeds --max-pixels {max_pixels}")
            if width < 1 or height < 1:
                raise ImageError(DECODE_ERROR, f"degenerate size {width}x{height}")
            if draft_size and img.format == "JPEG":
                img.draft("RGB", (draft_size, draft_size))
            img.load()  # the first frame of an animation
            try:
                img = ImageOps.exif_transpose(img) or img
            except Exception:  # noqa: BLE001 - a malformed EXIF block: keep the image as stored
                pass
            return to_rgb(img)
    except ImageError:
        raise
    except UnidentifiedImageError:
        hint = _sniff_unsupported(fs_path)
        if hint:
            raise ImageError(UNSUPPORTED, hint) from None
        raise ImageError(NOT_AN_IMAGE, "not a recognised image format") from None
    except Image.DecompressionBombError as err:
        raise ImageError(TOO_LARGE, str(err).split(" could")[0]) from None
    except MemoryError:
        raise ImageError(TOO_LARGE, "out of memory while decoding") from None
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        text = str(err) or type(err).__name__
        lowered = text.lower()
        if any(s in lowered for s in ("truncated", "broken data stream", "premature end", "unexpected end",
                                      "end of file", "not enough data", "buffer is not large enough")):
            raise ImageError(TRUNCATED, text) from None
        raise ImageError(DECODE_ERROR, text) from None
    except Exception as err:  # noqa: BLE001 - any decoder failure is one skipped file
        raise ImageError(DECODE_ERROR, f"{type(err).__name__}: {err}") from None
    finally:
        Image.MAX_IMAGE_PIXELS = saved_limit

