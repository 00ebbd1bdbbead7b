"""Render the README's pictures for ``locate`` and ``similarity`` into ``docs/``::

    PYTHONPATH=$PWD python benchmarks/render_see_docs.py            # the trained shapes model

Writes ``docs/locate-scene.png`` (the generated scene), ``docs/locate-<method>-<caption>.png``
(a heatmap per caption and method: dense, crops, and fused at scales 0.67,1,1.33; both captions
given together, so they compete) and
``docs/similarity.png`` (four scenes x four captions, cosine similarities), running the same code
as the commands (``zeroshot locate`` / ``zeroshot similarity --plot``). Model: the tiny CLIP
trained on generated shapes (``tests/fixtures/shapes-tiny.safetensors``, architecture
``zs-shapes``), or ``--model``/``--pretrained``.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))
os.environ.setdefault("ZEROSHOT_MODEL_CONFIGS", str(ROOT / "tests" / "model_configs"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

TEMPLATE = "a photo of a {}."


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="zs-shapes")
    parser.add_argument("--pretrained", default=str(ROOT / "tests" / "fixtures" / "shapes-tiny.safetensors"))
    parser.add_argument("--out", default=str(ROOT / "docs"))
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--size", type=int, default=128, help="scene side in pixels")
    args = parser.parse_args(argv)

    import shapes

    from zeroshot.models import load_model
    from zeroshot.output.plots import save_similarity_plot
    from zeroshot.tasks.locate import LocateSettings, OutputNames, locate, save_located
    from zeroshot.tasks.similarity import similarity

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    loaded = load_model(args.model, args.pretrained, device="cpu", precision="fp32")
    rng = random.Random(args.seed)
    train = shapes.split_pairs().train
    scene = shapes.random_scene(rng, train, n_objects=2, size=args.size)
    scene.image.save(out / "locate-scene.png")
    captions = [TEMPLATE.format(f"{o.colour} {o.shape}") for o in scene.objects]
    for method, scales in (("dense", (1.0,)), ("crops", (1.0,)), ("fused", (0.67, 1.0, 1.33))):
        settings = LocateSettings(method=method, scales=scales)
        [found] = list(locate(loaded, [scene.image], captions, settings=settings))
        found.path = f"locate-{method}"
        with tempfile.TemporaryDirectory() as tmp:
            for row in save_located(found, Path(tmp), OutputNames()):
                name = out / f"locate-{method}-{row.label.removeprefix('a photo of a ').rstrip('.').replace(' ', '-')}.png"
                shutil.move(row.heatmap, name)  # /tmp may be another file system
                print(f"{name}: box {row.box.x0},{row.box.y0},{row.box.x1},{row.box.y1} score {row.box.score:.3f}")
        for obj in scene.objects:
            print(f"  true box of {obj.colour} {obj.shape}: {obj.box}")
    scenes = [shapes.random_scene(rng, [pair], n_objects=1, size=args.size) for pair in rng.sample(train, 4)]
    texts = [TEMPLATE.format(f"{s.objects[0].colour} {s.objects[0].shape}") for s in scenes]
    result = similarity(loaded, [s.image for s in scenes], texts)
    save_similarity_plot(result.cosine.numpy(), [s.image for s in scenes], texts, out / "similarity.png",
                         title=f"cosine similarity ({loaded.name})")
    print(f"{out / 'similarity.png'}: diagonal {[round(float(result.cosine[i, i]), 3) for i in range(4)]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
