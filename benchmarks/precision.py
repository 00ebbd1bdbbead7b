"""Reduced precision on the CPU (issue #15): speed of ``--precision auto`` against fp32 and the
Hugging Face pipeline, and its agreement with fp32.

Run from the repository root (``bench`` extra; torchao for the int8 row)::

    python benchmarks/precision.py                          # full run
    python benchmarks/precision.py --quick                  # smoke run, numbers not meaningful
    python benchmarks/precision.py --agree-model zs-shapes --agree-checkpoint tests/fixtures/shapes-tiny.safetensors \\
        --eval-dir DIR                                       # agreement on a trained model + accuracy

Everything is measured in one process, interleaved (every row gets one sample per repeat) and
reported as medians with the range, as ratios against references measured in the same run. The
machine's load average is printed beside the figures: on a shared CPU they drift.

Rows
----
image tower, fp32 (limit)
    ``model.encode_image`` on preprocessed tensors, fp32: the limit of any fp32 pipeline.
image tower, bf16 weights / bf16 autocast / int8 (torchao dynamic)
    the same tensors through the candidate reduced paths (what ``auto`` could have picked).
classify_paths fp32 / auto
    ``ZeroShotClassifier.classify_paths`` end to end on the ImageNet-size JPEGs of bench.py, 6 labels;
    ``auto`` includes its first-batch check against fp32. ``auto (no native bf16)`` masks the CPU's
    bf16 flags (what a CPU without them runs).
HF pipeline
    transformers' zero-shot-image-classification pipeline (bench.py's setup).
class weights, cold
    ``build_class_weights`` for ``--text-classes`` ImageNet classes x ``--templates``, fp32 and auto.

Agreement (random ViT-B-32 weights give near-degenerate embeddings, so these are weak evidence;
pass a trained model with ``--agree-model``/``--agree-checkpoint`` for meaningful ones): top-1 of
every benchmark image against the 1000 ImageNet class weights and the 6 labels, fp32 vs auto;
min cosine of image embeddings and of class weights; with ``--eval-dir`` (class subfolders), the
zero-shot accuracy of both.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
from bench import (  # noqa: E402
    LABELS6,
    REPO,
    bench_hf,
    ensure_checkpoint,
    ensure_images,
    imagenet_classes,
    log,
    run_classify,
    tower_pixels,
)


def loadavg() -> float:
    return os.getloadavg()[0]


def rate(n: int, seconds: float) -> float:
    return n / seconds if seconds else 0.0


def timed_tower(fn, pixels, batches: int) -> float:
    with torch.inference_mode():
        started = time.perf_counter()
        for _ in range(batches):
            fn(pixels)
        return rate(batches * pixels.shape[0], time.perf_counter() - started)


def tower_variants(model: torch.nn.Module, skip_int8: bool) -> dict:
    """name -> forward(pixels) for the candidate image-tower paths."""
    bf16 = copy.deepcopy(model).to(torch.bfloat16)

    def autocast(x):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return model.encode_image(x)

    out = {"fp32": model.encode_image, "bf16 weights": lambda x: bf16.encode_image(x.to(torch.bfloat16)),
           "bf16 autocast": autocast}
    if not skip_int8:
        try:
            from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

            q = copy.deepcopy(model)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                quantize_(q, Int8DynamicActivationInt8WeightConfig())
            out["int8 dynamic (torchao)"] = q.encode_image
        except ImportError:
            log("torchao not installed: no int8 row")
    return out


def summarise(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "all": values}


def agreement(fp32_loaded, auto_loaded, paths: list[str], classes: list[str], templates, batch_size: int,
              built: dict | None = None) -> dict:
    """Top-1 and cosine agreement of fp32 and auto on ``paths`` (``classes`` and 6-label heads;
    ``built``: fp32/auto class weights of ``classes`` already made with these models)."""
    from zeroshot.encode.embed import EmbedSettings, embed_images
    from zeroshot.encode.text import build_class_weights

    def embeddings(loaded):
        rows = [b.embeddings for b in embed_images(loaded, [_source(p) for p in paths], EmbedSettings(batch_size, 0))]
        return torch.cat(rows)

    e32, eau = embeddings(fp32_loaded), embeddings(auto_loaded)
    out = {"images": len(paths), "image_min_cosine": float(torch.nn.functional.cosine_similarity(e32, eau).min())}
    for name, labels in (("imagenet", classes), ("labels6", LABELS6)):
        if built and name == "imagenet":
            w32, wau = built["fp32"], built["auto"]
        else:
            w32 = build_class_weights(fp32_loaded, labels, templates, cache=None)
            wau = build_class_weights(auto_loaded, labels, templates, cache=None)
        same = ((e32 @ w32.T).argmax(1) == (eau @ wau.T).argmax(1)).float().mean().item()
        out[name] = {"classes": len(labels), "top1_identical": same,
                     "weights_min_cosine": float(torch.nn.functional.cosine_similarity(w32, wau).min()),
                     "distinct_fp32_top1": int((e32 @ w32.T).argmax(1).unique().numel())}
    return out


def _source(path: str):
    from zeroshot.data.discover import Source

    return Source(path, path)


def eval_accuracy(loaded_by_name: dict, root: str, templates) -> dict:
    from zeroshot.data.datasets import folder_dataset
    from zeroshot.encode.embed import EmbedSettings
    from zeroshot.tasks.evaluate import evaluate

    data = folder_dataset(root)
    out = {}
    for name, loaded in loaded_by_name.items():
        result = evaluate(loaded, data, [templates], EmbedSettings(workers=0), cache=False)
        out[name] = {"top1": result.metrics.as_dict().get("acc1"), "precision": loaded.describe_precision()}
    return out


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=128, help="ImageNet-size JPEGs for classify/HF (default 128)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--tower-batches", type=int, default=2, help="batches per tower sample (default 2)")
    p.add_argument("--repeats", type=int, default=5, help="interleaved repeats (default 5)")
    p.add_argument("--text-classes", type=int, default=1000)
    p.add_argument("--templates", default="7")
    p.add_argument("--text-repeats", type=int, default=2)
    p.add_argument("--agree-images", type=int, default=256)
    p.add_argument("--agree-model", default="ViT-B-32", help="architecture for the agreement section")
    p.add_argument("--agree-checkpoint", default=None, help="its weights (default: the random ViT-B-32)")
    p.add_argument("--eval-dir", default=None, help="a labelled folder (class subfolders) for accuracy fp32 vs auto")
    p.add_argument("--skip-hf", action="store_true")
    p.add_argument("--skip-int8", action="store_true")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--json", metavar="FILE")
    p.add_argument("--cache-dir", default=str(REPO / ".bench"))
    args = p.parse_args(argv)
    if args.quick:
        args.images, args.repeats, args.tower_batches, args.text_classes = 16, 1, 1, 20
        args.text_repeats, args.agree_images, args.batch_size = 1, 16, 8
    return args


def main(argv=None) -> int:  # noqa: PLR0915 - one straight script
    import zeroshot.precision as zp
    from zeroshot import ZeroShotClassifier
    from zeroshot.encode.text import build_class_weights
    from zeroshot.models import load_model
    from zeroshot.prompts import resolve_templates

    args = parse_args(argv)
    cache = Path(args.cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    res: dict = {"args": vars(args), "cpu": zp.cpu_features_line(), "torch": torch.__version__,
                 "threads": torch.get_num_threads(), "load_start": os.getloadavg()}
    log(f"{res['cpu']}; torch {torch.__version__}, {torch.get_num_threads()} threads; load {loadavg():.2f}")
    small = ensure_images(cache / "imagenet-size", max(args.images, args.agree_images), big=False)
    paths = small[: args.images]
    ckpt = ensure_checkpoint(cache / "vit-b-32.pt")
    templates = resolve_templates(args.templates)
    classes = imagenet_classes(args.text_classes)

    fp32 = load_model("ViT-B-32", str(ckpt), device="cpu", precision="fp32")
    auto = load_model("ViT-B-32", str(ckpt), device="cpu", precision="auto")
    real_flags = zp.cpu_flags
    zp.cpu_flags = lambda: real_flags() - zp.NATIVE_BF16_FLAGS
    try:
        masked = load_model("ViT-B-32", str(ckpt), device="cpu", precision="auto")
    finally:
        zp.cpu_flags = real_flags
    log(f"auto resolves to {auto.precision}; with the bf16 flags masked to {masked.precision}")
    clfs = {"fp32": ZeroShotClassifier(LABELS6, templates, model=fp32, cache=False),
            "auto": None,  # built per repeat: a fresh model so the first-batch check is included
            "auto (no native bf16)": ZeroShotClassifier(LABELS6, templates, model=masked, cache=False)}
    pixels = tower_pixels(fp32, paths, args.batch_size, torch.device("cpu"))
    towers = tower_variants(fp32.model, args.skip_int8)
    with torch.inference_mode():
        ref = torch.nn.functional.normalize(fp32.model.encode_image(pixels).float(), dim=-1)
        res["tower_min_cosine"] = {name: float(torch.nn.functional.cosine_similarity(
            ref, torch.nn.functional.normalize(fn(pixels).float(), dim=-1)).min()) for name, fn in towers.items()}

    samples: dict[str, list[float]] = {}
    loads = []
    for rep in range(args.repeats):
        log(f"repeat {rep + 1}/{args.repeats} (load {loadavg():.2f})")
        loads.append(loadavg())
        for name, fn in towers.items():
            samples.setdefault(f"tower {name}", []).append(timed_tower(fn, pixels, args.tower_batches))
        for name, clf in clfs.items():
            if clf is None:
                fresh = copy.copy(auto)
                fresh.checked, fresh.notes = {}, []
                fresh.precision = fresh.text_precision = auto.precision
                clf = ZeroShotClassifier(LABELS6, templates, model=fresh, cache=False)
            total, _, _ = run_classify(clf, paths, args.batch_size)
            samples.setdefault(f"classify {name}", []).append(rate(len(paths), total))
            if name == "auto":
                res.setdefault("auto_checks", []).append({"precision": clf.loaded.describe_precision(),
                                                          "notes": clf.loaded.notes})
        if not args.skip_hf:
            samples.setdefault("HF pipeline", []).append(bench_hf(paths, args.batch_size, torch.device("cpu"), cache)["images_per_s"])
    res["rates"] = {k: summarise(v) for k, v in samples.items()}
    res["load_during"] = loads

    log(f"cold class weights: {len(classes)} classes x {len(templates)} templates")
    text: dict[str, list[float]] = {}
    text_weights = {}
    for _ in range(args.text_repeats):
        for name, base in (("fp32", fp32), ("auto", auto)):
            fresh = copy.copy(base)
            fresh.checked, fresh.notes = {}, []
            started = time.perf_counter()
            text_weights[name] = build_class_weights(fresh, classes, templates, cache=None)
            text.setdefault(name, []).append(time.perf_counter() - started)
            if name == "auto":
                res["text_auto_precision"] = fresh.describe_precision()
                res["text_auto_notes"] = fresh.notes
    res["text_seconds"] = {k: summarise(v) for k, v in text.items()}
    res["text_weights_min_cosine"] = float(torch.nn.functional.cosine_similarity(text_weights["fp32"], text_weights["auto"]).min())

    log("agreement")
    if args.agree_checkpoint:
        a32 = load_model(args.agree_model, args.agree_checkpoint, device="cpu", precision="fp32")
        aau = load_model(args.agree_model, args.agree_checkpoint, device="cpu", precision="auto")
    else:
        a32, aau = fp32, copy.copy(auto)
    agree_paths = small[: args.agree_images]
    res["agreement"] = agreement(a32, aau, agree_paths, classes, templates, args.batch_size,
                                 None if args.agree_checkpoint else text_weights)
    res["agreement"]["model"] = f"{args.agree_model} ({args.agree_checkpoint or 'random weights'})"
    if args.eval_dir:
        res["eval"] = eval_accuracy({"fp32": a32, "auto": load_model(args.agree_model, args.agree_checkpoint,
                                                                     device="cpu", precision="auto")},
                                    args.eval_dir, templates)
    res["load_end"] = os.getloadavg()
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2, default=str) + "\n", encoding="utf-8")
    report(res, args)
    return 0


def report(res: dict, args) -> None:
    r = res["rates"]
    limit = r["tower fp32"]["median"]
    print(f"\n{res['cpu']}; torch {res['torch']}, {res['threads']} threads; ViT-B-32 (random weights), batch "
          f"{args.batch_size}, {args.images} ImageNet-size JPEGs, {args.repeats} interleaved repeats"
          f"{' (QUICK: not meaningful)' if args.quick else ''}")
    print(f"load average: start {res['load_start'][0]:.2f}, during {', '.join(f'{x:.1f}' for x in res['load_during'])}, "
          f"end {res['load_end'][0]:.2f}\n")
    print("| row | img/s median (range) | vs fp32 tower | vs HF pipeline | min cosine to fp32 |")
    print("|---|---|---|---|---|")
    hf = r.get("HF pipeline", {}).get("median")
    for name, s in r.items():
        cos = res["tower_min_cosine"].get(name.removeprefix("tower "), "")
        cos = f"{cos:.5f}" if isinstance(cos, float) else ""
        vs_hf = f"{s['median'] / hf:.2f}x" if hf else "-"
        print(f"| {name} | {s['median']:.2f} ({s['min']:.2f}-{s['max']:.2f}) | {s['median'] / limit:.2f}x | {vs_hf} | {cos} |")
    t = res["text_seconds"]
    print(f"\ncold class weights, {args.text_classes} classes x {args.templates} templates: fp32 {t['fp32']['median']:.1f} s "
          f"({t['fp32']['min']:.1f}-{t['fp32']['max']:.1f}), auto {t['auto']['median']:.1f} s ({t['auto']['min']:.1f}-"
          f"{t['auto']['max']:.1f}) = {t['fp32']['median'] / t['auto']['median']:.2f}x; auto ran {res['text_auto_precision']}; "
          f"class weights min cosine {res['text_weights_min_cosine']:.5f}")
    print(f"auto's image check per repeat: {[c['precision'] for c in res['auto_checks']]}")
    a = res["agreement"]
    print(f"\nagreement fp32 vs auto, {a['model']}, {a['images']} images: image min cosine {a['image_min_cosine']:.5f}")
    for name in ("imagenet", "labels6"):
        x = a[name]
        print(f"  {x['classes']} classes: top-1 identical {100 * x['top1_identical']:.1f}%, class weights min cosine "
              f"{x['weights_min_cosine']:.5f} (fp32 top-1 takes {x['distinct_fp32_top1']} distinct classes)")
    if "eval" in res:
        print(f"  eval accuracy: {res['eval']}")


if __name__ == "__main__":
    sys.exit(main())
