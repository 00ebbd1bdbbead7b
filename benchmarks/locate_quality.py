"""Does ``zeroshot locate`` find things? Two objects at known places, a caption each, IoU of the
hottest box with the true box; and how long each method takes per image (the image side only: the captions' text embeddings are
computed before the clock starts)::

    PYTHONPATH=$PWD python benchmarks/locate_quality.py                # 200 scenes, all three methods
    PYTHONPATH=$PWD python benchmarks/locate_quality.py --scenes 50 --json /tmp/locate.json

Data: scenes from ``benchmarks/shapes.py`` (coloured shapes; every object's box is known), each
with two objects of colour-shape pairs the model was trained on, on the generator's backgrounds.
Model: the tiny CLIP trained on such scenes (``tests/fixtures/shapes-tiny.safetensors``,
architecture ``zs-shapes`` from ``tests/model_configs``), or any ``--model``/``--pretrained``.

For every scene both captions ("a photo of a red circle.") are given together, so they compete
for every cell (softmax across labels, the model's temperature), and, separately, each caption
alone; with the default background prompt ("a photo of a background.") competing in both cases
(``--no-background``: none; then a caption alone gives the cosine map). For each object: **hit** when the
hottest box of its caption overlaps its true box with IoU >= 0.5; **pointing** when the best
cell's centre lies inside the true box (the pointing game, a softer measure). Reported per method:
hit rate, pointing rate, mean IoU, forward passes per image, and median seconds per image
(after one warm-up image; CPU unless ``--device``), and the hit and pointing rates per background
kind (how much the model's own recognition limits localisation).

Settings were chosen on scenes of other seeds (``--seed 99`` and ``--seed 7``); the figures to
report are the default seed's (1234). 200-scene figures vary by a few points between seeds:
``--scenes 1000`` (the same first 200) narrows that.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))
os.environ.setdefault("ZEROSHOT_MODEL_CONFIGS", str(ROOT / "tests" / "model_configs"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

FIXTURE = ROOT / "tests" / "fixtures" / "shapes-tiny.safetensors"
TEMPLATE = "a photo of a {}."


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def peak_centre(heat) -> tuple[float, float]:
    import numpy as np

    grid = heat.grid
    r, c = np.unravel_index(np.argmax(grid.values), grid.values.shape)
    return ((grid.x_edges[c] + grid.x_edges[c + 1]) / 2, (grid.y_edges[r] + grid.y_edges[r + 1]) / 2)


def score_method(loaded, scenes, settings, together: bool = True) -> dict:
    """Hit/pointing/IoU over every object of every scene, and seconds per image. ``together``:
    both captions in one call (they compete); else each caption alone (a cosine map)."""
    import torch

    from zeroshot.tasks.locate import crop_boxes, crop_settings, heatmaps_for, locate_weights, resolve_method

    method = resolve_method(loaded, settings.method)
    hits = pointing = objects = 0
    ious, seconds = [], []
    per_background: dict[str, list[int]] = {}
    for number, scene in enumerate(scenes):
        captions = [TEMPLATE.format(f"{o.colour} {o.shape}") for o in scene.objects]
        weights = locate_weights(loaded, captions, "none", settings)  # the text side is not timed
        started = time.perf_counter()
        if together:
            heatmaps = heatmaps_for(loaded, scene.image, captions, weights, settings, method)
        else:
            backgrounds = weights[len(captions):]
            heatmaps = [heatmaps_for(loaded, scene.image, [caption], torch.cat([weights[i:i + 1], backgrounds]),
                                     settings, method)[0] for i, caption in enumerate(captions)]
        if number:  # the first image warms up
            seconds.append(time.perf_counter() - started)
        for obj, heat in zip(scene.objects, heatmaps):
            iou = heat.box.iou(obj.box)
            x, y = peak_centre(heat)
            objects += 1
            ious.append(iou)
            inside = obj.box[0] <= x < obj.box[2] and obj.box[1] <= y < obj.box[3]
            hits += iou >= 0.5
            pointing += inside
            tally = per_background.setdefault(scene.background, [0, 0, 0])
            tally[0] += 1
            tally[1] += iou >= 0.5
            tally[2] += inside
    image = scenes[0].image
    crops = len(crop_boxes(*image.size, *crop_settings(image, settings), settings.scales))
    passes = {"dense": len(settings.scales), "crops": crops, "fused": len(settings.scales) + crops}[method]
    return {
        "method": method, "captions": "together" if together else "alone", "objects": objects, "hit_rate": hits / objects,
        "pointing_rate": pointing / objects, "mean_iou": statistics.fmean(ious),
        "forward_passes_per_image": passes, "median_seconds_per_image": statistics.median(seconds),
        "per_background": {k: {"objects": n, "hit_rate": h / n, "pointing_rate": p / n}
                           for k, (n, h, p) in sorted(per_background.items())},
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", type=int, default=200)
    parser.add_argument("--size", type=int, default=64, help="scene side in pixels (the model was trained at 64)")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--model", default="zs-shapes")
    parser.add_argument("--pretrained", default=str(FIXTURE))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--resolution", type=int, default=None, help="dense: default twice the model input")
    parser.add_argument("--patch", type=int, default=None, help="crops: default a third of the scene side")
    parser.add_argument("--stride", type=int, default=None, help="crops: default half the patch")
    parser.add_argument("--scales", default="1", help="crops: e.g. 1,0.5")
    parser.add_argument("--dense-scales", default="1", help="dense and fused: factors of --resolution (fused: "
                        "also of the crops), e.g. 0.67,1,1.33")
    parser.add_argument("--threshold", type=float, default=None, help="box threshold (default: locate's)")
    parser.add_argument("--sharpness", type=float, default=None, help="dense attention sharpness (default: locate's)")
    parser.add_argument("--background", action="append", default=None,
                        help="background prompt (repeatable; default: locate's)")
    parser.add_argument("--no-background", action="store_true", help="no background prompt competes")
    parser.add_argument("--methods", default="dense,crops,fused")
    parser.add_argument("--json", default=None, help="also write every number here")
    args = parser.parse_args(argv)

    if not Path(args.pretrained).is_file():
        log(f"missing {args.pretrained}: the trained shapes model (helper T2) is not there yet; pass --pretrained")
        return 2
    import shapes
    import torch

    from zeroshot.models import load_model
    from zeroshot.tasks.locate import LocateSettings

    torch.set_num_threads(min(4, os.cpu_count() or 1))
    loaded = load_model(args.model, args.pretrained, device=args.device, precision="fp32")
    rng = random.Random(args.seed)
    train = shapes.split_pairs().train
    scenes = [shapes.random_scene(rng, train, n_objects=2, size=args.size) for _ in range(args.scenes)]
    background = () if args.no_background else tuple(args.background or LocateSettings.background)
    results = []
    for method in args.methods.split(","):
        scales = tuple(float(s) for s in (args.scales if method == "crops" else args.dense_scales).split(","))
        settings = LocateSettings(method=method, resolution=args.resolution, patch=args.patch, stride=args.stride,
                                  scales=scales, threshold=args.threshold, background=background,
                                  sharpness=args.sharpness)
        for together in (True, False):
            log(f"{method}, captions {'together' if together else 'alone'}: {args.scenes} scenes")
            results.append(score_method(loaded, scenes, settings, together))
    print(f"{'method':8} {'captions':9} {'hit@IoU0.5':>10} {'pointing':>9} {'mean IoU':>9} {'passes/img':>11} "
          f"{'s/img':>8}")
    for r in results:
        print(f"{r['method']:8} {r['captions']:9} {r['hit_rate']:>10.1%} {r['pointing_rate']:>9.1%} "
              f"{r['mean_iou']:>9.3f} {r['forward_passes_per_image']:>11} {r['median_seconds_per_image']:>8.4f}")
    for r in results:
        print(f"  {r['method']} {r['captions']}: " + ", ".join(
            f"{k} hit {v['hit_rate']:.0%} pointing {v['pointing_rate']:.0%}" for k, v in r["per_background"].items()))
    together = {r["method"]: r for r in results if r["captions"] == "together"}  # one image, both labels
    if "dense" in together and "crops" in together:
        dense, crops = together["dense"], together["crops"]
        print(f"dense is {crops['median_seconds_per_image'] / dense['median_seconds_per_image']:.1f}x faster per "
              f"image ({dense['forward_passes_per_image']} vs {crops['forward_passes_per_image']} forward passes)")
    best = max(results, key=lambda r: r["hit_rate"])
    verdict = "PASS" if best["hit_rate"] >= 0.8 else "FAIL"
    print(f"{verdict}: best: {best['method']} with captions {best['captions']} hits {best['hit_rate']:.1%} of "
          "objects (target >= 80%)")
    print("command: PYTHONPATH=$PWD python benchmarks/locate_quality.py " + " ".join(argv or sys.argv[1:]))
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": results}, indent=2) + "\n")
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    raise SystemExit(main())
