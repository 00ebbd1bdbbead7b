"""Fine-tuning and few-shot heads for zeroshot models (optional: the library core never imports this).

    from zeroshot.train import finetune, FinetuneSettings, load_training_data, clip_loss, wise_ft

Importing this package loads torch (the names are imported eagerly: the function
``finetune`` and its module ``zeroshot.train.finetune`` share a name).
"""

from __future__ import annotations

from .checkpoint import mix_files, save_finetuned, wise_ft
from .data import TrainPairs, load_training_data, read_caption_manifest
from .finetune import EpochStats, FinetuneResult, FinetuneSettings, Hooks, best_of_among, finetune
from .loss import caption_groups, clip_loss, contrastive_loss, siglip_loss
from .schedule import cosine_lr, param_groups

__all__ = [
    "EpochStats", "FinetuneResult", "FinetuneSettings", "Hooks", "TrainPairs", "best_of_among", "caption_groups", "clip_loss", "contrastive_loss",
    "cosine_lr", "finetune", "load_training_data", "mix_files", "param_groups", "read_caption_manifest",
    "save_finetuned", "siglip_loss", "wise_ft",
]
