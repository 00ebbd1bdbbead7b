"""Proof that training learns: ``zeroshot finetune`` trains a tiny CLIP from random weights on
coloured shapes, and ``zeroshot eval`` scores it on colour-shape pairs it never saw.

    PYTHONPATH=$PWD python benchmarks/compositional.py --out /tmp/shapes-model.safetensors

Data (``benchmarks/shapes.py``): 6 colours x 6 shapes = 36 colour-shape pairs. 24 pairs appear in
training images; 6 "val" pairs and 6 "test" pairs never do (two Latin-square diagonals, so every
colour and every shape is still seen with four partners). The script writes, under ``--work``:

- ``train.csv`` (``path,caption``), the caption manifest ``zeroshot finetune`` trains on
  (default 8000 images): 30% one object, full caption ("a photo of a red circle."); 30% two
  objects ("a photo of a red circle and a blue square."); 20% colour-only ("a photo of a red
  object.", drawn as an unnamed random blob) and 20% shape-only ("a photo of a circle.", drawn
  in a random unnamed colour). The attribute captions on unnamed partners are what makes the
  never-seen pairs work: each attribute is learned apart from the other.
- ``val.csv`` (``path,label``) with ``classes.txt`` (all 36 pairs), the held-out set scored
  after every epoch among all 36 pairs: new images of the trained pairs and images of the val
  pairs, never of the test pairs.

Training is ``zeroshot.train.finetune`` (the library behind ``zeroshot finetune``): the CLIP loss
with repeated captions as positives, AdamW, warm-up then cosine, temperature clamped at 100. The
curve (loss, trained-pairs and val-pairs top-1 per epoch) is printed as it goes. The kept epoch is
the best val-pairs top-1 among the epochs whose trained-pairs top-1 reaches ``--min-trained``
(``zeroshot.train.best_of_among``; the last epoch when none does): selection never sees a test
pair. The kept model is scored once with ``zeroshot eval`` (library API, a folder data set with
all 36 pairs as classes, prompt "a photo of a {}.") on new images of the trained pairs and of the
test pairs; the figures go into the weights' sidecar (``training.benchmark``).
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import shapes  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "tests" / "model_configs"
TEMPLATES = "photo"  # "a photo of a {}.", the form of the training captions
MIX = "full:1:0.3,colour:1:0.2,shape:1:0.2,full:2:0.3"  # the default recipe (see shapes.captioned_scenes)


def write_images(folder: Path, scenes) -> list[str]:
    """Save scene images as ``folder/NNNNN.png``; their paths relative to ``folder.parent``."""
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i, scene in enumerate(scenes):
        scene.image.save(folder / f"{i:05d}.png")
        names.append(f"{folder.name}/{i:05d}.png")
    return names


def write_csv(path: Path, header: tuple[str, str], rows) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def make_data(work: Path, args, split: shapes.PairSplit) -> dict[str, Path]:
    """The training caption manifest, the validation manifest and the 36 class names."""
    mix = parse_mix(args.mix)
    train = shapes.captioned_scenes(args.seed, args.train_size, split.train, mix=mix)
    names = write_images(work / "train", [s for s, _ in train])
    held = shapes.labelled_scenes(args.seed + 1, split.train, args.val_trained) + \
        shapes.labelled_scenes(args.seed + 2, split.val, args.val_pairs)
    val_names = write_images(work / "val", [s for s, _ in held])
    classes = work / "classes.txt"
    classes.write_text("".join(f"{shapes.label(p)},{shapes.label(p)}\n" for p in shapes.all_pairs()))
    return {
        "train": write_csv(work / "train.csv", ("path", "caption"), zip(names, [c for _, c in train])),
        "val": write_csv(work / "val.csv", ("path", "label"), zip(val_names, [shapes.label(p) for _, p in held])),
        "classes": classes,
        "distinct_captions": len({c for _, c in train}),
    }


def parse_mix(text: str) -> tuple[tuple[str, int, float], ...]:
    """``"full:1:0.3,one:2:0.2"`` -> ((kind, objects, share), ...) for ``shapes.captioned_scenes``."""
    mix = []
    for part in text.split(","):
        kind, objects, share = part.split(":")
        if kind not in shapes.CAPTION_KINDS:
            raise SystemExit(f"--mix: unknown kind {kind!r} (one of {', '.join(shapes.CAPTION_KINDS)})")
        mix.append((kind, int(objects), float(share)))
    return tuple(mix)


def settings_of(args):
    from zeroshot.train import FinetuneSettings

    return FinetuneSettings(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.wd,
                            warmup=args.warmup, seed=args.seed, augment=args.augment, patience=args.patience,
                            checkpoint_every=0)


def train(args) -> dict:
    from zeroshot.models import load_model, register_model_configs
    from zeroshot.train import Hooks, best_of_among, finetune, load_training_data

    torch.set_num_threads(args.threads)
    register_model_configs(str(args.configs))
    split = shapes.split_pairs()
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp()) / "shapes-model.safetensors"
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="compositional-"))
    t0 = time.perf_counter()
    data = make_data(work, args, split)
    train_pairs = load_training_data(data["train"])
    val = load_training_data(data["val"], TEMPLATES, data["classes"])
    print(f"data in {work}: {len(train_pairs)} training images, {data['distinct_captions']} distinct captions, "
          f"{len(val)} validation images; {len(split.train)} trained / {len(split.val)} val / {len(split.test)} test "
          f"pairs ({time.perf_counter() - t0:.1f} s)", flush=True)

    torch.manual_seed(args.seed)  # the random initial weights
    loaded = load_model(args.arch, None, device="cpu", precision="fp32")
    trained = [shapes.label(p) for p in split.train]
    val_labels = [shapes.label(p) for p in split.val]
    select = best_of_among(val_labels, trained, args.min_trained)
    curve = []

    def on_epoch(stats) -> None:
        row = {"epoch": stats.epoch, "loss": stats.loss, "trained": stats.group_accuracy(trained),
               "val": stats.group_accuracy(val_labels), "seconds": stats.seconds,
               "elapsed": time.perf_counter() - started}
        curve.append(row)
        mark = "  (eligible)" if stats.score is not None else ""
        print(f"{row['epoch']:>5} {row['loss']:>7.3f} {row['trained']:>8.1%} {row['val']:>6.1%} "
              f"{row['elapsed']:>6.0f}s{mark}", flush=True)

    print(f"{'epoch':>5} {'loss':>7} {'trained':>8} {'val':>6} {'time':>7}", flush=True)
    started = time.perf_counter()
    result = finetune(loaded, train_pairs, out, settings_of(args), val=val, hooks=Hooks(on_epoch=on_epoch),
                      select=select)
    seconds = time.perf_counter() - started
    chosen = next(r for r in curve if r["epoch"] == result.best_epoch)
    if result.best_accuracy is None:
        print(f"no epoch reached {args.min_trained:.0%} on trained pairs: the last epoch was saved", flush=True)
    summary = {"kept_epoch": result.best_epoch, "selected": result.best_accuracy is not None,
               "val_trained_top1": chosen["trained"], "val_pairs_top1": chosen["val"], "train_s": seconds,
               "epochs_run": len(curve), "threads": args.threads}
    summary.update(score_with_zeroshot_eval(out, split, args.seed))
    summary["test_x_chance"] = summary["test_pairs_top1"] / summary["chance"]
    record(out, args, summary, curve)
    print(f"kept epoch {summary['kept_epoch']} (training {seconds:.0f} s); zeroshot eval among all 36 pairs: "
          f"trained pairs (new images) {summary['trained_pairs_top1']:.1%}, never-seen test pairs "
          f"{summary['test_pairs_top1']:.1%} = {summary['test_x_chance']:.1f}x chance (1/36)", flush=True)
    print(f"wrote {out} and {out}.json", flush=True)
    return summary


def score_with_zeroshot_eval(out: Path, split: shapes.PairSplit, seed: int) -> dict:
    """Score the saved model with ``zeroshot eval folder`` (library API): new images, every pair
    a class; ``--model`` comes from the file's sidecar."""
    from zeroshot.data.datasets import folder_dataset
    from zeroshot.models import load_model
    from zeroshot.tasks.evaluate import evaluate

    loaded = load_model(None, str(out), device="cpu", precision="fp32")
    scores = {}
    with tempfile.TemporaryDirectory() as tmp:
        classnames = Path(tmp) / "classnames.txt"
        classnames.write_text("".join(f"{shapes.label(p)},{shapes.label(p)}\n" for p in shapes.all_pairs()))
        for name, offset, chosen, per_pair in (("trained_pairs_top1", 3, split.train, 20),
                                               ("test_pairs_top1", 4, split.test, 50)):
            root = shapes.write_class_folders(Path(tmp) / name, shapes.labelled_scenes(seed + offset, chosen, per_pair))
            result = evaluate(loaded, folder_dataset(root, classnames), [TEMPLATES], cache=False)
            scores[name] = result.results[0].acc1
    return {**scores, "chance": 1 / len(shapes.all_pairs())}


def record(out: Path, args, summary: dict, curve: list[dict]) -> None:
    """The benchmark's figures and command into the sidecar (``training.benchmark``); float16
    weights with ``--fp16`` (the test fixture: half the size)."""
    from safetensors.torch import load_file

    from zeroshot.checkpoints import read_sidecar
    from zeroshot.train.checkpoint import write_weights

    sidecar = read_sidecar(out)
    sidecar["training"]["benchmark"] = {"script": "benchmarks/compositional.py", "args": sys.argv[1:], **summary,
                                        "curve": curve}
    state = load_file(str(out))
    if args.fp16:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    write_weights(out, state, sidecar)


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="zs-shapes")
    p.add_argument("--configs", type=Path, default=CONFIGS, help="folder of open_clip model configs to register")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-size", type=int, default=8000)
    p.add_argument("--val-trained", type=int, default=10, help="validation images per trained pair")
    p.add_argument("--val-pairs", type=int, default=30, help="validation images per val pair")
    p.add_argument("--epochs", type=int, default=48)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--wd", type=float, default=0.1)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--augment", action=argparse.BooleanOptionalAction, default=False,
                   help="finetune's random resized crop (off: the images as drawn)")
    p.add_argument("--patience", type=int, default=None, help="stop after N eligible epochs without a better val score")
    p.add_argument("--mix", default=MIX, help="training scenes: KIND:OBJECTS:SHARE,... (kinds: full, colour, "
                   "shape, one, background; see shapes.captioned_scenes)")
    p.add_argument("--min-trained", type=float, default=0.9)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--fp16", action="store_true", help="save float16 weights (the test fixture)")
    p.add_argument("--work", help="folder for the generated images and manifests (default: a new temporary one)")
    p.add_argument("--out", help="the kept model: OUT.safetensors + OUT.safetensors.json")
    args = p.parse_args(argv)
    if args.out and not args.out.endswith(".safetensors"):
        args.out += ".safetensors"
    return args


if __name__ == "__main__":
    train(parse())
