"""Cost of the HTML report (``--report``): thumbnails per second and page size per image.

Run from the repository root::

    python benchmarks/report.py                   # 300 photo-sized JPEGs (1600x1200)
    python benchmarks/report.py -n 1000 --size 4000x3000

It writes ``n`` synthetic JPEGs (smooth gradients with noise: photo-like file sizes), then times
:func:`zeroshot.output.report.write_report` over them (every image gets a thumbnail). The
reference, measured in the same run over the same files: decoding every file at full size with
Pillow (``Image.open(path).load()``), what a plain thumbnail loop would pay at least.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def make_photos(folder: Path, n: int, size: tuple[int, int]) -> list[Path]:
    from PIL import Image

    base = Image.linear_gradient("L").resize(size)
    noise = Image.effect_noise(size, 24)
    paths = []
    for i in range(n):
        r = base.rotate(i * 37 % 360, expand=False)
        g = Image.blend(base, noise, 0.3)
        b = Image.blend(noise, base.transpose(Image.Transpose.FLIP_LEFT_RIGHT), 0.5 + (i % 5) / 20)
        path = folder / f"photo{i:05d}.jpg"
        Image.merge("RGB", (r, g, b)).save(path, quality=88)
        paths.append(path)
    return paths


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=300, help="images (default 300)")
    parser.add_argument("--size", default="1600x1200", help="WxH of each JPEG (default 1600x1200)")
    args = parser.parse_args()
    size = tuple(int(v) for v in args.size.lower().split("x"))

    from PIL import Image

    from zeroshot.output.report import ReportItem, write_report

    with tempfile.TemporaryDirectory(prefix="zs-report-bench-") as tmp:
        folder = Path(tmp)
        paths = make_photos(folder, args.n, size)
        mb = sum(p.stat().st_size for p in paths) / len(paths) / 1e6

        started = time.perf_counter()
        for path in paths:
            with Image.open(path) as img:
                img.load()
        decode = time.perf_counter() - started

        items = [ReportItem(str(p), f"label{i % 10}", 1 - i / len(paths)) for i, p in enumerate(paths)]
        started = time.perf_counter()
        stats = write_report(folder / "report.html", items, per_group=len(paths), max_thumbnails=len(paths))
        report = time.perf_counter() - started
        page = (folder / "report.html").stat().st_size

    print(f"{args.n} JPEGs {size[0]}x{size[1]} ({mb:.2f} MB each), {os.cpu_count()} CPUs")
    print(f"full-size Pillow decode (reference): {decode:.2f}s, {args.n / decode:.0f} img/s")
    print(f"write_report: {report:.2f}s, {stats.thumbnails / report:.0f} thumbnails/s "
          f"({decode / report:.1f}x the full-size decode rate); page {page / 1e6:.2f} MB, "
          f"{page / 1024 / args.n:.1f} KB per image")
    return 0


if __name__ == "__main__":
    sys.exit(main())
