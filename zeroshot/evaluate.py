"""Zero-shot evaluation: labelled datasets, accuracy metrics, several prompt sets in one pass.

    from zeroshot import load_model
    from zeroshot.evaluate import evaluate, imagenet_dataset

    loaded = load_model("ViT-B-32", "openai")
    result = evaluate(loaded, imagenet_dataset("/data/imagenet"), ["openai-80", "openai-7"])
    for r in result.results:
        print(r.templates, r.acc1, r.acc5, r.mean_per_class_recall)

The images are decoded and encoded once; their normalised embeddings are kept and every template
set's class weights are scored against them. Metrics follow CLIP_benchmark: top-1 and top-5
accuracy (top-5 is ``None`` with fewer than 5 classes) and mean per-class recall (sklearn's
``balanced_accuracy_score``: the mean over the classes that have at least one image).

Images that cannot be read are **counted as wrong** (they stay in every denominator, so a broken
file can never raise the accuracy) and reported in :attr:`EvalResult.skipped`.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from .errors import UsageError, ZeroshotError
from .images import (
    DECODE_ERROR,
    DEFAULT_MAX_PIXELS,
    IMAGE_EXTENSIONS,
    ImageDataset,
    Preprocessor,
    Source,
    default_workers,
    discover,
    iterate_batches,
    natural_key,
    to_rgb,
)
from .models import LoadedModel
from .prompts import (
    TemplateSet,
    load_builtin,
    read_entries,
    resolve_templates,
    validate_labels,
    validate_templates,
)
from .scoring import class_logits, probabilities
from .text import ClassWeightCache, build_class_weights
from .vision import encode_images

TASK = "zeroshot_classification"
WNID_RE = re.compile(r"^n\d{8}$")
CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"
# Default template set per dataset kind (CLIP_benchmark uses the CIFAR templates for CIFAR).
DEFAULT_TEMPLATES = {"imagenet": "openai-80", "cifar10": "cifar", "cifar100": "cifar", "folder": "openai-80", "csv": "openai-80"}
_SCORE_CHUNK = 4096

TextProgress = Callable[[str, int, int], None]  # (template set name, done, total)
ImageProgress = Callable[[int, int], None]  # (done, total)
SkipHook = Callable[[str, str], None]  # (path, "code: detail")


# ======================================================================================= metrics


def topk_hits(logits: torch.Tensor, targets: torch.Tensor, k: int = 1, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Per sample: is the true class among the ``k`` highest logits? ``valid=False`` rows
    (images that failed to load) are misses whatever their logits hold."""
    k = min(k, logits.shape[1])
    hits = (logits.topk(k, dim=1).indices == targets.view(-1, 1)).any(dim=1)
    return hits & valid if valid is not None else hits


def topk_accuracy(logits: torch.Tensor, targets: torch.Tensor, k: int = 1, valid: torch.Tensor | None = None) -> float | None:
    """Fraction of samples whose class is in the top ``k``; ``None`` when there are fewer than
    ``k`` classes (not applicable, rather than a trivially perfect number)."""
    if k > logits.shape[1]:
        return None
    if len(targets) == 0:
        return 0.0
    return int(topk_hits(logits, targets, k, valid).sum()) / len(targets)


def per_class_recall(
    predictions: torch.Tensor, targets: torch.Tensor, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(correct, total)`` per class from predicted class indices (``-1`` = no prediction)."""
    total = torch.bincount(targets, minlength=num_classes)
    correct = torch.bincount(targets[predictions == targets], minlength=num_classes)
    return correct, total


def mean_per_class_recall(predictions: torch.Tensor, targets: torch.Tensor, num_classes: int | None = None) -> float:
    """Mean over classes with at least one sample of (correct / samples), as sklearn's
    ``balanced_accuracy_score``. ``predictions`` are class indices; ``-1`` counts as wrong."""
    num_classes = num_classes or int(max(targets.max().item(), predictions.max().item()) + 1)
    correct, total = per_class_recall(predictions, targets, num_classes)
    present = total > 0
    if not present.any():
        return 0.0
    return (correct[present].double() / total[present].double()).mean().item()


@dataclass(frozen=True)
class Metrics:
    """CLIP_benchmark's classification metrics (fractions in [0, 1])."""

    acc1: float
    acc5: float | None
    mean_per_class_recall: float

    def as_dict(self) -> dict[str, float | None]:
        return {"acc1": self.acc1, "acc5": self.acc5, "mean_per_class_recall": self.mean_per_class_recall}


def compute_metrics(logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor | None = None) -> Metrics:
    """acc1, acc5 (``None`` below 5 classes) and mean per-class recall from ``[N, C]`` logits."""
    predictions = logits.argmax(dim=1)
    if valid is not None:
        predictions = torch.where(valid, predictions, torch.full_like(predictions, -1))
    return Metrics(
        acc1=topk_accuracy(logits, targets, 1, valid) or 0.0,
        acc5=topk_accuracy(logits, targets, 5, valid),
        mean_per_class_recall=mean_per_class_recall(predictions, targets, logits.shape[1]),
    )


# ====================================================================================== datasets


@dataclass
class EvalDataset:
    """A labelled dataset: ``samples`` are ``(path or index, target)`` pairs, ``classnames`` the
    label text of each target index. Index samples refer to ``images[index]`` (in memory, e.g.
    CIFAR); path samples are image files. ``errors`` holds paths known to be unreadable already
    (found while listing), with their reason."""

    name: str
    classnames: tuple[str, ...]
    samples: list[tuple[str | int, int]]
    root: str = ""
    images: Sequence[Any] | None = None
    errors: dict[str, str] = field(default_factory=dict)
    fs_paths: dict[str, str] = field(default_factory=dict)  # shown path -> file to open, when they differ

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def targets(self) -> list[int]:
        return [t for _, t in self.samples]

    def sample_name(self, sample: str | int) -> str:
        return sample if isinstance(sample, str) else f"{self.name}/test/{sample:05d}"

    def limit(self, per_class: int | None) -> EvalDataset:
        """The first ``per_class`` samples of every class, in dataset order."""
        if not per_class:
            return self
        seen: dict[int, int] = {}
        kept = []
        for sample, target in self.samples:
            if seen.get(target, 0) < per_class:
                seen[target] = seen.get(target, 0) + 1
                kept.append((sample, target))
        return replace(self, samples=kept)

    def with_classnames(self, labels: Sequence[str], source: str = "--labels") -> EvalDataset:
        """Replace the class names (same count, same order as the dataset's classes)."""
        labels = validate_labels(list(labels), source)
        if len(labels) != len(self.classnames):
            raise UsageError(
                f"{source} has {len(labels)} labels but {self.name} has {len(self.classnames)} classes; "
                "give one label per class, in class-index order"
            )
        return replace(self, classnames=labels)


def _require_dir(path: str | os.PathLike, option: str) -> Path:
    folder = Path(path).expanduser()
    if not folder.exists():
        raise UsageError(f"{option} {path}: no such folder")
    if not folder.is_dir():
        raise UsageError(f"{option} {path}: not a folder")
    return folder


def _subfolders(folder: Path, option: str) -> list[os.DirEntry]:
    try:
        with os.scandir(folder) as it:
            entries = [e for e in it if not e.name.startswith(".") and e.is_dir()]
    except OSError as err:
        raise UsageError(f"{option} {folder}: cannot list folder: {err.strerror or err}") from None
    return sorted(entries, key=lambda e: natural_key(e.name))


def _collect(dataset_name: str, folders: list[tuple[str, int]], root: Path, hidden: bool) -> tuple[list, dict]:
    """Images under each class folder (recursively, natural order) as samples, plus unreadables."""
    samples: list[tuple[str | int, int]] = []
    errors: dict[str, str] = {}
    for folder, target in folders:
        found = discover([folder], recursive=True, include_hidden=hidden)
        for source in found.sources:
            samples.append((source.path, target))
        for path, err in found.problems:  # unreadable files or sub-folders: reported, counted wrong
            samples.append((path, target))
            errors[path] = str(err)
    if not samples:
        exts = " ".join(sorted(IMAGE_EXTENSIONS))
        raise UsageError(f"found 0 images in {root} ({dataset_name} layout); supported extensions are {exts}")
    return samples, errors


def imagenet_wnids() -> list[str]:
    """The 1000 ImageNet-1k WordNet ids in class-index order."""
    return load_builtin("classes", "imagenet-wnids")


def imagenet_dataset(root: str | os.PathLike, include_hidden: bool = False) -> EvalDataset:
    """ImageNet-1k validation layout: ``root/val/<wnid>/*.JPEG`` (or ``root/<wnid>/...``).

    Folders map to classes through the canonical wnid list, not folder order, so any subset of
    classes scores correctly; every image is still classified among all 1000 classes."""
    base = _require_dir(root, "--root")
    folder = base / "val" if (base / "val").is_dir() else base
    wnids = imagenet_wnids()
    index = {w: i for i, w in enumerate(wnids)}
    subdirs = _subfolders(folder, "--root")
    layout = f"{base}/val/<wnid>/*.JPEG, e.g. {base}/val/n01440764/ILSVRC2012_val_00000293.JPEG"
    bad = [e.name for e in subdirs if e.name not in index]
    if bad:
        shown = ", ".join(repr(b) for b in bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise UsageError(
            f"--root {root}: folder(s) {shown} in {folder} are not ImageNet-1k WordNet ids (like n01440764); "
            f"expected the validation layout {layout}"
        )
    if not subdirs:
        raise UsageError(
            f"--root {root}: no WordNet-id folders in {folder}; expected the validation layout {layout} "
            "(a flat folder of ILSVRC2012_val_*.JPEG must first be sorted into one folder per class)"
        )
    classnames = tuple(load_builtin("classes", "imagenet"))
    samples, errors = _collect("imagenet", [(os.path.join(str(folder), e.name), index[e.name]) for e in subdirs], folder, include_hidden)
    return EvalDataset("imagenet1k", classnames, samples, str(folder), errors=errors)


def read_classnames(path: str | os.PathLike) -> dict[str, str]:
    """A folder/label -> class name mapping: a JSON object, or lines ``key<TAB>name`` /
    ``key,name`` (``#`` comments allowed). Order is kept."""
    path = Path(path).expanduser()
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(path.read_text("utf-8-sig"))
        except FileNotFoundError:
            raise UsageError(f"--classnames file not found: {path}") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise UsageError(f"--classnames {path}: not a readable JSON file ({err})") from None
        if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
            raise UsageError(f"--classnames {path}: expected a JSON object mapping folder name -> class name")
        return {str(k): v.strip() for k, v in data.items()}
    mapping: dict[str, str] = {}
    for number, line in enumerate(read_entries(path, "--classnames"), 1):
        sep = "\t" if "\t" in line else ","
        if sep not in line:
            raise UsageError(
                f"--classnames {path}: entry {number} {line[:60]!r} has no tab or comma; "
                "write one 'folder<TAB>class name' (or 'folder,class name') per line"
            )
        key, name = (part.strip() for part in line.split(sep, 1))
        if key in mapping:
            raise UsageError(f"--classnames {path}: {key!r} appears twice")
        mapping[key] = name
    if not mapping:
        raise UsageError(f"--classnames {path}: no entries")
    return mapping


def _apply_classnames(keys: list[str], mapping: dict[str, str], path: str | os.PathLike, what: str) -> tuple[list[str], tuple[str, ...]]:
    """Class order and names from a mapping: all its entries, in file order; every key must be in it."""
    missing = [k for k in keys if k not in mapping]
    if missing:
        raise UsageError(f"--classnames {path}: no class name for {what} {missing[0]!r}; add a line '{missing[0]},<class name>'")
    order = list(mapping)
    return order, validate_labels([mapping[k] for k in order], f"--classnames {path}")


def folder_dataset(
    path: str | os.PathLike, classnames: str | os.PathLike | None = None, include_hidden: bool = False
) -> EvalDataset:
    """An image-folder dataset: ``path/<class>/**/<image>``; the class is the sub-folder name, or
    its name in ``classnames`` (then every class listed there competes, even without images)."""
    root = _require_dir(path, "PATH")
    subdirs = _subfolders(root, "PATH")
    if not subdirs:
        raise UsageError(f"{path}: no class sub-folders; expected {path}/<class name>/<image files>")
    keys = [e.name for e in subdirs]
    if classnames is not None:
        order, names = _apply_classnames(keys, read_classnames(classnames), classnames, "folder")
    else:
        order, names = keys, validate_labels(keys, f"the sub-folders of {path}")
    index = {k: i for i, k in enumerate(order)}
    samples, errors = _collect("folder", [(os.path.join(str(root), k), index[k]) for k in keys], root, include_hidden)
    return EvalDataset("folder", names, samples, str(root), errors=errors)


def csv_dataset(path: str | os.PathLike, classnames: str | os.PathLike | None = None) -> EvalDataset:
    """A manifest with ``path`` and ``label`` columns (header row; other columns ignored). Relative
    paths are relative to the manifest's folder. Classes: the labels in natural order, or every
    entry of ``classnames`` (label -> class name) in file order."""
    manifest = Path(path).expanduser()
    try:
        text = manifest.read_text("utf-8-sig")
    except FileNotFoundError:
        raise UsageError(f"manifest not found: {path}") from None
    except IsADirectoryError:
        raise UsageError(f"{path} is a folder; `zeroshot eval csv` takes a CSV file (use `eval folder` for folders)") from None
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"cannot read manifest {path}: {err}") from None
    dialect = "excel-tab" if manifest.suffix.lower() == ".tsv" else "excel"
    reader = csv.DictReader(text.splitlines(), dialect=dialect)
    fields = {(f or "").strip().lower(): f for f in reader.fieldnames or []}
    if "path" not in fields or "label" not in fields:
        raise UsageError(f"manifest {path}: needs a header row with 'path' and 'label' columns (found {list(fields) or 'none'})")
    base = manifest.parent
    rows: list[tuple[str, str]] = []
    for number, row in enumerate(reader, 2):
        image, label = (row.get(fields["path"]) or "").strip(), (row.get(fields["label"]) or "").strip()
        if not image and not label:
            continue
        if not image or not label:
            raise UsageError(f"manifest {path}: line {number} has an empty {'path' if not image else 'label'}")
        rows.append((image, label))
    if not rows:
        raise UsageError(f"manifest {path}: no rows")
    keys = sorted({label for _, label in rows}, key=natural_key)
    if classnames is not None:
        order, names = _apply_classnames(keys, read_classnames(classnames), classnames, "label")
    else:
        order, names = keys, validate_labels(keys, f"the labels of {path}")
    index = {k: i for i, k in enumerate(order)}
    fs_paths = {image: str(base / image) for image, _ in rows if not os.path.isabs(image)}
    return EvalDataset("csv", names, [(image, index[label]) for image, label in rows], str(manifest), fs_paths=fs_paths)


def cifar_dataset(name: str, root: str | os.PathLike, download: bool = False) -> EvalDataset:
    """CIFAR-10/100 test split through torchvision (``root/cifar-10-batches-py`` or
    ``root/cifar-100-python``); class names are CLIP's (``_`` written as a space)."""
    from torchvision.datasets import CIFAR10, CIFAR100

    cls = {"cifar10": CIFAR10, "cifar100": CIFAR100}[name]
    title = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}[name]
    root = Path(root).expanduser()
    if root.name == cls.base_folder:  # the user pointed at the extracted folder itself
        root = root.parent
    if root.exists() and not root.is_dir():
        raise UsageError(f"--root {root}: not a folder")
    where = f"{root / cls.base_folder}"
    try:
        with contextlib.redirect_stdout(sys.stderr):  # torchvision prints download messages; stdout is data
            data = cls(str(root), train=False, download=download)
    except RuntimeError as err:
        if "not found or corrupted" not in str(err):
            raise
        raise UsageError(
            f"--root {root}: {title} test set not found or corrupted in {where}; add --download, or download "
            f"{cls.filename} from {CIFAR_URL} and extract it into {root}"
        ) from None
    except OSError as err:  # network failures during --download (URLError is an OSError)
        reason = getattr(err, "reason", None) or err.strerror or err
        raise ZeroshotError(
            f"--download: could not download {title} ({reason}); download {cls.filename} from {CIFAR_URL} "
            f"and extract it into {root}"
        ) from None
    classnames = tuple(load_builtin("classes", name))
    if len(classnames) != len(data.classes):
        raise ZeroshotError(f"{where}: {len(data.classes)} classes in the metadata, expected {len(classnames)}")
    return EvalDataset(name, classnames, [(i, int(t)) for i, t in enumerate(data.targets)], str(root), images=data.data)


DATASETS = ("imagenet", "cifar10", "cifar100", "folder", "csv")


def load_dataset(
    name: str,
    path: str | os.PathLike,
    classnames: str | os.PathLike | None = None,
    download: bool = False,
    include_hidden: bool = False,
) -> EvalDataset:
    """One of :data:`DATASETS` by name."""
    if name == "imagenet":
        return imagenet_dataset(path, include_hidden)
    if name in ("cifar10", "cifar100"):
        return cifar_dataset(name, path, download)
    if name == "folder":
        return folder_dataset(path, classnames, include_hidden)
    if name == "csv":
        return csv_dataset(path, classnames)
    raise UsageError(f"dataset {name!r} is not one of {', '.join(DATASETS)}")


# ==================================================================================== evaluation


class _MemoryImages(torch.utils.data.Dataset):
    """Same contract as :class:`ImageDataset` for images held in memory (arrays or PIL images)."""

    def __init__(self, images: Sequence[Any], indices: list[int], pre: Preprocessor) -> None:
        self.images, self.indices, self.pre = images, indices, pre

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor | None, str | None]:
        try:
            img = self.images[self.indices[index]]
            img = img if isinstance(img, Image.Image) else Image.fromarray(img)
            return index, self.pre.pixels(to_rgb(img)), None
        except Exception as err:  # noqa: BLE001
            return index, None, f"{DECODE_ERROR}: {type(err).__name__}: {err}"


@dataclass
class TemplateResult:
    """Metrics of one template set, with per-image predictions (``-1``: image not loaded)."""

    templates: str
    num_templates: int
    metrics: Metrics
    predictions: torch.Tensor  # [N] predicted class index
    scores: torch.Tensor  # [N] probability of the predicted class (nan when not loaded)
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
    loaded: torch.Tensor  # [N] bool: the image was read and encoded
    skipped: list[tuple[str, str]]
    results: list[TemplateResult]
    seconds: float
    image_seconds: float
    device: str = "cpu"
    precision: str = "fp32"

    @property
    def metrics(self) -> Metrics:
        """The first template set's metrics."""
        return self.results[0].metrics

    @property
    def num_images(self) -> int:
        return len(self.paths)

    def as_dict(self) -> dict[str, Any]:
        """CLIP_benchmark's result keys (for the first template set) plus every set and counts."""
        from . import __version__

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
            "skipped": len(self.skipped),
            "skipped_images": [{"path": p, "error": e} for p, e in self.skipped],
            "seconds": round(self.seconds, 3),
            "image_seconds": round(self.image_seconds, 3),
            "root": self.root,
            "device": self.device,
            "precision": self.precision,
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


def _as_template_set(spec: str | TemplateSet | Sequence[str]) -> TemplateSet:
    if isinstance(spec, TemplateSet):
        return spec
    if isinstance(spec, str):
        return resolve_templates(spec)
    return TemplateSet("custom", validate_templates(list(spec), "templates"))


def score_features(
    loaded: LoadedModel, features: torch.Tensor, weights: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor
) -> tuple[Metrics, torch.Tensor, torch.Tensor]:
    """Metrics, predicted classes and their probabilities for stored image features."""
    n = features.shape[0]
    k5 = min(5, weights.shape[0])
    predictions = torch.full((n,), -1, dtype=torch.long)
    scores = torch.full((n,), float("nan"))
    hits1 = torch.zeros(n, dtype=torch.bool)
    hits5 = torch.zeros(n, dtype=torch.bool)
    weights = weights.to(loaded.device)
    for start in range(0, n, _SCORE_CHUNK):
        chunk = slice(start, start + _SCORE_CHUNK)
        logits = class_logits(features[chunk].to(loaded.device), weights, loaded.logit_scale.to(loaded.device),
                              None if loaded.logit_bias is None else loaded.logit_bias.to(loaded.device))
        probs = probabilities(logits, sigmoid=loaded.uses_sigmoid)
        top = logits.topk(k5, dim=1).indices.cpu()
        predictions[chunk] = top[:, 0]
        scores[chunk] = probs.gather(1, top[:, :1].to(probs.device)).squeeze(1).cpu()
        hit = top == targets[chunk].view(-1, 1)
        hits1[chunk] = hit[:, 0]
        hits5[chunk] = hit.any(dim=1)
    predictions[~valid] = -1
    scores[~valid] = float("nan")
    hits1 &= valid
    hits5 &= valid
    metrics = Metrics(
        acc1=int(hits1.sum()) / n if n else 0.0,
        acc5=(int(hits5.sum()) / n if n else 0.0) if weights.shape[0] >= 5 else None,
        mean_per_class_recall=mean_per_class_recall(predictions, targets, weights.shape[0]),
    )
    return metrics, predictions, scores


def evaluate(
    loaded: LoadedModel,
    dataset: EvalDataset,
    template_sets: Sequence[str | TemplateSet | Sequence[str]] = ("openai-80",),
    batch_size: int | None = None,
    workers: int | None = None,
    cache: bool | str | os.PathLike = True,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    exact_preprocess: bool = True,
    decode_timeout: float = 300.0,
    text_batch_size: int = 256,
    on_text_progress: TextProgress | None = None,
    on_image_progress: ImageProgress | None = None,
    on_skip: SkipHook | None = None,
) -> EvalResult:
    """Zero-shot accuracy of ``loaded`` on ``dataset`` for every template set, encoding each
    image once. Unreadable images count as wrong and are listed in ``EvalResult.skipped``."""
    started = time.perf_counter()
    sets = [_as_template_set(s) for s in template_sets]
    if not sets:
        raise UsageError("give at least one template set")
    if len(dataset) == 0:
        raise UsageError(f"{dataset.name} at {dataset.root or '?'} has no images")
    names = {}
    for s in sets:  # the same set twice would be scored twice: drop repeats, keep order
        names.setdefault(s.templates, s)
    sets = list(names.values())
    store = None if cache is False else ClassWeightCache(None if cache is True else Path(cache))

    weights = []
    for s in sets:
        hook = (lambda done, total, _n=s.name: on_text_progress(_n, done, total)) if on_text_progress else None
        weights.append(build_class_weights(loaded, dataset.classnames, s.templates, text_batch_size, hook, store))

    image_started = time.perf_counter()
    features, valid, skipped = _encode_dataset(
        loaded, dataset, batch_size, workers, max_pixels, exact_preprocess, decode_timeout, on_image_progress, on_skip
    )
    image_seconds = time.perf_counter() - image_started
    targets = torch.tensor(dataset.targets, dtype=torch.long)
    results = []
    for s, w in zip(sets, weights):
        metrics, predictions, scores = score_features(loaded, features, w, targets, valid)
        correct, total = per_class_recall(predictions, targets, len(dataset.classnames))
        results.append(TemplateResult(s.name, len(s), metrics, predictions, scores, correct, total))
    return EvalResult(
        dataset=dataset.name,
        root=dataset.root,
        model=loaded.name,
        pretrained=loaded.pretrained,
        classnames=tuple(dataset.classnames),
        paths=[dataset.sample_name(sample) for sample, _ in dataset.samples],
        targets=targets,
        loaded=valid,
        skipped=skipped,
        results=results,
        seconds=time.perf_counter() - started,
        image_seconds=image_seconds,
        device=str(loaded.device),
        precision=loaded.precision,
    )


def _encode_dataset(
    loaded: LoadedModel,
    dataset: EvalDataset,
    batch_size: int | None,
    workers: int | None,
    max_pixels: int | None,
    exact_preprocess: bool,
    decode_timeout: float,
    on_progress: ImageProgress | None,
    on_skip: SkipHook | None,
) -> tuple[torch.Tensor, torch.Tensor, list[tuple[str, str]]]:
    """Normalised features ``[N, dim]`` (zeros where an image failed), a loaded mask, the skips."""
    from .classifier import default_batch_size

    n = len(dataset)
    pre = Preprocessor(loaded.preprocess)
    names = [dataset.sample_name(sample) for sample, _ in dataset.samples]
    known = {i: dataset.errors[name] for i, name in enumerate(names) if name in dataset.errors}
    todo = [i for i in range(n) if i not in known]
    if dataset.images is not None:
        items: torch.utils.data.Dataset = _MemoryImages(dataset.images, [int(dataset.samples[i][0]) for i in todo], pre)
    else:
        sources = [Source(names[i], dataset.fs_paths.get(names[i], names[i])) for i in todo]
        items = ImageDataset(sources, pre, max_pixels, draft=not exact_preprocess)
    batch_size = batch_size or default_batch_size(loaded.device)
    workers = default_workers(loaded.device) if workers is None else workers
    workers = min(workers, max(0, (len(todo) + batch_size - 1) // batch_size))

    features: torch.Tensor | None = None
    valid = torch.zeros(n, dtype=torch.bool)
    failures: dict[int, str] = dict(known)
    done = len(known)
    if on_skip:
        for i, reason in known.items():
            on_skip(names[i], reason)
    if on_progress:
        on_progress(done, n)
    batches = iterate_batches(items, batch_size, workers, pin_memory=loaded.device.type == "cuda",
                              timeout=decode_timeout if workers else 0,
                              low_priority=loaded.device.type == "cpu")
    for batch in batches:
        for local, reason in batch.errors:
            failures[todo[local]] = reason
            if on_skip:
                on_skip(names[todo[local]], reason)
        if batch.pixels is not None:
            encoded = encode_images(loaded, pre.finish(batch.pixels, loaded.device)).cpu()
            if features is None:
                features = torch.zeros(n, encoded.shape[1])
            rows = torch.tensor([todo[i] for i in batch.indices], dtype=torch.long)
            features[rows] = encoded
            valid[rows] = True
        done += len(batch.indices) + len(batch.errors)
        if on_progress:
            on_progress(done, n)
    if features is None:  # every image failed: zero features, all counted wrong
        dim = int(getattr(loaded.model, "embed_dim", 0) or _embed_dim(loaded))
        features = torch.zeros(n, dim)
    skipped = [(names[i], failures[i]) for i in sorted(failures)]
    return features, valid, skipped


def _embed_dim(loaded: LoadedModel) -> int:
    with torch.inference_mode():
        return int(loaded.model.encode_text(loaded.tokenizer(["x"]).to(loaded.device)).shape[-1])


# ======================================================================================== files


def write_json(result: EvalResult, path: str | os.PathLike) -> None:
    """The results JSON (CLIP_benchmark keys plus ours), written atomically."""
    from .output import atomic_file

    with atomic_file(Path(path)) as handle:
        json.dump(result.as_dict(), handle, ensure_ascii=False, indent=2)
        handle.write("\n")


def write_rows(rows: list[dict[str, Any]], path: str | os.PathLike, safe_csv: bool = True) -> None:
    """Rows as CSV (``.tsv``: tab-separated; ``.jsonl``: JSON lines), written atomically.
    CSV/TSV cells that a spreadsheet would run as formulas are neutralised unless ``safe_csv=False``."""
    from .output import atomic_file, neutralize_formula

    path = Path(path)
    suffix = path.suffix.lower()
    with atomic_file(path) as handle:
        if suffix == ".jsonl":
            for row in rows:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
            return
        writer = csv.writer(handle, dialect="excel-tab" if suffix == ".tsv" else "excel", lineterminator="\n")
        if rows:
            writer.writerow(list(rows[0]))
        for row in rows:
            cells = ["" if v is None else (_cell(v)) for v in row.values()]
            writer.writerow([neutralize_formula(c) if safe_csv and isinstance(c, str) else c for c in cells])


def _cell(value: Any) -> Any:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return float(f"{value:.6g}")
    return value
