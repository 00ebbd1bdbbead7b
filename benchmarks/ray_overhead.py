"""What ``--ray`` costs on one machine, and the numbers a cluster's throughput model rests on.

    python benchmarks/ray_overhead.py                    # 256 ImageNet-size JPEGs, 3 interleaved repeats
    python benchmarks/ray_overhead.py --images 512 --repeats 5 --json ray.json

Needs the ``ray`` and ``bench`` extras. Images and the random-weight ViT-B-32 come from
benchmarks/bench.py (cached in ``.bench/``). Everything is measured in this run, on whatever
the machine is doing: the load average is printed next to every figure.

1. ``classify`` throughput, local vs ``--ray`` at the same CPU count: a local Ray with
   ``num_cpus`` = this machine's cores; the local run with its default decode workers. Runs
   alternate (local, ray, local, ray, ...) over the first half of the images and over all of
   them; medians. Two figures: end to end (all images, from the call to the last row,
   including Ray's actor start and model shipping) and marginal (the images/s the second half
   of the images added: ``(N - N/2) / (T(N) - T(N/2))``, what a long run approaches; the fixed
   start-up cost is then ``T(N/2) - (N/2) / marginal``).
2. The model's inputs: decode + preprocess images/s on one core (one process, no model), the
   image tower's images/s on this machine's cores (preprocessed tensors, fp32), and the
   driver's write rate (CSV rows/s of ``write_predictions``, top-5 rows).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("RAY_DEDUP_LOGS", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

from bench import LABELS6, REPO, bench_decode, ensure_checkpoint, ensure_images, log, tower_pixels  # noqa: E402


def load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def classify_run(clf, paths: list[str], batch_size: int) -> dict:
    """Seconds and images/s of one classify_paths run, and when its first row came."""
    started = time.perf_counter()
    first = None
    count = 0
    for pred in clf.classify_paths(paths, batch_size=batch_size):
        if not pred.ok:
            raise SystemExit(f"benchmark image failed: {pred.path}: {pred.error}")
        count += 1
        if first is None:
            first = time.perf_counter() - started
    seconds = time.perf_counter() - started
    return {"images": count, "seconds": seconds, "images_per_s": count / seconds, "first_row_s": first,
            "load": load()}


def tower_rate(loaded, paths: list[str], batch_size: int, batches: int) -> dict:
    import torch

    from zeroshot.encode.vision import encode_images

    pixels = tower_pixels(loaded, paths, batch_size, loaded.device)
    encode_images(loaded, pixels)  # warm-up and the shortcut's self-check
    started = time.perf_counter()
    with torch.inference_mode():
        for _ in range(batches):
            encode_images(loaded, pixels)
    seconds = time.perf_counter() - started
    return {"images_per_s": batches * batch_size / seconds, "threads": torch.get_num_threads(), "load": load()}


def write_rate(rows: int) -> dict:
    from zeroshot.output.rows import Prediction
    from zeroshot.output.writers import choose_format, write_predictions

    preds = [Prediction(f"/data/shard{i // 1000:05d}/img{i:08d}.jpg", tuple(LABELS6[:5]),
                        (0.5, 0.2, 0.1, 0.1, 0.05)) for i in range(rows)]
    stream = io.StringIO()
    started = time.perf_counter()
    write_predictions(preds, choose_format("csv", None, stdout_is_tty=False), top_k=5, stream=stream)
    seconds = time.perf_counter() - started
    return {"rows_per_s": rows / seconds, "load": load()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--cpus", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--cache-dir", type=Path, default=REPO / ".bench")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    import ray

    from zeroshot.models import load_model
    from zeroshot.scale import RayEncoder, RaySettings, connect
    from zeroshot.tasks.classify import ZeroShotClassifier

    paths = ensure_images(args.cache_dir / "imagenet-size", args.images, big=False)
    checkpoint = ensure_checkpoint(args.cache_dir / "vit-b-32.pt")
    loaded = load_model("ViT-B-32", str(checkpoint), device="cpu", precision="fp32")
    log(f"load {load()}; starting a local Ray with {args.cpus} CPUs")
    connect("local", num_cpus=args.cpus, object_store_memory=512 * 1024 ** 2)
    local = ZeroShotClassifier(LABELS6, templates="photo", model=loaded, cache=False)
    remote = ZeroShotClassifier(LABELS6, templates="photo", model=loaded, cache=False,
                                encoder=RayEncoder(RaySettings()))
    log(f"ray settings: {RaySettings().resolved()}")
    half = paths[: len(paths) // 2]
    runs: dict[str, list[dict]] = {"local": [], "ray": []}
    for r in range(args.repeats):
        for name, clf in (("local", local), ("ray", remote)):
            short = classify_run(clf, half, args.batch_size)
            full = classify_run(clf, paths, args.batch_size)
            full["marginal_images_per_s"] = (len(paths) - len(half)) / (full["seconds"] - short["seconds"])
            full["startup_s"] = short["seconds"] - len(half) / full["marginal_images_per_s"]
            full["half"] = short
            runs[name].append(full)
            log(f"repeat {r + 1} {name}: {full}")
    keys = ("images_per_s", "marginal_images_per_s", "startup_s", "first_row_s")
    med = {name: {key: statistics.median(run[key] for run in rs) for key in keys} for name, rs in runs.items()}
    ray.shutdown()
    decode = bench_decode(loaded, paths[:64], draft=True)
    decode["load"] = load()
    tower = tower_rate(loaded, paths, args.batch_size, batches=4)
    writes = write_rate(200_000)
    result = {"cpus": args.cpus, "images": args.images, "batch_size": args.batch_size, "runs": runs, "median": med,
              "ratio_end_to_end": med["ray"]["images_per_s"] / med["local"]["images_per_s"],
              "ratio_marginal": med["ray"]["marginal_images_per_s"] / med["local"]["marginal_images_per_s"],
              "decode_per_core": decode, "tower": tower, "driver_write": writes}
    print(f"classify, {args.images} ImageNet-size JPEGs, ViT-B-32 fp32, batch {args.batch_size}, {args.cpus} CPUs, "
          f"median of {args.repeats} interleaved runs (1-min load after each run: "
          f"{', '.join(r['load'].split()[0] for rs in runs.values() for r in rs)})")
    for name in ("local", "ray"):
        print(f"  {name:5s}  end to end {med[name]['images_per_s']:6.1f} img/s   marginal "
              f"{med[name]['marginal_images_per_s']:6.1f} img/s   start-up {med[name]['startup_s']:5.1f} s   "
              f"first row after {med[name]['first_row_s']:5.1f} s")
    print(f"  ray / local: end to end {result['ratio_end_to_end']:.2f}x, marginal {result['ratio_marginal']:.2f}x")
    print(f"decode + preprocess, one core:       {decode['images_per_s']:7.1f} img/s (load {decode['load']})")
    print(f"image tower, {tower['threads']} threads, fp32:     {tower['images_per_s']:7.1f} img/s (load {tower['load']})")
    print(f"driver CSV writer, top-5 rows:       {writes['rows_per_s']:9.0f} rows/s (load {writes['load']})")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
