"""Labelled datasets for ``zeroshot eval``: ImageNet-1k and its variants, CIFAR-10/100, image folders,
CSV manifests (the full list and the dispatcher: :mod:`zeroshot.data.catalog`).

A dataset is a list of ``(sample, target)`` pairs and the class names in target order. File
samples become :class:`~zeroshot.data.discover.Source` items for the embedding loop; files found
unreadable while listing stay in the dataset (they count as wrong) with their reason.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..errors import ImageError, UsageError, ZeroshotError
from ..prompts import TemplateSet, load_builtin, read_entries, validate_labels
from .discover import IMAGE_EXTENSIONS, Source, discover, natural_key

CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"


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
    image_names: Sequence[str] | None = None  # the name of each in-memory image, when it has one
    templates: TemplateSet | None = None  # the dataset's own templates (WebDataset folders), if any

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def targets(self) -> list[int]:
        return [t for _, t in self.samples]

    def sample_name(self, sample: str | int) -> str:
        if isinstance(sample, str):
            return sample
        return self.image_names[sample] if self.image_names is not None else f"{self.name}/test/{sample:05d}"

    @property
    def names(self) -> list[str]:
        """The name of every sample as reported (the path, or ``<dataset>/test/<index>``)."""
        return [self.sample_name(sample) for sample, _ in self.samples]

    def inputs(self) -> list[Source] | list[Any]:
        """What the embedding loop reads, in sample order: image files as sources (carrying the
        errors found while listing), or the in-memory images."""
        if self.images is not None:
            return [self.images[int(sample)] for sample, _ in self.samples]
        sources = []
        for name in self.names:
            error = self.errors.get(name)
            code, _, detail = (error or "").partition(": ")
            sources.append(Source(name, self.fs_paths.get(name, name), ImageError(code, detail) if error else None))
        return sources

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
        for source in discover([folder], recursive=True, include_hidden=hidden).items:
            samples.append((source.path, target))
            if source.error is not None:  # unreadable files or sub-folders: reported, counted wrong
                errors[source.path] = str(source.error)
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
    return _wnid_dataset("imagenet1k", root, "val", imagenet_wnids(), include_hidden,
                         "ILSVRC2012_val_00000293.JPEG",
                         "(a flat folder of ILSVRC2012_val_*.JPEG must first be sorted into one folder per class)")


def imagenet_sketch_dataset(root: str | os.PathLike, include_hidden: bool = False) -> EvalDataset:
    """ImageNet-Sketch: ``root/sketch/<wnid>/*.JPEG`` (or ``root/<wnid>/...``), scored among all 1000 classes."""
    return _wnid_dataset("imagenet_sketch", root, "sketch", imagenet_wnids(), include_hidden, "sketch_0.JPEG")


def imagenet_subset_dataset(name: str, root: str | os.PathLike, include_hidden: bool = False) -> EvalDataset:
    """ImageNet-R or ImageNet-A: ``root/<wnid>/*.jpg`` for their 200 classes. Only those 200
    classes compete (as in their papers and CLIP_benchmark), named as in ImageNet-1k."""
    inner = {"imagenet-r": "imagenet-r", "imagenet-a": "imagenet-a"}[name]
    return _wnid_dataset(name, root, inner, load_builtin("classes", f"{name}-wnids"), include_hidden, "0.jpg")


def imagenetv2_dataset(root: str | os.PathLike, include_hidden: bool = False) -> EvalDataset:
    """ImageNetV2 (any variant, e.g. matched-frequency): ``root/<class index 0..999>/*.jpeg``, the
    layout of its archives (``imagenetv2-matched-frequency-format-val/``); folder ``k`` is the
    ImageNet-1k class ``k``, scored among all 1000 classes."""
    base = _require_dir(root, "--root")
    inner = [base / d for d in ("imagenetv2-matched-frequency-format-val", "imagenetv2-threshold0.7-format-val",
                                "imagenetv2-top-images-format-val")]
    folder = next((d for d in inner if d.is_dir()), base)
    subdirs = _subfolders(folder, "--root")
    bad = [e.name for e in subdirs if not (e.name.isdigit() and 0 <= int(e.name) < 1000 and str(int(e.name)) == e.name)]
    layout = f"{folder}/<class index 0..999>/*.jpeg, e.g. {folder}/0/<hash>.jpeg"
    if bad or not subdirs:
        found = f"folder(s) {', '.join(repr(b) for b in bad[:3])} are not class indices 0..999" if bad else "no class folders"
        raise UsageError(f"--root {root}: {found} in {folder}; expected the ImageNetV2 layout {layout}")
    classnames = tuple(load_builtin("classes", "imagenet"))
    samples, errors = _collect("imagenetv2", [(os.path.join(str(folder), e.name), int(e.name)) for e in subdirs],
                               folder, include_hidden)
    return EvalDataset("imagenetv2", classnames, samples, str(folder), errors=errors)


def _wnid_dataset(name: str, root: str | os.PathLike, inner: str, wnids: list[str], include_hidden: bool,
                  example: str, hint: str = "") -> EvalDataset:
    """``root/<inner>/<wnid>/*`` (or ``root/<wnid>/*``): folders map to classes through ``wnids``
    (a subset of ImageNet-1k's, in its order), named as in ImageNet-1k."""
    base = _require_dir(root, "--root")
    folder = base / inner if (base / inner).is_dir() else base
    index = {w: i for i, w in enumerate(wnids)}
    subdirs = _subfolders(folder, "--root")
    layout = f"{base}/{inner}/<wnid>/*, e.g. {base}/{inner}/{wnids[0]}/{example}"
    bad = [e.name for e in subdirs if e.name not in index]
    if bad:
        shown = ", ".join(repr(b) for b in bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        kind = "ImageNet-1k WordNet ids (like n01440764)" if len(wnids) == 1000 else f"among the {len(wnids)} {name} classes"
        raise UsageError(f"--root {root}: folder(s) {shown} in {folder} are not {kind}; expected the layout {layout}")
    if not subdirs:
        raise UsageError(f"--root {root}: no WordNet-id folders in {folder}; expected the layout {layout}"
                         + (f" {hint}" if hint else ""))
    all_names = dict(zip(imagenet_wnids(), load_builtin("classes", "imagenet")))
    classnames = tuple(all_names[w] for w in wnids)
    samples, errors = _collect(name, [(os.path.join(str(folder), e.name), index[e.name]) for e in subdirs], folder,
                               include_hidden)
    return EvalDataset(name, classnames, samples, str(folder), errors=errors)


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


def read_manifest_text(path: Path, shown: str, folder_hint: str) -> str:
    """The text of a manifest file (BOM dropped); a missing, folder or unreadable ``path`` is a
    one-line :class:`UsageError` starting with ``shown`` (the file, or option and file)."""
    try:
        return path.read_text("utf-8-sig")
    except FileNotFoundError:
        raise UsageError(f"{shown}: manifest not found") from None
    except IsADirectoryError:
        raise UsageError(f"{shown}: is a folder; {folder_hint}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"{shown}: cannot read manifest: {err}") from None


def csv_dataset(path: str | os.PathLike, classnames: str | os.PathLike | None = None) -> EvalDataset:
    """A manifest with ``path`` and ``label`` columns (header row; other columns ignored). Relative
    paths are relative to the manifest's folder. Classes: the labels in natural order, or every
    entry of ``classnames`` (label -> class name) in file order."""
    manifest = Path(path).expanduser()
    text = read_manifest_text(manifest, str(path), "`zeroshot eval csv` takes a CSV file (use `eval folder` for folders)")
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
