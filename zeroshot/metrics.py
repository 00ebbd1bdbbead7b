"""Classification metrics, as CLIP_benchmark computes them: top-1, top-5, mean per-class recall.

One implementation: :func:`metrics_from_topk` works on the top-k class indices of every sample
(so large runs can compute them chunk by chunk), and :func:`compute_metrics` is the same thing
for a logits matrix. Samples marked invalid (images that could not be read) count as wrong.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

TOP_K = (1, 5)


@dataclass(frozen=True)
class Metrics:
    """CLIP_benchmark's classification metrics (fractions in [0, 1]); ``acc5`` is ``None``
    with fewer than 5 classes (not applicable, rather than a trivially perfect number)."""

    acc1: float
    acc5: float | None
    mean_per_class_recall: float

    def as_dict(self) -> dict[str, float | None]:
        return {"acc1": self.acc1, "acc5": self.acc5, "mean_per_class_recall": self.mean_per_class_recall}


def per_class_recall(predictions: torch.Tensor, targets: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(correct, total)`` per class from predicted class indices (``-1`` = no prediction)."""
    total = torch.bincount(targets, minlength=num_classes)
    correct = torch.bincount(targets[predictions == targets], minlength=num_classes)
    return correct, total


def mean_per_class_recall(predictions: torch.Tensor, targets: torch.Tensor, num_classes: int) -> float:
    """Mean over classes with at least one sample of (correct / samples), as sklearn's
    ``balanced_accuracy_score``. ``predictions`` are class indices; ``-1`` counts as wrong."""
    correct, total = per_class_recall(predictions, targets, num_classes)
    present = total > 0
    if not present.any():
        return 0.0
    return (correct[present].double() / total[present].double()).mean().item()


def predictions_from_topk(top: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """The predicted class of every sample (``-1`` where ``valid`` is False)."""
    predictions = top[:, 0].clone()
    if valid is not None:
        predictions[~valid] = -1
    return predictions


def metrics_from_topk(top: torch.Tensor, targets: torch.Tensor, num_classes: int,
                      valid: torch.Tensor | None = None) -> Metrics:
    """Metrics from ``[N, k]`` class indices, best first (``k >= min(5, num_classes)``)."""
    n = len(targets)
    hits = top[:, :5] == targets.view(-1, 1)
    if valid is not None:
        hits &= valid.view(-1, 1)
    acc5 = None if num_classes < 5 else (int(hits.any(dim=1).sum()) / n if n else 0.0)
    return Metrics(
        acc1=int(hits[:, 0].sum()) / n if n else 0.0,
        acc5=acc5,
        mean_per_class_recall=mean_per_class_recall(predictions_from_topk(top, valid), targets, num_classes),
    )


def topk_indices(logits: torch.Tensor) -> torch.Tensor:
    """The ``min(5, classes)`` best class indices of every row, best first."""
    return logits.topk(min(max(TOP_K), logits.shape[1]), dim=1).indices


def compute_metrics(logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor | None = None) -> Metrics:
    """acc1, acc5 (``None`` below 5 classes) and mean per-class recall from ``[N, C]`` logits."""
    return metrics_from_topk(topk_indices(logits), targets, logits.shape[1], valid)


# ----------------------------------------------------------------------------------- retrieval

RECALL_K = (1, 5, 10)
_RETRIEVAL_CHUNK = 1024


def _hits_at_k(scores: torch.Tensor, owner: torch.Tensor, k: int, row_positive) -> torch.Tensor:
    """For every row of ``scores`` [rows, cols]: is a positive column among its top ``k``?
    ``owner[c]`` labels column ``c``; ``row_positive(rows, owner_of_topk)`` says which are positive."""
    k = min(k, scores.shape[1])
    hits = torch.zeros(scores.shape[0], dtype=torch.bool)
    for start in range(0, scores.shape[0], _RETRIEVAL_CHUNK):
        chunk = scores[start:start + _RETRIEVAL_CHUNK]
        top = chunk.topk(k, dim=1).indices
        rows = torch.arange(start, start + chunk.shape[0])
        hits[start:start + chunk.shape[0]] = row_positive(rows, owner[top])
    return hits


def retrieval_metrics(scores: torch.Tensor, text_images: torch.Tensor, valid: torch.Tensor | None = None,
                      ks: tuple[int, ...] = RECALL_K) -> dict[str, float]:
    """CLIP_benchmark's retrieval recall@k from ``scores`` [texts, images] (cosine similarities)
    and the image of every text: ``image_retrieval_recall@k`` is the fraction of texts whose
    image is among their ``k`` best images (text -> image), ``text_retrieval_recall@k`` the
    fraction of images with at least one of their captions among their ``k`` best texts (image
    -> text). Images marked invalid (unreadable) are never retrieved and count as misses; ``k``
    beyond the number of candidates means all of them."""
    num_texts, num_images = scores.shape
    valid = torch.ones(num_images, dtype=torch.bool) if valid is None else valid
    scores = scores.float().masked_fill(~valid.view(1, -1), float("-inf"))
    image_ids = torch.arange(num_images)
    metrics = {}
    for k in ks:
        text_hits = _hits_at_k(scores, image_ids, k, lambda rows, top: (top == text_images[rows].view(-1, 1)).any(dim=1))
        text_hits &= valid[text_images]
        image_hits = _hits_at_k(scores.t(), text_images, k, lambda rows, top: (top == rows.view(-1, 1)).any(dim=1))
        image_hits &= valid
        metrics[f"image_retrieval_recall@{k}"] = text_hits.float().mean().item() if num_texts else 0.0
        metrics[f"text_retrieval_recall@{k}"] = image_hits.float().mean().item() if num_images else 0.0
    return metrics
