"""Pure functions from embeddings to probabilities and ranked predictions."""

from __future__ import annotations

from dataclasses import dataclass

import torch


def normalize(x: torch.Tensor) -> torch.Tensor:
    """L2-normalise along the last dimension."""
    return x / x.norm(dim=-1, keepdim=True)


def class_logits(
    image_features: torch.Tensor,
    class_weights: torch.Tensor,
    logit_scale: torch.Tensor | float,
    logit_bias: torch.Tensor | float | None = None,
) -> torch.Tensor:
    """``scale * cos(image, class) (+ bias)`` with the model's own learned temperature.

    ``logit_scale`` is the model's parameter (log of the temperature), as stored in open_clip
    models; ``class_weights`` is ``[classes, dim]`` and already normalised.
    """
    scale = torch.as_tensor(logit_scale, dtype=torch.float32).exp()
    logits = scale * normalize(image_features.float()) @ class_weights.float().T
    if logit_bias is not None:
        logits = logits + torch.as_tensor(logit_bias, dtype=torch.float32)
    return logits


def probabilities(logits: torch.Tensor, sigmoid: bool = False) -> torch.Tensor:
    """Softmax over labels (CLIP) or independent per-label sigmoids (SigLIP-style models)."""
    return torch.sigmoid(logits) if sigmoid else logits.softmax(dim=-1)


@dataclass(frozen=True)
class Ranked:
    """The top-k labels and scores for one image, best first (the model's true ranking), and
    the decision: the best label, or the unknown label when the best score is below the
    threshold."""

    labels: tuple[str, ...]
    scores: tuple[float, ...]
    label: str | None = None  # the decision; defaults to the best label

    def __post_init__(self) -> None:
        if self.label is None and self.labels:
            object.__setattr__(self, "label", self.labels[0])


def top_k(
    probs: torch.Tensor,
    labels: tuple[str, ...],
    k: int = 1,
    min_score: float | None = None,
    unknown_label: str = "unknown",
) -> list[Ranked]:
    """Best ``k`` labels per row, best first. The decision (``Ranked.label``) is the best label,
    or ``unknown_label`` when the best score is below ``min_score``; the ranking itself is never
    changed by the threshold."""
    k = min(k, len(labels))
    values, indices = probs.float().topk(k, dim=-1)
    ranked = []
    for row_values, row_indices in zip(values.tolist(), indices.tolist()):
        names = tuple(labels[i] for i in row_indices)
        below = min_score is not None and row_values[0] < min_score
        ranked.append(Ranked(names, tuple(row_values), unknown_label if below else names[0]))
    return ranked
