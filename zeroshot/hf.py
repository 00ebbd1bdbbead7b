"""Hugging Face ``transformers`` CLIP and SigLIP checkpoints as zeroshot models (extra ``[hf]``).

``--model hf:openai/clip-vit-base-patch32`` (a hub id, from the Hugging Face cache or downloaded)
or ``--model hf:/path/to/folder`` (a folder written by ``save_pretrained``, with ``config.json``).
The model is wrapped so the rest of zeroshot sees what an open_clip model offers:
``encode_image`` / ``encode_text`` / ``logit_scale`` (/ ``logit_bias`` for SigLIP). The model's
own image processor (resize, centre crop, rescale, normalise) is rebuilt as an
:class:`HFImageTransform` whose uint8 part runs in the decode workers, and its tokenizer pads to
the full context (``padding="max_length"``, as SigLIP was trained). ``transformers`` is imported
only when such a model is used.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .errors import ModelLoadError, UsageError

if TYPE_CHECKING:
    from PIL import Image

HF_PREFIX = "hf:"
MODEL_TYPES = ("clip", "siglip")
INSTALL_HINT = 'pip install "zeroshot[hf]"'
# What a hub snapshot needs: configs, tokenizer files and safetensors weights (not the
# TensorFlow/Flax/PyTorch-pickle duplicates many repositories also hold).
SNAPSHOT_PATTERNS = ["*.json", "*.txt", "*.model", "*.safetensors"]  # pytorch_model.bin only without these
_WEIGHT_SUFFIXES = (".safetensors", ".bin")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def is_hf_model(model: str) -> bool:
    """True for ``hf:...`` names and for local folders holding a transformers ``config.json``
    (``hf-hub:`` is open_clip's own hub prefix and is not ours)."""
    if model.startswith(HF_PREFIX):
        return True
    try:
        path = Path(model).expanduser()
        return path.is_dir() and (path / "config.json").is_file()
    except OSError:
        return False


def require_transformers(model: str) -> None:
    """A one-line error when the ``[hf]`` extra is missing."""
    try:
        import transformers  # noqa: F401
    except ImportError:
        raise UsageError(f"--model {model}: Hugging Face models need transformers: {INSTALL_HINT}") from None


def local_folder(model: str) -> Path | None:
    """The folder ``model`` names, or None for a hub id; a path that does not exist is an error."""
    spec = model[len(HF_PREFIX):] if model.startswith(HF_PREFIX) else model
    if not spec.strip():
        raise UsageError(f"--model {model}: give a hub id (hf:org/name) or a folder (hf:/path/to/folder)")
    path = Path(spec).expanduser()
    if path.is_dir():
        return path
    if spec.startswith(("/", ".", "~")) or path.exists() or spec.count("/") > 1 or not spec.strip("/"):
        raise UsageError(f"--model {model}: {spec} is not a folder with a transformers config.json "
                         "nor a hub id (org/name)")
    return None


def repo_id(model: str) -> str:
    return model[len(HF_PREFIX):] if model.startswith(HF_PREFIX) else model


def hub_cache_dir() -> str | None:
    """The Hugging Face cache as the environment names it now (``HF_HUB_CACHE``, else
    ``HF_HOME``/hub; None: huggingface_hub's default). huggingface_hub reads these once, at
    import; reading them per call keeps a change made later in the process."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return str(Path(os.environ["HF_HOME"]).expanduser() / "hub")
    return None


def cached_snapshot(repo: str) -> Path | None:
    """The local snapshot folder of ``repo`` when its files are in the Hugging Face cache."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo, allow_patterns=SNAPSHOT_PATTERNS, local_files_only=True,
                                      cache_dir=hub_cache_dir()))
    except Exception:  # noqa: BLE001 - not cached (or a broken cache entry): treated as missing
        return None


def download_snapshot(repo: str, model: str) -> Path:
    from huggingface_hub import snapshot_download

    try:
        folder = Path(snapshot_download(repo, allow_patterns=SNAPSHOT_PATTERNS, cache_dir=hub_cache_dir()))
        if not weight_files(folder):  # an older repository without safetensors
            folder = Path(snapshot_download(repo, allow_patterns=["pytorch_model.bin"], cache_dir=hub_cache_dir()))
        return folder
    except Exception as err:  # noqa: BLE001 - every hub failure becomes one line
        text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelLoadError(f"--model {model}: cannot download {repo} from the Hugging Face hub "
                             f"({type(err).__name__}: {text[:160]})") from None


def read_config(folder: Path, model: str) -> dict[str, Any]:
    """The folder's ``config.json``, checked to be a CLIP or SigLIP model with weights."""
    try:
        config = json.loads((folder / "config.json").read_text("utf-8"))
    except FileNotFoundError:
        raise UsageError(f"--model {model}: {folder} has no config.json (not a transformers model folder)") from None
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"--model {model}: {folder / 'config.json'} is not readable JSON ({err})") from None
    kind = config.get("model_type") if isinstance(config, dict) else None
    if kind not in MODEL_TYPES:
        raise UsageError(f"--model {model}: model_type {kind!r} is not supported; hf: models must be "
                         f"{' or '.join(MODEL_TYPES)} (CLIPModel, SiglipModel)")
    if not weight_files(folder):
        raise ModelLoadError(f"--model {model}: {folder} holds no weights (model.safetensors or "
                             "pytorch_model.bin); download or save the model again")
    return config


def weight_files(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.iterdir() if p.suffix in _WEIGHT_SUFFIXES and p.is_file())
    safe = [p for p in files if p.suffix == ".safetensors"]
    return safe or files


def folder_identity(folder: Path) -> str:
    """A stable identity of a model folder: the content of its small files (configs,
    tokenizer, processor) and, per weights file, its hub blob hash (the cache names blobs by
    their sha256) or else its size and modification time. Copies of the same cache entry
    agree; editing any file makes a new identity."""
    digest = hashlib.sha256()
    for path in sorted(folder.iterdir()):
        if not path.is_file():
            continue
        if path.suffix in _WEIGHT_SUFFIXES:
            blob = path.resolve().name
            stat = path.stat()
            part = f"sha256={blob}" if _SHA256.match(blob) else f"{stat.st_size}:{stat.st_mtime_ns}"
        elif path.suffix in (".json", ".txt", ".model"):
            part = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            continue
        digest.update(f"{path.name}\0{part}\n".encode())
    return digest.hexdigest()[:32]


# ------------------------------------------------------------------------------- preprocessing


def _pil_resample(value: Any) -> int:
    """A PIL resampling code from what a processor stores (PIL code or torchvision mode)."""
    if isinstance(value, int):
        return int(value)
    from torchvision.transforms import InterpolationMode

    names = {InterpolationMode.NEAREST: 0, InterpolationMode.BILINEAR: 2, InterpolationMode.BICUBIC: 3,
             InterpolationMode.LANCZOS: 1, InterpolationMode.BOX: 4, InterpolationMode.HAMMING: 5}
    return names.get(value, 2)


@dataclass(frozen=True)
class HFImageTransform:
    """A CLIP/SigLIP image processor's inference transform, split like our Preprocessor wants:
    :meth:`uint8_pixels` (decode workers: resize, centre crop; uint8 ``[3, H, W]``) and then
    ``x * rescale`` and ``(x - mean) / std`` on the device. ``backend`` follows the processor:
    ``torchvision`` (the default processors) resizes uint8 tensors, ``pil`` resizes with PIL.
    Calling it runs the whole transform (float ``[3, H, W]``)."""

    shortest_edge: int | None  # resize the shorter side to this, keeping the aspect ratio
    size: tuple[int, int] | None  # or resize to exactly (height, width)
    crop: tuple[int, int] | None  # centre crop (height, width), None for none
    resample: int  # PIL resampling code
    rescale: float | None
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    backend: str = "torchvision"

    @property
    def input_size(self) -> int | None:
        final = self.crop or self.size
        return max(final) if final else self.shortest_edge

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) after the resize (transformers' ``get_resize_output_image_size``)."""
        if self.size is not None:
            return self.size
        if self.shortest_edge is None:
            return height, width
        short, long = (width, height) if width <= height else (height, width)
        new_long = int(self.shortest_edge * long / short)
        return (new_long, self.shortest_edge) if width <= height else (self.shortest_edge, new_long)

    def uint8_pixels(self, img: Image.Image) -> torch.Tensor:
        import numpy as np

        img = img.convert("RGB")
        height, width = self.output_size(img.height, img.width)
        if self.backend == "pil":
            if (height, width) != (img.height, img.width):
                img = img.resize((width, height), resample=self.resample)
            pixels = torch.from_numpy(np.array(img, dtype=np.uint8, copy=True)).permute(2, 0, 1)
        else:
            from torchvision.transforms import InterpolationMode
            from torchvision.transforms.v2 import functional as tvF

            modes = {0: InterpolationMode.NEAREST, 1: InterpolationMode.LANCZOS, 2: InterpolationMode.BILINEAR,
                     3: InterpolationMode.BICUBIC, 4: InterpolationMode.BOX, 5: InterpolationMode.HAMMING}
            pixels = torch.from_numpy(np.array(img, dtype=np.uint8, copy=True)).permute(2, 0, 1).contiguous()
            if (height, width) != tuple(pixels.shape[-2:]):
                pixels = tvF.resize(pixels, [height, width], interpolation=modes.get(self.resample,
                                    InterpolationMode.BILINEAR), antialias=True)
        return self._center_crop(pixels).contiguous()

    def _center_crop(self, pixels: torch.Tensor) -> torch.Tensor:
        """transformers' centre crop: pad with zeros when the image is smaller, then cut."""
        if self.crop is None:
            return pixels
        crop_h, crop_w = self.crop
        height, width = pixels.shape[-2:]
        if crop_h > height or crop_w > width:
            top, left = max(0, (crop_h - height) // 2), max(0, (crop_w - width) // 2)
            padded = torch.zeros((pixels.shape[0], max(crop_h, height), max(crop_w, width)), dtype=pixels.dtype)
            padded[:, top:top + height, left:left + width] = pixels
            pixels, (height, width) = padded, padded.shape[-2:]
        top, left = int((height - crop_h) / 2.0), int((width - crop_w) / 2.0)
        return pixels[:, top:top + crop_h, left:left + crop_w]

    def normalize(self, batch: torch.Tensor) -> torch.Tensor:
        """uint8 (or float) pixels ``[N, 3, H, W]`` -> the model's input, on their device."""
        out = batch.float()
        if self.rescale is not None:
            out = out.div_(255) if abs(self.rescale * 255 - 1) < 1e-12 else out.mul_(self.rescale)
        if self.mean is not None and self.std is not None:
            mean = torch.tensor(self.mean, dtype=torch.float32, device=out.device).view(1, -1, 1, 1)
            std = torch.tensor(self.std, dtype=torch.float32, device=out.device).view(1, -1, 1, 1)
            out = out.sub_(mean).div_(std)
        return out

    def __call__(self, img: Image.Image) -> torch.Tensor:
        return self.normalize(self.uint8_pixels(img)[None])[0]


def _pair(size: Any) -> tuple[int, int] | None:
    if size is None:
        return None
    get = size.get if isinstance(size, dict) else lambda k: getattr(size, k, None)
    height, width = get("height"), get("width")
    return (int(height), int(width)) if height and width else None


def _backend(processor: Any) -> str:
    """How the processor resizes: transformers 5 says it (``backend``); in 4.x the "fast"
    processors resize tensors with torchvision and the others with PIL."""
    backend = getattr(processor, "backend", None)
    if backend is None:
        return "torchvision" if type(processor).__name__.endswith("Fast") else "pil"
    return "pil" if backend == "pil" else "torchvision"


def image_transform(processor: Any) -> HFImageTransform:
    """The :class:`HFImageTransform` doing what ``processor`` (a CLIP or SigLIP image processor) does."""
    size = getattr(processor, "size", None) if getattr(processor, "do_resize", True) else None
    get = (size.get if isinstance(size, dict) else lambda k: getattr(size, k, None)) if size else (lambda k: None)
    if get("longest_edge") or get("max_height"):
        raise ModelLoadError(f"image processor size {dict(size)} is not supported (shortest_edge or height/width)")
    crop = _pair(getattr(processor, "crop_size", None)) if getattr(processor, "do_center_crop", False) else None
    normalize = getattr(processor, "do_normalize", True)
    return HFImageTransform(
        shortest_edge=int(get("shortest_edge")) if get("shortest_edge") else None,
        size=_pair(size) if size and not get("shortest_edge") else None,
        crop=crop,
        resample=_pil_resample(getattr(processor, "resample", 2)),
        rescale=float(processor.rescale_factor) if getattr(processor, "do_rescale", True) else None,
        mean=tuple(float(m) for m in processor.image_mean) if normalize else None,
        std=tuple(float(s) for s in processor.image_std) if normalize else None,
        backend=_backend(processor),
    )


# ------------------------------------------------------------------------------- text and model


class HFTokenizer:
    """Prompts -> ``[N, 2, L]`` int64 (token ids, attention mask), padded to the full context
    (``padding="max_length"``: SigLIP's training padding; CLIP's causal text tower pools at
    its end-of-text token, so padding after it changes nothing). ``tokenizer`` is the
    transformers tokenizer (zeroshot counts tokens with it to warn about cut labels)."""

    def __init__(self, tokenizer: Any, context_length: int) -> None:
        self.tokenizer = tokenizer
        self.context_length = context_length

    def __call__(self, texts: list[str] | str) -> torch.Tensor:
        texts = [texts] if isinstance(texts, str) else list(texts)
        out = self.tokenizer(texts, padding="max_length", max_length=self.context_length, truncation=True,
                             return_tensors="pt")
        ids = out["input_ids"].long()
        mask = out.get("attention_mask")
        mask = torch.full_like(ids, -1) if mask is None else mask.long()  # -1: the tokenizer gives no mask
        return torch.stack([ids, mask], dim=1)


def _features(out: Any) -> torch.Tensor:
    """transformers >= 5 returns an output object with ``pooler_output``; 4.x a tensor."""
    return out if not hasattr(out, "pooler_output") else out.pooler_output


class HFAdapter(torch.nn.Module):
    """A transformers ``CLIPModel``/``SiglipModel`` seen as an open_clip model:
    ``encode_image(pixels)``, ``encode_text(tokens)`` (tokens from :class:`HFTokenizer`), the
    learned ``logit_scale`` and, for SigLIP, ``logit_bias``."""

    def __init__(self, net: torch.nn.Module, kind: str, embed_dim: int) -> None:
        super().__init__()
        self.net = net
        self.kind = kind
        self.embed_dim = embed_dim
        self.logit_scale = net.logit_scale
        if kind == "siglip":
            self.logit_bias = net.logit_bias

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return _features(self.net.get_image_features(pixel_values=pixels))

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        ids, mask = (tokens[:, 0], tokens[:, 1]) if tokens.dim() == 3 else (tokens, None)
        if mask is not None and bool((mask < 0).any()):
            mask = None
        return _features(self.net.get_text_features(input_ids=ids, attention_mask=mask))


def load(folder: Path, model: str) -> tuple[torch.nn.Module, HFTokenizer, HFImageTransform]:
    """The adapter, tokenizer and image transform of the CLIP/SigLIP model in ``folder``."""
    import logging

    config = read_config(folder, model)
    logging.disable(logging.WARNING)  # import-time chatter of transformers and its optional packages
    try:
        from transformers import AutoImageProcessor, AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        try:
            net = AutoModel.from_pretrained(str(folder), local_files_only=True)
            tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
            processor = AutoImageProcessor.from_pretrained(str(folder), local_files_only=True)
        finally:
            hf_logging.set_verbosity(verbosity)
            hf_logging.enable_progress_bar()
    except (UsageError, ModelLoadError):
        raise
    except Exception as err:  # noqa: BLE001 - every loader failure becomes one line
        text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelLoadError(f"--model {model}: cannot load the transformers model in {folder} "
                             f"({type(err).__name__}: {text[:200]})") from None
    finally:
        logging.disable(logging.NOTSET)
    kind = config["model_type"]
    text_cfg = net.config.text_config
    embed_dim = int(getattr(net.config, "projection_dim", 0) or 0) if kind == "clip" else 0
    embed_dim = embed_dim or int(text_cfg.hidden_size)
    context = int(getattr(text_cfg, "max_position_embeddings", 0) or 77)
    return HFAdapter(net, kind, embed_dim), HFTokenizer(tokenizer, context), image_transform(processor)
