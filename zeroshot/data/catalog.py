"""Every dataset ``zeroshot eval`` knows, by name, and the template set each is scored with.

    from zeroshot.data.catalog import load_dataset
    data = load_dataset("food101", "/data", download=True)
"""

from __future__ import annotations

import os

from ..errors import UsageError
from .captions import caption_dataset
from .datasets import (
    EvalDataset,
    cifar_dataset,
    csv_dataset,
    folder_dataset,
    imagenet_dataset,
    imagenet_sketch_dataset,
    imagenet_subset_dataset,
    imagenetv2_dataset,
)
from .transfer import TRANSFER, transfer_dataset
from .wds import wds_dataset

IMAGENET_VARIANTS = ("imagenetv2", "imagenet_sketch", "imagenet-r", "imagenet-a")
FILE_KINDS = ("folder", "csv", "wds", "retrieval")  # given as PATH (the others as --root)
DATASETS = ("imagenet", *IMAGENET_VARIANTS, "cifar10", "cifar100", *TRANSFER, "folder", "csv", "wds", "retrieval")
DOWNLOADABLE = ("cifar10", "cifar100", *(name for name, spec in TRANSFER.items() if spec.downloads))
IN_MEMORY = ("cifar10", "cifar100", "mnist", "stl10", "fer2013", "pcam")  # not image files: no embedding store

# Default template set per dataset (CLIP_benchmark's choice: its own set where the CLIP paper has
# one, the 80 ImageNet templates otherwise; a WebDataset folder's own templates come first).
DEFAULT_TEMPLATES = {
    "imagenet": "openai-80", **dict.fromkeys(IMAGENET_VARIANTS, "openai-80"),
    "cifar10": "cifar", "cifar100": "cifar", **{name: name for name in TRANSFER},
    "folder": "openai-80", "csv": "openai-80", "wds": "openai-80", "retrieval": "none",
}


def load_dataset(
    name: str,
    path: str | os.PathLike,
    classnames: str | os.PathLike | None = None,
    download: bool = False,
    include_hidden: bool = False,
    split: str = "test",
) -> EvalDataset:
    """One of :data:`DATASETS` by name (``retrieval`` and retrieval WebDataset folders give a
    :class:`~zeroshot.data.captions.RetrievalDataset`)."""
    if name == "imagenet":
        return imagenet_dataset(path, include_hidden)
    if name == "imagenetv2":
        return imagenetv2_dataset(path, include_hidden)
    if name == "imagenet_sketch":
        return imagenet_sketch_dataset(path, include_hidden)
    if name in ("imagenet-r", "imagenet-a"):
        return imagenet_subset_dataset(name, path, include_hidden)
    if name in ("cifar10", "cifar100"):
        return cifar_dataset(name, path, download)
    if name in TRANSFER:
        return transfer_dataset(name, path, download, include_hidden)
    if name == "folder":
        return folder_dataset(path, classnames, include_hidden)
    if name == "csv":
        return csv_dataset(path, classnames)
    if name == "wds":
        return wds_dataset(path, split)
    if name == "retrieval":
        return caption_dataset(path)
    raise UsageError(f"dataset {name!r} is not one of {', '.join(DATASETS)}")
