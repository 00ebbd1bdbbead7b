"""zeroshot: zero-shot image classification with CLIP models (open_clip).

The command line (``zeroshot classify ...``) is a thin client of this library::

    from zeroshot import ZeroShotClassifier
    clf = ZeroShotClassifier(["cat", "dog"], templates="openai-7")
    df = clf.classify_dataframe(["photos/"], top_k=2)

Names are imported on first use, so ``import zeroshot`` (and ``zeroshot --help``) does not load
torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__

# public name -> module that defines it
_EXPORTS = {
    "ZeroShotClassifier": "tasks.classify",
    "RunStats": "tasks.classify",
    "RankSettings": "tasks.classify",
    "classify_to_file": "tasks.classify",
    "EmbedSettings": "encode.embed",
    "Embedded": "encode.embed",
    "embed_images": "encode.embed",
    "ZeroshotError": "errors",
    "UsageError": "errors",
    "ModelLoadError": "errors",
    "OutputError": "errors",
    "ImageError": "errors",
    "discover": "data.discover",
    "open_image": "data.decode",
    "LoadedModel": "models",
    "load_model": "models",
    "resolve_weights": "models",
    "list_pretrained_models": "models",
    "FORMATS": "output.writers",
    "write_predictions": "output.writers",
    "Prediction": "output.rows",
    "to_dataframe": "output.rows",
    "resolve_labels": "prompts",
    "resolve_templates": "prompts",
    "TemplateSet": "prompts",
    "ClassWeightCache": "encode.cache",
    "build_class_weights": "encode.text",
    "encode_prompts": "encode.text",
    "EvalDataset": "data.datasets",
    "load_dataset": "data.catalog",
    "EvalResult": "tasks.evaluate",
    "evaluate": "tasks.evaluate",
    "evaluate_models": "tasks.evaluate",
    "embed_images_many": "encode.embed",
    "Metrics": "metrics",
    "compute_metrics": "metrics",
    "plan_sort": "tasks.sort",
    "execute_sort": "tasks.sort",
    "sort_images": "tasks.sort",
    "undo_sort": "tasks.sort",
    "folder_name": "tasks.sort",
    "SortPlan": "tasks.sort",
    "SortResult": "tasks.sort",
    "Store": "store.db",
    "search": "tasks.search",
    "Query": "tasks.search",
    "locate": "tasks.locate",
    "LocateSettings": "tasks.locate",
    "similarity": "tasks.similarity",
    "SimilarityResult": "tasks.similarity",
    "ReportItem": "output.report",
    "write_report": "output.report",
    "write_eval_report": "tasks.report",
    "RetrievalDataset": "data.captions",
    "RetrievalResult": "tasks.retrieval",
    "evaluate_retrieval": "tasks.retrieval",
    "LinearHead": "heads",
    "read_head": "heads",
}

__all__ = [
    "__version__", "ClassWeightCache", "EmbedSettings", "Embedded", "EvalDataset", "EvalResult",
    "FORMATS", "ImageError", "LinearHead", "LoadedModel", "Metrics", "ModelLoadError", "OutputError",
    "Prediction", "Query", "RankSettings", "RunStats", "SortPlan", "SortResult", "Store",
    "TemplateSet", "UsageError", "ZeroShotClassifier", "ZeroshotError", "build_class_weights",
    "classify_to_file", "compute_metrics", "discover", "embed_images", "encode_prompts", "evaluate",
    "execute_sort", "folder_name", "list_pretrained_models", "load_dataset", "load_model",
    "open_image", "plan_sort", "read_head", "resolve_labels", "resolve_templates", "resolve_weights", "search",
    "sort_images", "to_dataframe", "undo_sort", "write_predictions",
    "LocateSettings", "SimilarityResult", "locate", "similarity",
    "ReportItem", "write_report", "write_eval_report",
    "RetrievalDataset", "RetrievalResult", "evaluate_retrieval",
    "evaluate_models", "embed_images_many",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'zeroshot' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:  # for type checkers and IDEs: the same names, imported eagerly
    from .data.captions import RetrievalDataset
    from .data.catalog import load_dataset
    from .data.datasets import EvalDataset
    from .data.decode import open_image
    from .data.discover import discover
    from .encode.cache import ClassWeightCache
    from .encode.embed import Embedded, EmbedSettings, embed_images, embed_images_many
    from .encode.text import build_class_weights, encode_prompts
    from .errors import ImageError, ModelLoadError, OutputError, UsageError, ZeroshotError
    from .heads import LinearHead, read_head
    from .metrics import Metrics, compute_metrics
    from .models import LoadedModel, list_pretrained_models, load_model, resolve_weights
    from .output.report import ReportItem, write_report
    from .output.rows import Prediction, to_dataframe
    from .output.writers import FORMATS, write_predictions
    from .prompts import TemplateSet, resolve_labels, resolve_templates
    from .store.db import Store
    from .tasks.classify import RankSettings, RunStats, ZeroShotClassifier, classify_to_file
    from .tasks.evaluate import EvalResult, evaluate, evaluate_models
    from .tasks.locate import LocateSettings, locate
    from .tasks.report import write_eval_report
    from .tasks.retrieval import RetrievalResult, evaluate_retrieval
    from .tasks.search import Query, search
    from .tasks.similarity import SimilarityResult, similarity
    from .tasks.sort import SortPlan, SortResult, execute_sort, folder_name, plan_sort, sort_images, undo_sort
