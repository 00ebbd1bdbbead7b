"""Image-caption datasets for ``zeroshot eval retrieval``: a manifest of (image, caption) pairs.

Several captions per image are allowed (COCO and Flickr have five): rows with the same image
path are one image with several captions. The images go through the same embedding loop (and
store) as every other dataset; the captions are the text side.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..errors import UsageError
from ..prompts import control_character
from .datasets import EvalDataset, read_manifest_text

PATH_COLUMNS = ("path", "image", "filepath", "file")
CAPTION_COLUMNS = ("caption", "captions", "text", "title")


@dataclass
class RetrievalDataset(EvalDataset):
    """Images (the samples, target = the image's own index) and the captions of each image."""

    captions: list[tuple[str, ...]] = field(default_factory=list)

    @property
    def texts(self) -> list[str]:
        """Every caption, image by image."""
        return [text for group in self.captions for text in group]

    @property
    def text_images(self) -> list[int]:
        """For every caption in :attr:`texts`, the index of its image."""
        return [i for i, group in enumerate(self.captions) for _ in group]

    def limit(self, per_class: int | None) -> RetrievalDataset:
        """The first ``per_class`` images (and their captions): ``--limit`` for retrieval."""
        if not per_class:
            return self
        samples = [(sample, i) for i, (sample, _) in enumerate(self.samples[:per_class])]
        return replace(self, samples=samples, captions=self.captions[:per_class])


def _check_caption(text: str, where: str) -> str:
    text = text.strip()
    if not text:
        raise UsageError(f"{where}: empty caption")
    bad = control_character(text)
    if bad is not None:
        raise UsageError(f"{where}: caption contains control character U+{ord(bad):04X}")
    return text


def _column(fields: dict[str, str], names: Sequence[str]) -> str | None:
    return next((fields[n] for n in names if n in fields), None)


def _rows_csv(manifest: Path, text: str) -> list[tuple[str, str, str]]:
    dialect = "excel-tab" if manifest.suffix.lower() == ".tsv" else "excel"
    reader = csv.DictReader(text.splitlines(), dialect=dialect)
    fields = {(f or "").strip().lower(): f for f in reader.fieldnames or []}
    path_col, caption_col = _column(fields, PATH_COLUMNS), _column(fields, CAPTION_COLUMNS)
    if path_col is None or caption_col is None:
        raise UsageError(f"manifest {manifest}: needs a header row with 'path' and 'caption' columns "
                         f"(found {list(fields) or 'none'})")
    rows = []
    for number, row in enumerate(reader, 2):
        image, caption = (row.get(path_col) or "").strip(), (row.get(caption_col) or "")
        if not image and not caption.strip():
            continue
        if not image:
            raise UsageError(f"manifest {manifest}: line {number} has an empty path")
        rows.append((image, caption, f"manifest {manifest}, line {number}"))
    return rows


def _rows_jsonl(manifest: Path, text: str) -> list[tuple[str, str, str]]:
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"manifest {manifest}, line {number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise UsageError(f"{where}: not JSON ({err.msg})") from None
        if not isinstance(record, dict):
            raise UsageError(f"{where}: expected an object like {{\"image\": ..., \"caption\": ...}}")
        keys = {k.lower(): k for k in record}
        path_key, caption_key = _column(keys, PATH_COLUMNS), _column(keys, CAPTION_COLUMNS)
        if path_key is None or caption_key is None:
            raise UsageError(f"{where}: needs an 'image' (or 'path') and a 'caption' (or 'captions') key")
        image, captions = record[path_key], record[caption_key]
        captions = [captions] if isinstance(captions, str) else captions
        if not isinstance(image, str) or not isinstance(captions, list) or not all(isinstance(c, str) for c in captions):
            raise UsageError(f"{where}: the image must be a string and the caption a string or a list of strings")
        rows += [(image.strip(), caption, where) for caption in captions]
    return rows


def caption_dataset(path: str | os.PathLike) -> RetrievalDataset:
    """A caption manifest: CSV/TSV with ``path`` and ``caption`` columns (one row per caption;
    rows with the same path are one image), or JSON Lines with ``image`` and ``caption`` (a
    string or a list) per line. Relative paths are relative to the manifest's folder; images
    keep their first-appearance order."""
    manifest = Path(path).expanduser()
    text = read_manifest_text(manifest, str(path), "`zeroshot eval retrieval` takes a caption manifest "
                              "(.csv .tsv .jsonl; use `eval wds` for a WebDataset folder)")
    json_lines = manifest.suffix.lower() in (".jsonl", ".ndjson")
    rows = _rows_jsonl(manifest, text) if json_lines else _rows_csv(manifest, text)
    captions: dict[str, list[str]] = {}
    for image, caption, where in rows:
        captions.setdefault(image, []).append(_check_caption(caption, where))
    if not captions:
        raise UsageError(f"manifest {path}: no rows")
    base = manifest.parent
    images = list(captions)
    fs_paths = {image: str(base / image) for image in images if not os.path.isabs(image)}
    return RetrievalDataset("retrieval", (), [(image, i) for i, image in enumerate(images)], str(manifest),
                            fs_paths=fs_paths, captions=[tuple(captions[image]) for image in images])
