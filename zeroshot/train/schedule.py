"""Optimiser parameter groups and the learning-rate schedule (the rules open_clip_train uses).

No weight decay on gains and biases: every parameter with fewer than two dimensions (norm
weights, biases, 1-D embeddings such as the class token, the temperature and SigLIP's bias)
and any parameter whose name contains ``bn``, ``ln``, ``bias`` or ``logit_scale``.
The learning rate rises linearly for ``warmup`` steps, then follows a half cosine to zero.
"""

from __future__ import annotations

import math

import torch

_NO_DECAY_WORDS = ("bn", "ln", "bias", "logit_scale")


def no_weight_decay(name: str, param: torch.Tensor) -> bool:
    """Whether a parameter is a gain, bias, embedding or the temperature (excluded from decay)."""
    return param.ndim < 2 or any(word in name for word in _NO_DECAY_WORDS)


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups over the trainable parameters: decayed weights, and the rest with none."""
    decay, plain = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (plain if no_weight_decay(name, param) else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]


def cosine_lr(step: int, base_lr: float, warmup: int, total: int) -> float:
    """Learning rate at optimiser step ``step`` (0-based): linear warm-up over ``warmup`` steps
    (``base_lr * (step + 1) / warmup``), then ``base_lr * (1 + cos(pi * progress)) / 2``."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    span = max(1, total - warmup)
    progress = min(1.0, (step - warmup) / span)
    return 0.5 * (1 + math.cos(math.pi * progress)) * base_lr


def make_scheduler(optimizer: torch.optim.Optimizer, base_lr: float, warmup: int, total: int):
    """A ``LambdaLR`` following :func:`cosine_lr` (its state goes into checkpoints)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: cosine_lr(step, base_lr, warmup, total) / base_lr)
