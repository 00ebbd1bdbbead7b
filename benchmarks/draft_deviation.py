"""Pixel deviation of the reduced-scale JPEG decode ("draft") from exact preprocessing (issue #4).

By default ``zeroshot`` decodes a large JPEG at a DCT-reduced scale (Pillow ``draft``) that stays
at least twice the model input, then applies the model's own resize and centre crop.
``--exact-preprocess`` decodes at full size. This script measures, per JPEG, how far the model
input (uint8 RGB after resize + crop, before normalisation) moves between the two::

    python benchmarks/draft_deviation.py PHOTO_OR_FOLDER... [--input-size 224]

Reported per image: the DCT scale used, mean |difference| and 99th percentile / max |difference|
in 0..255 pixel units, and PSNR of the draft input against the exact one.

With no paths it measures (a) the real photographs that ship inside installed packages
(scikit-learn's ``china.jpg`` and ``flower.jpg``, 640x427) at ``--input-size 32``: their DCT scale
(1/4) and the resize ratio after it (~3.3x) are the same as a 12-megapixel photo going into a
224-pixel model, so they reproduce that geometry on real camera content; and (b) the synthetic
12-megapixel JPEGs of ``benchmarks/bench.py`` (``.bench/12mp``) at 224, if present.
Point it at your own camera photos to measure at the true geometry.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from open_clip.transform import image_transform

from zeroshot.data.decode import open_image
from zeroshot.data.discover import IMAGE_EXTENSIONS
from zeroshot.data.preprocess import Preprocessor

REPO = Path(__file__).resolve().parent.parent


def deviation(path: str, input_size: int) -> dict:
    pre = Preprocessor(image_transform(input_size, is_train=False))
    full, reduced = open_image(path), open_image(path, draft_size=2 * input_size)
    exact = pre.pixels(full).numpy().astype(np.int16)
    draft = pre.pixels(reduced).numpy().astype(np.int16)
    diff = np.abs(exact - draft)
    mse = float(np.mean(diff.astype(np.float64) ** 2))
    return {
        "path": path,
        "input_size": input_size,
        "dct_scale": f"1/{round(max(full.size) / max(reduced.size))}",
        "mean_abs": float(diff.mean()),
        "p99_abs": float(np.percentile(diff, 99)),
        "max_abs": int(diff.max()),
        "psnr_db": float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse),
    }


def default_sets() -> list[tuple[list[str], int, str]]:
    sets = []
    try:
        import sklearn

        photos = sorted(str(p) for p in (Path(sklearn.__file__).parent / "datasets" / "images").glob("*.jpg"))
        if photos:
            sets.append((photos, 32, "real photos (scikit-learn samples), 12 MP -> 224 geometry"))
    except ImportError:
        pass
    synthetic = sorted(str(p) for p in (REPO / ".bench" / "12mp").glob("*.jpg"))
    if synthetic:
        sets.append((synthetic, 224, "synthetic 12 MP JPEGs from bench.py"))
    return sets


def expand(paths: list[str]) -> list[str]:
    out = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(str(f) for f in p.rglob("*") if f.suffix.lower() in IMAGE_EXTENSIONS)
        else:
            out.append(str(p))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("paths", nargs="*", help="JPEG files or folders (default: see module docstring)")
    parser.add_argument("--input-size", type=int, default=224, help="model input size for given paths (default 224)")
    parser.add_argument("--json", metavar="FILE", help="also write every figure as JSON")
    args = parser.parse_args(argv)
    sets = [(expand(args.paths), args.input_size, "given photos")] if args.paths else default_sets()
    if not sets:
        parser.error("no photos given and none found (install scikit-learn or run benchmarks/bench.py first)")
    results = []
    for paths, size, name in sets:
        rows = [deviation(p, size) for p in paths]
        results.append({"set": name, "input_size": size, "images": rows})
        print(f"{name}: {len(rows)} image(s), model input {size}px")
        for r in rows:
            print(f"  {Path(r['path']).name}: DCT {r['dct_scale']}, mean |d| {r['mean_abs']:.2f}, "
                  f"p99 |d| {r['p99_abs']:.0f}, max |d| {r['max_abs']}, PSNR {r['psnr_db']:.1f} dB")
        print(f"  overall: mean |d| {np.mean([r['mean_abs'] for r in rows]):.2f}, "
              f"worst p99 {max(r['p99_abs'] for r in rows):.0f}, worst max {max(r['max_abs'] for r in rows)}, "
              f"lowest PSNR {min(r['psnr_db'] for r in rows):.1f} dB")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
