"""Resolve and load CLIP models with open_clip: architecture names, pretrained tags, ``hf-hub:``
ids, local checkpoint files; device and precision; fast, actionable errors when weights are missing.
Hugging Face transformers CLIP/SigLIP models (``hf:`` ids and folders) come through :mod:`zeroshot.hf`.
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import logging
import os
import pickle
import re
import socket
import struct
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from .checkpoints import (
    ACCEPTED,
    checkpoint_shapes,
    describe_content,
    describe_mismatch,
    fitting_architectures,
    model_shapes,
    read_sidecar,
    sidecar_path,
    sniff,
)
from .errors import ModelLoadError, UsageError
from .precision import autocast, resolve_device, resolve_precision
from .runtimes import requested_runtime, resolve_runtime

if TYPE_CHECKING:
    import torch

DEFAULT_MODEL = "ViT-B-32"
DEFAULT_PRETRAINED = "openai"
HF_HUB_PREFIX = "hf-hub:"
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")
_PREPROCESS_KEYS = ("mean", "std", "interpolation", "resize_mode")


@dataclass
class LoadedModel:
    """An open_clip model in eval mode with everything needed to run it."""

    model: torch.nn.Module
    tokenizer: Callable
    preprocess: Callable
    name: str
    pretrained: str
    weights_id: str
    device: torch.device
    precision: str
    # Whether encode/vision.py's class-token shortcut matched the model's own forward on the
    # first batch: None until checked, then True (used) or False (off for this model).
    class_token_shortcut: bool | None = None
    # The --precision asked for; "auto" reduced precision is checked against fp32 on first use.
    requested: str = ""
    # The text tower's precision when it differs from the image tower's ("" = ``precision``).
    text_precision: str = ""
    # On a CPU, bf16 runs a bf16 copy of the weights (faster than autocast there); ``model``
    # stays fp32 for ``auto``'s check and fallback (the same module for an explicit bf16).
    reduced: torch.nn.Module | None = None
    # "image" / "text" -> whether the first-batch check against fp32 passed (absent: not run).
    checked: dict[str, bool] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # what the checks changed, for the summary
    # Class weights for the image check's top-1 comparison (set by the classifier; optional).
    check_weights: torch.Tensor | None = None
    # Where the image tower runs: "torch", "openvino" or "compile" (``image_runtime`` is then the
    # compiled tower; see zeroshot/runtimes.py). A failed first-batch check returns to torch.
    runtime: str = "torch"
    image_runtime: Any = None
    requested_runtime: str = "auto"  # the --runtime asked for (a Ray actor resolves it again)

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.model.logit_scale.detach().float().cpu()

    @property
    def logit_bias(self) -> torch.Tensor | None:
        bias = getattr(self.model, "logit_bias", None)
        return None if bias is None else bias.detach().float().cpu()

    @property
    def uses_sigmoid(self) -> bool:
        """SigLIP-style models (with a learned logit bias) score labels independently."""
        return self.logit_bias is not None

    @property
    def context_length(self) -> int:
        return int(getattr(self.tokenizer, "context_length", 77))

    def autocast(self, side: str = "image") -> contextlib.AbstractContextManager:
        """Mixed-precision context for forward passes of one tower (a no-op for fp32, and for
        the bf16 copy of the weights, which needs none)."""
        tower = self.tower(side)
        if (tower is self.reduced and self.reduced is not None) or tower is self.image_runtime:
            return contextlib.nullcontext()
        return autocast(self.precision_of(side), self.device)

    def precision_of(self, side: str) -> str:
        """The precision ``side`` ("image" or "text") runs at now."""
        return (self.text_precision or self.precision) if side == "text" else self.precision

    def tower(self, side: str) -> torch.nn.Module:
        """The module that runs ``side``: the OpenVINO image tower where it runs, the bf16 copy
        on a CPU at bf16, else ``model``."""
        if side == "image" and self.runtime != "torch" and self.image_runtime is not None:
            return self.image_runtime
        if self.reduced is not None and self.precision_of(side) == "bf16" and self.device.type == "cpu":
            return self.reduced
        return self.model

    def needs_check(self, side: str) -> bool:
        """Whether ``side`` runs an ``auto``-chosen reduced precision on a CPU not yet checked."""
        return (self.requested == "auto" and self.device.type == "cpu" and self.precision_of(side) != "fp32"
                and side not in self.checked)

    def record_check(self, side: str, passed: bool, detail: str) -> None:
        """The first-batch check of ``side``; a failure makes that side fp32 from now on."""
        self.checked[side] = passed
        if passed:
            return
        was = self.precision_of(side)
        if side == "text":
            self.text_precision = "fp32"
        else:
            self._image_fp32()
        self.notes.append(f"{side} tower: {was} disagreed with fp32 on the first batch ({detail}); "
                          "fp32 for the rest of the run")

    def keep_fp32(self, side: str, why: str) -> None:
        """Run ``side`` at fp32 from now on instead of an unchecked ``auto`` reduced precision
        (e.g. to continue an embedding store that holds fp32 vectors of this model)."""
        if self.precision_of(side) == "fp32":
            return
        if side == "text":
            self.text_precision = "fp32"
        else:
            self._image_fp32()
        self.checked[side] = False
        self.notes.append(f"{side} tower: fp32, {why}")

    def _image_fp32(self) -> None:
        """The image tower at torch fp32, the reference (the text tower keeps its precision)."""
        self.text_precision = self.precision_of("text")
        self.precision = "fp32"
        self.runtime, self.image_runtime = "torch", None

    @property
    def image_numerics(self) -> str:
        """What the image vectors depend on besides the weights: the precision, and the
        runtime where it is not torch (``bf16+openvino``); part of embedding-store keys."""
        return self.precision if self.runtime == "torch" else f"{self.precision}+{self.runtime}"

    def describe_precision(self) -> str:
        """``bf16``, or ``image fp32, text bf16`` when the towers differ; ``auto`` is marked."""
        image, text = self.precision_of("image"), self.precision_of("text")
        shown = image if image == text else f"image {image}, text {text}"
        marks = [m for m in ("auto" if self.requested == "auto" else "",
                             f"image on {self.runtime}" if self.runtime != "torch" else "") if m]
        return f"{shown} ({', '.join(marks)})" if marks else shown


# ------------------------------------------------------------------------------ name resolution


def register_model_configs(paths: str | None = None) -> None:
    """Register extra open_clip model configs (JSON files or folders) from ``ZEROSHOT_MODEL_CONFIGS``."""
    import open_clip

    paths = paths if paths is not None else os.environ.get("ZEROSHOT_MODEL_CONFIGS", "")
    for entry in filter(None, paths.split(os.pathsep)):
        if not Path(entry).exists():
            raise UsageError(f"ZEROSHOT_MODEL_CONFIGS: {entry} does not exist")
        open_clip.add_model_config(entry)


def canonical_arch(name: str) -> str:
    """An open_clip architecture name, accepting ``ViT-B/32`` spelling; unknown names suggest matches."""
    import open_clip

    cleaned = name.strip().replace("/", "-")
    known = open_clip.list_models()
    if cleaned in known:
        return cleaned
    lowered = {m.lower(): m for m in known}
    if cleaned.lower() in lowered:
        return lowered[cleaned.lower()]
    close = difflib.get_close_matches(cleaned, known, n=4, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else "; `zeroshot models` lists them"
    raise UsageError(f"--model {name!r} is not a known open_clip architecture{hint}")


def is_checkpoint_path(pretrained: str) -> bool:
    return Path(pretrained).expanduser().is_file() or pretrained.lower().endswith(CHECKPOINT_SUFFIXES)


def file_identity(path: Path) -> str:
    """A cheap identity for a weights file: resolved path, size and modification time."""
    stat = path.stat()
    return f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"


def _hf_cached_file(repo_id: str, filename: str) -> str | None:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id=repo_id, filename=filename)
    return found if isinstance(found, str) else None


def _tag_weights_candidates(cfg: dict) -> list[tuple[str, str]]:
    """(repo_id, filename) pairs a pretrained tag may be stored as on the Hugging Face hub."""
    from open_clip.pretrained import _get_safe_alternatives

    hub = cfg.get("hf_hub", "")
    if not hub:
        return []
    repo_id, filename = os.path.split(hub)
    filename = filename or "open_clip_pytorch_model.bin"
    names = list(_get_safe_alternatives(filename)) + [filename]
    return [(repo_id, name) for name in names]


def cached_tag_weights(arch: str, tag: str) -> str | None:
    """Path of the weights of ``arch``/``tag`` when already in the local cache, else None."""
    from open_clip.pretrained import get_pretrained_cfg

    cfg = get_pretrained_cfg(arch, tag)
    if not cfg:
        return None
    if "file" in cfg and Path(cfg["file"]).is_file():
        return cfg["file"]
    for repo_id, filename in _tag_weights_candidates(cfg):
        found = _hf_cached_file(repo_id, filename)
        if found:
            return found
    url = cfg.get("url", "")
    if url:
        legacy = Path("~/.cache/clip").expanduser() / os.path.basename(url)
        if legacy.is_file():
            return str(legacy)
    return None


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _hub_reachable(timeout: float = 3.0) -> bool:
    """One quick TCP connect to the hub, so a machine without network fails in seconds, not minutes."""
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def _missing_weights_error(what: str) -> ModelLoadError:
    hf_home = os.environ.get("HF_HOME", "~/.cache/huggingface")
    why = "HF_HUB_OFFLINE is set" if _offline() else "the Hugging Face hub cannot be reached"
    return ModelLoadError(
        f"weights for {what} are not in the local cache ({hf_home}/hub) and {why}; "
        "pass a local checkpoint with --pretrained FILE, or download them on a machine with "
        "network and copy the cache (or set HF_HOME to it)"
    )


def _ensure_downloadable(what: str, cached: bool) -> None:
    if cached:
        return
    if _offline() or not _hub_reachable():
        raise _missing_weights_error(what)


# ------------------------------------------------------------------------------------- loading


def _unanimous_tag_preprocess(arch: str) -> dict[str, Any]:
    """Preprocessing shared by every pretrained tag of ``arch`` (kept for local files, open_clip #1068)."""
    from open_clip.pretrained import get_pretrained_cfg, list_pretrained_tags_by_model

    cfgs = [get_pretrained_cfg(arch, t) for t in list_pretrained_tags_by_model(arch)]
    shared: dict[str, Any] = {}
    for key in _PREPROCESS_KEYS:
        values = {repr(c.get(key)) for c in cfgs}
        if cfgs and len(values) == 1 and cfgs[0].get(key) is not None:
            shared[key] = cfgs[0][key]
    return shared


def _preprocess_kwargs(cfg: dict[str, Any]) -> dict[str, Any]:
    names = {"mean": "image_mean", "std": "image_std", "interpolation": "image_interpolation",
             "resize_mode": "image_resize_mode"}
    return {names[k]: v for k, v in cfg.items() if k in names and v is not None}


def _unpickler_detail(message: str) -> str:
    """The useful part of torch's long ``weights_only`` failure text."""
    for line in message.splitlines():
        line = line.strip()
        if line and "WeightsUnpickler error" not in line and ("Unsupported" in line or "GLOBAL" in line):
            return line
    return ""


def describe_load_failure(err: BaseException, source: str) -> str:
    """Turn torch/open_clip/safetensors load failures into one line."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    message = str(err)
    forbidden = re.search(r"GLOBAL ([\w.]+)", message)
    if forbidden or "Unsupported global" in message:
        what = f" ({forbidden.group(1)})" if forbidden else ""
        return (f"{source}: refusing to load: the file holds Python objects{what}, not plain tensors "
                "(unsafe pickle); convert it to a state dict or .safetensors")
    if "Weights only load failed" in message:
        detail = _unpickler_detail(message) or "unreadable pickle"
        return (f"{source}: not a readable checkpoint: truncated or corrupt, or a pickle not written by "
                f"torch.save ({detail[:120]}); download or export it again")
    if isinstance(err, (EOFError, OSError, zipfile.BadZipFile, pickle.UnpicklingError, struct.error)) or any(
        s in message for s in ("failed finding central directory", "PytorchStreamReader", "unexpected EOF",
                               "incomplete metadata", "Error while deserializing", "invalid load key",
                               "HeaderTooLarge", "MetadataIncompleteBuffer")
    ):
        return f"{source}: not a readable checkpoint: truncated or corrupt ({text[:120]}); download it again"
    if isinstance(err, AssertionError) or any(
        s in message for s in ("Missing key(s)", "Unexpected key(s)", "size mismatch", "shape")
    ):
        return f"{source}: the checkpoint does not fit this architecture ({text[:200]}); check --model"
    if isinstance(err, (AttributeError, TypeError, StopIteration, KeyError)):
        return f"{source}: not a model state dict ({type(err).__name__}: {text[:150]})"
    return f"{source}: cannot load checkpoint ({type(err).__name__}: {text[:200]})"


def check_checkpoint_file(path: Path, source: str) -> None:
    """Refuse, before anything is loaded, a file that is no checkpoint (a text or HTML file, an
    empty file) or whose name makes the loader read it in the wrong format."""
    try:
        kind = sniff(path)
    except OSError as err:
        raise UsageError(f"{source}: cannot read: {err.strerror or err}") from None
    suffix = path.suffix.lower()
    if kind == "empty":
        raise ModelLoadError(f"{source}: the file is empty (0 bytes), not a model checkpoint; download it again")
    if kind is None:
        raise ModelLoadError(f"{source}: not a model checkpoint ({describe_content(path)}); "
                             f"--pretrained takes {ACCEPTED}")
    if kind == "safetensors" and suffix != ".safetensors":
        raise ModelLoadError(f"{source}: this is a safetensors file named {suffix or 'without an extension'}; "
                             "rename it to end in .safetensors")
    if kind in ("zip", "pickle") and suffix == ".safetensors":
        raise ModelLoadError(f"{source}: this is a PyTorch (torch.save) file named .safetensors; "
                             "rename it to end in .pt")


def diagnose_mismatch(checkpoint: Path, arch: str) -> str | None:
    """When a readable state dict does not fit ``arch``: what differs and which architectures
    it fits, in one line (None when it cannot tell or the keys and shapes do match)."""
    shapes = checkpoint_shapes(checkpoint)
    expected = model_shapes(arch) if shapes is not None else None
    if shapes is None or expected is None:
        return None
    return describe_mismatch(shapes, expected, arch, fitting_architectures(shapes, exclude=arch))


@dataclass(frozen=True)
class WeightsRef:
    """Which weights a (model, pretrained) pair names, resolved without loading anything:
    ``weights_id`` identifies them in cache keys and resume journals."""

    name: str
    arch: str
    pretrained: str
    weights_id: str
    source: str  # how the user named them, for messages
    create_args: tuple
    create_kwargs: tuple[tuple[str, Any], ...] = ()
    checkpoint: str | None = None  # a local weights file
    backend: str = "open_clip"  # or "transformers" (hf: models; create_args holds the folder)


def sidecar_of(pretrained: str | None) -> dict | None:
    """The sidecar (``FILE.json``, written by ``zeroshot finetune``) of a ``--pretrained`` file."""
    if not pretrained or not Path(pretrained.strip()).expanduser().is_file():
        return None
    try:
        return read_sidecar(Path(pretrained.strip()).expanduser())
    except ValueError as err:
        raise ModelLoadError(f"--pretrained {pretrained}: {err}") from None


def _register_sidecar_arch(sidecar: dict) -> str:
    """The sidecar's architecture, registered with open_clip from its recorded config when this
    installation does not know it (or knows a different config under that name)."""
    import hashlib
    import json
    import tempfile

    import open_clip

    arch = sidecar["architecture"]
    if open_clip.get_model_config(arch) == sidecar["model_config"]:
        return arch
    if open_clip.get_model_config(arch) is not None:  # same name, other shapes: a distinct name
        digest = hashlib.sha256(json.dumps(sidecar["model_config"], sort_keys=True).encode()).hexdigest()[:10]
        arch = f"{arch}-{digest}"
    folder = Path(tempfile.mkdtemp(prefix="zeroshot-arch-"))
    (folder / f"{arch}.json").write_text(json.dumps(sidecar["model_config"]), "utf-8")
    open_clip.add_model_config(str(folder / f"{arch}.json"))
    return arch


def resolve_weights(model: str | None = None, pretrained: str | None = DEFAULT_PRETRAINED) -> WeightsRef:
    """Check ``model``/``pretrained`` and say which weights they name (fast: nothing is loaded).

    ``model`` None means the architecture named by the sidecar of a ``pretrained`` file written
    by ``zeroshot finetune`` (``FILE.json``), else :data:`DEFAULT_MODEL`; a given ``model`` that
    disagrees with the sidecar is an error. Raises :class:`UsageError` for unknown names and
    :class:`ModelLoadError` when the weights are neither cached nor downloadable."""
    import open_clip

    from .hf import is_hf_model  # torch and (lazily) transformers live there

    if model is not None and not model.startswith(HF_HUB_PREFIX) and is_hf_model(model):
        return _resolve_hf(model)
    register_model_configs()
    sidecar = sidecar_of(pretrained)
    if sidecar is not None:
        return _sidecar_weights(model, str(pretrained).strip(), sidecar)
    model = DEFAULT_MODEL if model is None else model
    kwargs: dict[str, Any] = {}
    if model.startswith(HF_HUB_PREFIX):
        repo_id = model[len(HF_HUB_PREFIX):]
        cached = _hf_cached_file(repo_id, "open_clip_config.json") is not None
        _ensure_downloadable(model, cached)
        return WeightsRef(model, model, "", model, f"--model {model}", (model, None))
    arch = canonical_arch(model)
    if pretrained is None:  # random weights: for tests, from Python only
        return WeightsRef(arch, arch, "", "random-init", "--pretrained", (arch, None))
    pretrained = pretrained.strip()
    if not pretrained:
        raise UsageError("--pretrained is empty; give a pretrained tag (e.g. openai; `zeroshot models` "
                         "lists them) or a checkpoint file")
    path = Path(pretrained).expanduser()
    if path.is_file():
        check_checkpoint_file(path, f"--pretrained {path}")
        kwargs.update(_preprocess_kwargs(_unanimous_tag_preprocess(arch)))
        return WeightsRef(arch, arch, pretrained, file_identity(path), f"--pretrained {path}", (arch, str(path)),
                          tuple(kwargs.items()), checkpoint=str(path))
    from open_clip.pretrained import get_pretrained_cfg, list_pretrained_tags_by_model

    cfg = get_pretrained_cfg(arch, pretrained)
    if path.is_dir() and not cfg:
        inside = sorted(p.name for p in path.iterdir() if p.name.lower().endswith(CHECKPOINT_SUFFIXES))[:3]
        hint = f"; it holds {', '.join(inside)}" if inside else ""
        raise UsageError(f"--pretrained {pretrained}: is a directory, not a checkpoint file; give the file "
                         f"itself{hint}")
    if is_checkpoint_path(pretrained):
        raise UsageError(f"--pretrained {pretrained}: file not found")
    if not cfg:
        tags = list_pretrained_tags_by_model(arch)
        close = difflib.get_close_matches(pretrained, tags, n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        known = ", ".join(tags) if tags else "none (pass a checkpoint file)"
        raise UsageError(f"--pretrained {pretrained!r} is neither a file nor a tag of {arch}; {hint}tags: {known}")
    cached_path = cached_tag_weights(arch, pretrained)
    _ensure_downloadable(f"{arch} ({pretrained})", cached_path is not None)
    if cfg.get("quick_gelu") and not open_clip.get_model_config(arch).get("quick_gelu"):
        kwargs["force_quick_gelu"] = True  # open_clip only warns; the mismatch costs accuracy
    weights_id = f"{arch}:{pretrained}:" + (file_identity(Path(cached_path)) if cached_path else "hub")
    return WeightsRef(arch, arch, pretrained, weights_id, f"--model {arch} --pretrained {pretrained}",
                      (arch, pretrained), tuple(kwargs.items()))


def _resolve_hf(model: str) -> WeightsRef:
    """A transformers CLIP/SigLIP model: a local folder, or a hub id from the cache (downloaded
    when missing and the hub can be reached)."""
    from .hf import (
        cached_snapshot,
        download_snapshot,
        folder_identity,
        local_folder,
        read_config,
        repo_id,
        require_transformers,
    )

    require_transformers(model)
    folder = local_folder(model)
    if folder is None:
        repo = repo_id(model)
        folder = cached_snapshot(repo)
        if folder is None:
            if _offline() or not _hub_reachable():
                why = "HF_HUB_OFFLINE is set" if _offline() else "the Hugging Face hub cannot be reached"
                hf_home = os.environ.get("HF_HOME", "~/.cache/huggingface")
                raise ModelLoadError(f"--model {model}: not in the local cache ({hf_home}/hub) and {why}; download "
                                     f"it on a machine with network (huggingface-cli download {repo}) and copy "
                                     "the cache, or pass a local folder: --model hf:/path/to/folder")
            folder = download_snapshot(repo, model)
    read_config(folder, model)
    weights_id = f"hf:{folder_identity(folder)}"
    return WeightsRef(model, model, "", weights_id, f"--model {model}", (str(folder),), backend="transformers")


def _sidecar_weights(model: str | None, pretrained: str, sidecar: dict) -> WeightsRef:
    """The reference of a fine-tuned weights file: architecture and preprocessing from its sidecar."""
    named = sidecar["architecture"]
    if model is not None and model.strip().replace("/", "-").lower() != named.lower():
        raise UsageError(f"--model {model} disagrees with {sidecar_path(Path(pretrained)).name}, which says the "
                         f"weights are a {named}; drop --model (the file names its architecture)")
    arch = _register_sidecar_arch(sidecar)
    path = Path(pretrained).expanduser()
    check_checkpoint_file(path, f"--pretrained {path}")
    kwargs = _preprocess_kwargs(sidecar.get("preprocess") or {})
    return WeightsRef(named, arch, pretrained, file_identity(path), f"--pretrained {path}", (arch, str(path)),
                      tuple(kwargs.items()), checkpoint=str(path))


def load_model(
    model: str | WeightsRef | None = None,
    pretrained: str | None = DEFAULT_PRETRAINED,
    device: str | torch.device = "auto",
    precision: str = "auto",
    runtime: str | None = None,
) -> LoadedModel:
    """Load an open_clip model with its tokenizer and inference preprocessing, ready to run.

    ``model`` is an architecture (``ViT-B-32``), ``hf-hub:org/name``, a :class:`WeightsRef`
    from :func:`resolve_weights`, or None (the architecture a fine-tuned file's sidecar names,
    else :data:`DEFAULT_MODEL`); ``pretrained`` is a tag (``openai``), a local checkpoint file,
    or None for random weights (testing only; an empty string is an error). ``runtime``: where
    the image tower runs on a CPU (``auto``/``torch``/``openvino``, default ``ZEROSHOT_RUNTIME``
    or ``auto``; see :mod:`zeroshot.runtimes`).
    """
    import open_clip
    import torch

    ref = model if isinstance(model, WeightsRef) else resolve_weights(model, pretrained)
    torch_device = device if isinstance(device, torch.device) else resolve_device(device)
    resolved_precision = resolve_precision(precision, torch_device)
    source = ref.source
    if ref.backend == "transformers":
        from .hf import load as load_hf

        net, tokenizer, preprocess = load_hf(Path(ref.create_args[0]), ref.name)
        return _ready(net, tokenizer, preprocess, ref, torch_device, resolved_precision,
                      (precision or "auto").strip().lower(), runtime)
    try:
        logging.disable(logging.WARNING)  # open_clip logs through the root logger; we report ourselves
        net, _, preprocess = open_clip.create_model_and_transforms(
            *ref.create_args, device="cpu", weights_only=True, **dict(ref.create_kwargs)
        )
        tokenizer = open_clip.get_tokenizer(ref.arch)
    except (UsageError, ModelLoadError):
        raise
    except FileNotFoundError as err:
        raise ModelLoadError(f"{source}: {str(err).splitlines()[0]}") from None
    except Exception as err:  # noqa: BLE001 - every loader failure becomes one line
        if "Failed to download" in str(err) or "HF Hub" in str(err):
            raise _missing_weights_error(source) from None
        mismatch = diagnose_mismatch(Path(ref.checkpoint), ref.arch) if ref.checkpoint else None
        raise ModelLoadError(f"{source}: {mismatch}" if mismatch else describe_load_failure(err, source)) from None
    finally:
        logging.disable(logging.NOTSET)
    _refuse_made_up_bias(net, ref)
    return _ready(net, tokenizer, preprocess, ref, torch_device, resolved_precision,
                  (precision or "auto").strip().lower(), runtime)


def relocate(loaded: LoadedModel, device: str | torch.device = "auto", precision: str | None = None) -> LoadedModel:
    """The fp32 weights of ``loaded`` (e.g. received by another process: a Ray actor) ready on
    ``device``, with ``precision`` (default: the one asked for at load) chosen there exactly as
    :func:`load_model` chooses it. ``check_weights`` travel along (for ``auto``'s first-batch check)."""
    import torch

    torch_device = device if isinstance(device, torch.device) else resolve_device(device)
    requested = (precision or loaded.requested or loaded.precision).strip().lower()
    ref = WeightsRef(loaded.name, loaded.name, loaded.pretrained, loaded.weights_id, loaded.name, ())
    ready = _ready(loaded.model, loaded.tokenizer, loaded.preprocess, ref, torch_device,
                   resolve_precision(requested, torch_device), requested, loaded.requested_runtime)
    if loaded.check_weights is not None:
        ready.check_weights = loaded.check_weights.to(torch_device)
    return ready


def _ready(net: torch.nn.Module, tokenizer: Callable, preprocess: Callable, ref: WeightsRef,
           device: torch.device, precision: str, requested: str, runtime: str | None = None) -> LoadedModel:
    """The model on its device, in eval mode, without gradients, wrapped as a LoadedModel."""
    net = net.to(device).eval()
    for param in net.parameters():
        param.requires_grad_(False)
    asked = requested_runtime(runtime)
    runtime = resolve_runtime(asked, device.type, precision, ref.backend)
    # Converted from the fp32 weights, before an explicit bf16 converts them.
    image_runtime = _image_runtime(net, ref, precision, runtime, asked != "auto") if runtime == "openvino" else None
    reduced = None
    if precision == "bf16" and device.type == "cpu":
        # An explicit bf16 converts the weights; ``auto`` keeps fp32 beside them for its check.
        explicit = requested == "bf16"
        reduced = _bf16_weights(net) if explicit else _bf16_weights(copy.deepcopy(net))
    if runtime == "compile":
        image_runtime = _compiled_tower(reduced if reduced is not None else net, precision, device)
    return LoadedModel(
        model=net,
        tokenizer=tokenizer,
        preprocess=preprocess,
        name=ref.name,
        pretrained=ref.pretrained,
        weights_id=ref.weights_id,
        device=device,
        precision=precision,
        requested=requested,
        text_precision=precision,
        reduced=reduced,
        runtime=runtime if image_runtime is not None else "torch",
        image_runtime=image_runtime,
        requested_runtime=asked,
    )


def _image_runtime(net: torch.nn.Module, ref: WeightsRef, precision: str, runtime: str, explicit: bool) -> Any:
    """The image tower compiled for ``runtime`` (OpenVINO). Where it cannot be converted, an
    explicit ``--runtime openvino`` is an error; ``auto`` keeps torch."""
    from .runtimes import openvino_image_tower

    try:
        return openvino_image_tower(net, ref.weights_id, _image_size(net), precision)
    except ModelLoadError:
        if explicit:
            raise
        return None


def _compiled_tower(tower: torch.nn.Module, precision: str, device: torch.device) -> Any:
    """``tower``'s image side through ``torch.compile``: bf16 input for the CPU's bf16 weights,
    else float32 input under the precision's autocast (a no-op at fp32)."""
    import torch

    from .runtimes import CompiledImageTower

    if device.type == "cpu" and precision == "bf16":
        return CompiledImageTower(tower, torch.bfloat16, contextlib.nullcontext)
    return CompiledImageTower(tower, torch.float32, lambda: autocast(precision, device))


def _image_size(net: torch.nn.Module) -> tuple[int, int]:
    """The (height, width) the image tower takes."""
    size = getattr(getattr(net, "visual", None), "image_size", None)
    if size is None:
        raise ModelLoadError("the image tower does not say its input size; use --runtime torch")
    return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))


def _bf16_weights(net: torch.nn.Module) -> torch.nn.Module:
    """``net`` with bf16 weights, except the score's temperature and bias (kept exact)."""
    import torch

    kept = {name: getattr(net, name).detach().clone() for name in ("logit_scale", "logit_bias")
            if isinstance(getattr(net, name, None), torch.Tensor)}
    net = net.to(torch.bfloat16)
    for name, value in kept.items():
        getattr(net, name).data = value
    return net


def _refuse_made_up_bias(net: torch.nn.Module, ref: WeightsRef) -> None:
    """open_clip fills a missing ``logit_bias`` with 0 (meant for starting SigLIP training from
    a CLIP checkpoint): for inference that is a made-up parameter, so it is an error."""
    if ref.checkpoint is None or getattr(net, "logit_bias", None) is None:
        return
    if Path(ref.checkpoint).suffix.lower() in (".npz", ".npy"):
        return
    shapes = checkpoint_shapes(Path(ref.checkpoint))
    if shapes is not None and "logit_bias" not in shapes:
        mismatch = diagnose_mismatch(Path(ref.checkpoint), ref.arch)
        raise ModelLoadError(f"{ref.source}: " + (mismatch or f"the checkpoint has no logit_bias, which --model "
                                                  f"{ref.arch} needs; check --model"))


# ------------------------------------------------------------------------------------- listing


@dataclass(frozen=True)
class PretrainedEntry:
    arch: str
    tag: str
    cached: bool


def list_pretrained_models(cached_only: bool = False, name_filter: str | None = None) -> list[PretrainedEntry]:
    """Every (architecture, tag) open_clip knows, marking those whose weights are cached locally,
    then the architectures with no pretrained tag (tag ``""``: usable with a local checkpoint,
    e.g. configs registered through ``ZEROSHOT_MODEL_CONFIGS``); ``name_filter`` keeps those whose
    architecture or tag contains it (case-insensitive)."""
    import open_clip

    register_model_configs()
    needle = (name_filter or "").strip().lower()
    pairs = open_clip.list_pretrained()
    tagged = {arch for arch, _ in pairs}
    pairs += [(arch, "") for arch in open_clip.list_models() if arch not in tagged]
    entries = [
        PretrainedEntry(arch, tag, bool(tag) and cached_tag_weights(arch, tag) is not None)
        for arch, tag in pairs
        if needle in arch.lower() or needle in tag.lower()
    ]
    return [e for e in entries if e.cached] if cached_only else entries
