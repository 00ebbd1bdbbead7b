"""Few-shot heads vs zero-shot on the coloured-shapes set: a run of ``zeroshot eval --shots``.

    PYTHONPATH=$PWD python benchmarks/fewshot_shapes.py tests/fixtures/shapes-tiny.safetensors

Writes a ``folder`` data set of new images (``benchmarks/shapes.py``, one object each): every one
of the 36 colour-shape pairs is a class (chance 1/36), ``--per-pair`` images each, trained pairs
and pairs the model never saw in training alike. Then runs, in a subprocess, exactly

    zeroshot eval folder DIR --classnames DIR/classes.txt -p MODEL -t photo -d cpu \\
        --shots 1,2,4,8,16 -o DIR/results.json [--reg ...]

and prints its table. ``eval --shots`` protocol: per class a seeded pool of 16 images is set aside
(never scored); the k-shot head (``zeroshot fewshot``'s: started from the zero-shot weights and
pulled toward them, the pull chosen by ``--reg auto`` on the k shots alone) is fitted on the first
k of the pool, and zero-shot and every k are scored on the same remaining images.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import shapes  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def write_dataset(root: Path, seed: int, per_pair: int) -> tuple[Path, Path]:
    folder = shapes.write_class_folders(root / "images", shapes.labelled_scenes(seed, shapes.all_pairs(), per_pair))
    classes = root / "classes.txt"
    classes.write_text("".join(f"{shapes.label(p)},{shapes.label(p)}\n" for p in shapes.all_pairs()))
    return folder, classes


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="a trained shapes model (.safetensors with its sidecar)")
    p.add_argument("--seed", type=int, default=100, help="seed of the generated images")
    p.add_argument("--per-pair", type=int, default=46, help="images per pair: 16 go to the pool, the rest are scored")
    p.add_argument("--shots", default="1,2,4,8,16")
    p.add_argument("--reg", default=None, help="passed to eval --reg (default: eval's)")
    p.add_argument("--work", help="folder for the data set and results.json (default: a temporary one)")
    args = p.parse_args(argv)

    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="fewshot-shapes-"))
    folder, classes = write_dataset(work, args.seed, args.per_pair)
    results = work / "results.json"
    command = [sys.executable, "-m", "zeroshot", "eval", "folder", str(folder), "--classnames", str(classes),
               "-p", args.model, "-t", "photo", "-d", "cpu", "--no-cache", "--shots", args.shots, "-o", str(results)]
    if args.reg is not None:
        command += ["--reg", args.reg]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    print("$ zeroshot " + " ".join(command[3:]), flush=True)
    subprocess.run(command, check=True, env=env)
    body = json.loads(results.read_text())
    print(f"\n{'shots':>5} {'zero-shot':>10} {'few-shot':>9} {'gain':>7}   (36 classes, chance 2.8%)")
    for row in body["fewshot"]["results"]:
        gain = row["few_shot_top1"] - row["zero_shot_top1"]
        print(f"{row['shots']:>5} {row['zero_shot_top1']:>10.1%} {row['few_shot_top1']:>9.1%} {100 * gain:>+6.1f}pp")
    return body["fewshot"]


if __name__ == "__main__":
    main()
