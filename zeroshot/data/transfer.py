"""The CLIP paper's transfer datasets, read through torchvision, with the paper's class names.

Each dataset is torchvision's test split (the split CLIP_benchmark evaluates) under ``--root``,
in the folder torchvision uses (``ROOT/food-101``, ``ROOT/dtd``, ...); ``--download`` lets
torchvision fetch it there. Image files become file samples (so the embedding store applies);
datasets torchvision holds in memory or in HDF5 (MNIST, STL-10, FER2013, PCAM) are read item by
item in the decode workers. Class names and templates are the built-in sets of the same name
(``prompts/classes/<name>.txt``, ``prompts/templates/<name>.txt``).
"""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UsageError, ZeroshotError
from ..prompts import load_builtin
from .datasets import EvalDataset, _collect


@dataclass(frozen=True)
class Transfer:
    """One torchvision dataset: its class, the keyword arguments of its test split, its title,
    the folder it uses under ``--root`` and where to get it by hand."""

    cls: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    title: str = ""
    folder: str = ""
    source: str = ""
    remap: tuple[int, ...] | None = None  # torchvision's label i is our class remap[i]

    @property
    def downloads(self) -> bool:
        return self.cls != "FER2013"


TRANSFER: dict[str, Transfer] = {
    "food101": Transfer("Food101", {"split": "test"}, "Food-101", "food-101", "https://data.vision.ee.ethz.ch/cvl/datasets_extra/food-101/"),
    "flowers": Transfer("Flowers102", {"split": "test"}, "Flowers-102", "flowers-102", "https://www.robots.ox.ac.uk/~vgg/data/flowers/102/"),
    "pets": Transfer("OxfordIIITPet", {"split": "test", "target_types": "category"}, "Oxford-IIIT Pet", "oxford-iiit-pet", "https://www.robots.ox.ac.uk/~vgg/data/pets/"),
    "dtd": Transfer("DTD", {"split": "test"}, "DTD", "dtd", "https://www.robots.ox.ac.uk/~vgg/data/dtd/"),
    "eurosat": Transfer("EuroSAT", {}, "EuroSAT", "eurosat", "https://github.com/phelber/EuroSAT"),
    "sun397": Transfer("SUN397", {}, "SUN397", "SUN397", "https://vision.princeton.edu/projects/2010/SUN/"),
    "caltech101": Transfer("Caltech101", {"target_type": "category"}, "Caltech-101", "caltech101", "https://data.caltech.edu/records/mzrjq-6wc02"),
    "fgvc_aircraft": Transfer("FGVCAircraft", {"split": "test", "annotation_level": "variant"}, "FGVC-Aircraft", "fgvc-aircraft-2013b", "https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/"),
    "cars": Transfer("StanfordCars", {"split": "test"}, "Stanford Cars", "stanford_cars", "https://github.com/pytorch/vision/issues/7545"),
    "country211": Transfer("Country211", {"split": "test"}, "Country211", "country211", "https://github.com/openai/CLIP/blob/main/data/country211.md"),
    "gtsrb": Transfer("GTSRB", {"split": "test"}, "GTSRB", "gtsrb", "https://benchmark.ini.rub.de/"),
    "stl10": Transfer("STL10", {"split": "test"}, "STL-10", "stl10_binary", "https://cs.stanford.edu/~acoates/stl10/"),
    "mnist": Transfer("MNIST", {"train": False}, "MNIST", "MNIST", "https://yann.lecun.com/exdb/mnist/"),
    "fer2013": Transfer("FER2013", {"split": "test"}, "FER2013", "fer2013", "https://www.kaggle.com/c/challenges-in-representation-learning-facial-expression-recognition-challenge",
                        remap=(0, 1, 2, 3, 5, 6, 4)),  # Angry Disgust Fear Happy Sad Surprise Neutral -> folder order
    "renderedsst2": Transfer("RenderedSST2", {"split": "test"}, "Rendered SST2", "rendered-sst2", "https://github.com/openai/CLIP/blob/main/data/rendered-sst2.md"),
    "pcam": Transfer("PCAM", {"split": "test"}, "PatchCamelyon", "pcam", "https://github.com/basveeling/pcam"),
}


@dataclass(frozen=True)
class DatasetItem:
    """Image ``index`` of a torchvision dataset, read when the decode worker needs it."""

    dataset: Any
    index: int

    def load(self, max_pixels: int | None = None, draft_size: int | None = None) -> Any:
        return self.dataset[self.index][0]


def _torchvision_class(spec: Transfer) -> Any:
    import torchvision.datasets

    return getattr(torchvision.datasets, spec.cls)


def _open(name: str, spec: Transfer, root: Path, download: bool) -> Any:
    """The torchvision dataset, with its missing-files and download failures as one-line errors."""
    cls = _torchvision_class(spec)
    where = root / spec.folder
    kwargs = dict(spec.kwargs)
    if spec.downloads:
        kwargs["download"] = download
    try:
        with contextlib.redirect_stdout(sys.stderr):  # torchvision prints download messages; stdout is data
            return cls(str(root), **kwargs)
    except RuntimeError as err:
        text = str(err).lower()
        if "needs to have" in text or "pip install" in text:  # e.g. scipy for Stanford Cars, h5py for PCAM
            raise UsageError(f"{spec.title}: {' '.join(str(err).split())}") from None
        if "not found" not in text and "download" not in text and "corrupted" not in text:
            raise
        how = ("add --download to fetch it there, or put" if spec.downloads else
               "torchvision cannot download it: put")
        raise UsageError(f"--root {root}: {spec.title} test set not found in {where}; {how} the files "
                         f"there yourself ({spec.source})") from None
    except OSError as err:  # network failures during --download (URLError is an OSError)
        reason = getattr(err, "reason", None) or err.strerror or err
        raise ZeroshotError(f"--download: could not download {spec.title} ({reason}); put the files in {where} "
                            f"yourself ({spec.source})") from None


def _file_samples(data: Any) -> list[tuple[str, int]] | None:
    """(path, target) pairs of a torchvision dataset made of image files, if it is one."""
    for files, labels in (("_image_files", "_labels"), ("_images", "_labels")):
        if hasattr(data, files) and hasattr(data, labels):
            return [(str(p), int(t)) for p, t in zip(getattr(data, files), getattr(data, labels))]
    for attr in ("_samples", "samples"):
        pairs = getattr(data, attr, None)
        if pairs and isinstance(pairs[0][0], (str, os.PathLike)):
            return [(str(p), int(t)) for p, t in pairs]
    return None


def _targets(data: Any) -> list[Any]:
    """The target of every item of a torchvision dataset held in memory, without reading images."""
    for attr in ("targets", "labels", "_labels"):
        values = getattr(data, attr, None)
        if values is not None:
            return [int(t) for t in values]
    pairs = getattr(data, "_samples", None)
    if pairs is not None:
        return [None if t is None else int(t) for _, t in pairs]
    targets_file = getattr(data, "_FILES", {}).get(getattr(data, "_split", ""), {}).get("targets")
    if targets_file is not None:  # PCAM: targets in their own HDF5 file
        with data.h5py.File(data._base_folder / targets_file[0]) as handle:
            return [int(t) for t in handle["y"][:, 0, 0, 0]]
    return [int(data[i][1]) for i in range(len(data))]


def transfer_dataset(name: str, root: str | os.PathLike, download: bool = False, include_hidden: bool = False) -> EvalDataset:
    """One of :data:`TRANSFER` (test split) under ``root``, with the built-in class names ``name``."""
    spec = TRANSFER[name]
    base = Path(root).expanduser()
    if base.name == spec.folder:  # the user pointed at the dataset's own folder
        base = base.parent
    if base.exists() and not base.is_dir():
        raise UsageError(f"--root {root}: not a folder")
    if download:
        base.mkdir(parents=True, exist_ok=True)
    classnames = tuple(load_builtin("classes", name))
    if name == "fer2013" and (base / "fer2013" / "test").is_dir():
        return _fer2013_folders(base / "fer2013" / "test", classnames, include_hidden)
    data = _open(name, spec, base, download)
    if name == "caltech101":
        return _caltech101(base, classnames, include_hidden)
    known = getattr(data, "classes", None)  # from the set's own metadata, where torchvision reads it
    if known is not None and len(known) != len(classnames) and spec.remap is None:
        raise ZeroshotError(f"{base / spec.folder}: {len(known)} classes in the metadata, expected {len(classnames)}")
    samples = _file_samples(data)
    if samples is not None:
        dataset = EvalDataset(name, classnames, samples, str(base / spec.folder))
    else:
        targets = _targets(data)
        if None in targets:
            raise UsageError(f"--root {root}: the {spec.title} test set in {base / spec.folder} has no labels (Kaggle's "
                             "test.csv); use fer2013.csv or icml_face_data.csv, or the image-folder layout fer2013/test/<emotion>/")
        items = [DatasetItem(data, i) for i in range(len(targets))]
        dataset = EvalDataset(name, classnames, list(enumerate(targets)), str(base / spec.folder), images=items,
                              image_names=[f"{name}/test/{i:05d}" for i in range(len(targets))])
    if spec.remap is not None:
        dataset.samples = [(sample, spec.remap[t]) for sample, t in dataset.samples]
    bad = next((t for t in dataset.targets if not 0 <= t < len(classnames)), None)
    if bad is not None:
        raise ZeroshotError(f"{base / spec.folder}: class index {bad} in the data, but {name} has {len(classnames)} classes")
    return dataset


def _caltech101(base: Path, classnames: tuple[str, ...], include_hidden: bool) -> EvalDataset:
    """Caltech-101 as CLIP_benchmark scores it: all 102 category folders (the background class
    included, which torchvision drops), in sorted order."""
    folder = base / "caltech101" / "101_ObjectCategories"
    categories = sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))
    if len(categories) != len(classnames):
        raise ZeroshotError(f"{folder}: {len(categories)} category folders, expected {len(classnames)}")
    samples, errors = _collect("caltech101", [(str(folder / c), i) for i, c in enumerate(categories)], folder,
                               include_hidden)
    return EvalDataset("caltech101", classnames, samples, str(folder), errors=errors)


def _fer2013_folders(folder: Path, classnames: tuple[str, ...], include_hidden: bool) -> EvalDataset:
    """FER2013 as CLIP_benchmark reads it: the Kaggle image folders ``fer2013/test/<emotion>/``
    (angry disgust fear happy neutral sad surprise), classes in sorted folder order."""
    emotions = sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))
    if len(emotions) != len(classnames):
        raise UsageError(f"{folder}: {len(emotions)} emotion folders, expected {len(classnames)} ({', '.join(classnames)})")
    samples, errors = _collect("fer2013", [(str(folder / e), i) for i, e in enumerate(emotions)], folder, include_hidden)
    return EvalDataset("fer2013", classnames, samples, str(folder), errors=errors)
