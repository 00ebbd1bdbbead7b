"""Zero-shot image-text retrieval: recall@k both ways on an image-caption dataset.

    from zeroshot import load_model
    from zeroshot.data.captions import caption_dataset
    from zeroshot.tasks.retrieval import evaluate_retrieval

    result = evaluate_retrieval(load_model("ViT-B-32", "openai"), caption_dataset("coco_val.csv"))
    result.metrics["image_retrieval_recall@5"]

Images go through the one embedding loop (and the embedding store, for image files), captions
through the text tower as written (no templates); the metrics are CLIP_benchmark's
(:func:`zeroshot.metrics.retrieval_metrics`). Unreadable images count as misses.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .._version import __version__
from ..data.captions import RetrievalDataset
from ..encode.embed import EmbedSettings
from ..encode.text import encode_prompts, warn_truncated
from ..errors import UsageError
from ..metrics import RECALL_K, retrieval_metrics
from ..models import LoadedModel
from ..output.writers import write_json_document
from ..store.db import Store
from ..store.reuse import ReuseStats
from .evaluate import ImageProgress, SkipHook, encode_dataset, run_record

TASK = "zeroshot_retrieval"
TextProgress = Any  # (done, total) -> None


@dataclass
class RetrievalResult:
    """Everything one ``evaluate_retrieval`` run measured."""

    dataset: str
    root: str
    model: str
    pretrained: str
    metrics: dict[str, float]
    num_images: int
    num_texts: int
    skipped: list[tuple[str, str]]
    seconds: float
    image_seconds: float
    device: str = "cpu"
    precision: str = "fp32"
    runtime: str = "torch"  # where the image tower ran (torch, openvino or compile)
    images_encoded: int = 0
    images_from_store: int = 0

    def as_dict(self) -> dict[str, Any]:
        """CLIP_benchmark's result keys plus counts."""
        return {
            "dataset": self.dataset,
            "model": self.model,
            "pretrained": self.pretrained,
            "task": TASK,
            "metrics": dict(self.metrics),
            "language": "en",
            "images": self.num_images,
            "texts": self.num_texts,
            **run_record(self),
            "zeroshot_version": __version__,
        }


def evaluate_retrieval(
    loaded: LoadedModel,
    dataset: RetrievalDataset,
    settings: EmbedSettings = EmbedSettings(),
    recall_k: Sequence[int] = RECALL_K,
    text_batch_size: int = 256,
    on_text_progress: TextProgress | None = None,
    on_image_progress: ImageProgress | None = None,
    on_skip: SkipHook | None = None,
    store: Store | str | os.PathLike | bool | None = None,
) -> RetrievalResult:
    """Image->text and text->image recall@k of ``loaded`` on ``dataset``."""
    started = time.perf_counter()
    if len(dataset) == 0 or not dataset.texts:
        raise UsageError(f"{dataset.name} at {dataset.root or '?'} has no image-caption pairs")
    if any(k < 1 for k in recall_k):
        raise UsageError("recall@k needs k >= 1")
    warn_truncated(loaded, dataset.texts, ("{}",))  # captions past the context are cut, as in CLIP_benchmark
    texts = encode_prompts(loaded, dataset.texts, text_batch_size, on_text_progress)
    image_started = time.perf_counter()
    reuse = ReuseStats()
    images, encoded, skipped = encode_dataset(loaded, dataset, settings, on_image_progress, on_skip, store=store,
                                              stats=reuse)
    image_seconds = time.perf_counter() - image_started
    scores = texts @ images.t()
    metrics = retrieval_metrics(scores, torch.tensor(dataset.text_images, dtype=torch.long), encoded, tuple(recall_k))
    return RetrievalResult(
        dataset=dataset.name, root=dataset.root, model=loaded.name, pretrained=loaded.pretrained, metrics=metrics,
        num_images=len(dataset), num_texts=len(dataset.texts), skipped=skipped,
        seconds=time.perf_counter() - started, image_seconds=image_seconds, device=str(loaded.device),
        precision=loaded.precision, runtime=loaded.runtime, images_encoded=reuse.encoded, images_from_store=reuse.from_store,
    )


def write_retrieval_json(result: RetrievalResult, path: str | os.PathLike) -> None:
    """The results JSON (CLIP_benchmark keys plus ours), written atomically (``--output``)."""
    write_json_document(result.as_dict(), Path(path), "--output")
