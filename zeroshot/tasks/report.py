"""The HTML report of a command's results (``--report``): classify, search and eval.

    from zeroshot.tasks.report import write_eval_report
    write_eval_report("eval.html", evaluate(loaded, dataset), dataset)

Each function turns one task's results into :class:`~zeroshot.output.report.ReportItem` rows
(and an :class:`~zeroshot.output.report.EvalSection` for eval) and writes the page with
:func:`zeroshot.output.report.write_report`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any

from ..data.datasets import EvalDataset
from ..output.report import MAX_THUMBNAILS, EvalSection, ProgressHook, ReportItem, ReportStats, write_report
from ..output.rows import Prediction
from .evaluate import EvalResult
from .search import Query, SearchResults


def prediction_items(predictions: Iterable[Prediction]) -> tuple[list[ReportItem], list[tuple[str, str]]]:
    """Report items grouped by the decision label (with the runner-up labels, or the model's best
    label when a threshold made the decision the unknown label, as the note), and the skipped
    inputs as ``(path, "code: detail")``."""
    items, skipped = [], []
    for pred in predictions:
        if pred.error is not None:
            skipped.append((pred.path, pred.error))
            continue
        notes = []
        if pred.label != pred.top_label:
            notes.append(f"best: {pred.top_label} {pred.score:.3f}")
        notes += [f"{label} {score:.3f}" for label, score in zip(pred.labels[1:], pred.scores[1:])]
        items.append(ReportItem(pred.path, pred.label, pred.score, " · ".join(notes)))
    return items, skipped


def write_classify_report(path: str | os.PathLike, predictions: Iterable[Prediction], *, model: str = "",
                          labels: Sequence[str] = (), on_progress: ProgressHook | None = None) -> ReportStats:
    """The classify report: images grouped by predicted label, best score first; skipped files."""
    items, skipped = prediction_items(predictions)
    meta = [("model", model)] if model else []
    if labels:
        meta.append(("labels", str(len(labels))))
    return write_report(path, items, skipped, title="zeroshot classify", meta=meta, group_title="predicted label",
                        on_progress=on_progress)


def write_search_report(path: str | os.PathLike, results: SearchResults, queries: Sequence[Query] = (), *,
                        model: str = "", on_progress: ProgressHook | None = None) -> ReportStats:
    """The search report: the hits in rank order, with their scores; skipped files."""
    items = [ReportItem(hit.path, None, hit.score, f"#{hit.rank}") for hit in results.hits]
    query = "; ".join(q.describe() for q in queries)
    meta = [("query", query)] if query else []
    if model:
        meta.append(("model", model))
    meta.append(("searched", f"{results.searched} images"))
    return write_report(path, items, results.skipped, title=f"zeroshot search: {query}" if query else "zeroshot search",
                        meta=meta, group_title="search", ordered=True, per_group=MAX_THUMBNAILS,
                        on_progress=on_progress)


def eval_section(result: EvalResult, template_set: int = 0) -> EvalSection:
    """The metrics of every template set; the per-class and confusion charts of ``template_set``."""
    chosen = result.results[template_set]
    metrics = [(r.templates, [("top-1", r.acc1), ("top-5", r.acc5), ("mean per-class recall", r.mean_per_class_recall)])
               for r in result.results]
    return EvalSection(result.classnames, result.targets.tolist(), chosen.predictions.tolist(), metrics,
                       charts_for=chosen.templates)


def misclassified_items(result: EvalResult, dataset: EvalDataset | None = None,
                        template_set: int = 0) -> list[ReportItem]:
    """The misclassified images, grouped by their true class; the note names the prediction.
    With the ``dataset``, in-memory images (CIFAR) get thumbnails too and files are opened by
    their real path."""
    chosen = result.results[template_set]
    items = []
    for i, (name, target, pred) in enumerate(zip(result.paths, result.targets.tolist(), chosen.predictions.tolist())):
        if pred < 0 or pred == target:
            continue
        image: Any = None
        file = None
        if dataset is not None:
            sample = dataset.samples[i][0]
            if dataset.images is not None and not isinstance(sample, str):
                image = dataset.images[int(sample)]
            else:
                file = dataset.fs_paths.get(name, name)
        score = float(chosen.scores[i])
        items.append(ReportItem(name, result.classnames[target], score,
                                f"predicted: {result.classnames[pred]}", file=file, image=image))
    return items


def write_eval_report(path: str | os.PathLike, result: EvalResult, dataset: EvalDataset | None = None, *,
                      on_progress: ProgressHook | None = None) -> ReportStats:
    """The eval report: metrics of every template set, per-class accuracy and the most confused
    classes (of the first set), the misclassified images by true class, and the skipped files."""
    items = misclassified_items(result, dataset)
    meta = [("dataset", result.dataset), ("model", f"{result.model} ({result.pretrained or 'random init'})"),
            ("classes", str(len(result.classnames))), ("images", str(result.num_images)),
            ("misclassified", str(len(items)))]
    return write_report(path, items, result.skipped,
                        title=f"zeroshot eval: {result.dataset}", meta=meta, evaluation=eval_section(result),
                        group_title="true class", on_progress=on_progress)
