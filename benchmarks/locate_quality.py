"""Does ``zeroshot locate`` find things? Two objects at known places, a caption each, IoU of the
hottest box with the true box; and how long each method takes per image (the image side only: the captions' text embeddings are
computed before the clock starts)::

    PYTHONPATH=$PWD python benchmarks/locate_quality.py                # 200 scenes, both methods
    PYTHONPATH=$PWD python benchmarks/locate_quality.py --scenes 50 --json /tmp/locate.json

Data: scenes from ``benchmarks/shapes.py`` (coloured shapes; every object's box is known), each
with two objects of colour-shape pairs the model was trained on, on the generator's backgrounds.
Model: the tiny CLIP trained on such scenes (``tests/fixtures/shapes-tiny.safetensors``,
architecture ``zs-shapes`` from ``tests/model_configs``), or any ``--model``/``--pretrained``.

For every scene both captions ("a photo of a red circle.") are given together, so they compete
for every cell (softmax across labels, the model's temperature), and, separately, each caption
alone (the map is the cosine similarity). For each object: **hit** when the
hottest box of its caption overlaps its true box with IoU >= 0.5; **pointing** when the best
cell's centre lies inside the true box (the pointing game, a softer measure). Reported per method:
hit rate, pointing rate, mean IoU, forward passes per image, and median seconds per image
(after one warm-up image; CPU unless ``--device``).
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
    from zeroshot.encode.text import build_class_weights
    from zeroshot.tasks.locate import crop_boxes, crop_settings, heatmaps_for, resolve_method

    method = resolve_method(loaded, settings.method)
    hits = pointing = objects = 0
    ious, seconds = [], []
    for number, scene in enumerate(scenes):
        captions = [TEMPLATE.format(f"{o.colour} {o.shape}") for o in scene.objects]
        weights = build_class_weights(loaded, captions, "none")  # the text side is not timed
        started = time.perf_counter()
        if together:
            heatmaps = heatmaps_for(loaded, scene.image, captions, weights, settings, method)
        else:
            heatmaps = [heatmaps_for(loaded, scene.image, [caption], weights[i:i + 1], settings, method)[0]
                        for i, caption in enumerate(captions)]
        if number:  # the first image warms up
            seconds.append(time.perf_counter() - started)
        for obj, heat in zip(scene.objects, heatmaps):
            iou = heat.box.iou(obj.box)
            x, y = peak_centre(heat)
            objects += 1
            ious.append(iou)
            hits += iou >= 0.5
            pointing += obj.box[0] <= x < obj.box[2] and obj.box[1] <= y < obj.box[3]
    image = scenes[0].image
    passes = 1 if method == "dense" else len(crop_boxes(*image.size, *crop_settings(image, settings), settings.scales))
    return {
        "method": method, "captions": "together" if together else "alone", "objects": objects, "hit_rate": hits / objects,
        "pointing_rate": pointing / objects, "mean_iou": statistics.fmean(ious),
        "forward_passes_per_image": passes, "median_seconds_per_image": statistics.median(seconds),
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
    parser.add_argument("--threshold", type=float, default=0.5)
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
    scales = tuple(float(s) for s in args.scales.split(","))
    results = []
    for method in ("dense", "crops"):
        settings = LocateSettings(method=method, resolution=args.resolution, patch=args.patch, stride=args.stride,
                                  scales=scales, threshold=args.threshold)
        for together in (True, False):
            log(f"{method}, captions {'together' if together else 'alone'}: {args.scenes} scenes")
            results.append(score_method(loaded, scenes, settings, together))
    print(f"{'method':8} {'captions':9} {'hit@IoU0.5':>10} {'pointing':>9} {'mean IoU':>9} {'passes/img':>11} "
          f"{'s/img':>8}")
    for r in results:
        print(f"{r['method']:8} {r['captions']:9} {r['hit_rate']:>10.1%} {r['pointing_rate']:>9.1%} "
              f"{r['mean_iou']:>9.3f} {r['forward_passes_per_image']:>11} {r['median_seconds_per_image']:>8.4f}")
    dense, crops = results[0], results[2]  # captions together: one image, both labels
    print(f"dense is {crops['median_seconds_per_image'] / dense['median_seconds_per_image']:.1f}x faster per image "
          f"({dense['forward_passes_per_image']} vs {crops['forward_passes_per_image']} forward passes)")
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
