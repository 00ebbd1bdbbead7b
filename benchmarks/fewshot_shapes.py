"""Few-shot heads vs zero-shot on the coloured-shapes set, with the trained tiny model.

    PYTHONPATH=$PWD python benchmarks/fewshot_shapes.py tests/fixtures/shapes-tiny.safetensors

Every one of the 36 colour-shape pairs is a class (chance 1/36). For k in (0, 1, 4, 16) shots per
class, a head is fitted on k new images per class and scored on 30 other new images per class,
reported separately for the trained pairs and for the pairs the model never saw in training.
k = 0 is zero-shot (prompt "a photo of a {}."). The head is a MINIMAL STAND-IN written here, not
``zeroshot fewshot`` (not on main yet), with that command's objective: full-batch L-BFGS from the
zero-shot weights ``W = W_zs, b = 0`` on ``mean CE(exp(t) x W^T + b, y) + reg (|W - W_zs|^2 + |b|^2)``.
Images are embedded with the library's one embedding loop (``zeroshot.encode.embed.embed_images``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import shapes  # noqa: E402


def embed(loaded, images) -> np.ndarray:
    from zeroshot.encode.embed import EmbedSettings, embed_images

    parts = [b.embeddings for b in embed_images(loaded, images, EmbedSettings(batch_size=256, workers=0))]
    return torch.cat(parts).numpy()


def fit_head(x: torch.Tensor, y: torch.Tensor, w_zs: torch.Tensor, scale: float, reg: float):
    """Logistic regression on embeddings ``x``, started from and pulled toward ``w_zs``."""
    w = w_zs.clone().requires_grad_(True)
    b = torch.zeros(len(w_zs), requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1, max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(scale * x @ w.T + b, y) + reg * ((w - w_zs).pow(2).sum() + b.pow(2).sum())
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), b.detach()


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint")
    p.add_argument("--arch", default="zs-shapes")
    p.add_argument("--seed", type=int, default=100)
    p.add_argument("--test-per-pair", type=int, default=30)
    p.add_argument("--reg", type=float, default=0.03)
    args = p.parse_args(argv)
    torch.set_num_threads(1)

    from zeroshot.encode.text import build_class_weights
    from zeroshot.models import load_model, register_model_configs

    register_model_configs(str(Path(__file__).resolve().parents[1] / "tests" / "model_configs"))
    loaded = load_model(args.arch, args.checkpoint, device="cpu", precision="fp32")
    pairs, split = shapes.all_pairs(), shapes.split_pairs()
    labels = [shapes.label(q) for q in pairs]
    weights = build_class_weights(loaded, labels, "photo")
    scale = float(loaded.logit_scale)

    shots = shapes.labelled_scenes(args.seed, pairs, 16)
    tests = shapes.labelled_scenes(args.seed + 1, pairs, args.test_per_pair)
    x_shots, x_test = embed(loaded, [s.image for s, _ in shots]), embed(loaded, [s.image for s, _ in tests])
    y_shots = torch.tensor([pairs.index(q) for _, q in shots])
    y_test = np.array([pairs.index(q) for _, q in tests])
    seen = np.array([q in split.train for _, q in tests])
    x_test_t = torch.from_numpy(x_test)

    def report(name: str, predicted: np.ndarray) -> None:
        right = predicted == y_test
        print(f"{name:>10} {right.mean():>8.1%} {right[seen].mean():>9.1%} {right[~seen].mean():>9.1%}", flush=True)

    print(f"{'shots':>10} {'all 36':>8} {'trained':>9} {'unseen':>9}   (chance {1 / len(pairs):.1%})")
    report("zero-shot", (x_test_t @ weights.T).argmax(1).numpy())
    for k in (1, 4, 16):
        take = torch.cat([torch.nonzero(y_shots == c).flatten()[:k] for c in range(len(pairs))])
        w, b = fit_head(torch.from_numpy(x_shots)[take], y_shots[take], weights, scale, args.reg)
        report(f"{k}-shot", (scale * x_test_t @ w.T + b).argmax(1).numpy())


if __name__ == "__main__":
    main()
