"""Where the image tower runs: torch (always), OpenVINO on a CPU (extra ``[openvino]``), or
``torch.compile`` (``compile``, any device).

OpenVINO compiles the open_clip image tower (``encode_image``, projection included) for the CPU
and runs it in bf16 where the CPU has native bf16 (its ``INFERENCE_PRECISION_HINT``), else f32.
Measured faster than torch's bf16 weights on our CPUs (see the README's performance section),
so ``--runtime auto`` uses it for a CPU bf16 image tower when it is installed; ``auto``'s
first-batch check against torch fp32 applies to it as to torch bf16, and a failed check runs
torch fp32 (the reference) for the rest of the run.

The converted model is kept on disk (``<cache>/openvino/<key>.xml`` + ``.bin``, written
atomically, keyed by the weights, image size and library versions), so only the first use of a
model pays for the conversion (tens of seconds for ViT-B/32 on two cores).

``compile`` runs the image tower (``encode_image``; the bf16 copy on a CPU at bf16, autocast on
a GPU at fp16/bf16) through ``torch.compile`` (inductor, dynamic batch size). Only when asked
for (``--runtime compile``): the first batch pays the compilation (minutes for ViT-B/32 on two
busy cores; inductor's own on-disk cache makes later starts shorter), and on a CPU it needs a C++
compiler. Its results differ from eager torch by float rounding only.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ModelLoadError, UsageError, ZeroshotWarning
from .paths import default_cache_dir

if TYPE_CHECKING:
    import torch

RUNTIMES = ("auto", "torch", "openvino", "compile")
CXX_COMPILERS = ("c++", "g++", "clang++")
INSTALL_HINT = 'pip install "zeroshot[openvino]"'
RUNTIME_ENV = "ZEROSHOT_RUNTIME"
# The input precisions OpenVINO is asked for, by zeroshot precision.
_HINTS = {"bf16": "bf16", "fp32": "f32"}


def openvino_installed() -> bool:
    """Whether the ``openvino`` package can be imported."""
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def requested_runtime(spec: str | None = None) -> str:
    """The runtime asked for: ``spec``, else ``ZEROSHOT_RUNTIME``, else ``auto``."""
    return (spec or os.environ.get(RUNTIME_ENV) or "auto").strip().lower()


def resolve_runtime(spec: str | None, device_type: str, precision: str, backend: str = "open_clip") -> str:
    """``torch`` or ``openvino`` for the image tower. ``auto`` (default, or ``ZEROSHOT_RUNTIME``):
    OpenVINO for a bf16 image tower on a CPU when it is installed, else torch."""
    spec = requested_runtime(spec)
    if spec not in RUNTIMES:
        raise UsageError(f"--runtime {spec!r} is not one of {', '.join(RUNTIMES)}")
    if spec == "torch":
        return spec
    if spec == "compile":
        if device_type == "cpu" and not any(shutil.which(cxx) for cxx in CXX_COMPILERS):
            raise UsageError("--runtime compile on the CPU needs a C++ compiler (e.g. apt-get install g++); "
                             "or use --runtime torch")
        return spec
    usable = device_type == "cpu" and backend == "open_clip" and precision in _HINTS
    if spec == "auto":
        return "openvino" if usable and precision == "bf16" and openvino_installed() else "torch"
    if device_type != "cpu":
        raise UsageError(f"--runtime openvino runs on the CPU; use --device cpu, or --runtime torch on {device_type}")
    if backend != "open_clip":
        raise UsageError("--runtime openvino takes open_clip models; use --runtime torch for hf: models")
    if precision not in _HINTS:
        raise UsageError(f"--runtime openvino runs fp32 or bf16, not {precision}")
    if not openvino_installed():
        raise UsageError(f"--runtime openvino needs OpenVINO: {INSTALL_HINT}")
    return spec


class CompiledImageTower:
    """An image tower through ``torch.compile``: ``encode_image(pixels) -> features`` like the
    module's. ``dtype``: the input dtype the module takes; ``autocast``: a callable returning the
    context each call runs in (mixed precision on a GPU, else a no-op)."""

    def __init__(self, module: torch.nn.Module, dtype: torch.dtype, autocast: Any) -> None:
        import torch

        self.module = module
        self.dtype = dtype
        self.autocast = autocast
        self.compiled = torch.compile(module.encode_image, dynamic=True)

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        with self.autocast():
            return self.compiled(pixels.to(self.dtype))


class OpenVINOImageTower:
    """An open_clip image tower compiled by OpenVINO: ``encode_image(pixels) -> features``
    like the torch model's, on CPU tensors (float32 in, float32 out)."""

    def __init__(self, compiled: Any, precision: str) -> None:
        self.compiled = compiled
        self.precision = precision
        self.request = compiled.create_infer_request()

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        import torch

        array = pixels.detach().to("cpu", torch.float32).contiguous().numpy()
        result = self.request.infer({0: array})
        return torch.from_numpy(result[self.compiled.output(0)].copy())


def openvino_image_tower(model: torch.nn.Module, weights_id: str, image_size: tuple[int, int], precision: str,
                         cache_dir: Path | None = None) -> OpenVINOImageTower:
    """``model``'s image tower compiled for the CPU at ``precision`` (converted once, then read
    from the cache). Raises :class:`ModelLoadError` when OpenVINO cannot convert it."""
    import openvino as ov
    import torch

    core = ov.Core()
    try:
        graph = core.read_model(str(_converted(model, weights_id, image_size, cache_dir)))
    except OSError as err:  # a read-only or full cache: convert for this run only
        warnings.warn(f"could not keep the OpenVINO conversion in the cache ({err.strerror or err}); "
                      "converting again at every start", ZeroshotWarning, stacklevel=2)
        graph = _convert(model, image_size)
    config = {"INFERENCE_PRECISION_HINT": _HINTS[precision], "INFERENCE_NUM_THREADS": torch.get_num_threads(),
              "PERFORMANCE_HINT": "LATENCY"}
    try:
        compiled = core.compile_model(graph, "CPU", config)
    except RuntimeError as err:
        raise ModelLoadError(f"OpenVINO could not compile the image tower: {_first_line(err)}; "
                             "use --runtime torch") from None
    return OpenVINOImageTower(compiled, precision)


def conversion_key(weights_id: str, image_size: tuple[int, int]) -> str:
    """The cache key of a converted image tower: the weights, the input size, the versions."""
    import open_clip
    import openvino as ov
    import torch

    from ._version import __version__

    identity = {"weights": weights_id, "image_size": list(image_size), "openvino": ov.__version__,
                "torch": torch.__version__, "open_clip": open_clip.__version__, "zeroshot": __version__}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode("utf-8")).hexdigest()[:32]


def _converted(model: torch.nn.Module, weights_id: str, image_size: tuple[int, int], cache_dir: Path | None) -> Path:
    """The OpenVINO IR (.xml beside its .bin) of ``model.encode_image``, made on first use."""
    directory = Path(cache_dir) if cache_dir else default_cache_dir() / "openvino"
    path = directory / f"{conversion_key(weights_id, image_size)}.xml"
    if path.is_file() and path.with_suffix(".bin").is_file():
        return path
    directory.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".convert-", dir=directory))
    try:
        _save_ir(_convert(model, image_size), staging / path.name)
        # The weights first, then the graph that names them: a reader never sees a graph alone.
        os.replace(staging / path.with_suffix(".bin").name, path.with_suffix(".bin"))
        os.replace(staging / path.name, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path


def _convert(model: torch.nn.Module, image_size: tuple[int, int]) -> Any:
    import openvino as ov
    import torch

    class ImageSide(torch.nn.Module):
        def __init__(self, net: torch.nn.Module) -> None:
            super().__init__()
            self.net = net

        def forward(self, pixels: torch.Tensor) -> torch.Tensor:
            return self.net.encode_image(pixels)

    height, width = image_size
    example = torch.zeros(2, 3, height, width)
    try:
        return ov.convert_model(ImageSide(model).eval(), example_input=example,
                                input=[ov.PartialShape([-1, 3, height, width])])
    except Exception as err:  # noqa: BLE001 - every conversion failure becomes one line
        raise ModelLoadError(f"OpenVINO could not convert the image tower: {_first_line(err)}; "
                             "use --runtime torch") from None


def _save_ir(converted: Any, path: Path) -> None:
    import openvino as ov

    ov.save_model(converted, str(path), compress_to_fp16=False)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
