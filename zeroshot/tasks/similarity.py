"""How similar is every image to every text? The N x M matrix of cosine similarities, and the
two softmaxes CLIP reads it with.

    from zeroshot import load_model
    from zeroshot.tasks.similarity import similarity

    result = similarity(load_model(), ["a.jpg", "b.jpg"], ["a cat", "a dog", "a car"])
    result.cosine            # [2, 3]: cos(image i, text j)
    result.texts_given_image  # softmax over texts, per image (rows sum to 1)
    result.images_given_text  # softmax over images, per text (columns sum to 1)

Both softmaxes are of ``logit_scale * cos`` with the model's own temperature (CLIP's training
objective reads the matrix both ways). Images go through the one image loop
(:func:`~zeroshot.encode.embed.embed_images`); texts through the template ensemble (default: each
text as given). Images that cannot be read are left out of the matrix and listed in ``skipped``.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..data.discover import Source
from ..encode.embed import EmbedSettings, embed_images
from ..encode.text import build_class_weights
from ..errors import UsageError
from ..models import LoadedModel
from ..prompts import SingleLabelWarning, TemplateSet, as_template_set, validate_labels

ProgressHook = Callable[[int, int], None]
SkipHook = Callable[[str, str], None]

LONG_COLUMNS = ("path", "text", "cosine", "softmax_texts", "softmax_images")


@dataclass
class SimilarityResult:
    """``cosine[i, j]`` between image ``paths[i]`` and ``texts[j]``; ``texts_given_image`` (rows
    sum to 1) and ``images_given_text`` (columns sum to 1) are the softmaxes of ``logit_scale *
    cosine`` over texts and over images."""

    paths: list[str]
    texts: list[str]
    cosine: torch.Tensor
    texts_given_image: torch.Tensor
    images_given_text: torch.Tensor
    logit_scale: float
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def long_rows(self) -> list[dict[str, Any]]:
        """One row per image and text: ``path, text, cosine, softmax_texts, softmax_images``."""
        return [
            dict(zip(LONG_COLUMNS, (path, text, float(self.cosine[i, j]), float(self.texts_given_image[i, j]),
                                    float(self.images_given_text[i, j]))))
            for i, path in enumerate(self.paths) for j, text in enumerate(self.texts)
        ]

    def wide_rows(self, which: str = "cosine") -> list[dict[str, Any]]:
        """One row per image: ``path`` then one column per text holding ``which`` (cosine,
        softmax_texts or softmax_images)."""
        matrix = self.matrix(which)
        if "path" in self.texts:
            raise UsageError("a text is 'path', the name of the first column of the wide layout; use the long layout")
        return [{"path": path, **{text: float(matrix[i, j]) for j, text in enumerate(self.texts)}}
                for i, path in enumerate(self.paths)]

    def matrix(self, which: str = "cosine") -> torch.Tensor:
        matrices = {"cosine": self.cosine, "softmax_texts": self.texts_given_image,
                    "softmax_images": self.images_given_text}
        if which not in matrices:
            raise UsageError(f"{which!r} is not one of {', '.join(matrices)}")
        return matrices[which]


def similarity_matrices(images: torch.Tensor, texts: torch.Tensor, logit_scale: torch.Tensor | float
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(cosine, softmax over texts, softmax over images)`` for normalised embeddings."""
    cosine = images.float() @ texts.float().T
    logits = torch.as_tensor(logit_scale, dtype=torch.float32).exp() * cosine
    return cosine, logits.softmax(dim=1), logits.softmax(dim=0)


def similarity(
    loaded: LoadedModel,
    images: Sequence[str | Source | Any],
    texts: str | Sequence[str],
    templates: TemplateSet | str | Sequence[str] = "none",
    settings: EmbedSettings = EmbedSettings(),
    on_progress: ProgressHook | None = None,
    on_skip: SkipHook | None = None,
) -> SimilarityResult:
    """The similarity of every image (files, discovered sources, or PIL images) to every text."""
    from ..data.discover import discover

    texts = [texts] if isinstance(texts, str) else list(texts)
    if not texts:
        raise UsageError("no texts: give at least one text (-t TEXT or --texts FILE)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SingleLabelWarning)  # one text is a fine question here
        texts = list(validate_labels(texts, "the texts"))
    if images and all(isinstance(i, (str, os.PathLike)) for i in images):
        images = discover([os.fspath(i) for i in images]).items
    weights = build_class_weights(loaded, texts, as_template_set(templates))
    paths: list[str] = []
    parts: list[torch.Tensor] = []
    skipped: list[tuple[str, str]] = []
    names = [i.path if isinstance(i, Source) else f"<image {n}>" for n, i in enumerate(images)]
    done = 0
    if on_progress:
        on_progress(0, len(images))
    for batch in embed_images(loaded, images, settings):
        if batch.embeddings is not None:
            parts.append(batch.embeddings)
            paths += [names[i] for i in batch.indices]
        for index, error in batch.errors:
            skipped.append((names[index], error))
            if on_skip:
                on_skip(names[index], error)
        done += len(batch)
        if on_progress:
            on_progress(done, len(images))
    if not parts:
        raise UsageError("none of the images could be read; nothing to compare")
    cosine, per_image, per_text = similarity_matrices(torch.cat(parts), weights, loaded.logit_scale)
    return SimilarityResult(paths, texts, cosine, per_image, per_text, float(loaded.logit_scale.exp()), skipped)
