"""What fine-tuning writes: the weights as safetensors with a JSON sidecar (``FILE.json``) that
makes the file loadable with ``--pretrained FILE`` alone, WiSE-FT weight mixing, and the
resumable training checkpoint (model, optimiser, scheduler, RNG states, position).
"""

from __future__ import annotations

import copy
import io
import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .._version import __version__
from ..checkpoints import SIDECAR_FORMAT, read_sidecar, sidecar_path
from ..errors import ModelLoadError, OutputError, UsageError
from ..output.writers import atomic_file

StateDict = Mapping[str, torch.Tensor]


def check_output(path: str | os.PathLike, option: str = "--out") -> Path:
    """``path`` can be written: a ``.safetensors`` name in an existing, writable folder."""
    out = Path(path).expanduser()
    if out.suffix.lower() != ".safetensors":
        raise UsageError(f"{option} {out}: the weights are written as safetensors; name the file *.safetensors")
    folder = out.parent if str(out.parent) else Path(".")
    if out.is_dir():
        raise OutputError(f"{option} {out}: is a folder; give a file name")
    if not folder.is_dir():
        raise OutputError(f"{option} {out}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise OutputError(f"{option} {out}: cannot write in {folder} (permission denied)")
    return out


def model_config_of(net: torch.nn.Module, arch: str) -> dict[str, Any]:
    """The open_clip config ``net`` was built from (QuickGELU recorded when the model uses it)."""
    import open_clip
    from open_clip.transformer import QuickGELU

    config = copy.deepcopy(open_clip.get_model_config(arch) or {})
    if not config:
        raise ModelLoadError(f"{arch}: no open_clip config to record; fine-tuning needs a registered architecture")
    if any(isinstance(m, QuickGELU) for m in net.modules()):
        config["quick_gelu"] = True
    return config


def preprocess_of(net: torch.nn.Module) -> dict[str, Any]:
    """The model's preprocessing settings (size, mean, std, interpolation, resize mode)."""
    from open_clip.model import get_model_preprocess_cfg

    cfg = dict(get_model_preprocess_cfg(net))
    return {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()}


def _tensors(state: StateDict) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in state.items()}


def write_weights(path: Path, state: StateDict, sidecar: dict[str, Any], option: str = "--out") -> Path:
    """``state`` as safetensors at ``path`` and ``sidecar`` as ``path.json``, each atomically."""
    from safetensors.torch import save

    blob = save(_tensors(state), metadata={"format": "pt", "zeroshot": SIDECAR_FORMAT})
    with atomic_file(path, binary=True, option=option) as handle:
        handle.write(blob)
    with atomic_file(sidecar_path(path), option=option) as handle:
        handle.write(json.dumps(sidecar, indent=2, ensure_ascii=False) + "\n")
    return path


def save_finetuned(
    net: torch.nn.Module, path: str | os.PathLike, arch: str, training: dict[str, Any] | None = None,
    state: StateDict | None = None, option: str = "--out",
) -> Path:
    """Save ``net``'s weights (or ``state``) with the sidecar naming its architecture, full
    open_clip config, preprocessing and ``training`` provenance."""
    sidecar = {
        "format": SIDECAR_FORMAT,
        "architecture": arch,
        "model_config": model_config_of(net, arch),
        "preprocess": preprocess_of(net),
        "training": {"zeroshot_version": __version__, "saved": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                     **(training or {})},
    }
    return write_weights(check_output(path, option), state if state is not None else net.state_dict(), sidecar, option)


# ---------------------------------------------------------------------------------- WiSE-FT


def wise_ft(start: StateDict, tuned: StateDict, alpha: float) -> dict[str, torch.Tensor]:
    """WiSE-FT: ``(1 - alpha) * start + alpha * tuned`` for every floating-point tensor (others
    are taken from ``tuned``). ``alpha`` 0 returns ``start`` and 1 returns ``tuned``, bit for bit."""
    if not 0.0 <= alpha <= 1.0:
        raise UsageError(f"--alpha {alpha}: must be between 0 and 1 (0 = starting weights, 1 = fine-tuned)")
    if set(start) != set(tuned):
        differ = sorted(set(start) ^ set(tuned))
        raise UsageError(f"the two weight sets have different tensors ({', '.join(differ[:3])}); mix only "
                         "checkpoints of the same architecture")
    mixed = {}
    for key, b in tuned.items():
        a = start[key]
        if a.shape != b.shape:
            raise UsageError(f"tensor {key} has shape {tuple(a.shape)} in one file and {tuple(b.shape)} in the other; "
                             "mix only checkpoints of the same architecture")
        if alpha == 0.0:
            mixed[key] = a.detach().clone()
        elif alpha == 1.0 or not b.is_floating_point():
            mixed[key] = b.detach().clone()
        else:
            mixed[key] = ((1 - alpha) * a.detach().float() + alpha * b.detach().float()).to(b.dtype)
    return mixed


def _read_state(path: Path, option: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    from ..models import check_checkpoint_file, describe_load_failure

    if not path.is_file():
        raise UsageError(f"{option} {path}: file not found")
    check_checkpoint_file(path, f"{option} {path}")
    try:
        if path.suffix.lower() == ".safetensors":
            return load_file(str(path))
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - one line for any unreadable file
        raise ModelLoadError(describe_load_failure(err, f"{option} {path}")) from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelLoadError(f"{option} {path}: not a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def mix_files(first: str | os.PathLike, second: str | os.PathLike, alpha: float, out: str | os.PathLike) -> Path:
    """``zeroshot finetune --mix A B --alpha X``: WiSE-FT of two weight files (``A`` the
    starting weights, ``B`` the fine-tuned ones) into ``out``, with a sidecar taken from
    whichever input has one (the architecture must agree when both do)."""
    if not 0.0 <= alpha <= 1.0:
        raise UsageError(f"--alpha {alpha}: must be between 0 and 1 (0 = the first file, 1 = the second)")
    a, b = Path(first).expanduser(), Path(second).expanduser()
    target = check_output(out)
    mixed = wise_ft(_read_state(a, "--mix"), _read_state(b, "--mix"), alpha)
    try:
        sides = [s for s in (read_sidecar(b), read_sidecar(a)) if s is not None]
    except ValueError as err:  # a damaged sidecar
        raise ModelLoadError(f"--mix: {err}") from None
    if len(sides) == 2 and sides[0]["architecture"] != sides[1]["architecture"]:
        raise UsageError(f"--mix: {a} is a {sides[1]['architecture']} and {b} a {sides[0]['architecture']}; "
                         "mix only checkpoints of the same architecture")
    if not sides:
        raise UsageError(f"--mix: neither {a} nor {b} has a sidecar ({sidecar_path(b).name}) naming its architecture; "
                         "mix files written by `zeroshot finetune`")
    sidecar = copy.deepcopy(sides[0])
    sidecar["training"] = {"zeroshot_version": __version__, "wise_ft": {"first": str(a), "second": str(b), "alpha": alpha},
                           "from": sidecar.get("training", {})}
    return write_weights(target, mixed, sidecar)


# ----------------------------------------------------------------------- training checkpoint


def rng_states() -> dict[str, Any]:
    import random

    states: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng(states: dict[str, Any]) -> None:
    import random

    torch.set_rng_state(states["torch"])
    random.setstate(states["python"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def save_training_state(path: Path, state: dict[str, Any]) -> None:
    """The resumable training state, written atomically (a crash leaves the previous one)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    with atomic_file(path, binary=True, option="--checkpoint") as handle:
        handle.write(buffer.getvalue())


def load_training_state(path: Path) -> dict[str, Any]:
    """A checkpoint written by :func:`save_training_state` (read with ``weights_only``: tensors
    and plain Python values only, no code runs)."""
    if not path.is_file():
        raise UsageError(f"--resume: no checkpoint at {path}; start without --resume")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001
        raise ModelLoadError(f"--resume {path}: cannot read the training checkpoint ({type(err).__name__}: {err}); "
                             "delete it to start over") from None
