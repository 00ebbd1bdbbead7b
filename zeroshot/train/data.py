"""Training data: image/caption pairs from a caption manifest, or from a labelled image folder
or ``eval csv`` manifest whose captions are made from the class names through templates
(fine-tune like you pretrain, FLYP).

Caption manifests are CSV, TSV or JSON Lines with a path column (``path``, ``filepath``,
``image``, ``file``) and a caption column (``caption``, ``title``, ``text``); open_clip_train's
tab-separated ``filepath``/``title`` files work as they are. Relative paths are relative to the
manifest's folder.
"""

from __future__ import annotations

import csv
import json
import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from ..data.datasets import EvalDataset, csv_dataset, folder_dataset, read_manifest_text
from ..data.decode import DEFAULT_MAX_PIXELS, open_image
from ..data.discover import Source
from ..errors import ImageError, UsageError
from ..prompts import TemplateSet, as_template_set, fill

PATH_COLUMNS = ("path", "filepath", "image", "file", "image_path")
CAPTION_COLUMNS = ("caption", "title", "text")
LABEL_COLUMNS = ("label",)


@dataclass
class TrainPairs:
    """Images and the text of each: a caption, or a class name that ``templates`` turn into
    captions. ``names`` are the paths as given (for messages), ``fs_paths`` the files to open,
    ``errors`` the images found unusable so far (name -> ``"code: detail"``), ``class_list``
    every class of a labelled data set (also those without images: a ``--classnames`` file's
    whole list), the classes held-out images are scored among."""

    names: list[str]
    fs_paths: list[str]
    texts: list[str]
    templates: tuple[str, ...] | None = None
    source: str = ""
    errors: dict[str, str] = field(default_factory=dict)
    class_list: tuple[str, ...] | None = None

    def __len__(self) -> int:
        return len(self.names)

    @property
    def labelled(self) -> bool:
        """Texts are class names (captions come from templates) rather than captions."""
        return self.templates is not None

    def caption(self, index: int, rng: random.Random | None = None) -> str:
        """The caption of pair ``index``: its text, or a template (chosen by ``rng``, else the
        first) filled with its class name."""
        if not self.templates:
            return self.texts[index]
        template = self.templates[rng.randrange(len(self.templates))] if rng and len(self.templates) > 1 else self.templates[0]
        return fill(template, self.texts[index])

    @property
    def classes(self) -> list[str]:
        """What held-out images are scored among: ``class_list`` then any other distinct text
        (class names or captions), in first-seen order."""
        return list(dict.fromkeys([*(self.class_list or ()), *self.texts]))

    def subset(self, indices: Sequence[int]) -> TrainPairs:
        keep = list(indices)
        names = [self.names[i] for i in keep]
        return replace(self, names=names, fs_paths=[self.fs_paths[i] for i in keep],
                       texts=[self.texts[i] for i in keep],
                       errors={n: e for n, e in self.errors.items() if n in set(names)})

    def split(self, fraction: float, seed: int) -> tuple[TrainPairs, TrainPairs]:
        """(train, held-out): a seeded random ``fraction`` of the pairs is held out (at least one)."""
        if not 0 < fraction < 1:
            raise UsageError(f"--val-fraction {fraction}: must be between 0 and 1 (exclusive)")
        order = list(range(len(self)))
        random.Random(seed).shuffle(order)
        held = max(1, round(fraction * len(self)))
        if held >= len(self):
            raise UsageError(f"--val-fraction {fraction}: leaves no training images out of {len(self)}")
        return self.subset(sorted(order[held:])), self.subset(sorted(order[:held]))

    def sources(self) -> list[Source]:
        """The images as sources of the embedding loop (errors found so far carried along)."""
        out = []
        for name, fs_path in zip(self.names, self.fs_paths):
            error = self.errors.get(name)
            code, _, detail = (error or "").partition(": ")
            out.append(Source(name, fs_path, ImageError(code, detail) if error else None))
        return out


def from_dataset(dataset: EvalDataset, templates: TemplateSet | str | Sequence[str]) -> TrainPairs:
    """Pairs of a labelled dataset (image folder or ``eval csv`` manifest): class-name texts."""
    if dataset.images is not None:
        raise UsageError(f"{dataset.name}: in-memory datasets cannot be used for fine-tuning; export the images to a folder")
    names = [str(s) for s, _ in dataset.samples]
    return TrainPairs(
        names=names,
        fs_paths=[dataset.fs_paths.get(n, n) for n in names],
        texts=[dataset.classnames[t] for _, t in dataset.samples],
        templates=as_template_set(templates).templates,
        source=dataset.root,
        errors=dict(dataset.errors),
        class_list=tuple(dataset.classnames),
    )


def _column(fields: dict[str, str], candidates: Sequence[str], requested: str | None) -> str | None:
    if requested:
        return fields.get(requested.strip().lower())
    return next((fields[c] for c in candidates if c in fields), None)


def _read_rows(path: Path, option: str) -> tuple[list[str], list[dict]]:
    """Header and rows of a CSV/TSV (delimiter: tab for .tsv or a tab in the header) or JSONL file."""
    text = read_manifest_text(path, f"{option} {path}", "give a manifest (.csv .tsv .jsonl) or a labelled folder")
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        rows = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise UsageError(f"{option} {path}: line {number} is not JSON ({err.msg})") from None
            if not isinstance(row, dict):
                raise UsageError(f"{option} {path}: line {number} is not a JSON object")
            rows.append({str(k): "" if v is None else str(v) for k, v in row.items()})
        header = list(dict.fromkeys(k for row in rows for k in row))
        return header, rows
    lines = text.splitlines()
    delimiter = "\t" if path.suffix.lower() == ".tsv" or (lines and "\t" in lines[0]) else ","
    reader = csv.DictReader(lines, delimiter=delimiter)
    return list(reader.fieldnames or []), list(reader)


def read_caption_manifest(
    path: str | os.PathLike, path_column: str | None = None, caption_column: str | None = None,
    option: str = "DATA",
) -> TrainPairs:
    """Image/caption pairs from a CSV/TSV/JSONL manifest (see the module doc for column names)."""
    manifest = Path(path).expanduser()
    header, rows = _read_rows(manifest, option)
    fields = {(f or "").strip().lower(): f for f in header}
    image_col = _column(fields, PATH_COLUMNS, path_column)
    text_col = _column(fields, CAPTION_COLUMNS, caption_column)
    if image_col is None or text_col is None:
        missing = "a path column (" + "/".join(PATH_COLUMNS) + ")" if image_col is None else \
            "a caption column (" + "/".join(CAPTION_COLUMNS) + ")"
        raise UsageError(f"{option} {manifest}: needs {missing} in its header row (found {list(fields) or 'none'})")
    names, fs_paths, texts = [], [], []
    for number, row in enumerate(rows, 2):
        image, caption = (row.get(image_col) or "").strip(), (row.get(text_col) or "").strip()
        if not image and not caption:
            continue
        if not image or not caption:
            raise UsageError(f"{option} {manifest}: row {number} has an empty {'path' if not image else 'caption'}")
        names.append(image)
        fs_paths.append(image if os.path.isabs(image) else str(manifest.parent / image))
        texts.append(caption)
    if not names:
        raise UsageError(f"{option} {manifest}: no rows")
    return TrainPairs(names, fs_paths, texts, None, str(manifest))


def _manifest_kind(path: Path) -> str:
    """``labels`` for an ``eval csv`` manifest (path + label columns, no caption), else ``captions``."""
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        return "captions"
    try:
        with open(path, encoding="utf-8-sig") as handle:
            first = handle.readline()
    except OSError:
        return "captions"  # read_caption_manifest reports it
    cols = {c.strip().lower() for c in first.replace("\t", ",").split(",")}
    return "labels" if "label" in cols and not cols & set(CAPTION_COLUMNS) else "captions"


def load_training_data(
    data: str | os.PathLike,
    templates: TemplateSet | str | Sequence[str] = "openai-80",
    classnames: str | os.PathLike | None = None,
    include_hidden: bool = False,
    option: str = "DATA",
) -> TrainPairs:
    """Pairs from a folder of class sub-folders, an ``eval csv`` manifest (``path``/``label``),
    or a caption manifest; ``templates`` make captions of class names (labelled data only)."""
    path = Path(data).expanduser()
    if path.is_dir():
        return from_dataset(folder_dataset(path, classnames, include_hidden), templates)
    if not path.exists():
        raise UsageError(f"{option} {data}: no such file or folder")
    if _manifest_kind(path) == "labels":
        return from_dataset(csv_dataset(path, classnames), templates)
    return read_caption_manifest(path, option=option)


class PairImages(torch.utils.data.Dataset):
    """Decoded, transformed images of a :class:`TrainPairs` (captions are chosen by the trainer).
    Random augmentation is seeded per (``seed``, ``epoch``, index), so runs, worker counts and
    resumed runs see the same pixels. Unusable images come back as ``(index, None, reason)``."""

    def __init__(self, pairs: TrainPairs, transform: Callable, seed: int, max_pixels: int | None = DEFAULT_MAX_PIXELS):
        self.pairs = pairs
        self.transform = transform
        self.seed = seed
        self.epoch = 0
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int):
        known = self.pairs.errors.get(self.pairs.names[index])
        if known:
            return index, None, known
        try:
            img = open_image(self.pairs.fs_paths[index], self.max_pixels)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(hash((self.seed, self.epoch, index)) & 0x7FFF_FFFF)
                pixels = self.transform(img)
        except ImageError as err:
            return index, None, str(err)
        except Exception as err:  # noqa: BLE001 - a bad image never stops training
            return index, None, f"decode_error: {type(err).__name__}: {err}"
        return index, pixels, None


def collate_pairs(items: list) -> tuple[list[int], torch.Tensor | None, list[tuple[int, str]]]:
    """(indices of good images, their pixels, ``(index, reason)`` of the unusable ones)."""
    good = [(i, p) for i, p, e in items if e is None]
    errors = [(i, e) for i, _, e in items if e is not None]
    return [i for i, _ in good], (torch.stack([p for _, p in good]) if good else None), errors
