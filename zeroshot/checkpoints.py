"""Look inside checkpoint files without loading their weights: what kind of file it is, which
keys and shapes its state dict has, and which open_clip architectures those fit. This is what
turns a failed load into a message that says what is wrong and which ``--model`` to use."""

from __future__ import annotations

import contextlib
import logging
import re
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

Shapes = dict[str, tuple[int, ...]]

ACCEPTED = ("a PyTorch state dict saved with torch.save (.pt, .pth, .bin), a .safetensors file, "
            "or a pretrained tag (`zeroshot models` lists them)")
_MAX_SAFETENSORS_HEADER = 100_000_000


def sniff(path: Path) -> str | None:
    """The kind of checkpoint a file holds, from its first bytes: ``"zip"`` (torch.save's
    format, also .npz), ``"pickle"`` (torch's legacy format or a bare pickle), ``"safetensors"``,
    ``"numpy"``, ``"empty"``, or None when it is none of these."""
    with open(path, "rb") as handle:
        head = handle.read(16)
    if not head:
        return "empty"
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    if head[:1] == b"\x80" and len(head) > 1 and 2 <= head[1] <= 5:
        return "pickle"
    if head.startswith(b"\x93NUMPY"):
        return "numpy"
    if len(head) > 8 and 2 <= int.from_bytes(head[:8], "little") <= _MAX_SAFETENSORS_HEADER and head[8:9] == b"{":
        return "safetensors"
    return None


def describe_content(path: Path) -> str:
    """A few words on what a file that is no checkpoint looks like (text, HTML, binary)."""
    with open(path, "rb") as handle:
        head = handle.read(512)
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        text = ""
    if not text or any(c < " " and c not in "\t\n\r\f" for c in text):
        return "unrecognised binary content"
    if "<html" in text.lower() or "<!doctype" in text.lower():
        return "it is an HTML page, e.g. an error page saved instead of the download"
    return "it is a text file"


def _unwrap(obj: object) -> dict | None:
    """The state dict inside what torch.load returned, as open_clip finds it."""
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj:
        return None
    if next(iter(obj)).startswith("module."):  # saved from DistributedDataParallel
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def checkpoint_shapes(path: Path) -> Shapes | None:
    """``{key: shape}`` of a checkpoint's state dict, read without loading its tensors into
    memory (safetensors header; torch zip files memory-mapped); None when it cannot be read
    safely or is not a dict of tensors."""
    import torch

    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if path.suffix.lower() == ".safetensors":
                from safetensors import safe_open

                with safe_open(str(path), framework="pt") as handle:
                    return {k: tuple(handle.get_slice(k).get_shape()) for k in handle.keys()}  # noqa: SIM118 - not iterable
            try:
                obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError:  # the legacy (non-zip) format cannot be memory-mapped
                obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - unreadable: the caller keeps the loader's own message
        return None
    state = _unwrap(obj)
    if state is None or not all(isinstance(v, torch.Tensor) for v in state.values()):
        return None
    return {k: tuple(v.shape) for k, v in state.items()}


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(logging.NOTSET)


def model_shapes(arch: str) -> Shapes | None:
    """``{key: shape}`` of an open_clip architecture's state dict, built on the meta device (no
    memory, no initialisation: a fraction of a second even for large models); None when the
    architecture cannot be built offline."""
    import open_clip
    import torch

    try:
        with _quiet(), torch.device("meta"):
            model = open_clip.create_model(arch, device="meta")
    except Exception:  # noqa: BLE001 - e.g. a config that needs a download to build
        return None
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _same(a: Shapes, b: Shapes) -> bool:
    """Equal key sets and shapes; a one-element scale or bias may be stored as a scalar (open_clip
    reshapes those on load)."""
    if a.keys() != b.keys():
        return False
    for key, shape in a.items():
        other = b[key]
        if shape != other and not (key in ("logit_scale", "logit_bias") and _numel(shape) == _numel(other) == 1):
            return False
    return True


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _layer_count(shapes: Shapes, prefixes: tuple[str, ...]) -> int:
    found = set()
    for key in shapes:
        for prefix in prefixes:
            if key.startswith(prefix):
                match = re.match(r"(\d+)\.", key[len(prefix):])
                if match:
                    found.add(match.group(1))
    return len(found)


def fitting_architectures(shapes: Shapes, exclude: str = "", budget_seconds: float = 5.0) -> list[str]:
    """open_clip architectures whose state dict has exactly the keys and shapes of ``shapes``.

    Only configs whose embedding size, tower widths and depths occur in the checkpoint are
    built (on the meta device), so this takes well under a second for typical checkpoints;
    ``budget_seconds`` bounds it whatever the registry holds. Configs with a Hugging Face text
    tower are skipped (building them reads a config from the hub)."""
    import open_clip

    dims = {d for shape in shapes.values() for d in shape}
    uses_timm = any(k.startswith("visual.trunk.") for k in shapes)
    vision_layers = _layer_count(shapes, ("visual.transformer.resblocks.",))
    text_layers = _layer_count(shapes, ("transformer.resblocks.", "text.transformer.resblocks."))
    deadline = time.monotonic() + budget_seconds
    fits = []
    for name in open_clip.list_models():
        if name == exclude:
            continue
        cfg = open_clip.get_model_config(name) or {}
        vision, text = cfg.get("vision_cfg") or {}, cfg.get("text_cfg") or {}
        if text.get("hf_model_name") or bool(vision.get("timm_model_name")) != uses_timm:
            continue
        if cfg.get("embed_dim") not in dims:
            continue
        if any(isinstance(c.get("width"), int) and c["width"] not in dims for c in (vision, text)):
            continue
        if any(isinstance(c.get("layers"), int) and count and c["layers"] != count
               for c, count in ((vision, vision_layers), (text, text_layers))):
            continue
        if time.monotonic() > deadline:
            break
        candidate = model_shapes(name)
        if candidate is not None and _same(shapes, candidate):
            fits.append(name)
    return fits


def _names(keys: list[str], limit: int = 3) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (", ..." if len(keys) > limit else "")


def _count(n: int, word: str, plural: str | None = None) -> str:
    return f"{n} {word if n == 1 else (plural or word + 's')}"


def describe_mismatch(shapes: Shapes, expected: Shapes, arch: str, fits: list[str]) -> str | None:
    """What separates a checkpoint (``shapes``) from architecture ``arch`` (``expected``), and
    which architectures it fits instead, in one line; None when they match."""
    if _same(shapes, expected):
        return None
    missing = [k for k in expected if k not in shapes]
    unexpected = [k for k in shapes if k not in expected]
    resized = [k for k in expected if k in shapes and not _same({k: shapes[k]}, {k: expected[k]})]
    parts = []
    if missing:
        parts.append(f"{_count(len(missing), 'key')} missing ({_names(missing)})")
    if unexpected:
        parts.append(f"{_count(len(unexpected), 'unexpected key')} ({_names(unexpected)})")
    if resized:
        shown = ", ".join(f"{k} {list(shapes[k])} vs {list(expected[k])}" for k in resized[:3])
        parts.append(f"{_count(len(resized), 'size mismatch', 'size mismatches')} ({shown}"
                     f"{', ...' if len(resized) > 3 else ''})")
    if fits:
        hint = f"its keys and shapes fit --model {fits[0]}"
        if len(fits) > 1:
            hint += f" (also {_names(fits[1:])})"
    else:
        hint = ("no known architecture has exactly these keys and shapes: check --model, or register the "
                "model's config with ZEROSHOT_MODEL_CONFIGS")
    return f"the checkpoint does not fit this architecture (--model {arch}): {'; '.join(parts)}; {hint}"


# ------------------------------------------------------------------- fine-tuned weights' sidecar

SIDECAR_FORMAT = "zeroshot-weights/1"


def sidecar_path(weights: Path) -> Path:
    """The JSON file beside a weights file that names its architecture: ``FILE.json``."""
    return weights.with_name(weights.name + ".json")


def read_sidecar(weights: Path) -> dict | None:
    """The sidecar of ``weights`` (written by ``zeroshot finetune``), or None when there is none.
    A sidecar that is not ours or is damaged is an error (ValueError with a one-line reason)."""
    import json

    path = sidecar_path(Path(weights))
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: unreadable sidecar ({err}); delete it or pass --model") from None
    if not isinstance(data, dict) or data.get("format") != SIDECAR_FORMAT:
        return None  # some other tool's JSON: ignored
    if not isinstance(data.get("architecture"), str) or not isinstance(data.get("model_config"), dict):
        raise ValueError(f"{path}: sidecar without 'architecture' and 'model_config'; write it again")
    return data
