"""zeroshot: zero-shot image classification with CLIP models (open_clip).

The command line (``zeroshot classify ...``) is a thin client of this library::

    from zeroshot import ZeroShotClassifier
    clf = ZeroShotClassifier(["cat", "dog"], templates="openai-7")
    df = clf.classify_dataframe(["photos/"], top_k=2)
"""

__version__ = "0.1.0"

from .classifier import RunStats, ZeroShotClassifier  # noqa: E402
from .errors import ModelLoadError, OutputError, UsageError, ZeroshotError  # noqa: E402
from .images import ImageError, discover, open_image  # noqa: E402
from .models import LoadedModel, list_pretrained_models, load_model  # noqa: E402
from .output import FORMATS, Prediction, to_dataframe, write_predictions  # noqa: E402
from .prompts import resolve_labels, resolve_templates  # noqa: E402
from .text import ClassWeightCache, build_class_weights, encode_prompts  # noqa: E402

__all__ = [
    "ClassWeightCache", "FORMATS", "ImageError", "LoadedModel", "ModelLoadError", "OutputError",
    "Prediction", "RunStats", "UsageError", "ZeroShotClassifier", "ZeroshotError",
    "build_class_weights", "discover", "encode_prompts", "list_pretrained_models", "load_model",
    "open_image", "resolve_labels", "resolve_templates", "to_dataframe", "write_predictions",
]

# ``zeroshot.evaluate`` stays the module; its ``evaluate()`` is exported as ``evaluate_dataset``.
from .evaluate import (  # noqa: E402
    EvalDataset,
    EvalResult,
    Metrics,
    compute_metrics,
    load_dataset,
)
from .evaluate import evaluate as evaluate_dataset  # noqa: E402

__all__ += ["EvalDataset", "EvalResult", "Metrics", "compute_metrics", "evaluate_dataset", "load_dataset"]
