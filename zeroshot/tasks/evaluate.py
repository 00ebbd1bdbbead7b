"""Zero-shot evaluation: accuracy on a labelled dataset for several prompt sets in one pass.

    from zeroshot import load_model
    from zeroshot.data.datasets import imagenet_dataset
    from zeroshot.tasks.evaluate import evaluate

    loaded = load_model("ViT-B-32", "openai")
    result = evaluate(loaded, imagenet_dataset("/data/imagenet"), ["openai-80", "openai-7"])
    for r in result.results:
        print(r.templates, r.acc1, r.acc5, r.mean_per_class_recall)

The images are decoded and encoded once (through the one embedding loop); their normalised
embeddings are kept and every template set's class weights are scored against them. Metrics
follow CLIP_benchmark (:mod:`zeroshot.metrics`). Images that cannot be read are **counted as
wrong** (they stay in every denominator, so a broken file can never raise the accuracy) and
reported in :attr:`EvalResult.skipped`.

With ``store=`` (an embedding store), images of file datasets (folder, csv, imagenet) that the
store holds are read from it instead of encoded, and the others are added to it; images held in
memory (CIFAR) are always encoded. Stored vectors are float16 by default, so accuracies can
differ from a fresh encode where two classes are within about 1e-3 of each other.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .._version import __version__
from ..data.datasets import EvalDataset
from ..data.discover import Source
from ..encode.cache import ClassWeightCache
from ..encode.embed import Embedded, EmbedSettings, default_batch_size, embed_images_many
from ..encode.text import build_class_weights
from ..errors import UsageError
from ..metrics import Metrics, metrics_from_topk, per_class_recall, predictions_from_topk, topk_indices
from ..models import LoadedModel
from ..output.writers import write_json_document, write_rows
from ..prompts import TemplateSet, as_template_set
from ..scoring import class_logits, probabilities
from ..store.db import Store, StoreError
from ..store.keys import embedding_key, preprocess_identity
from ..store.reuse import Encoder, ReuseStats, as_store, embed_with_store, store_applies

TASK = "zeroshot_classification"
_SCORE_CHUNK = 4096

TextProgress = Callable[[str, int, int], None]  # (template set name, done, total)
ImageProgress = Callable[[int, int], None]  # (done, total)
SkipHook = Callable[[str, str], None]  # (path, "code: detail")


@dataclass
class TemplateResult:
    """Metrics of one template set, with per-image predictions (``-1``: image not encoded)."""

    templates: str
    num_templates: int
    metrics: Metrics
    predictions: torch.Tensor  # [N] predicted class index
    scores: torch.Tensor  # [N] probability of the predicted class (nan when not encoded)
    class_correct: torch.Tensor  # [C]
    class_total: torch.Tensor  # [C]

    @property
    def acc1(self) -> float:
        return self.metrics.acc1

    @property
    def acc5(self) -> float | None:
        return self.metrics.acc5

    @property
    def mean_per_class_recall(self) -> float:
        return self.metrics.mean_per_class_recall

    def as_dict(self) -> dict[str, Any]:
        return {"templates": self.templates, "num_templates": self.num_templates, "metrics": self.metrics.as_dict()}


def run_record(result: Any) -> dict[str, Any]:
    """The keys every results JSON shares (eval and retrieval): skipped images, timing, store
    use, where and how it ran."""
    return {
        "skipped": len(result.skipped),
        "skipped_images": [{"path": p, "error": e} for p, e in result.skipped],
        "seconds": round(result.seconds, 3),
        "image_seconds": round(result.image_seconds, 3),
        "images_encoded": result.images_encoded,
        "images_from_store": result.images_from_store,
        "root": result.root,
        "device": result.device,
        "precision": result.precision,
        "runtime": result.runtime,
    }


@dataclass
class EvalResult:
    """Everything one ``evaluate`` run measured."""

    dataset: str
    root: str
    model: str
    pretrained: str
    classnames: tuple[str, ...]
    paths: list[str]
    targets: torch.Tensor
    encoded: torch.Tensor  # [N] bool: the image was read and encoded
    skipped: list[tuple[str, str]]
    results: list[TemplateResult]
    seconds: float
    image_seconds: float
    device: str = "cpu"
    precision: str = "fp32"  # the image tower's (after an ``auto`` check)
    text_precision: str = "fp32"
    runtime: str = "torch"  # where the image tower ran (torch, openvino or compile)
    precision_notes: list[str] = field(default_factory=list)  # what the ``auto`` checks changed
    images_encoded: int = 0  # run through the model in this run
    images_from_store: int = 0  # read from the embedding store
    # The image embeddings ([N, dim], zeros where not encoded) and the first template set's class
    # weights, kept for further analysis of the same run (e.g. few-shot heads); not in as_dict.
    features: torch.Tensor | None = field(default=None, repr=False)
    class_weights: torch.Tensor | None = field(default=None, repr=False)

    @property
    def metrics(self) -> Metrics:
        """The first template set's metrics."""
        return self.results[0].metrics

    @property
    def num_images(self) -> int:
        return len(self.paths)

    def as_dict(self) -> dict[str, Any]:
        """CLIP_benchmark's result keys (for the first template set) plus every set and counts."""
        first = self.results[0]
        return {
            "dataset": self.dataset,
            "model": self.model,
            "pretrained": self.pretrained,
            "task": TASK,
            "metrics": first.metrics.as_dict(),
            "language": "en",
            "templates": first.templates,
            "num_templates": first.num_templates,
            "template_sets": [r.as_dict() for r in self.results],
            "images": self.num_images,
            "classes": len(self.classnames),
            "classes_with_images": int((self.results[0].class_total > 0).sum()),
            **run_record(self),
            "text_precision": self.text_precision,
            "precision_notes": self.precision_notes,
            "zeroshot_version": __version__,
        }

    def prediction_rows(self) -> list[dict[str, Any]]:
        """One row per image and template set: path, true/predicted label, score, correct, error."""
        errors = dict(self.skipped)
        rows = []
        for r in self.results:
            for i, (path, target) in enumerate(zip(self.paths, self.targets.tolist())):
                pred = int(r.predictions[i])
                rows.append({
                    "path": path,
                    "true_label": self.classnames[target],
                    "predicted_label": self.classnames[pred] if pred >= 0 else None,
                    "score": float(r.scores[i]) if pred >= 0 else None,
                    "correct": pred == target,
                    "templates": r.templates,
                    "error": errors.get(path),
                })
        return rows

    def per_class_rows(self) -> list[dict[str, Any]]:
        """Per class with images (and template set): accuracy, worst first."""
        rows = []
        for r in self.results:
            block = []
            for c, name in enumerate(self.classnames):
                total = int(r.class_total[c])
                if total:
                    correct = int(r.class_correct[c])
                    block.append({"class": name, "class_index": c, "images": total, "correct": correct,
                                  "accuracy": correct / total, "templates": r.templates})
            rows += sorted(block, key=lambda row: (row["accuracy"], row["class_index"]))
        return rows


def score_features(
    loaded: LoadedModel, features: torch.Tensor, weights: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor
) -> tuple[Metrics, torch.Tensor, torch.Tensor]:
    """Metrics, predicted classes and their probabilities for stored image features (scored in
    chunks on the model's device; the metrics are :func:`zeroshot.metrics.metrics_from_topk`)."""
    n = features.shape[0]
    num_classes = weights.shape[0]
    top = torch.zeros((n, min(5, num_classes)), dtype=torch.long)
    scores = torch.full((n,), float("nan"))
    weights = weights.to(loaded.device)
    scale = loaded.logit_scale.to(loaded.device)
    bias = None if loaded.logit_bias is None else loaded.logit_bias.to(loaded.device)
    for start in range(0, n, _SCORE_CHUNK):
        chunk = slice(start, start + _SCORE_CHUNK)
        logits = class_logits(features[chunk].to(loaded.device), weights, scale, bias)
        probs = probabilities(logits, sigmoid=loaded.uses_sigmoid)
        best = topk_indices(logits)
        top[chunk] = best.cpu()
        scores[chunk] = probs.gather(1, best[:, :1]).squeeze(1).cpu()
    scores[~valid] = float("nan")
    return metrics_from_topk(top, targets, num_classes, valid), predictions_from_topk(top, valid), scores


def evaluate(
    loaded: LoadedModel,
    dataset: EvalDataset,
    template_sets: Sequence[str | TemplateSet | Sequence[str]] = ("openai-80",),
    settings: EmbedSettings = EmbedSettings(),
    cache: bool | str | os.PathLike = True,
    text_batch_size: int = 256,
    on_text_progress: TextProgress | None = None,
    on_image_progress: ImageProgress | None = None,
    on_skip: SkipHook | None = None,
    store: Store | str | os.PathLike | bool | None = None,
    encoder: Encoder | None = None,
) -> EvalResult:
    """Zero-shot accuracy of ``loaded`` on ``dataset`` for every template set, encoding each
    image once (or reading it from ``store``: an open store, its folder, or True for the
    default one). Unreadable images count as wrong and are listed in ``EvalResult.skipped``."""
    return evaluate_models([loaded], dataset, template_sets, settings, cache, text_batch_size, on_text_progress,
                           on_image_progress, on_skip, store, encoder)[0]


def evaluate_models(
    models: Sequence[LoadedModel],
    dataset: EvalDataset,
    template_sets: Sequence[str | TemplateSet | Sequence[str]] = ("openai-80",),
    settings: EmbedSettings = EmbedSettings(),
    cache: bool | str | os.PathLike = True,
    text_batch_size: int = 256,
    on_text_progress: TextProgress | None = None,
    on_image_progress: ImageProgress | None = None,
    on_skip: SkipHook | None = None,
    store: Store | str | os.PathLike | bool | None = None,
    encoder: Encoder | None = None,
) -> list[EvalResult]:
    """:func:`evaluate` for several models (one result each, in order). Models with the same
    preprocessing share one decode of every image: each image is decoded once per distinct
    preprocessing, not once per model. ``on_image_progress`` follows the decoding passes, and
    ``on_skip`` hears of each unreadable image once. ``encoder`` replaces the local embedding
    loop (e.g. :class:`zeroshot.scale.RayEncoder`; then every model is encoded in its own pass)."""
    if not models:
        raise UsageError("give at least one model")
    sets = _unique_sets(template_sets)
    if len(dataset) == 0:
        raise UsageError(f"{dataset.name} at {dataset.root or '?'} has no images")
    weight_cache = None if cache is False else ClassWeightCache(None if cache is True else Path(cache))
    store = as_store(store)
    results: list[EvalResult | None] = [None] * len(models)
    told: set[str] = set()

    def skip_once(path: str, reason: str) -> None:
        if on_skip and path not in told:
            told.add(path)
            on_skip(path, reason)

    for group in _preprocessing_groups(models):
        shared = _shared_encoder([models[i] for i in group], dataset, settings, store, on_image_progress) \
            if len(group) > 1 and encoder is None else None
        for i in group:
            started = time.perf_counter()
            shared_seconds = shared.seconds if shared and i == group[0] else 0.0  # the decode pass, counted once
            weights = _class_weights(models[i], dataset, sets, text_batch_size, on_text_progress, weight_cache)
            if models[i].needs_check("image"):
                models[i].check_weights = weights[0]  # the image check also compares top-1 classes
            image_started = time.perf_counter()
            reuse = ReuseStats()
            progress = on_image_progress if shared is None else None
            features, encoded, skipped = encode_dataset(models[i], dataset, settings, progress, skip_once,
                                                        store=store, stats=reuse, encoder=shared or encoder)
            image_seconds = time.perf_counter() - image_started + shared_seconds
            results[i] = _result(models[i], dataset, sets, weights, features, encoded, skipped, reuse,
                                 seconds=time.perf_counter() - started, image_seconds=image_seconds)
    return [r for r in results if r is not None]


def _unique_sets(template_sets: Sequence[str | TemplateSet | Sequence[str]]) -> list[TemplateSet]:
    sets = [as_template_set(s) for s in template_sets]
    if not sets:
        raise UsageError("give at least one template set")
    unique: dict[tuple[str, ...], TemplateSet] = {}
    for s in sets:  # the same set twice would be scored twice: drop repeats, keep order
        unique.setdefault(s.templates, s)
    return list(unique.values())


def _class_weights(loaded: LoadedModel, dataset: EvalDataset, sets: list[TemplateSet], batch_size: int,
                   on_text_progress: TextProgress | None, cache: ClassWeightCache | None) -> list[torch.Tensor]:
    weights = []
    for s in sets:
        hook = (lambda done, total, _n=s.name: on_text_progress(_n, done, total)) if on_text_progress else None
        weights.append(build_class_weights(loaded, dataset.classnames, s, batch_size, hook, cache))
    return weights


def _result(loaded: LoadedModel, dataset: EvalDataset, sets: list[TemplateSet], weights: list[torch.Tensor],
            features: torch.Tensor, encoded: torch.Tensor, skipped: list[tuple[str, str]], reuse: ReuseStats,
            seconds: float, image_seconds: float) -> EvalResult:
    targets = torch.tensor(dataset.targets, dtype=torch.long)
    results = []
    for s, w in zip(sets, weights):
        metrics, predictions, scores = score_features(loaded, features, w, targets, encoded)
        correct, total = per_class_recall(predictions, targets, len(dataset.classnames))
        results.append(TemplateResult(s.name, len(s), metrics, predictions, scores, correct, total))
    return EvalResult(
        dataset=dataset.name,
        root=dataset.root,
        model=loaded.name,
        pretrained=loaded.pretrained,
        classnames=tuple(dataset.classnames),
        paths=dataset.names,
        targets=targets,
        encoded=encoded,
        skipped=skipped,
        results=results,
        seconds=seconds,
        image_seconds=image_seconds,
        device=str(loaded.device),
        precision=loaded.precision,
        runtime=loaded.runtime,
        text_precision=loaded.precision_of("text"),
        precision_notes=list(loaded.notes),
        images_encoded=reuse.encoded,
        images_from_store=reuse.from_store,
        features=features,
        class_weights=weights[0],
    )


def _preprocessing_groups(models: Sequence[LoadedModel]) -> list[list[int]]:
    """Model positions grouped by preprocessing (and device), in order of first appearance."""
    groups: dict[tuple[str, str], list[int]] = {}
    for i, loaded in enumerate(models):
        groups.setdefault((preprocess_identity(loaded.preprocess), str(loaded.device)), []).append(i)
    return list(groups.values())


class _SharedEncoder:
    """Vectors of several models sharing one preprocessing, computed in one decoding pass
    (:func:`~zeroshot.encode.embed.embed_images_many`) over the images any of them needs (all
    of them, or those the store does not hold for some model), then served to
    :func:`~zeroshot.store.reuse.embed_with_store` as the encoder of each model's misses."""

    def __init__(self, models: list[LoadedModel], inputs: Sequence, settings: EmbedSettings,
                 needed: list[int], on_progress: ImageProgress | None) -> None:
        self.models = {id(m): k for k, m in enumerate(models)}
        self.vectors: list[dict[int, torch.Tensor]] = [{} for _ in models]
        self.errors: dict[int, str] = {}
        self.position = {_identity(inputs[i]): i for i in needed}
        started = time.perf_counter()
        done = 0
        if on_progress:
            on_progress(0, len(needed))
        for outs in embed_images_many(models, [inputs[i] for i in needed], settings):
            for k, out in enumerate(outs):
                for row, j in enumerate(out.indices):
                    self.vectors[k][needed[j]] = out.embeddings[row]
            for j, reason in outs[0].errors:
                self.errors[needed[j]] = reason
            done += len(outs[0])
            if on_progress:
                on_progress(done, len(needed))
        self.seconds = time.perf_counter() - started

    def __call__(self, loaded: LoadedModel, inputs: Sequence, settings: EmbedSettings,
                 preprocessor: Any = None) -> Iterator[Embedded]:
        k = self.models[id(loaded)]
        batch_size = settings.batch_size or default_batch_size(loaded.device)
        for start in range(0, len(inputs), batch_size):
            out = Embedded()
            rows = []
            for j in range(start, min(start + batch_size, len(inputs))):
                i = self.position.get(_identity(inputs[j]))
                if i is not None and i in self.vectors[k]:
                    out.indices.append(j)
                    rows.append(self.vectors[k][i])
                else:
                    out.errors.append((j, self.errors.get(i, "error: not decoded") if i is not None
                                       else str(getattr(inputs[j], "error", "error: not decoded"))))
            out.embeddings = torch.stack(rows) if rows else None
            yield out


def _identity(item: Any) -> Any:
    """What names an input across calls of ``dataset.inputs()``: a file's path, or the image object."""
    return ("path", item.fs_path) if isinstance(item, Source) else ("object", id(item))


def _shared_encoder(models: list[LoadedModel], dataset: EvalDataset, settings: EmbedSettings, store: Store | None,
                    on_progress: ImageProgress | None) -> _SharedEncoder:
    """Decode once for ``models``: every image some model will have to encode."""
    inputs = dataset.inputs()
    needed: set[int] = set()
    for loaded in models:
        needed |= set(_store_misses(loaded, inputs, settings, store))
    return _SharedEncoder(models, inputs, settings, sorted(needed), on_progress)


def _store_misses(loaded: LoadedModel, inputs: Sequence, settings: EmbedSettings, store: Store | None) -> list[int]:
    """The inputs ``loaded`` must encode: all, or those the store does not hold as they are now."""
    if store is None or not store_applies(loaded, inputs):
        return list(range(len(inputs)))
    try:
        found, _ = store.vectors(embedding_key(loaded, settings.fast_decode), [s.fs_path for s in inputs],
                                 by_content=False)
    except StoreError:
        return list(range(len(inputs)))
    return [i for i in range(len(inputs)) if not bool(found[i])]


def encode_dataset(
    loaded: LoadedModel,
    dataset: EvalDataset,
    settings: EmbedSettings = EmbedSettings(),
    on_progress: ImageProgress | None = None,
    on_skip: SkipHook | None = None,
    store: Store | str | os.PathLike | bool | None = None,
    stats: ReuseStats | None = None,
    encoder: Encoder | None = None,
) -> tuple[torch.Tensor, torch.Tensor, list[tuple[str, str]]]:
    """Normalised features ``[N, dim]`` (zeros where an image failed), an encoded mask, the skips.
    ``store``: see :func:`evaluate`; ``stats`` counts images encoded and read from it;
    ``encoder``: see :func:`~zeroshot.store.reuse.embed_with_store`."""

    n = len(dataset)
    names = dataset.names
    features: torch.Tensor | None = None
    encoded = torch.zeros(n, dtype=torch.bool)
    skipped: list[tuple[str, str]] = []
    done = 0
    if on_progress:
        on_progress(0, n)
    for batch in embed_with_store(loaded, dataset.inputs(), settings, as_store(store), stats=stats, encoder=encoder):
        for index, reason in batch.errors:
            skipped.append((names[index], reason))
            if on_skip:
                on_skip(names[index], reason)
        if batch.embeddings is not None:
            if features is None:
                features = torch.zeros(n, batch.embeddings.shape[1])
            rows = torch.tensor(batch.indices, dtype=torch.long)
            features[rows] = batch.embeddings
            encoded[rows] = True
        done += len(batch)
        if on_progress:
            on_progress(done, n)
    if features is None:  # every image failed: zero features, all counted wrong
        features = torch.zeros(n, _embed_dim(loaded))
    return features, encoded, skipped


def _embed_dim(loaded: LoadedModel) -> int:
    dim = getattr(loaded.model, "embed_dim", None)
    if dim:
        return int(dim)
    with torch.inference_mode():
        return int(loaded.model.encode_text(loaded.tokenizer(["x"]).to(loaded.device)).shape[-1])


# ======================================================================================== files


def write_results_json(result: EvalResult | Sequence[EvalResult], path: str | os.PathLike,
                       extra: dict[str, Any] | None = None) -> None:
    """The results JSON (CLIP_benchmark keys plus ours, plus ``extra`` keys such as the few-shot
    curve of ``eval --shots``), written atomically (``--output``); for several models,
    :func:`comparison_document`."""
    results = _as_list(result)
    document = results[0].as_dict() if len(results) == 1 else comparison_document(results)
    write_json_document({**document, **(extra or {})}, Path(path), "--output")


def comparison_document(results: Sequence[EvalResult]) -> dict[str, Any]:
    """Several models on one dataset: the shared facts, then each model's own results JSON."""
    first = results[0]
    return {
        "dataset": first.dataset,
        "task": TASK,
        "images": first.num_images,
        "classes": len(first.classnames),
        "root": first.root,
        "models": [r.as_dict() for r in results],
        "zeroshot_version": __version__,
    }


def comparison_rows(results: Sequence[EvalResult]) -> list[dict[str, Any]]:
    """One row per model and template set: the metrics table of ``zeroshot eval``."""
    return [{"model": r.model, "pretrained": r.pretrained, "templates": t.templates,
             "num_templates": t.num_templates, "acc1": t.acc1, "acc5": t.acc5,
             "mean_per_class_recall": t.mean_per_class_recall} for r in results for t in r.results]


def write_predictions_file(result: EvalResult | Sequence[EvalResult], path: str | os.PathLike,
                           safe_csv: bool = True) -> None:
    """One row per image and template set (``--predictions``), in the format its extension names;
    with several models, every row starts with the model and pretrained columns."""
    write_rows(_model_rows(_as_list(result), EvalResult.prediction_rows), Path(path), "--predictions", safe_csv)


def write_per_class_file(result: EvalResult | Sequence[EvalResult], path: str | os.PathLike,
                         safe_csv: bool = True) -> None:
    """Per-class accuracy, worst first (``--per-class``), in the format its extension names;
    with several models, every row starts with the model and pretrained columns."""
    write_rows(_model_rows(_as_list(result), EvalResult.per_class_rows), Path(path), "--per-class", safe_csv)


def _as_list(result: EvalResult | Sequence[EvalResult]) -> list[EvalResult]:
    return [result] if isinstance(result, EvalResult) else list(result)


def _model_rows(results: list[EvalResult], rows_of: Callable[[EvalResult], list[dict[str, Any]]]) -> list[dict]:
    if len(results) == 1:
        return rows_of(results[0])
    return [{"model": r.model, "pretrained": r.pretrained, **row} for r in results for row in rows_of(r)]
