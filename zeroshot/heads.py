"""Linear classification heads on image embeddings (written by ``zeroshot fewshot``), read for
``classify --head``: a safetensors file (``weight [C, D]``, ``bias [C]``) and its JSON sidecar
(``HEAD.json``: labels, the model the head was fitted on, the temperature, how it was fitted).

Logits are ``exp(t) * normalize(x) @ weight.T + bias`` with the model's temperature ``t`` at
fitting time; probabilities are a softmax over the head's labels (also for SigLIP models: the
head is a multinomial logistic regression).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .checkpoints import sidecar_path, sniff
from .errors import ModelLoadError, UsageError

if TYPE_CHECKING:
    import torch

    from .models import LoadedModel

HEAD_FORMAT = "zeroshot-head/1"


@dataclass
class LinearHead:
    """A fitted linear head: ``labels``, ``weight`` ``[C, D]``, ``bias`` ``[C]``, the log
    temperature ``logit_scale`` it was fitted with, and the identity of its model."""

    labels: tuple[str, ...]
    weight: torch.Tensor
    bias: torch.Tensor
    logit_scale: float
    model: dict[str, str]
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def digest(self) -> str:
        """A short content hash (weights and labels), for resume journals and caches."""
        h = hashlib.sha256()
        h.update(json.dumps(self.labels).encode())
        for t in (self.weight, self.bias):
            h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()[:16]

    def check_model(self, loaded: LoadedModel, source: str = "--head") -> None:
        """The head fits ``loaded``: same architecture and weights, same embedding size."""
        same_weights = (self.model.get("weights_id") == loaded.weights_id
                        or (self.model.get("pretrained") == loaded.pretrained and not Path(loaded.pretrained).is_file()))
        if self.model.get("name") != loaded.name or not same_weights:
            raise UsageError(f"{source} was fitted on {self.model.get('name')} ({self.model.get('pretrained') or 'random init'}), "
                             f"not {loaded.name} ({loaded.pretrained or 'random init'}); pass the same --model/--pretrained "
                             "or fit a head for this model")

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        from .scoring import class_logits

        return class_logits(features.cpu(), self.weight.float(), self.logit_scale, self.bias.float())


def head_sidecar(head: LinearHead) -> dict[str, Any]:
    return {"format": HEAD_FORMAT, "labels": list(head.labels), "logit_scale": head.logit_scale, "model": head.model,
            **head.info}


def read_head(path: str | Path, source: str = "--head") -> LinearHead:
    """A head written by ``zeroshot fewshot``; one-line errors for anything else."""
    from safetensors.torch import load_file

    file = Path(path).expanduser()
    where = f"{source} {file}"
    if not file.is_file():
        raise UsageError(f"{where}: file not found")
    side = sidecar_path(file)
    try:
        meta = json.loads(side.read_text("utf-8"))
    except FileNotFoundError:
        raise UsageError(f"{where}: no {side.name} beside it; give a head written by `zeroshot fewshot`") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelLoadError(f"{where}: unreadable {side.name} ({err})") from None
    if not isinstance(meta, dict) or meta.get("format") != HEAD_FORMAT:
        raise UsageError(f"{where}: not a head written by `zeroshot fewshot` ({side.name} has no format {HEAD_FORMAT!r})")
    if sniff(file) != "safetensors":
        raise ModelLoadError(f"{where}: not a safetensors file; write the head again")
    try:
        tensors = load_file(str(file))
        weight, bias = tensors["weight"], tensors["bias"]
    except Exception as err:  # noqa: BLE001
        raise ModelLoadError(f"{where}: unreadable head ({type(err).__name__}: {err})") from None
    labels = tuple(meta.get("labels") or ())
    if weight.ndim != 2 or bias.shape != (weight.shape[0],) or len(labels) != weight.shape[0]:
        raise ModelLoadError(f"{where}: {len(labels)} labels but weights of shape {tuple(weight.shape)}; write the head again")
    info = {k: v for k, v in meta.items() if k not in ("format", "labels", "logit_scale", "model")}
    return LinearHead(labels, weight, bias, float(meta["logit_scale"]), dict(meta.get("model") or {}), info)
