"""Find images, decode them safely, and feed them to the model in batches.

Every failure to read or decode a file becomes an :class:`ImageError` with a stable reason code;
it never stops the run. Directory walking follows links but visits each folder and file once,
skips dot-files unless asked, and never opens FIFOs or devices.
"""

from __future__ import annotations

import functools
import glob
import os
import re
import stat
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import IO, Any, Callable

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS = frozenset(
    ".jpg .jpeg .jpe .jfif .png .apng .gif .bmp .dib .webp .tif .tiff .ppm .pgm .pbm .pnm "
    ".ico .tga .jp2 .j2k .heic .heif .avif .jxl".split()
)
DEFAULT_MAX_PIXELS = 178_956_970  # Pillow's own hard limit (2 x MAX_IMAGE_PIXELS), ~13k x 13k
BACKGROUND = (255, 255, 255)  # transparent pixels are composited on white
_GLOB_CHARS = re.compile(r"[*?\[]")
_NATURAL = re.compile(r"(\d+)")

# Reason codes (stable; documented in the README).
NOT_FOUND = "not_found"
NOT_A_FILE = "not_a_file"
UNREADABLE = "unreadable"
EMPTY = "empty"
NOT_AN_IMAGE = "not_an_image"
UNSUPPORTED = "unsupported_format"
TRUNCATED = "truncated"
TOO_LARGE = "too_large"
DECODE_ERROR = "decode_error"
WORKER_FAILED = "worker_failed"


class ImageError(Exception):
    """An input that cannot be classified; ``code`` is a stable reason code."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


@dataclass(frozen=True)
class Source:
    """One input: ``path`` as the user gave it (or as found under a given folder)."""

    path: str
    fs_path: str


@dataclass
class Discovery:
    sources: list[Source] = field(default_factory=list)
    problems: list[tuple[str, ImageError]] = field(default_factory=list)


def natural_key(text: str) -> list[Any]:
    """Sort key that orders ``img2`` before ``img10``."""
    return [int(part) if part.isdigit() else part.lower() for part in _NATURAL.split(text)]


def has_image_extension(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


class _Walker:
    def __init__(self, recursive: bool, include_hidden: bool) -> None:
        self.recursive = recursive
        self.include_hidden = include_hidden
        self.seen_files: set[tuple[int, int]] = set()
        self.seen_dirs: set[tuple[int, int]] = set()
        self.found = Discovery()

    def add_file(self, shown: str, st: os.stat_result | None = None) -> None:
        try:
            st = st or os.stat(shown)
        except FileNotFoundError:
            self.found.problems.append((shown, ImageError(NOT_FOUND, "no such file (or a broken link)")))
            return
        except OSError as err:
            self.found.problems.append((shown, ImageError(UNREADABLE, err.strerror or str(err))))
            return
        if not stat.S_ISREG(st.st_mode):
            self.found.problems.append((shown, ImageError(NOT_A_FILE, "not a regular file (FIFO, device or socket)")))
            return
        identity = (st.st_dev, st.st_ino)
        if identity in self.seen_files:
            return
        self.seen_files.add(identity)
        self.found.sources.append(Source(shown, shown))

    def add_path(self, shown: str, explicit: bool = True) -> None:
        try:
            st = os.stat(shown)
        except FileNotFoundError:
            if explicit and _GLOB_CHARS.search(shown):
                matches = sorted(glob.glob(shown, recursive=True), key=natural_key)
                if not matches:
                    self.found.problems.append((shown, ImageError(NOT_FOUND, "pattern matched no files")))
                for match in matches:
                    self.add_path(match, explicit=False)
                return
            self.found.problems.append((shown, ImageError(NOT_FOUND, "no such file or directory")))
            return
        except OSError as err:
            self.found.problems.append((shown, ImageError(UNREADABLE, err.strerror or str(err))))
            return
        if stat.S_ISDIR(st.st_mode):
            self.walk(shown, st, top=True)
        elif explicit or has_image_extension(shown):
            self.add_file(shown, st)

    @staticmethod
    def _is_ancestor_link(link: str, folder: str) -> bool:
        """A link to ``/``, ``..`` or any folder above ``folder``: following it would walk the
        whole tree again (or the whole disk), so it is not followed."""
        try:
            target = os.path.realpath(link)
            here = os.path.realpath(folder)
        except (OSError, ValueError):
            return True
        return here == target or here.startswith(target.rstrip(os.sep) + os.sep)

    def walk(self, folder: str, st: os.stat_result, top: bool = False) -> None:
        identity = (st.st_dev, st.st_ino)
        if identity in self.seen_dirs:
            return  # symlink loop or a folder reached twice
        self.seen_dirs.add(identity)
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: natural_key(e.name))
        except OSError as err:
            self.found.problems.append((folder, ImageError(UNREADABLE, f"cannot list folder: {err.strerror or err}")))
            return
        for entry in entries:
            if entry.name.startswith(".") and not self.include_hidden:
                continue
            shown = os.path.join(folder, entry.name)
            try:
                entry_st = os.stat(entry.path)
            except OSError:
                if has_image_extension(entry.name):
                    self.found.problems.append((shown, ImageError(NOT_FOUND, "broken link")))
                continue
            if stat.S_ISDIR(entry_st.st_mode):
                if self.recursive and not (entry.is_symlink() and self._is_ancestor_link(entry.path, folder)):
                    self.walk(shown, entry_st)
            elif has_image_extension(entry.name):
                self.add_file(shown, entry_st)


def read_path_list(stream: IO[str]) -> list[str]:
    """Paths from stdin, one per line (``find ... | zeroshot classify -``)."""
    return [line.rstrip("\r\n") for line in stream if line.strip()]


def discover(
    inputs: Sequence[str | os.PathLike],
    recursive: bool = True,
    include_hidden: bool = False,
    stdin: IO[str] | None = None,
) -> Discovery:
    """Expand files, folders, glob patterns and ``-`` (paths on stdin) into image sources.

    Order is deterministic: inputs in the order given, folder contents in natural order; each
    file appears once even when reached through several inputs or links.
    """
    walker = _Walker(recursive, include_hidden)
    for item in inputs:
        item = os.fspath(item)
        if item == "-":
            for line in read_path_list(stdin or sys.stdin):
                walker.add_path(line, explicit=True)
        else:
            walker.add_path(item)
    return walker.found


# ----------------------------------------------------------------------------------- decoding


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


# ------------------------------------------------------------------------------ preprocessing


class Preprocessor:
    """The model's own inference transform, split so workers ship uint8 pixels and the
    normalisation runs in the main process (on the GPU when there is one)."""

    def __init__(self, transform: Callable) -> None:
        from torchvision.transforms import Normalize, ToTensor

        steps = list(getattr(transform, "transforms", []))
        to_tensor = [i for i, s in enumerate(steps) if isinstance(s, ToTensor)]
        self.transform = transform
        self.split = bool(to_tensor) and to_tensor[0] == len(steps) - 2 and isinstance(steps[-1], Normalize)
        if self.split:
            self.pil_steps = steps[: to_tensor[0]]
            self.mean = torch.tensor(steps[-1].mean, dtype=torch.float32).view(1, -1, 1, 1)
            self.std = torch.tensor(steps[-1].std, dtype=torch.float32).view(1, -1, 1, 1)
        self.input_size = _input_size(steps)
        # Resize(shorter side) then CenterCrop keeps only the central square, so a strip like
        # 20x100000 may be cut to a bounded aspect before resizing: same pixels, bounded memory.
        self.crop_extremes = (
            len(steps) >= 2
            and type(steps[0]).__name__ == "Resize"
            and isinstance(getattr(steps[0], "size", None), (int, list, tuple))
            and (isinstance(steps[0].size, int) or len(steps[0].size) == 1)
            and type(steps[1]).__name__ == "CenterCrop"
        )

    def pixels(self, img: Image.Image) -> torch.Tensor:
        """Worker side: uint8 ``[3, H, W]`` after resize/crop (or the full float transform)."""
        if self.crop_extremes:
            img = crop_extreme_aspect(img)
        if not self.split:
            return self.transform(img)
        for step in self.pil_steps:
            img = step(img)
        return torch.from_numpy(np.array(img, dtype=np.uint8, copy=True)).permute(2, 0, 1).contiguous()

    def finish(self, batch: torch.Tensor, device: torch.device) -> torch.Tensor:
        """Main side: to the device, then exactly ToTensor's /255 and Normalize."""
        batch = batch.to(device, non_blocking=True)
        if not self.split:
            return batch
        mean, std = self.mean.to(device), self.std.to(device)
        return batch.float().div_(255).sub_(mean).div_(std)


MAX_ASPECT = 4
_POLL_SECONDS = 2.0  # how often a waiting loader checks that its workers are alive


def crop_extreme_aspect(img: Image.Image, max_aspect: int = MAX_ASPECT) -> Image.Image:
    """Central part of an image longer than ``max_aspect`` times its width (or the reverse).

    Only used before "resize the shorter side, then centre-crop", which discards everything
    outside the central square anyway; without it a 1x100000 strip is upscaled to gigabytes.
    """
    width, height = img.size
    short, long = min(width, height), max(width, height)
    if long <= max_aspect * short:
        return img
    keep = max_aspect * short
    start = (long - keep) // 2
    box = (start, 0, start + keep, height) if width > height else (0, start, width, start + keep)
    return img.crop(box)


def _input_size(steps: list) -> int | None:
    for step in reversed(steps):
        size = getattr(step, "size", None)
        if isinstance(size, int):
            return size
        if isinstance(size, (tuple, list)) and size:
            return int(max(size))
    return None


# ----------------------------------------------------------------------------------- batching


@dataclass
class Batch:
    """Decoded pixels for the good images of one batch plus the errors of the others."""

    indices: list[int]
    pixels: torch.Tensor | None
    errors: list[tuple[int, str]]


class ImageDataset(torch.utils.data.Dataset):
    def __init__(self, sources: Sequence[Source], pre: Preprocessor, max_pixels: int | None, draft: bool) -> None:
        self.sources = sources
        self.pre = pre
        self.max_pixels = max_pixels
        self.draft_size = 2 * pre.input_size if draft and pre.input_size else None

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor | None, str | None]:
        try:
            img = open_image(self.sources[index].fs_path, self.max_pixels, self.draft_size)
            return index, self.pre.pixels(img), None
        except ImageError as err:
            return index, None, str(err)
        except Exception as err:  # noqa: BLE001 - e.g. a transform failing on a 1x1 image
            return index, None, f"{DECODE_ERROR}: {type(err).__name__}: {err}"


def collate(items: list[tuple[int, torch.Tensor | None, str | None]]) -> Batch:
    good = [(i, t) for i, t, e in items if e is None]
    errors = [(i, e) for i, _, e in items if e is not None]
    pixels = torch.stack([t for _, t in good]) if good else None
    return Batch([i for i, _ in good], pixels, errors)


WORKER_NICENESS_ON_CPU = 19


def _worker_init(_: int, niceness: int = 0) -> None:
    """One thread per decode worker; on a CPU run the workers also yield to the model, which
    needs every core: a decoder at normal priority stalls all of the model's threads (they
    wait for each other at every operation) while it holds one core."""
    torch.set_num_threads(1)
    if niceness:
        try:
            os.nice(niceness)
        except OSError:  # pragma: no cover - not permitted: keep the normal priority
            pass


def default_workers(device: torch.device) -> int:
    """Decode workers: all cores on GPU hosts; on CPU the model needs the cores, leave it most."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if device.type == "cpu":
        return 1 if cores <= 4 else max(1, cores // 4)
    return max(1, min(cores, 32))


def _keep_sigchld_default() -> None:
    """torch installs a SIGCHLD handler that raises "worker exited unexpectedly" *anywhere* in
    the main thread (even inside the model's forward pass). Without it a dead worker is still
    noticed, by the loader itself, within a few seconds, where :func:`iterate_batches` handles it."""
    try:
        from torch.utils.data._utils import signal_handling
    except ImportError:  # pragma: no cover - private module moved
        return
    if hasattr(signal_handling, "_SIGCHLD_handler_set"):
        signal_handling._SIGCHLD_handler_set = True


def _load(dataset: ImageDataset, plan: list[list[int]], workers: int, pin_memory: bool,
          timeout: float, niceness: int = 0) -> Iterator[Batch]:
    """One DataLoader over ``plan``. It polls every few seconds, so a dead worker is noticed
    within seconds; a batch that takes longer than ``timeout`` in all raises "timed out"."""
    poll = min(timeout, _POLL_SECONDS) if timeout and timeout > 0 else _POLL_SECONDS
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_sampler=plan,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=pin_memory,
        worker_init_fn=functools.partial(_worker_init, niceness=niceness),
        prefetch_factor=4,
        timeout=poll,
    )
    iterator = iter(loader)
    try:
        while True:
            started = time.monotonic()
            while True:
                try:
                    batch = next(iterator)
                    break
                except StopIteration:
                    return
                except RuntimeError as err:
                    # A poll expired: keep waiting unless the real limit is spent (no limit: forever).
                    if "timed out" in str(err) and (not timeout or time.monotonic() - started < timeout):
                        continue
                    raise
            yield batch
    finally:
        shutdown = getattr(iterator, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()  # terminates a hung worker now rather than at garbage collection


def _failure_reason(err: BaseException, timeout: float) -> str:
    if "timed out" in str(err):
        return f"{WORKER_FAILED}: decoding did not finish within {timeout:g}s (worker hung; killed)"
    return f"{WORKER_FAILED}: the decoding process died (crashed or was killed) on this file"


def iterate_batches(
    dataset: ImageDataset,
    batch_size: int,
    workers: int,
    pin_memory: bool = False,
    timeout: float = 0,
    low_priority: bool = False,
) -> Iterator[Batch]:
    """Batches in order. Decoding runs in ``workers`` processes so that a decoder that crashes
    or hangs (past ``timeout`` seconds) cannot take the run down: the loader is restarted, the
    batch that was due is decoded again one file per process, and only the files that crash or
    hang again are reported as ``worker_failed``. With ``workers=0`` decoding is in-process.
    ``low_priority`` runs the workers niced (for CPU inference, where the model needs the cores)."""
    niceness = WORKER_NICENESS_ON_CPU if low_priority else 0
    n = len(dataset)
    plan = [list(range(s, min(s + batch_size, n))) for s in range(0, n, batch_size)]
    if workers <= 0:
        for indices in plan:
            yield collate([dataset[i] for i in indices])
        return
    _keep_sigchld_default()
    position = 0
    while position < len(plan):
        try:
            for batch in _load(dataset, plan[position:], workers, pin_memory, timeout, niceness):
                position += 1
                yield batch
        except RuntimeError as err:
            if "DataLoader" not in str(err) and "worker" not in str(err):
                raise
            yield _isolate(dataset, plan[position], pin_memory, timeout, _failure_reason(err, timeout), niceness)
            position += 1


def _isolate(dataset: ImageDataset, indices: list[int], pin_memory: bool, timeout: float, reason: str,
             niceness: int = 0) -> Batch:
    """Decode each file of a failed batch in its own process: the culprit fails alone."""
    items: list[tuple[int, torch.Tensor | None, str | None]] = []
    for index in indices:
        single = _load(dataset, [[index]], 1, False, timeout, niceness)
        try:
            batch = next(single)
        except RuntimeError as err:
            items.append((index, None, _failure_reason(err, timeout) if "DataLoader" in str(err) else reason))
            continue
        finally:
            single.close()
        if batch.errors:
            items.append((index, None, batch.errors[0][1]))
        else:
            items.append((index, batch.pixels[0], None))
    return collate(items)
