"""Re-labelling with the embedding store: classify an indexed folder with a label set never used
before, with and without the store (issue 11: >= 20x faster, zero images encoded)::

    python benchmarks/relabel.py                    # 1,000 ImageNet-size JPEGs, 3 repeats
    python benchmarks/relabel.py --images 200 --repeats 5

What it does, all in one process:

1. Data: ``--images`` ImageNet-size JPEGs (500x375..500x500, ~100 KB; the generator and cache of
   ``benchmarks/bench.py``, in ``--cache-dir``) and a random-weight ViT-B-32 saved to a local
   checkpoint (weight values do not matter for speed; a file makes the weights storable).
2. ``Store.index`` of the folder into a fresh store (timed, reported).
3. Repeats, interleaved (which one goes first alternates): in each, a new label set (10 labels
   nobody used before; no class-weight cache, so the text side is computed every time) is built into a ``ZeroShotClassifier`` first; only
   then is ``classify_to_file(clf, [folder], out.csv)`` timed: the image side of ``zeroshot
   classify`` (discovery, reading or encoding the images, scoring, writing the CSV). The store run
   must report 0 images encoded and every image read from the store; the plain run encodes all.
4. Prints the medians, the ratio, how many images got the same top-1 label both ways, and the
   command. ``--json FILE`` writes every number.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=None, help="default: 32 on CPU, 256 on CUDA")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cache-dir", default=str(HERE.parent / ".bench"))
    parser.add_argument("--json", default=None, help="also write every number here")
    args = parser.parse_args(argv)

    import torch
    from bench import ensure_checkpoint, ensure_images

    from zeroshot.encode.embed import EmbedSettings
    from zeroshot.models import load_model
    from zeroshot.store.db import Store
    from zeroshot.tasks.classify import ZeroShotClassifier, classify_to_file

    cache = Path(args.cache_dir)
    log(f"data: {args.images} ImageNet-size JPEGs in {cache / 'imagenet-size'}")
    paths = ensure_images(cache / "imagenet-size", args.images, big=False)
    ckpt = ensure_checkpoint(cache / "vit-b-32.pt")
    work = Path(tempfile.mkdtemp(prefix="zeroshot-relabel-"))
    folder = work / "photos"
    folder.mkdir()
    for p in paths:  # exactly these images, whatever else the cache holds
        os.symlink(p, folder / os.path.basename(p))
    loaded = load_model("ViT-B-32", str(ckpt), device=args.device, precision="fp32")
    batch = args.batch_size or (256 if loaded.device.type == "cuda" else 32)
    settings = EmbedSettings(batch_size=batch, fast_decode=True)  # classify's and index's default
    store_dir = work / "store"
    res: dict = {"images": len(paths), "batch_size": batch, "device": str(loaded.device),
                 "torch_threads": torch.get_num_threads(), "cores": len(os.sched_getaffinity(0)),
                 "loadavg_start": os.getloadavg()[0], "with_store": [], "without_store": [], "same_top1": []}
    try:
        log("index")
        with Store.open(store_dir) as store:
            t0 = time.perf_counter()
            stats = store.index(loaded, [folder], settings)
            res["index_seconds"] = time.perf_counter() - t0
            assert stats.encoded == len(paths), stats
        log(f"  {stats.encoded} encoded in {res['index_seconds']:.1f}s")

        def run(rep: int, use_store: bool) -> tuple[float, list[str]]:
            labels = [f"relabel run {rep} class {j}" for j in range(10)]  # new in every repeat
            clf = ZeroShotClassifier(labels, "photo", model=loaded, cache=False,
                                     store=store_dir if use_store else None)  # text side: not timed
            out = work / f"out-{rep}-{use_store}.csv"
            t0 = time.perf_counter()
            run_stats = classify_to_file(clf, [folder], out, settings=settings)
            seconds = time.perf_counter() - t0
            if use_store:
                assert (run_stats.encoded, run_stats.from_store) == (0, len(paths)), run_stats
                clf.store.close()
            else:
                assert run_stats.encoded == len(paths), run_stats
            rows = out.read_text().splitlines()[1:]
            return seconds, [row.split(",")[1] for row in rows]

        for rep in range(args.repeats):
            order = (True, False) if rep % 2 == 0 else (False, True)
            tops = {}
            for use_store in order:
                seconds, tops[use_store] = run(rep, use_store)
                res["with_store" if use_store else "without_store"].append(seconds)
                log(f"repeat {rep + 1}/{args.repeats} {'with' if use_store else 'without'} the store: {seconds:.3f}s")
            res["same_top1"].append(sum(a == b for a, b in zip(tops[True], tops[False])))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    with_s, without_s = statistics.median(res["with_store"]), statistics.median(res["without_store"])
    res["ratio"] = without_s / with_s
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               "unknown CPU") if os.path.exists("/proc/cpuinfo") else "unknown CPU"
    print(f"re-labelling {len(paths)} ImageNet-size JPEGs, ViT-B-32 fp32 (random weights from a file), "
          f"{res['device']}, batch {batch}; {cpu}, {res['cores']} cores, load avg at start {res['loadavg_start']:.2f}")
    print(f"  index (encode once):          {res['index_seconds']:8.2f} s")
    print(f"  classify without the store:   {without_s:8.2f} s  (median of {args.repeats}: "
          f"{', '.join(f'{s:.2f}' for s in res['without_store'])}; encoded {len(paths)})")
    print(f"  classify with the store:      {with_s:8.3f} s  (median of {args.repeats}: "
          f"{', '.join(f'{s:.3f}' for s in res['with_store'])}; encoded 0, {len(paths)} from the store)")
    print(f"  ratio: {res['ratio']:.0f}x  (text side excluded: class weights built before timing)")
    print(f"  same top-1 label with and without the store (float16 vs float32 vectors): "
          f"{min(res['same_top1'])} of {len(paths)}")
    print("command: python benchmarks/relabel.py " + " ".join(argv if argv is not None else sys.argv[1:]))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
