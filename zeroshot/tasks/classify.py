"""Zero-shot classification over a fixed label set, in memory or as a resumable run to a file.

    from zeroshot import ZeroShotClassifier, classify_to_file
    clf = ZeroShotClassifier(["cat", "dog"], templates="openai-7", device="cpu")
    for pred in clf.classify_paths(["photos/"]):
        print(pred.path, pred.label, pred.score)

    # The same run the CLI does: atomic output file, resumable after a crash or Ctrl-C.
    stats = classify_to_file(clf, ["photos/"], "out.csv", resume=True)

    # A head fitted by ``zeroshot fewshot`` replaces the text side (labels come from it).
    clf = ZeroShotClassifier([], model=loaded, head=read_head("head.safetensors"))

    # With an embedding store, images already indexed are not encoded again (any label set).
    clf = ZeroShotClassifier(["beach", "city"], store="photos/.zeroshot")
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO

import torch
from PIL import Image

from ..data.discover import Discovery, discover
from ..data.preprocess import Preprocessor
from ..encode.cache import ClassWeightCache
from ..encode.embed import EmbedSettings
from ..encode.text import Progress, build_class_weights
from ..errors import UsageError
from ..heads import LinearHead
from ..models import DEFAULT_PRETRAINED, LoadedModel, load_model
from ..output.journal import ResumableOutput, fingerprint
from ..output.report import check_report_path
from ..output.rows import Prediction, to_dataframe
from ..output.writers import Format, check_writable, choose_format, write_predictions
from ..prompts import TemplateSet, as_template_set, validate_labels
from ..scoring import class_logits, probabilities, top_k
from ..store.db import Store
from ..store.reuse import Encoder, ReuseStats, as_store, embed_with_store


@dataclass(frozen=True)
class RankSettings:
    """How probabilities become a row: the ``top_k`` best labels (the true ranking); the
    decision (``Prediction.label``) is the best label, or ``unknown_label`` when the best score
    is below ``min_score``."""

    top_k: int = 1
    min_score: float | None = None
    unknown_label: str = "unknown"

    @property
    def thresholded(self) -> bool:
        """Whether rows carry a ``top_label`` column (the decision may differ from the best label)."""
        return self.min_score is not None

    def capped(self, labels: int) -> RankSettings:
        """No more ranks than there are labels (``--top-k 100000`` with 3 labels reports 3)."""
        return replace(self, top_k=max(1, min(self.top_k, labels)))


@dataclass
class RunStats:
    """Counts and timing of the last classification run (images only; the CLI adds model
    loading and the text side to its summary)."""

    total: int = 0
    classified: int = 0
    skipped: int = 0
    kept: int = 0  # rows taken over from an interrupted run (--resume)
    error_rows: int = 0  # rows of the written output that hold an error (kept ones included)
    seconds: float = 0.0
    encoded: int = 0  # images run through the model
    from_store: int = 0  # images whose vector was read from the embedding store
    store_used: bool = False  # the run read and wrote an embedding store

    @property
    def images_per_second(self) -> float:
        return self.classified / self.seconds if self.seconds else 0.0


ProgressHook = Callable[[int, int], None]  # (done, total)
PredictionHook = Callable[[Prediction], None]


class ZeroShotClassifier:
    """Classify images into ``labels`` with an open_clip model and a prompt-template ensemble.

    The class weights are built once (and cached on disk unless ``cache=False``); every call
    to the ``classify_*`` methods reuses them.

    ``store`` is an embedding store (a :class:`~zeroshot.store.db.Store`, its folder, or True
    for the default one): image files it holds are not encoded again, the others are encoded
    and added to it. Vectors then have the store's precision (float16 by default: probabilities
    within about 1e-3 of a fresh float32 encode). Default: no store.

    ``model`` None is ViT-B-32, or the architecture named by the sidecar of a ``pretrained`` file
    written by ``zeroshot finetune``. ``head`` (a :class:`~zeroshot.heads.LinearHead`, e.g. from
    ``read_head``) replaces the text side: its labels and weights, softmax probabilities.
    ``encoder`` replaces the local embedding loop for image files (same contract; e.g.
    :class:`zeroshot.scale.RayEncoder`, which encodes on a Ray cluster).
    """

    def __init__(
        self,
        labels: Sequence[str],
        templates: str | TemplateSet | Sequence[str] = "openai-80",
        model: str | LoadedModel | None = None,
        pretrained: str | None = DEFAULT_PRETRAINED,
        device: str = "auto",
        precision: str = "auto",
        cache: bool | str | os.PathLike = True,
        text_batch_size: int = 256,
        text_progress: Progress | None = None,
        allow_duplicate_labels: bool = False,
        store: Store | str | os.PathLike | bool | None = None,
        head: LinearHead | None = None,
        runtime: str | None = None,
        encoder: Encoder | None = None,
    ) -> None:
        self.encoder = encoder
        self.loaded = (model if isinstance(model, LoadedModel)
                       else load_model(model, pretrained, device, precision, runtime))
        self.head = head
        if head is not None:  # a fitted linear head (zeroshot fewshot): its labels, no text side
            head.check_model(self.loaded)
            labels, templates = head.labels, TemplateSet(f"head {head.digest}", (f"<head {head.digest}>",))
        self.labels = validate_labels(list(labels), "labels", allow_duplicates=allow_duplicate_labels)
        self.template_set = as_template_set(templates)
        self.cache = None if cache is False else ClassWeightCache(None if cache is True else Path(cache))
        if head is not None:
            self.class_weights = head.weight.float().to(self.loaded.device)
        else:
            self.class_weights = build_class_weights(
                self.loaded, self.labels, self.template_set, text_batch_size, text_progress, self.cache
            ).to(self.loaded.device)
        if self.loaded.needs_check("image"):
            self.loaded.check_weights = self.class_weights  # the image check also compares top-1 labels
        self.preprocessor = Preprocessor(self.loaded.preprocess)
        self.store = as_store(store)
        self.last_run = RunStats()

    @property
    def templates(self) -> tuple[str, ...]:
        return self.template_set.templates

    @property
    def device(self) -> torch.device:
        return self.loaded.device

    def fingerprint(self, rank: RankSettings) -> dict:
        """Everything that decides a row's content (the resume journal's identity)."""
        return fingerprint(self.loaded.name, self.loaded.weights_id, self.labels, self.templates,
                           rank.top_k, rank.min_score, rank.unknown_label)

    # ------------------------------------------------------------------------------ tensors

    def probabilities(self, features: torch.Tensor) -> torch.Tensor:
        """Per-label probabilities ``[N, labels]`` for normalised image embeddings."""
        if self.head is not None:
            return probabilities(self.head.logits(features))
        logits = class_logits(features.cpu(), self.class_weights.cpu(), self.loaded.logit_scale, self.loaded.logit_bias)
        return probabilities(logits, sigmoid=self.loaded.uses_sigmoid)

    def rank(self, names: Sequence[str], features: torch.Tensor, rank: RankSettings = RankSettings()) -> list[Prediction]:
        """Predictions for embeddings ``features`` of the inputs called ``names``."""
        ranked = top_k(self.probabilities(features), self.labels, rank.top_k, rank.min_score, rank.unknown_label)
        return [Prediction(name, r.labels, r.scores, label=r.label) for name, r in zip(names, ranked)]

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
        """Classify PIL images already in memory (decoded in this process)."""
        images = list(images)
        names = list(names) if names is not None else [f"<image {i}>" for i in range(len(images))]
        rank = RankSettings(top_k, min_score, unknown_label)
        settings = EmbedSettings(batch_size=batch_size, workers=0)
        return list(self._predict(names, images, settings, rank))

    def _predict(self, names: Sequence[str], inputs: Sequence, settings: EmbedSettings, rank: RankSettings,
                 on_batch: Callable[[int], None] | None = None, reuse: ReuseStats | None = None) -> Iterator[Prediction]:
        """Predictions in input order, through the one embedding loop (with the store in front
        of it for image files)."""
        for batch in embed_with_store(self.loaded, inputs, settings, self.store, self.preprocessor, reuse,
                                      encoder=self.encoder):
            by_index = {i: Prediction(names[i], error=message) for i, message in batch.errors}
            if batch.embeddings is not None:
                preds = self.rank([names[i] for i in batch.indices], batch.embeddings, rank)
                by_index.update(zip(batch.indices, preds))
            yield from (by_index[i] for i in sorted(by_index))
            if on_batch:
                on_batch(len(batch))

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
        max_pixels: int | None = EmbedSettings.max_pixels,
        fast_decode: bool = True,
        decode_timeout: float = 300.0,
        on_progress: ProgressHook | None = None,
        skip: Callable[[str], bool] | None = None,
    ) -> Iterator[Prediction]:
        """Yield one :class:`Prediction` per input, in the order given, as batches finish.

        Unreadable inputs yield a prediction whose ``error`` is ``"<reason_code>: <detail>"``.
        ``skip(path)`` returning True leaves an input out entirely (used by ``--resume``).
        """
        settings = EmbedSettings(batch_size, workers, max_pixels, fast_decode, decode_timeout)
        yield from self.predict(inputs, settings, RankSettings(top_k, min_score, unknown_label),
                                recursive, include_hidden, on_progress, skip)

    def predict(
        self,
        inputs: Sequence[str | os.PathLike] | Discovery,
        settings: EmbedSettings = EmbedSettings(fast_decode=True),
        rank: RankSettings = RankSettings(),
        recursive: bool = True,
        include_hidden: bool = False,
        on_progress: ProgressHook | None = None,
        skip: Callable[[str], bool] | None = None,
    ) -> Iterator[Prediction]:
        """:meth:`classify_paths` with its settings as objects."""
        found = inputs if isinstance(inputs, Discovery) else discover(inputs, recursive, include_hidden)
        items = [s for s in found.items if not (skip and skip(s.path))]
        stats = self.last_run = RunStats(total=len(items))
        reuse = ReuseStats()
        started = time.perf_counter()
        done = 0

        def progressed(count: int) -> None:
            nonlocal done
            done += count
            stats.seconds = time.perf_counter() - started
            stats.encoded, stats.from_store, stats.store_used = reuse.encoded, reuse.from_store, reuse.store_used
            if on_progress:
                on_progress(done, stats.total)

        for pred in self._predict([s.path for s in items], items, settings, rank, progressed, reuse):
            stats.classified += pred.ok
            stats.skipped += not pred.ok
            yield pred
        stats.seconds = time.perf_counter() - started

    def classify(self, inputs: Sequence[str | os.PathLike], **kwargs) -> list[Prediction]:
        """All predictions for files, folders and glob patterns, as a list."""
        return list(self.classify_paths(inputs, **kwargs))

    def classify_dataframe(self, inputs: Sequence[str | os.PathLike], top_k: int = 1, **kwargs):
        """A pandas DataFrame with the CSV columns (path, label, score[, top_label], ..., error);
        ``top_label`` is there when ``min_score`` is given."""
        thresholded = kwargs.get("min_score") is not None
        top_k = min(top_k, len(self.labels))
        return to_dataframe(self.classify_paths(inputs, top_k=top_k, **kwargs), top_k, thresholded)


# ---------------------------------------------------------------------------------- file runs


def classify_to_file(
    classifier: ZeroShotClassifier,
    inputs: Sequence[str | os.PathLike] | Discovery,
    output: str | os.PathLike | None = None,
    *,
    stream: IO | None = None,
    format: str | Format = "auto",
    settings: EmbedSettings = EmbedSettings(fast_decode=True),
    rank: RankSettings = RankSettings(),
    resume: bool = False,
    journal: ResumableOutput | None = None,
    safe_csv: bool = True,
    recursive: bool = True,
    include_hidden: bool = False,
    on_progress: ProgressHook | None = None,
    on_prediction: PredictionHook | None = None,
    report: str | os.PathLike | None = None,
    on_report_progress: ProgressHook | None = None,
) -> RunStats:
    """Classify ``inputs`` and write every row, in input order, to ``output`` (atomically) or,
    with ``output=None``, to ``stream`` (default stdout; a binary stream for parquet). With an
    output file the run keeps a journal beside it, so an interrupted run (Ctrl-C, SIGTERM,
    kill -9, power loss) continues with ``resume=True``; a journal whose settings differ from
    this run's is refused (:class:`UsageError`), as is ``resume=True`` without an output file.

    ``journal`` is an already opened :class:`ResumableOutput` (the CLI opens it before the model
    loads, so a refused resume fails fast). ``on_prediction`` sees every new row (e.g. to print
    skipped files). ``report``: also write the HTML report of every row there (see
    :func:`zeroshot.tasks.report.write_classify_report`; ``on_report_progress`` sees its thumbnails)."""
    rank = rank.capped(len(classifier.labels))
    check_report_path(report)
    path = Path(output) if output is not None else None
    if path is not None and stream is not None:
        raise UsageError(f"classify_to_file: give output ({path}) or stream, not both")
    if resume and path is None:
        raise UsageError("classify_to_file: resume=True needs the output file the interrupted run was writing")
    found = inputs if isinstance(inputs, Discovery) else discover(inputs, recursive, include_hidden)
    fmt = format if isinstance(format, Format) else choose_format(format, path, stdout_is_tty=False)
    # Text the output cannot hold (e.g. a lone surrogate in a name, for CSV) is refused now,
    # before any image is classified, rather than when the finished rows are written.
    labels = list(classifier.labels) + ([rank.unknown_label] if rank.min_score is not None else [])
    check_writable("label", labels, fmt, path, rows=False)
    check_writable("path", [s.path for s in found.items], fmt, path)
    if journal is None and path is not None:
        journal = ResumableOutput.open(path, classifier.fingerprint(rank), resume)
    elif journal is not None and journal.fingerprint != classifier.fingerprint(rank):
        raise UsageError(f"the journal of {journal.output} was opened for different run settings")
    done = journal.done if journal is not None else []

    # Rows are journalled a whole batch at a time: a resumed run then starts on a batch boundary
    # of the interrupted one, so every image is embedded in a batch of the same composition
    # (float results depend slightly on it) and the file equals an uninterrupted run's, byte
    # for byte, when resumed with the same batch size and device. An interruption costs at
    # most the batch in progress.
    batch_rows: list[Prediction] = []

    def record(pred: Prediction) -> Prediction:
        if journal is not None:
            batch_rows.append(pred)
        if on_prediction:
            on_prediction(pred)
        return pred

    def progressed(count: int, total: int) -> None:
        if journal is not None:
            for pred in batch_rows:
                journal.record(pred)
            batch_rows.clear()
            journal.sync()
        if on_progress:
            on_progress(count, total)

    fresh = (record(p) for p in classifier.predict(found, settings, rank, on_progress=progressed,
                                                 skip=journal.skipper() if journal is not None else None))
    rows = journal.merged([s.path for s in found.items], fresh) if journal is not None else fresh
    error_rows = 0
    written: list[Prediction] = []

    def counted(preds: Iterable[Prediction]) -> Iterator[Prediction]:
        nonlocal error_rows
        for pred in preds:
            error_rows += not pred.ok
            if report is not None:
                written.append(pred)
            yield pred

    try:
        write_predictions(counted(rows), fmt, top_k=rank.top_k, output=path, stream=stream, safe_csv=safe_csv,
                          thresholded=rank.thresholded)
    except BaseException:
        if journal is not None:
            journal.close()
        raise
    if journal is not None:
        journal.finish()
    if report is not None:
        from .report import write_classify_report

        model = f"{classifier.loaded.name} ({classifier.loaded.pretrained or 'random init'})"
        write_classify_report(report, written, model=model, labels=classifier.labels,
                              on_progress=on_report_progress)
    return replace(classifier.last_run, kept=len(done), error_rows=error_rows)
