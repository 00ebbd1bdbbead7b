"""``--runtime compile`` (``torch.compile``) against eager torch for the image tower (issue #15).

    PYTHONPATH=$PWD python benchmarks/compile.py                     # ViT-B-32, CPU, fp32
    PYTHONPATH=$PWD python benchmarks/compile.py --device cuda --precision fp16 --batch 256

Both towers are loaded through ``zeroshot.load_model`` (random ViT-B-32 weights: speed does not
depend on their values) and run through the library's own ``encode_images`` on the same
preprocessed batch: eager (``--runtime torch``) and compiled (``--runtime compile``). The first
compiled call (the compilation) is timed on its own; then ``--repeats`` interleaved pairs, medians
and ranges, images per second, the ratio, the largest difference between the two embeddings
(1 - min cosine) and the machine's load average.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="ViT-B-32")
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="fp32")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)

    import torch

    from zeroshot.encode.vision import encode_images
    from zeroshot.models import load_model

    torch.manual_seed(0)
    eager = load_model(args.model, None, device=args.device, precision=args.precision, runtime="torch")
    compiled = load_model(args.model, None, device=args.device, precision=args.precision, runtime="compile")
    compiled.model.load_state_dict(eager.model.state_dict())  # the same random weights
    if compiled.reduced is not None:
        compiled.reduced.load_state_dict(eager.reduced.state_dict())
    size = eager.model.visual.image_size
    size = size if isinstance(size, int) else size[0]
    x = torch.rand(args.batch, 3, size, size, generator=torch.Generator().manual_seed(1))

    def timed(loaded):
        if loaded.device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = encode_images(loaded, x, shortcut=False)
        if loaded.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start, out

    encode_images(eager, x, shortcut=False)  # warm-up
    first, _ = timed(compiled)
    print(f"compilation (first compiled batch): {first:.1f} s", flush=True)
    eager_s, compiled_s = [], []
    for _ in range(args.repeats):
        seconds, a = timed(eager)
        eager_s.append(seconds)
        seconds, b = timed(compiled)
        compiled_s.append(seconds)
    worst = float(1 - torch.nn.functional.cosine_similarity(a.float(), b.float()).min())
    e, c = statistics.median(eager_s), statistics.median(compiled_s)
    print(f"{args.model} {args.device} {args.precision} batch {args.batch}, {args.repeats} interleaved repeats, "
          f"load {os.getloadavg()[0]:.1f}, torch {torch.__version__}")
    print(f"eager    {args.batch / e:8.1f} img/s  (median {e:.3f} s, {min(eager_s):.3f}-{max(eager_s):.3f})")
    print(f"compiled {args.batch / c:8.1f} img/s  (median {c:.3f} s, {min(compiled_s):.3f}-{max(compiled_s):.3f})")
    print(f"compiled / eager: {e / c:.2f}x; 1 - min cosine {worst:.2e}")
    print("command: PYTHONPATH=$PWD python benchmarks/compile.py " + " ".join(argv or sys.argv[1:]))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    raise SystemExit(main())
