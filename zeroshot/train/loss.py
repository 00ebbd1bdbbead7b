"""The contrastive losses CLIP and SigLIP are trained with, on one batch of image/caption pairs.

CLIP (symmetric InfoNCE): ``logits = exp(t) * I @ T.T`` with L2-normalised features and the
model's learned log-temperature ``t``; ``loss = (CE(logits, arange) + CE(logits.T, arange)) / 2``.

SigLIP: ``loss = -sum_ij log sigmoid(z_ij * (exp(t) * I_i . T_j + b)) / N`` with ``z = +1`` on
the diagonal and ``-1`` elsewhere; the sum over all N*N pairs divided by the batch size N, as
open_clip's ``SigLipLoss`` normalises it.

Repeated captions. When several images of a batch share one caption (class-name captions:
three photos of "a photo of a dog."), the plain loss treats each copy as a negative of the
others and pushes identical texts apart from matching images. Pass ``caption_ids`` (equal ids =
same caption) and pairs sharing a caption count as positives: for CLIP the target of each row
is the row-normalised same-caption matrix (soft cross-entropy, both directions); for SigLIP
``z_ij = +1`` for every same-caption pair. With all captions distinct both reduce exactly to the
plain formulas (the same code path runs).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def caption_groups(captions: Sequence[str]) -> torch.Tensor | None:
    """Integer ids (same caption text -> same id) for ``captions``, or None when all differ."""
    index: dict[str, int] = {}
    ids = [index.setdefault(c, len(index)) for c in captions]
    return None if len(index) == len(ids) else torch.tensor(ids)


def _positives(caption_ids: torch.Tensor | None, n: int, device: torch.device) -> torch.Tensor | None:
    """The ``[n, n]`` 0/1 same-caption matrix, or None when every caption is distinct."""
    if caption_ids is None:
        return None
    ids = caption_ids.to(device)
    same = ids[:, None] == ids[None, :]
    return None if int(same.sum()) == n else same


def clip_logits(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """``exp(t) * I @ T.T`` (image rows, text columns); ``logit_scale`` is the log-temperature t."""
    return logit_scale.exp() * image_features @ text_features.T


def clip_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor,
    caption_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """CLIP's symmetric contrastive loss for L2-normalised ``[N, D]`` features; ``logit_scale``
    is the model's log-temperature parameter (its exponent scales the cosines)."""
    logits = clip_logits(image_features.float(), text_features.float(), logit_scale.float())
    n = logits.shape[0]
    same = _positives(caption_ids, n, logits.device)
    if same is None:
        target = torch.arange(n, device=logits.device)
        return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
    soft = same.float() / same.float().sum(dim=1, keepdim=True)  # symmetric matrix: same target both ways
    return (F.cross_entropy(logits, soft) + F.cross_entropy(logits.T, soft)) / 2


def siglip_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor,
    logit_bias: torch.Tensor,
    caption_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """SigLIP's pairwise sigmoid loss (normalised like open_clip's ``SigLipLoss``: summed over
    pairs, divided by the batch size)."""
    logits = clip_logits(image_features.float(), text_features.float(), logit_scale.float()) + logit_bias.float()
    n = logits.shape[0]
    same = _positives(caption_ids, n, logits.device)
    if same is None:
        same = torch.eye(n, device=logits.device, dtype=torch.bool)
    signs = same.float() * 2 - 1
    return -F.logsigmoid(signs * logits).sum() / n


def contrastive_loss(
    model: torch.nn.Module,
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    caption_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """The loss ``model`` is trained with: SigLIP's when it has a ``logit_bias``, else CLIP's."""
    bias = getattr(model, "logit_bias", None)
    if bias is not None:
        return siglip_loss(image_features, text_features, model.logit_scale, bias, caption_ids)
    return clip_loss(image_features, text_features, model.logit_scale, caption_ids)
