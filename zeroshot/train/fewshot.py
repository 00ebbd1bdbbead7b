"""Few-shot linear heads: from a handful of labelled images per class, fit a logistic-regression
head on the image embeddings, initialised from and pulled toward the zero-shot class weights.

    head = fit_head(loaded, load_dataset("folder", "few/"), templates="openai-7", reg=0.1)
    save_head(head, "head.safetensors")           # classify --head head.safetensors

Objective (full batch, deterministic L-BFGS from ``W = W_zs, b = 0``)::

    mean_i CE(exp(t) * x_i @ W.T + b, y_i) + reg * (||W - W_zs||^2 + ||b||^2)

with ``x_i`` the L2-normalised image embeddings, ``W_zs`` the zero-shot class weights (the
prompt ensemble) and ``t`` the model's log temperature. ``reg`` -> infinity gives back the
zero-shot classifier exactly; ``reg`` = 0 is plain logistic regression started from zero-shot.

``reg="auto"`` (the default) chooses the strength on the head's own training images, never on
anything scored: 4-fold cross-validation (image j of class c in fold (j + c) mod 4, so with one
image per class a fold holds a quarter of the classes' only images; fits of at most
:data:`CV_ITERATIONS` L-BFGS iterations) over :data:`REG_GRID`, and
the one-standard-error rule on the held-out cross-entropy: the strongest pull whose mean
held-out cross-entropy is within one standard error of the lowest (a few images cannot tell
near-equal strengths apart, so the choice stays as close to zero-shot as the evidence allows).
With one shot per class the held-out class has no training image in its fold, so the choice
favours staying near zero-shot, which is what one image per class can support.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..data.datasets import EvalDataset
from ..encode.embed import EmbedSettings
from ..encode.text import build_class_weights
from ..errors import UsageError
from ..heads import LinearHead, head_sidecar
from ..models import LoadedModel
from ..prompts import TemplateSet, as_template_set
from ..scoring import normalize
from ..store.reuse import embed_with_store
from .checkpoint import write_weights

DEFAULT_REG = "auto"
REG_GRID: tuple[float, ...] = (1e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, 3.0, 10.0, 100.0, 1000.0)
CV_FOLDS = 4
CV_ITERATIONS = 100  # L-BFGS iterations of each cross-validation fit (the final fit runs 200)
Reg = float | str  # a strength >= 0, or "auto"


@dataclass
class Embeddings:
    """Image embeddings of a labelled dataset: ``features[k]`` belongs to sample ``rows[k]``."""

    features: torch.Tensor
    targets: torch.Tensor
    rows: list[int]
    errors: dict[str, str]


def embed_dataset(loaded: LoadedModel, data: EvalDataset, settings: EmbedSettings = EmbedSettings(),
                  store=None, on_skip: Callable[[str, str], None] | None = None,
                  on_progress: Callable[[int, int], None] | None = None) -> Embeddings:
    """Every image of ``data`` through the one embedding loop (and the store when given)."""
    names = data.names
    targets = data.targets
    feats, rows, errors = [], [], {}
    done = 0
    for batch in embed_with_store(loaded, data.inputs(), settings, store):
        for i, reason in batch.errors:
            errors[names[i]] = reason
            if on_skip:
                on_skip(names[i], reason)
        if batch.embeddings is not None:
            feats.append(batch.embeddings.float())
            rows.extend(batch.indices)
        done += len(batch)
        if on_progress:
            on_progress(done, len(names))
    dim = feats[0].shape[1] if feats else 0
    features = torch.cat(feats) if feats else torch.empty(0, dim)
    return Embeddings(features, torch.tensor([targets[r] for r in rows], dtype=torch.long), rows, errors)


def sample_shots(targets: Sequence[int], k: int, seed: int) -> list[int]:
    """``k`` indices per class (all of a class with fewer), seeded, in ascending order."""
    by_class: dict[int, list[int]] = {}
    for i, t in enumerate(targets):
        by_class.setdefault(int(t), []).append(i)
    rng = random.Random(seed)
    chosen = []
    for cls in sorted(by_class):
        members = by_class[cls]
        chosen.extend(rng.sample(members, min(k, len(members))))
    return sorted(chosen)


def parse_reg(value: Reg, option: str = "--reg") -> Reg:
    """``"auto"`` or a strength >= 0 (from a number or its text)."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise UsageError(f"{option} {value!r}: give auto or a number >= 0, e.g. 0.1") from None
    if not number >= 0:
        raise UsageError(f"{option} {value!r}: must be >= 0 (or auto)")
    return number


def _folds(targets: Sequence[int], folds: int) -> list[int]:
    """Fold of each image: image j of class c goes to fold ``(j + c) % folds``."""
    seen: dict[int, int] = {}
    out = []
    for t in targets:
        j = seen.get(int(t), 0)
        seen[int(t)] = j + 1
        out.append((j + int(t)) % folds)
    return out


def cross_validate(features: torch.Tensor, targets: torch.Tensor, zero_shot: torch.Tensor, logit_scale: float,
                   reg: float, folds: int = CV_FOLDS) -> tuple[float, float, float]:
    """Held-out (top-1, mean cross-entropy, standard error of that mean) of heads fitted with
    ``reg`` on all folds but one, over every image once held out."""
    fold_of = _folds(targets.tolist(), folds)
    scale = float(torch.tensor(logit_scale, dtype=torch.float64).exp())
    x = normalize(features.float())
    right, losses = 0, []
    for f in range(folds):
        train = [i for i, g in enumerate(fold_of) if g != f]
        test = [i for i, g in enumerate(fold_of) if g == f]
        if not train or not test:
            continue
        w, b = fit_linear(features[train], targets[train], zero_shot, logit_scale, reg, CV_ITERATIONS)
        logits = scale * x[test] @ w.T + b
        right += int((logits.argmax(1) == targets[test]).sum())
        losses.append(F.cross_entropy(logits, targets[test], reduction="none").double())
    if not losses:
        return float("nan"), float("nan"), float("nan")
    loss = torch.cat(losses)
    spread = float(loss.std() / len(loss) ** 0.5) if len(loss) > 1 else 0.0
    return right / len(loss), float(loss.mean()), spread


def choose_reg(features: torch.Tensor, targets: torch.Tensor, zero_shot: torch.Tensor, logit_scale: float,
               grid: Sequence[float] | None = None, folds: int = CV_FOLDS) -> tuple[float, dict[str, list[float]]]:
    """The strength of ``grid`` (default :data:`REG_GRID`) chosen by the one-standard-error rule on
    the cross-validated cross-entropy of these images: the strongest pull whose mean held-out
    cross-entropy is within one standard error of the lowest. Returns it and every strength's
    ``[top-1, cross-entropy, standard error]``. Fewer than two images: the largest strength
    (nothing to validate on)."""
    grid = tuple(grid) if grid is not None else REG_GRID
    if len(targets) < 2:
        return max(grid), {}
    scores = {reg: cross_validate(features, targets, zero_shot, logit_scale, reg, folds) for reg in grid}
    best = min(grid, key=lambda reg: (scores[reg][1], -reg))
    bar = scores[best][1] + scores[best][2]
    chosen = max(reg for reg in grid if scores[reg][1] <= bar)
    return chosen, {f"{reg:g}": list(scores[reg]) for reg in grid}


def fit_linear(features: torch.Tensor, targets: torch.Tensor, zero_shot: torch.Tensor, logit_scale: float,
               reg: float = 1e-3, iterations: int = 200) -> tuple[torch.Tensor, torch.Tensor]:
    """``(W, b)`` minimising the module's objective by full-batch L-BFGS (deterministic)."""
    if reg < 0:
        raise UsageError(f"--reg {reg}: must be >= 0")
    x = normalize(features.double())
    y = targets.long()
    w0 = zero_shot.double()
    scale = float(torch.tensor(logit_scale, dtype=torch.float64).exp())
    w = w0.clone().requires_grad_(True)
    b = torch.zeros(w0.shape[0], dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([w, b], lr=1, max_iter=iterations, tolerance_grad=1e-10, tolerance_change=1e-12,
                                  history_size=20, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(scale * x @ w.T + b, y) + reg * ((w - w0).pow(2).sum() + b.pow(2).sum())
        loss.backward()
        return loss

    if len(y):
        optimizer.step(closure)
    return w.detach().float(), b.detach().float()


def fit_head(
    loaded: LoadedModel,
    data: EvalDataset | Embeddings,
    templates: TemplateSet | str | Sequence[str] = "openai-7",
    reg: Reg = DEFAULT_REG,
    classnames: Sequence[str] | None = None,
    zero_shot: torch.Tensor | None = None,
    settings: EmbedSettings = EmbedSettings(),
    store=None,
    on_skip: Callable[[str, str], None] | None = None,
) -> LinearHead:
    """A head for ``loaded`` fitted on a labelled dataset (or its precomputed embeddings, then
    with ``classnames``), initialised from and regularised toward the zero-shot weights
    (``reg="auto"``: the strength cross-validated on these images, see the module doc)."""
    template_set = as_template_set(templates)
    if isinstance(data, EvalDataset):
        classnames = data.classnames
        data = embed_dataset(loaded, data, settings, store, on_skip)
    if classnames is None:
        raise UsageError("fit_head: give classnames with precomputed embeddings")
    if not len(data.targets):
        raise UsageError("no usable training images for the head (every image was skipped)")
    weights = zero_shot if zero_shot is not None else build_class_weights(loaded, list(classnames), template_set)
    log_scale = float(loaded.logit_scale)
    reg = parse_reg(reg)
    regularisation: dict = {"toward": "zero-shot class weights", "penalty": "reg * (||W - W_zs||^2 + ||b||^2)"}
    if reg == "auto":
        reg, grid = choose_reg(data.features, data.targets, weights, log_scale)
        regularisation["chosen"] = {"by": f"{CV_FOLDS}-fold cross-validation on the head's images",
                                    "grid [top-1, cross-entropy, standard error]": grid,
                                    "rule": "strongest within one standard error of the lowest cross-entropy"}
    w, b = fit_linear(data.features, data.targets, weights, log_scale, float(reg))
    shots = torch.bincount(data.targets, minlength=len(classnames)).tolist()
    info = {"regularisation": {"reg": reg, **regularisation},
            "templates": template_set.name, "images_per_class": dict(zip(classnames, shots)),
            "objective": "mean cross-entropy, full-batch L-BFGS"}
    model = {"name": loaded.name, "pretrained": loaded.pretrained, "weights_id": loaded.weights_id}
    return LinearHead(tuple(classnames), w, b, log_scale, model, info)


def save_head(head: LinearHead, path: str | os.PathLike, option: str = "--out") -> Path:
    """The head as safetensors (``weight``, ``bias``) plus ``HEAD.json`` (labels, model, fitting)."""
    out = Path(path).expanduser()
    if out.suffix.lower() != ".safetensors":
        raise UsageError(f"{option} {out}: the head is written as safetensors; name the file *.safetensors")
    return write_weights(out, {"weight": head.weight, "bias": head.bias}, head_sidecar(head), option)


# -------------------------------------------------------------------- eval --shots (k-shot curve)


@dataclass
class ShotResult:
    """Zero-shot and k-shot top-1 on the same test images."""

    shots: int
    zero_shot: float
    few_shot: float
    train_images: int
    test_images: int
    reg: float | None = None

    def as_dict(self) -> dict:
        return {"shots": self.shots, "zero_shot_top1": self.zero_shot, "few_shot_top1": self.few_shot,
                "train_images": self.train_images, "test_images": self.test_images, "reg": self.reg}


def _top1(features: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
          log_scale: float) -> float:
    if not len(targets):
        return float("nan")
    logits = float(torch.tensor(log_scale).exp()) * normalize(features.float()) @ weight.float().T
    if bias is not None:
        logits = logits + bias.float()
    return float((logits.argmax(1) == targets).float().mean())


def _seeded_order(targets: Sequence[int], candidates: Sequence[int], seed: int) -> dict[int, list[int]]:
    """Per class, its candidate indices in a seeded random order."""
    by_class: dict[int, list[int]] = {}
    for i in candidates:
        by_class.setdefault(int(targets[i]), []).append(i)
    rng = random.Random(seed)
    for members in by_class.values():
        rng.shuffle(members)
    return by_class


def shots_curve(
    features: torch.Tensor,
    targets: torch.Tensor,
    usable: torch.Tensor,
    zero_shot: torch.Tensor,
    log_scale: float,
    shots: Sequence[int] = (1, 2, 4, 8, 16),
    seed: int = 0,
    reg: Reg = DEFAULT_REG,
    pool: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> list[ShotResult]:
    """Zero-shot vs k-shot top-1 for every k in ``shots``.

    Without ``pool`` (one labelled set): per class, a seeded random order of its usable images;
    the first ``min(max(shots), n_c - 1)`` of each class form the few-shot pool and are never
    scored; the k-shot head is fitted on the first ``k`` of the pool (nested samples), and every
    k and the zero-shot column are scored on the same remaining images. With ``pool``
    (``(features, targets)`` of a separate training set, ``--shots-from``) the k images per class
    are sampled from it (seeded) and every usable image of the evaluated set is scored.
    ``reg="auto"`` chooses each k's strength by cross-validation on its k-shot images alone."""
    if not shots or min(shots) < 1:
        raise UsageError("--shots: give positive shot counts, e.g. 1,2,4,8,16")
    reg = parse_reg(reg)
    top = max(shots)
    usable_rows = [i for i in range(len(targets)) if bool(usable[i])]
    if pool is None:
        order = _seeded_order(targets.tolist(), usable_rows, seed)
        picked = {c: members[:min(top, len(members) - 1)] for c, members in order.items()}
        held = {i for members in picked.values() for i in members}
        test = [i for i in usable_rows if i not in held]
        train_x, train_y = features, targets
    else:
        train_x, train_y = pool
        picked = _seeded_order(train_y.tolist(), range(len(train_y)), seed)
        test = usable_rows
    test_x, test_y = features[test], targets[test]
    zero = _top1(test_x, test_y, zero_shot, None, log_scale)
    results = []
    for k in sorted(set(shots)):
        rows = sorted(i for members in picked.values() for i in members[:k])
        strength = choose_reg(train_x[rows], train_y[rows], zero_shot, log_scale)[0] if reg == "auto" else float(reg)
        w, b = fit_linear(train_x[rows], train_y[rows], zero_shot, log_scale, strength)
        results.append(ShotResult(k, zero, _top1(test_x, test_y, w, b, log_scale), len(rows), len(test), strength))
    return results
