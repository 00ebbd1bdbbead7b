"""Throughput benchmark for zeroshot on generated data (issue #4).

Run from the repository root (needs the ``bench`` extra: ``pip install -e .[bench]``)::

    python benchmarks/bench.py                      # full run (defaults below)
    python benchmarks/bench.py --quick              # smoke run, tiny sizes, ~1-2 minutes
    python benchmarks/bench.py --json bench.json    # also write every number + machine info

Everything is measured in the same process run (except peak memory, which uses fresh
subprocesses), so the ratios compare like with like on whatever the machine is doing. Close other
work first: on a shared or busy CPU the numbers are meaningless (the load average is printed).

What it does
------------
1. Data (cached in ``--cache-dir``, default ``.bench/`` in the repo, reused across runs): ``--images``
   ImageNet-size JPEGs (500x375 .. 500x500, quality 90, ~80-130 KB: smooth colour fields,
   texture, shapes, sensor-like noise) and ``--big-images`` 12-megapixel JPEGs (4000x3000,
   quality 90, ~3 MB). Files are deterministic per index; missing ones are generated.
   A random-weight ViT-B-32 is saved once to ``.bench/vit-b-32.pt`` (weight values do not
   matter for speed). A CLIP tokenizer for Hugging Face is built offline from open_clip's BPE file.
2. Rows of the table (fp32, ``--device`` default cpu, ``--batch-size`` default 32):

   image tower forward (limit)
       ``model.encode_image`` on already-preprocessed tensors under ``torch.inference_mode``:
       the upper bound for any end-to-end pipeline using this model on this device.
   zeroshot image encoder
       ``zeroshot.vision.encode_images`` on the same tensors: the last transformer block is
       computed for the class token only (exact; the max difference is printed).
   zeroshot classify_paths, ImageNet-size / 12 MP (draft) / 12 MP exact decode
       ``ZeroShotClassifier.classify_paths`` end to end (discovery, decode workers, preprocessing,
       model, scoring, predictions), default workers, 6 labels, after the class weights are
       built. "draft" is the default JPEG DCT-scaled decode; ``fast_decode=False`` (``--exact-decode``) decodes at
       full size (the draft speedup is their ratio).
   seed-style open_clip loop
       the usual hand-written loop: ``Image.open`` + open_clip ``preprocess`` + ``encode_image``
       per batch, all in one process.
   HF transformers pipeline
       ``pipeline("zero-shot-image-classification")`` with ``CLIPModel(CLIPConfig())`` (ViT-B/32
       geometry, random weights), 6 labels, same batch size, same files.
   decode+preprocess only
       one process, no model: ``open_image`` + the worker half of the transform, per image.
       Shows how many images/s one decode core delivers (what the model side must be fed).
   class weights (ours / open_clip)
       ``build_class_weights`` (length-trimmed text tower, no cache) vs open_clip's
       ``build_zero_shot_classifier`` for ``--text-classes`` ImageNet classes (evenly subsampled
       from the 1000; ``--text-classes 1000`` for all) x ``--templates``; max |difference| printed.
   class-weight cache cold / warm
       two classifiers with the same labels/templates and a fresh on-disk cache: time to first
       prediction and total time for ``--cache-images`` images; the warm run asserts the text
       tower was never called.
   peak RSS
       fresh subprocess each: classify ``--mem-images`` images, then 10x as many (the file list
       repeated); peak resident memory of the main process while classifying (sampled) must stay
       flat, i.e. streaming, not accumulating.

Rows (1)-(3) are measured ``--repeats`` times, interleaved, and the table shows the median with
the range in brackets: a shared or throttling machine drifts by 10-20% within minutes.

Options: ``--images N`` (256), ``--big-images M`` (16), ``--batch-size`` (32 on CPU, 256 on CUDA),
``--device`` (cpu), ``--templates`` (7; or 80, or any built-in/file), ``--text-classes`` (100),
``--cache-images`` (= batch size), ``--mem-images`` (100), ``--tower-batches`` (4), ``--repeats`` (5),
``--quick``, ``--skip-hf``, ``--skip-mem``, ``--json FILE``, ``--cache-dir``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image, ImageDraw, ImageFilter  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
LABELS6 = ["cat", "dog", "car", "tree", "house", "person"]
SMALL_SIZES = [(500, 375), (375, 500), (500, 500), (500, 400), (500, 333)]
BIG_SIZE = (4000, 3000)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------- data


def synth_image(width: int, height: int, seed: int, noise: float) -> Image.Image:
    """Natural-looking enough for realistic JPEG sizes: colour fields at several scales,
    a few hard-edged shapes, slight blur, then luminance + chroma noise."""
    rng = np.random.default_rng(seed)
    acc = np.zeros((height, width, 3), np.float32)
    for cells, amp in ((3, 90.0), (12, 40.0), (48, 18.0), (150, 12.0)):
        grid = rng.normal(0, amp, (cells, max(2, cells * width // height), 3)).astype(np.float32)
        for c in range(3):
            acc[..., c] += np.asarray(Image.fromarray(grid[..., c], mode="F").resize((width, height), Image.BICUBIC))
    acc += rng.uniform(60, 190, 3).astype(np.float32)
    img = Image.fromarray(np.clip(acc, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    side = min(width, height)
    for _ in range(int(rng.integers(4, 10))):
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        r = int(rng.integers(side // 20, side // 4))
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            draw.ellipse((x - r, y - r, x + r, y + int(r * rng.uniform(0.5, 1.5))), fill=colour)
        else:
            pts = [(x + int(rng.integers(-r, r)), y + int(rng.integers(-r, r))) for _ in range(int(rng.integers(3, 6)))]
            draw.polygon(pts, fill=colour)
    img = img.filter(ImageFilter.GaussianBlur(side / 500))
    arr = np.asarray(img, dtype=np.float32)
    arr += rng.standard_normal((height, width, 1), dtype=np.float32) * noise
    arr += rng.standard_normal((height, width, 3), dtype=np.float32) * (noise / 2)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def ensure_images(folder: Path, count: int, big: bool) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    made = 0
    started = time.perf_counter()
    for i in range(count):
        path = folder / f"img{i:05d}.jpg"
        if not path.is_file():
            if big:
                img = synth_image(*BIG_SIZE, seed=1_000_000 + i, noise=6.0)
            else:
                img = synth_image(*SMALL_SIZES[i % len(SMALL_SIZES)], seed=i, noise=12.0)
            tmp = path.with_suffix(".tmp")
            img.save(tmp, format="JPEG", quality=90)
            os.replace(tmp, path)
            made += 1
            if big or made % 64 == 0:
                log(f"  generated {made} in {folder.name} ({time.perf_counter() - started:.0f}s)")
        paths.append(str(path))
    return paths


def ensure_checkpoint(path: Path) -> Path:
    if not path.is_file():
        import open_clip

        log(f"saving random-weight ViT-B-32 to {path}")
        torch.manual_seed(0)
        model = open_clip.create_model("ViT-B-32", pretrained=None)
        tmp = path.with_suffix(".tmp")
        torch.save(model.state_dict(), tmp)
        os.replace(tmp, path)
    return path


def ensure_hf_tokenizer_files(folder: Path) -> tuple[Path, Path]:
    """vocab.json / merges.txt for transformers' CLIPTokenizer, from open_clip's BPE file
    (the same construction as open_clip's SimpleTokenizer, OpenAI's special-token names)."""
    vocab_file, merges_file = folder / "clip-vocab.json", folder / "clip-merges.txt"
    if not (vocab_file.is_file() and merges_file.is_file()):
        from open_clip.tokenizer import bytes_to_unicode, default_bpe

        lines = gzip.open(default_bpe()).read().decode("utf-8").split("\n")
        merges = lines[1:49152 - 256 - 2 + 1]
        vocab = list(bytes_to_unicode().values())
        vocab += [v + "</w>" for v in vocab]
        vocab += ["".join(m.split()) for m in merges]
        vocab += ["<|startoftext|>", "<|endoftext|>"]
        vocab_file.write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}), encoding="utf-8")
        merges_file.write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return vocab_file, merges_file


def imagenet_classes(count: int) -> list[str]:
    from zeroshot.prompts import load_builtin

    classes = load_builtin("classes", "imagenet")
    if count >= len(classes):
        return list(classes)
    step = len(classes) / count
    return [classes[int(i * step)] for i in range(count)]


# ---------------------------------------------------------------------------------- helpers


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def timed(fn):
    started = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - started


def run_classify(clf, paths, batch_size, **kwargs):
    """(seconds, seconds to first prediction, predictions) of one classify_paths run."""
    started = time.perf_counter()
    first = None
    preds = []
    for pred in clf.classify_paths(paths, batch_size=batch_size, **kwargs):
        if first is None:
            first = time.perf_counter() - started
        preds.append(pred)
    total = time.perf_counter() - started
    bad = [p for p in preds if not p.ok]
    if bad:
        raise SystemExit(f"benchmark images failed to classify: {bad[0].path}: {bad[0].error}")
    return total, first, preds


def machine_info(device: torch.device) -> dict:
    import open_clip
    from PIL import features

    info = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "open_clip": open_clip.__version__,
        "pillow": Image.__version__ if hasattr(Image, "__version__") else None,
        "libjpeg_turbo": features.check_feature("libjpeg_turbo"),
        "device": str(device),
        "loadavg_start": os.getloadavg(),
    }
    from zeroshot.precision import cpu_features_line

    info["cpu_features"] = cpu_features_line()
    try:
        import PIL

        info["pillow"] = PIL.__version__
        import zeroshot

        info["zeroshot"] = zeroshot.__version__
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        pass
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return info


# ------------------------------------------------------------------------------ measurements


def tower_pixels(loaded, paths, batch_size, device) -> torch.Tensor:
    from zeroshot.data.decode import open_image
    from zeroshot.data.preprocess import Preprocessor

    pre = Preprocessor(loaded.preprocess)
    chosen = [paths[i % len(paths)] for i in range(batch_size)]
    return pre.finish(torch.stack([pre.pixels(open_image(p)) for p in chosen]), device)


def bench_towers(loaded, pixels, batches, device) -> tuple[dict, dict]:
    """The bare ``model.encode_image`` and zeroshot's ``encode_images`` (the last block computed
    for the class token only) on already-preprocessed tensors, alternating batch by batch so
    that both see the same machine. The warm-up outputs give the max difference of the two."""
    from zeroshot.encode.vision import encode_images

    forwards = {"bare": lambda: loaded.model.encode_image(pixels), "ours": lambda: encode_images(loaded, pixels)}
    seconds = {name: 0.0 for name in forwards}
    with torch.inference_mode():
        warm = {name: forward() for name, forward in forwards.items()}  # and the shortcut's self-check
        for _ in range(batches):
            for name, forward in forwards.items():
                sync(device)
                started = time.perf_counter()
                forward()
                sync(device)
                seconds[name] += time.perf_counter() - started
    reference = torch.nn.functional.normalize(warm["bare"].float(), dim=-1)
    n = batches * pixels.shape[0]
    bare, ours = ({"images": n, "seconds": seconds[k], "images_per_s": n / seconds[k]} for k in ("bare", "ours"))
    ours["max_abs_diff"] = (warm["ours"] - reference).abs().max().item()
    return bare, ours


def median_run(runs: list[dict]) -> dict:
    """The run with the median rate, plus every rate (the machine drifts; medians resist it)."""
    ordered = sorted(runs, key=lambda r: r["images_per_s"])
    pick = dict(ordered[(len(ordered) - 1) // 2])
    pick["all_images_per_s"] = [r["images_per_s"] for r in runs]
    return pick


def bench_decode(loaded, paths, draft: bool) -> dict:
    from zeroshot.data.discover import Source
    from zeroshot.data.loader import ImageDataset
    from zeroshot.data.preprocess import Preprocessor

    dataset = ImageDataset([Source(p, p) for p in paths], Preprocessor(loaded.preprocess), None, fast_decode=draft)
    dataset[0]  # warm-up (imports, first open)
    started = time.perf_counter()
    for i in range(len(dataset)):
        _, pixels, err = dataset[i]
        assert err is None, err
    seconds = time.perf_counter() - started
    return {"images": len(paths), "seconds": seconds, "images_per_s": len(paths) / seconds}


def bench_seed_loop(loaded, weights, paths, batch_size, device) -> dict:
    """What people write by hand with open_clip: everything in one process."""
    model, preprocess = loaded.model, loaded.preprocess
    started = time.perf_counter()
    with torch.inference_mode():
        for start in range(0, len(paths), batch_size):
            chunk = paths[start:start + batch_size]
            pixels = torch.stack([preprocess(Image.open(p).convert("RGB")) for p in chunk]).to(device)
            feats = model.encode_image(pixels, normalize=True)
            (model.logit_scale.exp() * feats @ weights.T.to(device)).softmax(dim=-1).cpu()
    sync(device)
    seconds = time.perf_counter() - started
    return {"images": len(paths), "seconds": seconds, "images_per_s": len(paths) / seconds}


def bench_hf(paths, batch_size, device, cache_dir: Path) -> dict:
    import transformers
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer, pipeline

    transformers.logging.set_verbosity_error()
    vocab, merges = ensure_hf_tokenizer_files(cache_dir)
    tokenizer = CLIPTokenizer(str(vocab), str(merges))
    torch.manual_seed(0)
    model = CLIPModel(CLIPConfig()).eval()
    pipe = pipeline("zero-shot-image-classification", model=model, tokenizer=tokenizer,
                    image_processor=CLIPImageProcessor(), device=device)
    pipe(paths[:2], candidate_labels=LABELS6, batch_size=2)  # warm-up
    started = time.perf_counter()
    out = pipe(paths, candidate_labels=LABELS6, batch_size=batch_size)
    sync(device)
    seconds = time.perf_counter() - started
    assert len(out) == len(paths)
    return {"images": len(paths), "seconds": seconds, "images_per_s": len(paths) / seconds,
            "params": sum(p.numel() for p in model.parameters())}


def bench_text(loaded, classes, templates, device) -> dict:
    import open_clip

    from zeroshot.encode.text import build_class_weights

    ours, ours_s = timed(lambda: build_class_weights(loaded, classes, templates, batch_size=256, cache=None))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref, ref_s = timed(lambda: open_clip.build_zero_shot_classifier(
            loaded.model, loaded.tokenizer, classes, list(templates), num_classes_per_batch=10, device=device))
    diff = (ours.to(ref.device) - ref.T).abs().max().item()
    return {"classes": len(classes), "templates": len(templates), "prompts": len(classes) * len(templates),
            "ours_seconds": ours_s, "open_clip_seconds": ref_s, "speedup": ref_s / ours_s, "max_abs_diff": diff}


def bench_cache(loaded, classes, template_set, paths, batch_size, cache_dir: Path) -> dict:
    from zeroshot import ZeroShotClassifier

    shutil.rmtree(cache_dir, ignore_errors=True)
    calls = {"n": 0}
    hook = loaded.model.transformer.register_forward_pre_hook(lambda *_: calls.__setitem__("n", calls["n"] + 1))
    original = loaded.model.encode_text

    def counting(*args, **kwargs):
        calls["n"] += 1
        return original(*args, **kwargs)

    loaded.model.encode_text = counting
    runs = {}
    try:
        for name in ("cold", "warm"):
            calls["n"] = 0
            started = time.perf_counter()
            clf = ZeroShotClassifier(classes, template_set, model=loaded, cache=cache_dir, allow_duplicate_labels=True)
            built = time.perf_counter() - started
            total, first, _ = run_classify(clf, paths, batch_size)
            runs[name] = {"weights_seconds": built, "first_result_seconds": built + first,
                          "total_seconds": built + total, "text_tower_calls": calls["n"]}
    finally:
        hook.remove()
        del loaded.model.encode_text
        shutil.rmtree(cache_dir, ignore_errors=True)
    assert runs["cold"]["text_tower_calls"] > 0, "cold run did not use the text tower?"
    assert runs["warm"]["text_tower_calls"] == 0, f"warm run called the text tower {runs['warm']['text_tower_calls']}x"
    runs["images"] = len(paths)
    runs["first_result_speedup"] = runs["cold"]["first_result_seconds"] / runs["warm"]["first_result_seconds"]
    runs["total_speedup"] = runs["cold"]["total_seconds"] / runs["warm"]["total_seconds"]
    return runs


def mem_child(spec: dict) -> None:
    """Subprocess: classify spec['paths'] x spec['repeat'] and report peak RSS figures."""
    from zeroshot import ZeroShotClassifier
    from zeroshot.data.discover import Discovery, Source
    from zeroshot.models import load_model

    loaded = load_model("ViT-B-32", spec["checkpoint"], device=spec["device"], precision="fp32")
    clf = ZeroShotClassifier(LABELS6, spec["templates"], model=loaded, cache=False)
    # A Discovery, not paths: discover() would de-duplicate the repeated files.
    found = Discovery([Source(p, p) for p in spec["paths"]] * spec["repeat"])
    before = rss_mb()
    peak = [before]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], rss_mb())
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    count = 0
    started = time.perf_counter()
    for pred in clf.classify_paths(found, batch_size=spec["batch_size"]):
        count += pred.ok
    seconds = time.perf_counter() - started
    stop.set()
    sampler.join()
    peak[0] = max(peak[0], rss_mb())
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(json.dumps({"images": count, "seconds": seconds, "rss_before_mb": before, "peak_rss_mb": peak[0],
                      "peak_growth_mb": peak[0] - before, "process_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "worker_maxrss_mb": children}))


def bench_memory(paths, repeat_factor, checkpoint, device, templates, batch_size) -> dict:
    out = {}
    for label, repeat in (("1x", 1), (f"{repeat_factor}x", repeat_factor)):
        spec = {"paths": paths, "repeat": repeat, "checkpoint": str(checkpoint), "device": str(device),
                "templates": templates, "batch_size": batch_size}
        log(f"  memory: {len(paths) * repeat} images in a fresh subprocess")
        proc = subprocess.run([sys.executable, __file__, "--_mem-child", json.dumps(spec)],
                              capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise SystemExit(f"memory subprocess failed:\n{proc.stderr[-3000:]}")
        out[label] = json.loads(proc.stdout.strip().splitlines()[-1])
    small, big = out["1x"], out[f"{repeat_factor}x"]
    out["peak_ratio"] = big["peak_rss_mb"] / small["peak_rss_mb"]
    out["growth_delta_mb"] = big["peak_growth_mb"] - small["peak_growth_mb"]
    return out


# ------------------------------------------------------------------------------------ report


def fmt_rate(r: dict) -> str:
    rates = r.get("all_images_per_s")
    spread = f" ({min(rates):.1f}-{max(rates):.1f})" if rates and len(rates) > 1 else ""
    return f"{r['images_per_s']:.1f} img/s{spread}"


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "-"


def table(res: dict, args) -> str:
    rows = [("measurement", "value (median; range)", "vs image tower", "vs reference")]
    tower = res["tower"]["images_per_s"]
    rows.append((f"image tower forward (open_clip encode_image), batch {args.batch_size} (limit)", fmt_rate(res["tower"]), "1.00x", ""))
    ours = res["tower_ours"]
    rows.append((f"zeroshot image encoder (class-token shortcut), batch {args.batch_size}", fmt_rate(ours),
                 ratio(ours["images_per_s"], tower),
                 f"same tensors; max abs diff of normalised embeddings {ours['max_abs_diff']:.1e}"))
    cs = res["classify_small"]
    refs = []
    if "hf_pipeline" in res:
        refs.append(f"{ratio(cs['images_per_s'], res['hf_pipeline']['images_per_s'])} HF pipeline")
    refs.append(f"{ratio(cs['images_per_s'], res['seed_loop']['images_per_s'])} seed-style loop")
    rows.append((f"zeroshot classify_paths, {cs['images']} ImageNet-size", fmt_rate(cs), ratio(cs["images_per_s"], tower), "; ".join(refs)))
    cb, cx = res["classify_big"], res["classify_big_exact"]
    rows.append((f"zeroshot classify_paths, {cb['images']} x 12 MP (draft decode)", fmt_rate(cb), ratio(cb["images_per_s"], tower),
                 f"{ratio(cb['images_per_s'], cx['images_per_s'])} exact decode"))
    rows.append((f"zeroshot classify_paths, {cx['images']} x 12 MP exact decode", fmt_rate(cx), ratio(cx["images_per_s"], tower), "1.00x"))
    sl = res["seed_loop"]
    rows.append((f"seed-style open_clip loop, {sl['images']} ImageNet-size", fmt_rate(sl), ratio(sl["images_per_s"], tower), "reference"))
    if "hf_pipeline" in res:
        hf = res["hf_pipeline"]
        rows.append((f"HF transformers pipeline, {hf['images']} ImageNet-size, 6 labels", fmt_rate(hf), ratio(hf["images_per_s"], tower), "reference"))
    for key, name in (("decode_small", "ImageNet-size"), ("decode_big", "12 MP draft"), ("decode_big_exact", "12 MP exact")):
        d = res[key]
        rows.append((f"decode+preprocess only, 1 process, {d['images']} {name}", fmt_rate(d), ratio(d["images_per_s"], tower), ""))
    t = res["text"]
    sub = "" if t["classes"] >= 1000 else " (subsample of 1000; --text-classes 1000 for all)"
    rows.append((f"class weights, ours: {t['classes']} classes{sub} x {t['templates']} templates", f"{t['ours_seconds']:.2f} s",
                 "", f"{t['speedup']:.2f}x faster than open_clip; max abs diff {t['max_abs_diff']:.1e}"))
    rows.append(("class weights, open_clip build_zero_shot_classifier", f"{t['open_clip_seconds']:.2f} s", "", "reference"))
    c = res["cache"]
    rows.append((f"cold classifier ({t['classes']} cls x {t['templates']} tpl): first result / total, {c['images']} img",
                 f"{c['cold']['first_result_seconds']:.2f} s / {c['cold']['total_seconds']:.2f} s", "",
                 f"text tower calls: {c['cold']['text_tower_calls']}"))
    rows.append(("warm classifier (class-weight cache hit): first result / total",
                 f"{c['warm']['first_result_seconds']:.2f} s / {c['warm']['total_seconds']:.2f} s", "",
                 f"{c['first_result_speedup']:.1f}x / {c['total_speedup']:.2f}x faster; text tower calls: 0"))
    if "memory" in res:
        m = res["memory"]
        keys = [k for k in m if k.endswith("x") and isinstance(m[k], dict)]
        for k in keys:
            r = m[k]
            rows.append((f"peak RSS while classifying {r['images']} images ({k})",
                         f"{r['peak_rss_mb']:.0f} MB", "", f"+{r['peak_growth_mb']:.0f} MB over loaded model; worker maxrss {r['worker_maxrss_mb']:.0f} MB (incl. pages shared with parent)"))
        rows.append(("peak RSS ratio (10x images / 1x)", f"{m['peak_ratio']:.3f}", "", "flat = streaming"))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["| " + " | ".join(r[i].ljust(widths[i]) for i in range(4)) + " |" for r in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


# -------------------------------------------------------------------------------------- main


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=256, help="ImageNet-size images (default 256)")
    p.add_argument("--big-images", type=int, default=16, help="12-megapixel images (default 16)")
    p.add_argument("--batch-size", type=int, default=None, help="default 32 on CPU, 256 on CUDA")
    p.add_argument("--device", default="cpu")
    p.add_argument("--templates", default="7", help="template set for class weights (7, 80, a file; default 7)")
    p.add_argument("--text-classes", type=int, default=100, help="ImageNet classes for the text benchmark (default 100; 1000 = all)")
    p.add_argument("--cache-images", type=int, default=None, help="images per cache cold/warm run (default: batch size)")
    p.add_argument("--mem-images", type=int, default=100, help="images for the 1x memory run; the other is 10x (default 100)")
    p.add_argument("--tower-batches", type=int, default=4, help="timed batches for the bare image tower (default 4)")
    p.add_argument("--repeats", type=int, default=5, help="interleaved repeats of rows (1)-(3); medians are shown (default 5)")
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run, numbers not meaningful")
    p.add_argument("--skip-hf", action="store_true", help="skip the Hugging Face pipeline")
    p.add_argument("--skip-mem", action="store_true", help="skip the peak-memory subprocesses")
    p.add_argument("--json", metavar="FILE", help="write all numbers and machine info as JSON")
    p.add_argument("--cache-dir", default=str(REPO / ".bench"), help="data/model cache (default .bench/ in the repo)")
    p.add_argument("--_mem-child", dest="mem_child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.images = min(args.images, 16)
        args.big_images = min(args.big_images, 2)
        args.batch_size = args.batch_size or 8
        args.text_classes = min(args.text_classes, 10)
        args.mem_images = min(args.mem_images, 8)
        args.tower_batches = 1
        args.repeats = 1
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.mem_child:
        mem_child(json.loads(args.mem_child))
        return 0

    from zeroshot.data.loader import default_workers
    from zeroshot.models import load_model
    from zeroshot.prompts import resolve_templates

    device = torch.device(args.device)
    args.batch_size = args.batch_size or (256 if device.type == "cuda" else 32)
    args.cache_images = args.cache_images or args.batch_size
    cache = Path(args.cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    settle_until = time.monotonic() + 90
    while os.getloadavg()[0] > 0.5 and time.monotonic() < settle_until:
        time.sleep(5)  # let a just-finished job's load decay (the 1-minute average lags)
    info = machine_info(device)
    log(f"machine: {info.get('cpu_model', info['processor'])}, {info['cpu_affinity']} cores usable, "
        f"torch {info['torch']} ({info['torch_threads']} threads), device {device}, load avg {info['loadavg_start'][0]:.2f}")
    if info["loadavg_start"][0] > 0.5:
        log("WARNING: the machine is not idle; these numbers are not final figures")

    log("data")
    small = ensure_images(cache / "imagenet-size", args.images, big=False)
    big = ensure_images(cache / "12mp", args.big_images, big=True)
    ckpt = ensure_checkpoint(cache / "vit-b-32.pt")
    sizes = {"imagenet_size_mean_kb": float(np.mean([os.path.getsize(p) for p in small]) / 1024),
             "12mp_mean_kb": float(np.mean([os.path.getsize(p) for p in big]) / 1024)}

    loaded = load_model("ViT-B-32", str(ckpt), device=device, precision="fp32")
    template_set = resolve_templates(args.templates)
    res: dict = {"args": {k: v for k, v in vars(args).items() if k != "mem_child"}, "machine": info, "data": sizes,
                 "workers": default_workers(device)}

    from zeroshot import ZeroShotClassifier

    clf, res["weights6_seconds"] = timed(lambda: ZeroShotClassifier(LABELS6, template_set, model=loaded, cache=False))
    pixels = tower_pixels(loaded, small, args.batch_size, device)
    runs: dict[str, list] = {"tower": [], "tower_ours": [], "classify_small": [], "seed_loop": [], "hf_pipeline": []}
    # Interleaved repeats: on a shared or throttling machine the speed drifts by 10-20% within
    # minutes; every row gets a sample in every repeat and the table shows medians.
    for rep in range(args.repeats):
        log(f"repeat {rep + 1}/{args.repeats}: (1) bare image tower {args.tower_batches} x {args.batch_size}, "
            f"(2) classify_paths {len(small)} ImageNet-size ({res['workers']} worker(s)), seed loop"
            f"{'' if args.skip_hf else ', (3) Hugging Face pipeline'}")
        bare, ours = bench_towers(loaded, pixels, args.tower_batches, device)
        runs["tower"].append(bare)
        runs["tower_ours"].append(ours)
        total, first, _ = run_classify(clf, small, args.batch_size)
        runs["classify_small"].append({"images": len(small), "seconds": total, "first_result_seconds": first,
                                       "images_per_s": len(small) / total})
        runs["seed_loop"].append(bench_seed_loop(loaded, clf.class_weights, small, args.batch_size, device))
        if not args.skip_hf:
            runs["hf_pipeline"].append(bench_hf(small, args.batch_size, device, cache))
    for key, values in runs.items():
        if values:
            res[key] = median_run(values)
    res["tower_ours"]["max_abs_diff"] = max(r["max_abs_diff"] for r in runs["tower_ours"])
    res["ratios"] = {
        "classify_vs_tower": res["classify_small"]["images_per_s"] / res["tower"]["images_per_s"],
        "classify_vs_tower_per_repeat": [c["images_per_s"] / t["images_per_s"] for c, t in zip(runs["classify_small"], runs["tower"])],
        "classify_vs_seed_loop": res["classify_small"]["images_per_s"] / res["seed_loop"]["images_per_s"],
    }
    if "hf_pipeline" in res:
        res["ratios"]["classify_vs_hf"] = res["classify_small"]["images_per_s"] / res["hf_pipeline"]["images_per_s"]

    log(f"(2) classify_paths: {len(big)} x 12 MP (draft, exact)")
    for key, paths, exact in (("classify_big", big, False), ("classify_big_exact", big, True)):
        total, first, _ = run_classify(clf, paths, args.batch_size, fast_decode=not exact)
        res[key] = {"images": len(paths), "seconds": total, "first_result_seconds": first, "images_per_s": len(paths) / total}

    log("    decode+preprocess only (1 process)")
    res["decode_small"] = bench_decode(loaded, small[: max(8, min(len(small), 64))], draft=True)
    res["decode_big"] = bench_decode(loaded, big, draft=True)
    res["decode_big_exact"] = bench_decode(loaded, big, draft=False)

    classes = imagenet_classes(args.text_classes)
    log(f"(4) class weights: {len(classes)} classes x {len(template_set)} templates, ours vs open_clip")
    res["text"] = bench_text(loaded, classes, template_set.templates, device)

    log(f"(5) class-weight cache cold vs warm, {args.cache_images} images")
    cache_paths = [small[i % len(small)] for i in range(args.cache_images)]
    res["cache"] = bench_cache(loaded, classes, template_set, cache_paths, args.batch_size, cache / f"cw-cache-{os.getpid()}")

    if not args.skip_mem:
        log(f"(6) peak memory: {args.mem_images} vs {10 * args.mem_images} images")
        mem_paths = [small[i % len(small)] for i in range(args.mem_images)]
        res["memory"] = bench_memory(mem_paths, 10, ckpt, device, args.templates, args.batch_size)

    res["machine"]["loadavg_end"] = os.getloadavg()
    print()
    print(f"zeroshot benchmark: ViT-B-32 fp32 on {device} ({info.get('gpu') or info.get('cpu_model', '')}, "
          f"{info['cpu_affinity']} cores, torch {info['torch']}, {info['torch_threads']} threads), batch {args.batch_size}, "
          f"{res['workers']} decode worker(s); JPEGs ~{sizes['imagenet_size_mean_kb']:.0f} KB / ~{sizes['12mp_mean_kb'] / 1024:.1f} MB"
          f"{'; QUICK smoke run (numbers not meaningful)' if args.quick else ''}")
    print(f"load average start {info['loadavg_start'][0]:.2f}, end {res['machine']['loadavg_end'][0]:.2f}; {info['cpu_features']}")
    print()
    print(table(res, args))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2, default=str) + "\n", encoding="utf-8")
        log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
