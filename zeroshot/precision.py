"""Devices and numeric precisions: which exist, what ``auto`` means, and the autocast context.

Importable without torch (the CLI builds its choices from :data:`PRECISIONS`).
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from .errors import UsageError

if TYPE_CHECKING:
    import torch

PRECISIONS = ("auto", "fp32", "fp16", "bf16")
DEVICES_HELP = "auto, cpu, cuda, cuda:N, mps"


def resolve_device(spec: str = "auto") -> torch.device:
    """``auto`` picks CUDA, then Apple MPS, then CPU; explicit devices are checked to exist."""
    import torch

    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise UsageError(f"--device {spec!r} is not one of {DEVICES_HELP}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {spec}: CUDA is not available here; use --device cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) visible")
    elif device.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise UsageError(f"--device {spec}: Apple MPS is not available here; use --device cpu")
    elif device.type != "cpu":
        raise UsageError(f"--device {spec!r} is not one of {DEVICES_HELP}")
    return device


def resolve_precision(spec: str, device: torch.device) -> str:
    """``auto``: fp32 on CPU; bf16 (or fp16 where bf16 is unsupported) autocast on GPUs."""
    import torch

    spec = (spec or "auto").strip().lower()
    if spec not in PRECISIONS:
        raise UsageError(f"--precision {spec!r} is not one of {', '.join(PRECISIONS)}")
    if spec == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        if device.type == "mps":
            return "fp16"
        return "fp32"
    if spec == "fp16" and device.type == "cpu":
        raise UsageError("--precision fp16 needs a GPU; on CPU use fp32 (default) or bf16")
    return spec


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """Mixed-precision context for forward passes (a no-op for fp32)."""
    import torch

    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[precision]
    return torch.autocast(device_type=device.type, dtype=dtype)
