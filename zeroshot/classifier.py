"""The public entry point: a zero-shot classifier over a fixed label set.

    from zeroshot import ZeroShotClassifier
    clf = ZeroShotClassifier(["cat", "dog"], templates="openai-7", device="cpu")
    for pred in clf.classify_paths(["photos/"]):
        print(pred.path, pred.label, pred.score)
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from .images import (
    DEFAULT_MAX_PIXELS,
    Discovery,
    ImageDataset,
    Preprocessor,
    default_workers,
    discover,
    iterate_batches,
    to_rgb,
)
from .models import DEFAULT_MODEL, DEFAULT_PRETRAINED, LoadedModel, load_model
from .output import Prediction, to_dataframe
from .prompts import TemplateSet, resolve_templates, validate_labels
from .scoring import class_logits, probabilities, top_k
from .text import ClassWeightCache, Progress, build_class_weights
from .vision import encode_images


def default_batch_size(device: torch.device) -> int:
    return 256 if device.type == "cuda" else 32


@dataclass
class RunStats:
    """Counts and timing of the last ``classify_paths`` run."""

    total: int = 0
    classified: int = 0
    skipped: int = 0
    seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        return self.classified / self.seconds if self.seconds else 0.0


class ZeroShotClassifier:
    """Classify images into ``labels`` with an open_clip model and a prompt-template ensemble.

    The class weights are built once (and cached on disk unless ``cache=False``); every call
    to the ``classify_*`` methods reuses them.
    """

    def __init__(
        self,
        labels: Sequence[str],
        templates: str | TemplateSet | Sequence[str] = "openai-80",
        model: str | LoadedModel = DEFAULT_MODEL,
        pretrained: str | None = DEFAULT_PRETRAINED,
        device: str = "auto",
        precision: str = "auto",
        cache: bool | str | os.PathLike = True,
        text_batch_size: int = 256,
        text_progress: Progress | None = None,
        allow_duplicate_labels: bool = False,
    ) -> None:
        self.loaded = model if isinstance(model, LoadedModel) else load_model(model, pretrained, device, precision)
        self.labels = validate_labels(list(labels), "labels", allow_duplicates=allow_duplicate_labels)
        self.template_set = _as_template_set(templates)
        self.cache = None if cache is False else ClassWeightCache(None if cache is True else Path(cache))
        self.class_weights = build_class_weights(
            self.loaded, self.labels, self.template_set.templates, text_batch_size, text_progress, self.cache
        ).to(self.loaded.device)
        self.preprocessor = Preprocessor(self.loaded.preprocess)
        self.last_run = RunStats()

    @property
    def templates(self) -> tuple[str, ...]:
        return self.template_set.templates

    @property
    def device(self) -> torch.device:
        return self.loaded.device

    # ------------------------------------------------------------------------------ tensors

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """Normalised image embeddings for a preprocessed batch ``[N, 3, H, W]``."""
        return encode_images(self.loaded, pixels)

    def probabilities(self, features: torch.Tensor) -> torch.Tensor:
        """Per-label probabilities ``[N, labels]`` for normalised image embeddings."""
        logits = class_logits(features.cpu(), self.class_weights.cpu(), self.loaded.logit_scale, self.loaded.logit_bias)
        return probabilities(logits, sigmoid=self.loaded.uses_sigmoid)

    # ------------------------------------------------------------------------------- images

    def classify_images(
        self,
        images: Iterable[Image.Image],
        names: Sequence[str] | None = None,
        top_k: int = 1,
        min_score: float | None = None,
        unknown_label: str = "unknown",
        batch_size: int | None = None,
    ) -> list[Prediction]:
        """Classify PIL images already in memory."""
        images = list(images)
        names = list(names) if names is not None else [f"<image {i}>" for i in range(len(images))]
        batch_size = batch_size or default_batch_size(self.device)
        results: list[Prediction] = []
        for start in range(0, len(images), batch_size):
            chunk = images[start:start + batch_size]
            pixels = torch.stack([self.preprocessor.pixels(to_rgb(img)) for img in chunk])
            probs = self.probabilities(self.encode_images(self.preprocessor.finish(pixels, self.device)))
            results += self._rank(names[start:start + batch_size], probs, top_k, min_score, unknown_label)
        return results

    def _rank(self, names, probs, k, min_score, unknown_label) -> list[Prediction]:
        ranked = top_k(probs, self.labels, k, min_score, unknown_label)
        return [Prediction(name, r.labels, r.scores) for name, r in zip(names, ranked)]

    # -------------------------------------------------------------------------------- paths

    def classify_paths(
        self,
        inputs: Sequence[str | os.PathLike] | Discovery,
        top_k: int = 1,
        min_score: float | None = None,
        unknown_label: str = "unknown",
        batch_size: int | None = None,
        workers: int | None = None,
        recursive: bool = True,
        include_hidden: bool = False,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        exact_preprocess: bool = False,
        decode_timeout: float = 300.0,
        on_progress: Callable[[int, int], None] | None = None,
        skip: Callable[[str], bool] | None = None,
    ) -> Iterator[Prediction]:
        """Yield one :class:`Prediction` per input, in deterministic order, as batches finish.

        Unreadable inputs yield a prediction whose ``error`` is ``"<reason_code>: <detail>"``.
        ``skip(path)`` returning True leaves an input out entirely (used by ``--resume``).
        """
        found = inputs if isinstance(inputs, Discovery) else discover(inputs, recursive, include_hidden)
        sources = [s for s in found.sources if not (skip and skip(s.path))]
        problems = [(p, e) for p, e in found.problems if not (skip and skip(p))]
        stats = self.last_run = RunStats(total=len(sources) + len(problems))
        started = time.perf_counter()
        done = 0
        for path, err in problems:
            stats.skipped += 1
            done += 1
            yield Prediction(path, error=str(err))
        batch_size = batch_size or default_batch_size(self.device)
        workers = default_workers(self.device) if workers is None else workers
        workers = min(workers, max(0, (len(sources) + batch_size - 1) // batch_size))
        dataset = ImageDataset(sources, self.preprocessor, max_pixels, draft=not exact_preprocess)
        batches = iterate_batches(dataset, batch_size, workers, pin_memory=self.device.type == "cuda",
                                  timeout=decode_timeout if workers else 0,
                                  low_priority=self.device.type == "cpu")
        for batch in batches:
            by_index: dict[int, Prediction] = {}
            for index, message in batch.errors:
                by_index[index] = Prediction(sources[index].path, error=message)
            if batch.pixels is not None:
                features = self.encode_images(self.preprocessor.finish(batch.pixels, self.device))
                names = [sources[i].path for i in batch.indices]
                for index, pred in zip(batch.indices, self._rank(names, self.probabilities(features), top_k, min_score, unknown_label)):
                    by_index[index] = pred
            for index in sorted(by_index):
                pred = by_index[index]
                stats.classified += pred.ok
                stats.skipped += not pred.ok
                done += 1
                yield pred
            stats.seconds = time.perf_counter() - started
            if on_progress:
                on_progress(done, stats.total)
        stats.seconds = time.perf_counter() - started

    def classify(self, inputs: Sequence[str | os.PathLike], **kwargs) -> list[Prediction]:
        """All predictions for files, folders and glob patterns, as a list."""
        return list(self.classify_paths(inputs, **kwargs))

    def classify_dataframe(self, inputs: Sequence[str | os.PathLike], top_k: int = 1, **kwargs):
        """A pandas DataFrame with the CSV columns (path, label, score, ..., error)."""
        return to_dataframe(self.classify_paths(inputs, top_k=top_k, **kwargs), top_k)


def _as_template_set(templates: str | TemplateSet | Sequence[str]) -> TemplateSet:
    from .prompts import validate_templates

    if isinstance(templates, TemplateSet):
        return templates
    if isinstance(templates, str):
        return resolve_templates(templates)
    return TemplateSet("custom", validate_templates(list(templates), "templates"))
