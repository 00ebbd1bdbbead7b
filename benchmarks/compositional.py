"""Proof that training learns: a tiny CLIP trained from random weights on coloured shapes.

    PYTHONPATH=$PWD python benchmarks/compositional.py --out /tmp/shapes-model

Data (``benchmarks/shapes.py``): 6 colours x 6 shapes = 36 colour-shape pairs. 24 pairs appear in
training images; 6 "val" pairs and 6 "test" pairs never do (two Latin-square diagonals, so every
colour and every shape is still seen with four partners). Training captions (8000 images):
30% one object, full caption ("a photo of a red circle."); 30% two objects ("a photo of a red
circle and a blue square."); 20% colour-only ("a photo of a red object.", drawn as an unnamed
random blob) and 20% shape-only ("a photo of a circle.", drawn in a random unnamed colour). The
attribute captions on unnamed partners are what makes the never-seen pairs work: each attribute
is learned apart from the other.

Loss: the CLIP loss with multi-positive targets (equal captions in a batch are all positives),
AdamW, warm-up then cosine. Every epoch prints the loss and zero-shot top-1 (prompt "a photo of
a {}.", all 36 pairs as classes, chance 1/36) on new images of the trained pairs and of the val
pairs. The kept epoch is the best val-pairs top-1 among epochs whose trained-pairs top-1 is >= 90%
(else the last epoch); selection never sees the test pairs. The kept model is saved (safetensors
+ ``zeroshot finetune``'s sidecar) and scored once with ``zeroshot eval`` (library API, folder data
set with all 36 pairs as classes) on new images: trained pairs and test pairs.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import shapes  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "tests" / "model_configs" / "zs-shapes.json"
TEMPLATE = "a photo of a {}."


def create_model(arch: str, config: Path, seed: int):
    import open_clip

    open_clip.add_model_config(str(config))
    torch.manual_seed(seed)
    model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=None)
    return model, preprocess, open_clip.get_tokenizer(arch)


def pixels(preprocess, images) -> torch.Tensor:
    return torch.stack([preprocess(im) for im in images])


def clip_loss(img: torch.Tensor, txt: torch.Tensor, scale: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Symmetric CLIP loss where every text equal to an image's caption is a positive."""
    logits = scale * img @ txt.T
    pos = (ids[:, None] == ids[None, :]).float()
    target = pos / pos.sum(1, keepdim=True)
    return (-(target * logits.log_softmax(1)).sum(1).mean() - (target * logits.log_softmax(0)).sum(0).mean()) / 2


@torch.no_grad()
def class_weights(model, tokenizer, labels: list[str]) -> torch.Tensor:
    return F.normalize(model.encode_text(tokenizer([TEMPLATE.format(x) for x in labels])), dim=-1)


@torch.no_grad()
def top1(model, weights: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> float:
    feats = torch.cat([F.normalize(model.encode_image(b), dim=-1) for b in x.split(512)])
    return (feats @ weights.T).argmax(1).eq(y).float().mean().item()


def scored_set(preprocess, seed: int, pairs, per_pair: int, index: dict) -> tuple[torch.Tensor, torch.Tensor]:
    scenes = shapes.labelled_scenes(seed, pairs, per_pair)
    return pixels(preprocess, [s.image for s, _ in scenes]), torch.tensor([index[p] for _, p in scenes])


def lr_at(step: int, total: int, warmup: int, base: float) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    return base * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def train(args) -> dict:
    torch.set_num_threads(args.threads)
    split = shapes.split_pairs()
    pairs = shapes.all_pairs()
    labels = [shapes.label(p) for p in pairs]
    index = {p: i for i, p in enumerate(pairs)}
    model, preprocess, tokenizer = create_model(args.arch, args.config, args.seed)

    t0 = time.time()
    mix = (("full", 1, args.full), ("colour", 1, args.attr), ("shape", 1, args.attr), ("full", 2, args.two))
    data = shapes.captioned_scenes(args.seed, args.train_size, split.train, mix=mix)
    x_train = pixels(preprocess, [s.image for s, _ in data])
    captions = [c for _, c in data]
    vocab = {c: i for i, c in enumerate(sorted(set(captions)))}
    cap_ids = torch.tensor([vocab[c] for c in captions])
    tokens = tokenizer(captions)
    x_seen, y_seen = scored_set(preprocess, args.seed + 1, split.train, 10, index)
    x_val, y_val = scored_set(preprocess, args.seed + 2, split.val, 30, index)
    print(f"data: {len(data)} training images, {len(vocab)} distinct captions, "
          f"{len(split.train)} trained / {len(split.val)} val / {len(split.test)} test pairs "
          f"({time.time() - t0:.1f} s)", flush=True)

    opt = torch.optim.AdamW([
        {"params": [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n],
         "weight_decay": args.wd},
        {"params": [p for n, p in model.named_parameters() if p.ndim < 2 or "embedding" in n], "weight_decay": 0.0},
    ], lr=args.lr, betas=(0.9, 0.98), eps=1e-6)
    steps_per_epoch = len(data) // args.batch_size
    total = steps_per_epoch * args.epochs
    gen = torch.Generator().manual_seed(args.seed)
    best = {"val": -1.0, "epoch": 0, "state": None}
    curve = []
    step = 0
    print(f"{'epoch':>5} {'loss':>7} {'trained':>8} {'val':>6} {'time':>6}", flush=True)
    for epoch in range(1, args.epochs + 1):
        model.train()
        order = torch.randperm(len(data), generator=gen)
        losses = []
        for b in range(steps_per_epoch):
            idx = order[b * args.batch_size:(b + 1) * args.batch_size]
            for group in opt.param_groups:
                group["lr"] = lr_at(step, total, args.warmup, args.lr)
            img = F.normalize(model.encode_image(x_train[idx]), dim=-1)
            txt = F.normalize(model.encode_text(tokens[idx]), dim=-1)
            loss = clip_loss(img, txt, model.logit_scale.exp().clamp(max=100), cap_ids[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))
            losses.append(loss.item())
            step += 1
        model.eval()
        weights = class_weights(model, tokenizer, labels)
        seen, val = top1(model, weights, x_seen, y_seen), top1(model, weights, x_val, y_val)
        row = {"epoch": epoch, "loss": sum(losses) / len(losses), "trained": seen, "val": val,
               "time": time.time() - t0}
        curve.append(row)
        kept = seen >= args.min_trained and val > best["val"]
        if kept:
            best = {"val": val, "epoch": epoch, "state": {k: v.clone() for k, v in model.state_dict().items()}}
        print(f"{epoch:>5} {row['loss']:>7.3f} {seen:>8.1%} {val:>6.1%} {row['time']:>5.0f}s"
              + ("  *" if kept else ""), flush=True)
    if best["state"] is None:
        print(f"no epoch reached {args.min_trained:.0%} on trained pairs; keeping the last", flush=True)
        best = {"val": curve[-1]["val"], "epoch": curve[-1]["epoch"], "state": model.state_dict()}
    model.load_state_dict(best["state"])
    result = {"kept_epoch": best["epoch"], "val_pairs_top1": best["val"], "train_s": time.time() - t0, "curve": curve}
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp()) / "shapes-model"
    save(model, args, result, out)
    result.update(score_with_zeroshot_eval(args, out, split, pairs))
    result["test_x_chance"] = result["test_pairs_top1"] / result["chance"]
    print(f"kept epoch {result['kept_epoch']} (training {result['train_s']:.0f} s); zeroshot eval among all "
          f"{len(pairs)} pairs: trained pairs (new images) {result['trained_pairs_top1']:.1%}, never-seen test pairs "
          f"{result['test_pairs_top1']:.1%} = {result['test_x_chance']:.1f}x chance (1/{len(pairs)})", flush=True)
    save(model, args, result, out)
    return result


def score_with_zeroshot_eval(args, out: Path, split: shapes.PairSplit, pairs) -> dict:
    """Score the kept model with ``zeroshot eval folder`` (library API): new images, every pair a class."""
    from zeroshot.data.datasets import folder_dataset
    from zeroshot.models import load_model
    from zeroshot.tasks.evaluate import evaluate

    loaded = load_model(args.arch, str(out.with_suffix(".safetensors")), device="cpu", precision="fp32")
    scores = {}
    with tempfile.TemporaryDirectory() as tmp:
        classnames = Path(tmp) / "classnames.txt"
        classnames.write_text("".join(f"{shapes.label(p)},{shapes.label(p)}\n" for p in pairs))
        for name, seed, chosen, per_pair in (("trained_pairs_top1", args.seed + 3, split.train, 20),
                                             ("test_pairs_top1", args.seed + 4, split.test, 50)):
            root = shapes.write_class_folders(Path(tmp) / name, shapes.labelled_scenes(seed, chosen, per_pair))
            result = evaluate(loaded, folder_dataset(root, classnames), ["photo"], cache=False)
            scores[name] = result.results[0].acc1
    return {**scores, "chance": 1 / len(pairs)}


def sidecar(model, arch: str, config: Path, result: dict) -> dict:
    """The JSON beside the weights, in ``zeroshot finetune``'s format (``zeroshot-weights/1``): the
    architecture name and its full open_clip config, so the file loads without registering it."""
    from open_clip.model import get_model_preprocess_cfg

    preprocess = {k: list(v) if isinstance(v, tuple) else v for k, v in get_model_preprocess_cfg(model).items()}
    return {"format": "zeroshot-weights/1", "architecture": arch, "model_config": json.loads(config.read_text()),
            "preprocess": preprocess,
            "training": {"script": "benchmarks/compositional.py", **{k: v for k, v in result.items() if k != "curve"}}}


def save(model, args, result: dict, out: Path) -> None:
    """``OUT.safetensors`` and its sidecar ``OUT.safetensors.json``."""
    from safetensors.torch import save_file

    out.parent.mkdir(parents=True, exist_ok=True)
    weights = out.with_suffix(".safetensors")
    dtype = torch.float16 if args.fp16 else torch.float32
    save_file({k: v.detach().to(dtype).contiguous() for k, v in model.state_dict().items()}, str(weights),
              metadata={"format": "pt", "zeroshot": "zeroshot-weights/1"})
    Path(str(weights) + ".json").write_text(json.dumps(sidecar(model, args.arch, args.config, result), indent=2) + "\n")
    if "test_pairs_top1" in result:
        print(f"wrote {weights} and {weights}.json", flush=True)


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="zs-shapes")
    p.add_argument("--config", type=Path, default=CONFIG)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-size", type=int, default=8000)
    p.add_argument("--epochs", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--wd", type=float, default=0.1)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--full", type=float, default=0.3, help="share of one-object full captions")
    p.add_argument("--attr", type=float, default=0.2, help="share of colour-only and of shape-only captions")
    p.add_argument("--two", type=float, default=0.3, help="share of two-object scenes")
    p.add_argument("--min-trained", type=float, default=0.9)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--fp16", action="store_true", help="save float16 weights (the test fixture)")
    p.add_argument("--out", help="write OUT.safetensors + OUT.safetensors.json (the kept epoch)")
    return p.parse_args(argv)


if __name__ == "__main__":
    train(parse())
