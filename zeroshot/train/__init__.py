"""Fine-tuning and few-shot heads for zeroshot models (optional: the library core never imports this).

    from zeroshot.train import finetune, FinetuneSettings, clip_loss, wise_ft
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "clip_loss": "loss",
    "siglip_loss": "loss",
    "contrastive_loss": "loss",
    "caption_groups": "loss",
    "cosine_lr": "schedule",
    "param_groups": "schedule",
    "TrainPairs": "data",
    "read_caption_manifest": "data",
    "load_training_data": "data",
    "FinetuneSettings": "finetune",
    "FinetuneResult": "finetune",
    "finetune": "finetune",
    "wise_ft": "checkpoint",
    "mix_files": "checkpoint",
    "save_finetuned": "checkpoint",
    "FewshotHead": "fewshot",
    "fit_head": "fewshot",
    "load_head": "fewshot",
    "save_head": "fewshot",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'zeroshot.train' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
