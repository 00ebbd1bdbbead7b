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


def tower_variants(model: torch.nn.Module, skip_int8: bool, weights_id: str) -> dict:
    """name -> forward(pixels) for the candidate image-tower paths (``weights_id``: the cache key
    of the OpenVINO conversion, shared with the models the classify rows load)."""
    bf16 = copy.deepcopy(model).to(torch.bfloat16)

    def autocast(x):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return model.encode_image(x)

    out = {"fp32": model.encode_image, "bf16 weights": lambda x: bf16.encode_image(x.to(torch.bfloat16)),
           "bf16 autocast": autocast}
    try:
        from zeroshot.runtimes import openvino_image_tower

        for precision in ("bf16", "fp32"):
            tower = openvino_image_tower(model, weights_id, (224, 224), precision)
            out[f"OpenVINO {precision}"] = tower.encode_image
    except ImportError:
        log("openvino not installed: no OpenVINO rows")
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


def agreement(fp32_loaded, auto_loaded, paths: list[str], heads: dict[str, list[str]], templates, batch_size: int,
              built: dict | None = None) -> dict:
    """Top-1 and cosine agreement of fp32 and auto on ``paths`` for every head (name -> class
    names); ``built``: fp32/auto class weights of the ``imagenet`` head already made with these models."""
    from zeroshot.encode.embed import EmbedSettings, embed_images
    from zeroshot.encode.text import build_class_weights

    def embeddings(loaded):
        rows = [b.embeddings for b in embed_images(loaded, [_source(p) for p in paths], EmbedSettings(batch_size, 0))]
        return torch.cat(rows)

    e32, eau = embeddings(fp32_loaded), embeddings(auto_loaded)
    out = {"images": len(paths), "image_min_cosine": float(torch.nn.functional.cosine_similarity(e32, eau).min())}
    for name, labels in heads.items():
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


def folder_images(root: str) -> list[tuple[str, str]]:
    """(path, class) of every image in a class-folder data set, in a fixed order."""
    return [(str(p), p.parent.name) for p in sorted(Path(root).glob("*/*")) if p.is_file()]


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
    p.add_argument("--eval-shapes", type=int, default=0, metavar="PER_PAIR",
                   help="make --eval-dir from the shapes generator: PER_PAIR new images of each of the 36 pairs")
    p.add_argument("--skip-speed", action="store_true", help="only the agreement section")
    p.add_argument("--skip-hf", action="store_true")
    p.add_argument("--skip-int8", action="store_true")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--json", metavar="FILE")
    p.add_argument("--cache-dir", default=str(REPO / ".bench"))
    args = p.parse_args(argv)
    if args.eval_shapes and not args.eval_dir:
        args.eval_dir = str(Path(args.cache_dir) / f"shapes-eval-{args.eval_shapes}")
    if args.quick:
        args.images, args.repeats, args.tower_batches, args.text_classes = 16, 1, 1, 20
        args.text_repeats, args.agree_images, args.batch_size = 1, 16, 8
    return args


def fresh_auto(auto):
    """A copy of an ``auto`` model that has not run its first-batch check yet (a failed check
    sets the copy's precision and runtime, never the original's)."""
    fresh = copy.copy(auto)
    fresh.checked, fresh.notes = {}, []
    fresh.precision = fresh.text_precision = auto.precision
    return fresh


def masked_auto(arch: str, ckpt: str):
    """``auto`` as a CPU without native bf16 resolves it (the bf16 flags masked)."""
    import zeroshot.precision as zp
    from zeroshot.models import load_model

    real_flags = zp.cpu_flags
    zp.cpu_flags = lambda: real_flags() - zp.NATIVE_BF16_FLAGS
    try:
        return load_model(arch, ckpt, device="cpu", precision="auto")
    finally:
        zp.cpu_flags = real_flags


def speed_section(res: dict, args, fp32, auto, paths: list[str], templates, ckpt: str) -> None:
    """Image-tower and end-to-end classify rates, interleaved repeats."""
    from zeroshot import ZeroShotClassifier
    from zeroshot.models import load_model

    masked = masked_auto("ViT-B-32", ckpt)
    torch_auto = load_model("ViT-B-32", ckpt, device="cpu", precision="auto", runtime="torch")
    log(f"auto resolves to {auto.precision}; with the bf16 flags masked to {masked.precision}")
    clfs = {"fp32": ZeroShotClassifier(LABELS6, templates, model=fp32, cache=False),
            "auto": None,  # built per repeat: a fresh model so the first-batch check is included
            "auto (no native bf16)": ZeroShotClassifier(LABELS6, templates, model=masked, cache=False)}
    if auto.runtime != "torch":  # the same auto bf16 on torch's bf16 weights, for comparison
        clfs["auto, --runtime torch"] = None
    pixels = tower_pixels(fp32, paths, args.batch_size, torch.device("cpu"))
    towers = tower_variants(fp32.model, args.skip_int8, fp32.weights_id)
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
                base = auto if name == "auto" else torch_auto
                clf = ZeroShotClassifier(LABELS6, templates, model=fresh_auto(base), cache=False)
            total, _, _ = run_classify(clf, paths, args.batch_size)
            samples.setdefault(f"classify {name}", []).append(rate(len(paths), total))
            if name == "auto":
                res.setdefault("auto_checks", []).append({"precision": clf.loaded.describe_precision(),
                                                          "notes": clf.loaded.notes})
        if not args.skip_hf:
            samples.setdefault("HF pipeline", []).append(bench_hf(paths, args.batch_size, torch.device("cpu"),
                                                                  Path(args.cache_dir))["images_per_s"])
    res["rates"] = {k: summarise(v) for k, v in samples.items()}
    res["load_during"] = loads


def text_section(res: dict, args, fp32, auto, classes: list[str], templates) -> dict:
    """Cold class weights, fp32 against auto; returns the last weights of each."""
    from zeroshot.encode.text import build_class_weights

    log(f"cold class weights: {len(classes)} classes x {len(templates)} templates")
    text: dict[str, list[float]] = {}
    text_weights = {}
    for _ in range(args.text_repeats):
        for name, base in (("fp32", fp32), ("auto", auto)):
            fresh = fresh_auto(base) if name == "auto" else base
            started = time.perf_counter()
            text_weights[name] = build_class_weights(fresh, classes, templates, cache=None)
            text.setdefault(name, []).append(time.perf_counter() - started)
            if name == "auto":
                res["text_auto_precision"] = fresh.describe_precision()
                res["text_auto_notes"] = fresh.notes
    res["text_seconds"] = {k: summarise(v) for k, v in text.items()}
    res["text_weights_min_cosine"] = float(torch.nn.functional.cosine_similarity(text_weights["fp32"], text_weights["auto"]).min())
    return text_weights


def agreement_section(res: dict, args, fp32, auto, paths: list[str], classes: list[str], templates,
                      text_weights: dict | None) -> None:
    """fp32 against auto: on the benchmark photos, and on ``--eval-dir``'s own images + accuracy."""
    from zeroshot.models import load_model

    log("agreement")
    if args.agree_checkpoint:
        a32 = load_model(args.agree_model, args.agree_checkpoint, device="cpu", precision="fp32")
        aau = load_model(args.agree_model, args.agree_checkpoint, device="cpu", precision="auto")
    else:
        a32, aau = fp32, fresh_auto(auto)
    model = f"{args.agree_model} ({args.agree_checkpoint or 'random weights'})"
    built = None if args.agree_checkpoint else text_weights
    res["agreement"] = agreement(a32, aau, paths, {"imagenet": classes, "labels6": LABELS6}, templates,
                                 args.batch_size, built)
    res["agreement"]["model"] = model
    if not args.eval_dir:
        return
    if args.eval_shapes:
        make_shapes_eval(Path(args.eval_dir), args.eval_shapes)
    # The labelled folder's own images, scored among its own classes (the model's test set).
    own = folder_images(args.eval_dir)
    res["agreement_eval_dir"] = agreement(a32, fresh_auto(aau), [p for p, _ in own],
                                          {"eval-dir": sorted({c for _, c in own})}, templates, args.batch_size)
    res["agreement_eval_dir"]["model"] = model
    # "auto" may fall back to fp32 after its first-batch check; forced bf16 runs every image at bf16.
    forced = {f"bf16 on {rt}, no check": load_model(args.agree_model, args.agree_checkpoint, device="cpu",
                                                   precision="bf16", runtime=rt) for rt in ("torch", aau.runtime)}
    res["eval"] = eval_accuracy({"fp32": a32, "auto": fresh_auto(aau), **forced}, args.eval_dir, templates)


def make_shapes_eval(root: Path, per_pair: int) -> None:
    """New images of all 36 colour-shape pairs (trained, val and test pairs) as class folders."""
    if root.is_dir():
        return
    import shapes

    tmp = root.with_name(root.name + ".tmp")
    shapes.write_class_folders(tmp, shapes.labelled_scenes(4242, shapes.all_pairs(), per_pair))
    tmp.rename(root)


def main(argv=None) -> int:
    import zeroshot.precision as zp
    from zeroshot.models import load_model
    from zeroshot.prompts import resolve_templates

    args = parse_args(argv)
    cache = Path(args.cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    res: dict = {"args": vars(args), "cpu": zp.cpu_features_line(), "torch": torch.__version__,
                 "threads": torch.get_num_threads(), "load_start": os.getloadavg()}
    log(f"{res['cpu']}; torch {torch.__version__}, {torch.get_num_threads()} threads; load {loadavg():.2f}")
    small = ensure_images(cache / "imagenet-size", max(args.images, args.agree_images), big=False)
    ckpt = str(ensure_checkpoint(cache / "vit-b-32.pt"))
    templates = resolve_templates(args.templates)
    classes = imagenet_classes(args.text_classes)
    fp32 = load_model("ViT-B-32", ckpt, device="cpu", precision="fp32")
    auto = load_model("ViT-B-32", ckpt, device="cpu", precision="auto")
    text_weights = None
    if not args.skip_speed:
        speed_section(res, args, fp32, auto, small[: args.images], templates, ckpt)
        text_weights = text_section(res, args, fp32, auto, classes, templates)
    agreement_section(res, args, fp32, auto, small[: args.agree_images], classes, templates, text_weights)
    res["load_end"] = os.getloadavg()
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2, default=str) + "\n", encoding="utf-8")
    report(res, args)
    return 0


def report(res: dict, args) -> None:
    print(f"\n{res['cpu']}; torch {res['torch']}, {res['threads']} threads"
          f"{' (QUICK: not meaningful)' if args.quick else ''}")
    if "rates" in res:
        report_speed(res, args)
    report_agreement(res)


def report_speed(res: dict, args) -> None:
    r = res["rates"]
    limit = r["tower fp32"]["median"]
    print(f"ViT-B-32 (random weights), batch {args.batch_size}, {args.images} ImageNet-size JPEGs, "
          f"{args.repeats} interleaved repeats")
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


def report_agreement(res: dict) -> None:
    a = res["agreement"]
    print(f"\nagreement fp32 vs auto, {a['model']}, {a['images']} images: image min cosine {a['image_min_cosine']:.5f}")
    for name in ("imagenet", "labels6"):
        x = a[name]
        print(f"  {x['classes']} classes: top-1 identical {100 * x['top1_identical']:.1f}%, class weights min cosine "
              f"{x['weights_min_cosine']:.5f} (fp32 top-1 takes {x['distinct_fp32_top1']} distinct classes)")
    if "agreement_eval_dir" in res:
        a = res["agreement_eval_dir"]
        x = a["eval-dir"]
        print(f"agreement on --eval-dir's own {a['images']} images, {x['classes']} classes: top-1 identical "
              f"{100 * x['top1_identical']:.1f}%, image min cosine {a['image_min_cosine']:.5f}, class weights min "
              f"cosine {x['weights_min_cosine']:.5f}")
    if "eval" in res:
        e = res["eval"]
        print(f"  eval top-1: fp32 {100 * e['fp32']['top1']:.2f}%")
        for name, row in e.items():
            if name != "fp32":
                print(f"    {name} ({row['precision']}): {100 * row['top1']:.2f}%, "
                      f"{100 * (row['top1'] - e['fp32']['top1']):+.2f} points")


if __name__ == "__main__":
    sys.exit(main())
