"""Devices and numeric precisions: which exist, what ``auto`` means, and the autocast context.

On a CPU, ``auto`` picks bf16 only where the CPU computes it natively (AVX-512 BF16 or AMX on
x86, the ``bf16`` feature on Arm), read from the CPU's feature flags, never emulated bf16; and
an ``auto`` choice is then checked against fp32 on its first batch (see :data:`MIN_COSINE`).
int8 (torchao dynamic quantization) was measured slower than fp32 on our CPUs and is not offered.

Importable without torch (the CLI builds its choices from :data:`PRECISIONS`).
"""

from __future__ import annotations

import contextlib
import os
import platform
from collections.abc import Iterable
from functools import lru_cache
from typing import TYPE_CHECKING

from .errors import UsageError

if TYPE_CHECKING:
    import torch

PRECISIONS = ("auto", "fp32", "fp16", "bf16")
DEVICES_HELP = "auto, cpu, cuda, cuda:N, mps"
# An ``auto`` reduced precision is kept only if, on its first batch, every embedding has at
# least this cosine to the fp32 one (and, for images with labels, the same top-1 label).
MIN_COSINE = 0.999
# CPU feature flags (Linux /proc/cpuinfo names) that mean native bf16 arithmetic.
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})


def parse_cpu_flags(cpuinfo: str) -> frozenset[str]:
    """Feature flags from ``/proc/cpuinfo`` text: the ``flags`` line (x86) or ``Features`` (Arm)
    of the first processor."""
    for line in cpuinfo.splitlines():
        name, _, value = line.partition(":")
        if name.strip().lower() in ("flags", "features"):
            return frozenset(value.split())
    return frozenset()


CPU_FLAGS_ENV = "ZEROSHOT_CPU_FLAGS"


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """This machine's CPU feature flags (empty where they cannot be read: then nothing
    reduced is chosen automatically). ``ZEROSHOT_CPU_FLAGS`` (space-separated) replaces them:
    e.g. ``ZEROSHOT_CPU_FLAGS="avx2"`` makes ``--precision auto`` fp32 on a bf16 CPU."""
    override = os.environ.get(CPU_FLAGS_ENV)
    if override is not None:
        return frozenset(override.split())
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            return parse_cpu_flags(handle.read())
    except OSError:
        return frozenset()


def native_bf16(flags: Iterable[str] | None = None) -> bool:
    """Whether the CPU (``flags``, default this machine's) computes bf16 natively."""
    flags = cpu_flags() if flags is None else frozenset(flags)
    if "bf16" in flags and platform.machine().lower() not in ("aarch64", "arm64"):
        flags = flags - {"bf16"}  # "bf16" alone is the Arm feature name
    return bool(flags & NATIVE_BF16_FLAGS)


def cpu_features_line(flags: Iterable[str] | None = None) -> str:
    """The CPU features that decide ``auto`` (for benchmark and summary output)."""
    flags = cpu_flags() if flags is None else frozenset(flags)
    shown = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "bf16") if f in flags]
    return f"CPU features: {' '.join(shown) or 'none of avx2/avx512/bf16'}; native bf16: {'yes' if native_bf16(flags) else 'no'}"


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
    """``auto``: on a CPU bf16 where it is native (else fp32); bf16 (or fp16 where bf16 is
    unsupported) autocast on GPUs. An ``auto`` CPU choice is checked on first use."""
    import torch

    spec = (spec or "auto").strip().lower()
    if spec not in PRECISIONS:
        raise UsageError(f"--precision {spec!r} is not one of {', '.join(PRECISIONS)}")
    if spec == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        if device.type == "mps":
            return "fp16"
        return "bf16" if native_bf16() else "fp32"
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
