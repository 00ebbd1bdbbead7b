"""Where in an image is "a fluffy cat"? A heatmap per image and label, and the box around its
hottest region.

    from zeroshot import load_model
    from zeroshot.tasks.locate import LocateSettings, locate

    loaded = load_model("ViT-B-16", "openai")
    for found in locate(loaded, ["photo.jpg"], ["a cat", "a remote control"]):
        for heat in found.heatmaps:
            print(found.path, heat.label, heat.box)

**Methods.** ``dense`` (the default for open_clip ViTs): one forward pass per image at
``resolution`` pixels (shorter side; position embeddings interpolated) with a changed last block
(k-k attention, no residual, no MLP; see :mod:`zeroshot.encode.dense`), every patch token
compared with the labels; with several ``scales`` one pass per factor of ``resolution``, the maps
resampled onto the finest grid and averaged.
``crops``: square crops of ``patch`` pixels every ``stride`` pixels (at every factor of
``scales``), each encoded like any image (the model's own preprocessing, through
:func:`~zeroshot.encode.embed.embed_images`), each crop's score added to every pixel it covers and
averaged; works with every model, costs one forward pass per crop.
``fused`` (open_clip ViTs): the dense map times the crops map (both at every factor of
``scales``, the crops' map resampled bilinearly onto the dense cells), so a cell is hot only where
both agree: the crops recognise whole objects and so put out the dense map's stray hot spots on a
neighbouring object, the dense map sharpens the crops' blurred edges. It costs both. Since the
crops do the recognising, the dense part runs with sharper attention (``sharpness`` 2 by default,
1 for ``dense``; see :func:`~zeroshot.encode.dense.dense_features`): each patch pools over fewer,
more similar patches, which tightens boxes but moves more peaks off their object, good only when
the crops check them. A lone label's cosine maps are first mapped to [0, 1] (``(cos + 1) / 2``)
so that two negatives cannot make a hot cell. On the shapes benchmark
(``benchmarks/locate_quality.py``) it finds more objects than either method alone.

**Scores.** With one label the map is the cosine similarity to the label's text embedding. With
several labels they compete for every cell: a softmax over the labels of ``logit_scale * cos``
(the model's own temperature, as in ``classify``), so "cat" and "remote control" split the image
between them; for crops the softmax is taken per crop, then averaged. SigLIP-style models (with a
logit bias) score every label independently with a sigmoid.

**Background.** A cell that shows neither label would otherwise go to whichever label's text is
closer to "empty": the softmax has to give it to someone. So background prompts (``background``,
default ``DEFAULT_BACKGROUND``: "a photo of a background.") compete too, as extra columns of the
softmax that are dropped from the output; with them a single label's map is a softmax against
the background rather than a raw cosine. ``background=()`` turns this off. Not used for
sigmoid models (their labels do not compete). On the shapes benchmark's tuning scenes the
background prompt raised the objects found (IoU >= 0.5) from 51% to 70% (dense, captions
together; ``benchmarks/locate_quality.py``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..data.decode import DEFAULT_MAX_PIXELS, open_image, to_rgb
from ..data.discover import Source
from ..encode.dense import check_dense, dense_features, dense_unsupported_reason
from ..encode.embed import EmbedSettings, embed_images
from ..encode.text import build_class_weights
from ..errors import ImageError, UsageError, ZeroshotError
from ..models import LoadedModel
from ..output.rows import round_score
from ..prompts import TemplateSet, as_template_set
from ..scoring import probabilities
from .regions import Box, ScoreGrid, even_edges, hottest_box, resample

METHODS = ("auto", "dense", "crops", "fused")
MAX_ASPECT = 4  # dense: a longer side beyond this many times the shorter one is squeezed
CROP_CHUNK = 256  # crops cut and encoded at a time (bounds memory for large images)
DEFAULT_BACKGROUND = ("a photo of a background.",)
# The box threshold per method when none is given: the dense maps are sharp, the crops' maps are
# averages over overlapping crops, so blurrier (chosen on the shapes benchmark's tuning scenes).
DEFAULT_THRESHOLDS = {"dense": 0.3, "crops": 0.7, "fused": 0.3}
# The dense pass's attention sharpness per method when none is given: fused leaves recognition to
# the crops, so its dense part may pool over fewer patches for sharper edges (see the docstring).
DEFAULT_SHARPNESS = {"dense": 1.0, "fused": 2.0}

ProgressHook = Callable[[int, int], None]  # (done, total) images
SkipHook = Callable[[str, str], None]  # (path, "code: detail")


@dataclass(frozen=True)
class LocateSettings:
    """How heatmaps are computed. ``method``: ``auto`` (dense where the model allows it, else
    crops), ``dense``, ``crops`` or ``fused``. ``resolution``: dense input's shorter side in pixels
    (default twice the model's input size). ``patch``/``stride``: crop size and step in pixels of the
    original image (default a third of the shorter side, and half the patch); ``scales`` repeats
    the crops at these factors of ``patch`` and ``stride`` (crops), or the dense pass at these
    factors of ``resolution`` (dense). ``threshold``: see
    :func:`~zeroshot.tasks.regions.hottest_box` (default per method, ``DEFAULT_THRESHOLDS``). ``background``: prompts that compete with the
    labels and are not reported (see the module docstring). ``sharpness``: the dense pass's
    attention sharpness (default per method, ``DEFAULT_SHARPNESS``)."""

    method: str = "auto"
    resolution: int | None = None
    patch: int | None = None
    stride: int | None = None
    scales: tuple[float, ...] = (1.0,)
    threshold: float | None = None
    batch_size: int | None = None
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    background: tuple[str, ...] = DEFAULT_BACKGROUND
    sharpness: float | None = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise UsageError(f"--method {self.method!r} is not one of {', '.join(METHODS)}")
        for name in ("resolution", "patch", "stride"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UsageError(f"--{name} {value} must be a positive number of pixels")
        if not self.scales or any(not s > 0 for s in self.scales):
            raise UsageError(f"--scales {','.join(map(str, self.scales))}: give positive factors, e.g. 1,0.5")
        if any(not text.strip() for text in self.background):
            raise UsageError("--background: an empty text cannot compete; give a prompt or use --no-background")
        if self.sharpness is not None and not (math.isfinite(self.sharpness) and self.sharpness > 0):
            raise UsageError(f"--sharpness {self.sharpness} must be a positive factor, e.g. 2")
        if self.threshold is not None and not 0 <= self.threshold <= 1:
            raise UsageError(f"--threshold {self.threshold} must be between 0 and 1")


@dataclass
class Heatmap:
    """One label's map over one image: the ``grid`` of scores, what they are (``kind``: cosine,
    softmax or sigmoid; for fused "<kind> product", a lone cosine as "(cosine+1)/2 product"), the
    ``method`` and the ``box`` around the hottest region."""

    label: str
    method: str
    kind: str
    grid: ScoreGrid
    box: Box


@dataclass
class Located:
    """The result for one image: a heatmap per label (in label order), or an ``error``.
    ``image`` is the decoded image (for drawing), ``seconds`` the time its maps took."""

    path: str
    heatmaps: list[Heatmap] = field(default_factory=list)
    error: str | None = None
    image: Image.Image | None = None
    seconds: float = 0.0


COLUMNS = ("path", "label", "method", "score", "region_score", "x0", "y0", "x1", "y1", "heatmap", "grid", "error")


@dataclass(frozen=True)
class LocateRow:
    """One output row: an image and a label, its box and scores, and the files written for it."""

    path: str
    label: str | None = None
    method: str | None = None
    box: Box | None = None
    heatmap: str | None = None
    grid: str | None = None
    error: str | None = None

    def flat(self) -> list[Any]:
        box = self.box
        coords = [box.x0, box.y0, box.x1, box.y1] if box else [None] * 4
        scores = [round_score(box.score), round_score(box.region_score)] if box else [None, None]
        return [self.path, self.label, self.method, *scores, *coords, self.heatmap, self.grid, self.error]

    def as_dict(self) -> dict[str, Any]:
        return dict(zip(COLUMNS, self.flat()))


# ------------------------------------------------------------------------------- label scores


def label_scores(cos: torch.Tensor, loaded: LoadedModel, labels: int | None = None) -> tuple[torch.Tensor, str]:
    """Per-cell scores ``[cells, labels]`` from cosines ``[cells, labels + backgrounds]`` (the
    first ``labels`` columns are the labels, default all), and their kind: the cosine itself for
    a single CLIP label and no background, else a softmax over labels and backgrounds of
    ``logit_scale * cos`` (the backgrounds' columns dropped), a sigmoid per label for
    SigLIP-style models (backgrounds ignored)."""
    labels = cos.shape[-1] if labels is None else labels
    cos = cos.float()
    if loaded.uses_sigmoid:
        scale = loaded.logit_scale.exp()
        return probabilities(scale * cos[:, :labels] + loaded.logit_bias, sigmoid=True), "sigmoid"
    if cos.shape[-1] == 1:
        return cos, "cosine"
    return (loaded.logit_scale.exp() * cos).softmax(dim=-1)[:, :labels], "softmax"


def resolve_method(loaded: LoadedModel, method: str) -> str:
    """``auto`` -> dense where the model allows it, else crops; ``dense`` and ``fused`` are checked."""
    if method == "auto":
        return "dense" if dense_unsupported_reason(loaded.model) is None else "crops"
    if method in ("dense", "fused"):
        check_dense(loaded, method)
    return method


# -------------------------------------------------------------------------------------- crops


def positions(length: int, size: int, stride: int) -> list[int]:
    """Starts of windows of ``size`` every ``stride`` pixels covering ``length`` (the last one
    moved back to end at the edge)."""
    size = min(size, length)
    starts = list(range(0, length - size + 1, stride))
    if starts[-1] + size < length:
        starts.append(length - size)
    return starts


def crop_boxes(width: int, height: int, patch: int, stride: int, scales: Sequence[float] = (1.0,)
               ) -> list[tuple[int, int, int, int]]:
    """Every crop ``(x0, y0, x1, y1)``: squares of ``patch * s`` pixels (at most the shorter
    side) every ``stride * s`` pixels for each scale ``s``, covering the whole image."""
    boxes = []
    for scale in scales:
        side, step = min(max(1, round(patch * scale)), width, height), max(1, round(stride * scale))
        for y in positions(height, side, step):
            for x in positions(width, side, step):
                boxes.append((x, y, x + side, y + side))
    return boxes


def average_onto_cells(boxes: Sequence[tuple[int, int, int, int]], scores: np.ndarray, width: int, height: int
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Average each box's scores ``[boxes, labels]`` onto the cells the boxes cut the image
    into: ``values [labels, rows, cols]``, ``x_edges``, ``y_edges``."""
    x_edges = np.unique([0, width, *(b[0] for b in boxes), *(b[2] for b in boxes)])
    y_edges = np.unique([0, height, *(b[1] for b in boxes), *(b[3] for b in boxes)])
    total = np.zeros((scores.shape[1], len(y_edges) - 1, len(x_edges) - 1), dtype=np.float64)
    count = np.zeros(total.shape[1:], dtype=np.int64)
    for (x0, y0, x1, y1), row in zip(boxes, scores):
        c0, c1 = np.searchsorted(x_edges, [x0, x1])
        r0, r1 = np.searchsorted(y_edges, [y0, y1])
        total[:, r0:r1, c0:c1] += row[:, None, None]
        count[r0:r1, c0:c1] += 1
    return (total / np.maximum(count, 1)).astype(np.float32), x_edges, y_edges


def crop_settings(image: Image.Image, settings: LocateSettings) -> tuple[int, int]:
    patch = settings.patch or max(1, min(image.size) // 3)
    return patch, settings.stride or max(1, patch // 2)


def crops_grids(loaded: LoadedModel, image: Image.Image, weights: torch.Tensor, settings: LocateSettings,
                labels: int) -> tuple[list[ScoreGrid], str]:
    """One grid per label (the first ``labels`` rows of ``weights``; the rest are backgrounds)
    by the crops method (see the module docstring)."""
    width, height = image.size
    patch, stride = crop_settings(image, settings)
    boxes = crop_boxes(width, height, patch, stride, settings.scales)
    embed = EmbedSettings(batch_size=settings.batch_size, workers=0)
    parts = []
    for start in range(0, len(boxes), CROP_CHUNK):
        crops = [image.crop(b) for b in boxes[start:start + CROP_CHUNK]]
        for batch in embed_images(loaded, crops, embed):
            if batch.errors:
                raise ZeroshotError(f"a crop could not be encoded: {batch.errors[0][1]}")
            if batch.embeddings is not None:
                parts.append(batch.embeddings)
    scores, kind = label_scores(torch.cat(parts) @ weights.float().T, loaded, labels)
    values, x_edges, y_edges = average_onto_cells(boxes, scores.numpy(), width, height)
    return [ScoreGrid(v, x_edges, y_edges) for v in values], kind


# -------------------------------------------------------------------------------------- dense


def normalisation(loaded: LoadedModel) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean and std of the model's own preprocessing (``Normalize``), as ``[1, 3, 1, 1]``."""
    from torchvision.transforms import Normalize

    for step in getattr(loaded.preprocess, "transforms", []):
        if isinstance(step, Normalize):
            return (torch.tensor(step.mean, dtype=torch.float32).view(1, -1, 1, 1),
                    torch.tensor(step.std, dtype=torch.float32).view(1, -1, 1, 1))
    raise ZeroshotError(f"{loaded.name}: its preprocessing has no Normalize step; use --method crops")


def native_size(loaded: LoadedModel) -> int:
    return int(max(loaded.model.visual.image_size))


def dense_input_size(width: int, height: int, resolution: int, patch: int) -> tuple[int, int]:
    """(width, height) of the dense input: the shorter side ``resolution``, the longer one in
    proportion (at most ``MAX_ASPECT`` times), both whole multiples of ``patch``."""
    scale = resolution / min(width, height)
    def side(n: float, cap: float) -> int:
        return max(patch, int(round(min(n, cap) / patch)) * patch)
    return side(width * scale, MAX_ASPECT * resolution), side(height * scale, MAX_ASPECT * resolution)


def dense_pixels(loaded: LoadedModel, image: Image.Image, resolution: int) -> torch.Tensor:
    """The normalised input ``[1, 3, h, w]`` of the dense method (bicubic resize, no crop)."""
    patch = int(loaded.model.visual.patch_size[0])
    size = dense_input_size(*image.size, resolution, patch)
    resized = image.resize(size, Image.Resampling.BICUBIC)
    pixels = torch.from_numpy(np.asarray(resized, dtype=np.float32).copy()).permute(2, 0, 1)[None] / 255
    mean, std = normalisation(loaded)
    return (pixels - mean) / std


def dense_scale_grids(loaded: LoadedModel, image: Image.Image, weights: torch.Tensor, resolution: int,
                      labels: int, sharpness: float = 1.0) -> tuple[list[ScoreGrid], str]:
    """One grid per label from one dense forward pass at ``resolution``."""
    features = dense_features(loaded, dense_pixels(loaded, image, resolution), sharpness)[0]  # [gh, gw, dim]
    rows, cols, dim = features.shape
    scores, kind = label_scores(features.reshape(-1, dim) @ weights.float().T, loaded, labels)
    values = scores.T.reshape(-1, rows, cols).numpy()
    x_edges, y_edges = even_edges(image.size[0], cols), even_edges(image.size[1], rows)
    return [ScoreGrid(v, x_edges, y_edges) for v in values], kind


def dense_grids(loaded: LoadedModel, image: Image.Image, weights: torch.Tensor, settings: LocateSettings,
                labels: int, sharpness: float = DEFAULT_SHARPNESS["dense"]) -> tuple[list[ScoreGrid], str]:
    """One grid per label by the dense method: one forward pass per scale; several scales are
    resampled onto the finest grid (bilinear between cell centres) and averaged. ``sharpness``
    applies when the settings give none."""
    resolution = settings.resolution or 2 * native_size(loaded)
    sharpness = sharpness if settings.sharpness is None else settings.sharpness
    passes = [dense_scale_grids(loaded, image, weights, max(1, round(resolution * s)), labels, sharpness)
              for s in settings.scales]
    kind = passes[0][1]
    if len(passes) == 1:
        return passes[0][0], kind
    finest = max((grids[0] for grids, _ in passes), key=lambda g: g.values.size)
    merged = []
    for label in range(labels):
        values = np.mean([resample(grids[label], finest.x_edges, finest.y_edges).values for grids, _ in passes], axis=0)
        merged.append(ScoreGrid(values.astype(np.float32), finest.x_edges, finest.y_edges))
    return merged, kind


# -------------------------------------------------------------------------------------- fused


def as_evidence(values: np.ndarray, kind: str) -> np.ndarray:
    """Scores as non-negative evidence: probabilities as they are, a cosine mapped to [0, 1]."""
    return (values + 1) / 2 if kind == "cosine" else values


def fused_grids(loaded: LoadedModel, image: Image.Image, weights: torch.Tensor, settings: LocateSettings,
                labels: int) -> tuple[list[ScoreGrid], str]:
    """One grid per label by the fused method: the dense map times the crops map (both at
    ``settings.scales``) resampled onto the dense grid (see the module docstring)."""
    dense, kind = dense_grids(loaded, image, weights, settings, labels, DEFAULT_SHARPNESS["fused"])
    crops, _ = crops_grids(loaded, image, weights, settings, labels)
    fused = []
    for d, c in zip(dense, crops):
        on_dense = resample(c, d.x_edges, d.y_edges).values
        values = as_evidence(d.values, kind) * as_evidence(on_dense, kind)
        fused.append(ScoreGrid(values.astype(np.float32), d.x_edges, d.y_edges))
    return fused, f"{'(cosine+1)/2' if kind == 'cosine' else kind} product"


# ------------------------------------------------------------------------------------- locate


def heatmaps_for(loaded: LoadedModel, image: Image.Image, labels: Sequence[str], weights: torch.Tensor,
                 settings: LocateSettings, method: str) -> list[Heatmap]:
    """A heatmap per label for one image, by ``method`` (``dense``, ``crops`` or ``fused``); ``weights``
    holds the labels' class weights, then the backgrounds' (``settings.background``)."""
    compute = {"dense": dense_grids, "crops": crops_grids, "fused": fused_grids}[method]
    grids, kind = compute(loaded, to_rgb(image), weights, settings, len(labels))
    threshold = DEFAULT_THRESHOLDS[method] if settings.threshold is None else settings.threshold
    return [Heatmap(label, method, kind, grid, hottest_box(grid, threshold))
            for label, grid in zip(labels, grids)]


def locate_weights(loaded: LoadedModel, labels: Sequence[str], templates: TemplateSet | str | Sequence[str],
                   settings: LocateSettings) -> torch.Tensor:
    """The labels' class weights (through ``templates``), then the background prompts' (as given)."""
    weights = build_class_weights(loaded, list(labels), as_template_set(templates))
    if not settings.background:
        return weights
    return torch.cat([weights, build_class_weights(loaded, list(settings.background), as_template_set("none"))])


def _as_path(item: Any) -> str:
    return item.path if isinstance(item, Source) else str(item)


def locate(
    loaded: LoadedModel,
    images: Sequence[str | Path | Source | Image.Image],
    labels: str | Sequence[str],
    templates: TemplateSet | str | Sequence[str] = "none",
    settings: LocateSettings = LocateSettings(),
    on_progress: ProgressHook | None = None,
    on_skip: SkipHook | None = None,
) -> Iterator[Located]:
    """Heatmaps for every image (files, discovered sources or PIL images) and label, in input
    order. An image that cannot be read is reported (``on_skip`` and a :class:`Located` with an
    ``error``), never fatal. Labels expand through ``templates`` (default: the text as given)."""
    import time

    labels = [labels] if isinstance(labels, str) else list(labels)
    if not labels:
        raise UsageError("no labels: give at least one text to locate (-l TEXT)")
    method = resolve_method(loaded, settings.method)
    weights = locate_weights(loaded, labels, templates, settings)
    if on_progress:
        on_progress(0, len(images))
    for done, item in enumerate(images, 1):
        started = time.perf_counter()
        path = "<image>" if isinstance(item, Image.Image) else _as_path(item)
        try:
            if isinstance(item, Source) and item.error is not None:
                raise item.error
            image = item if isinstance(item, Image.Image) else open_image(_fs_path(item), settings.max_pixels)
        except ImageError as err:
            if on_skip:
                on_skip(path, str(err))
            yield Located(path, error=str(err))
        else:
            maps = heatmaps_for(loaded, image, labels, weights, settings, method)
            yield Located(path, maps, image=image, seconds=time.perf_counter() - started)
        if on_progress:
            on_progress(done, len(images))


def _fs_path(item: Any) -> str:
    return item.fs_path if isinstance(item, Source) else str(item)


# ---------------------------------------------------------------------------------- writing out


def slug(text: str, limit: int = 40) -> str:
    """A file-name-safe form of a label."""
    return re.sub(r"[^\w.-]+", "-", text.strip(), flags=re.UNICODE).strip("-.")[:limit] or "label"


class OutputNames:
    """Unique file stems in ``--out``: ``<image stem>.<label slug>``, numbered on collision."""

    def __init__(self) -> None:
        self.used: set[str] = set()

    def stem(self, path: str, label: str) -> str:
        base = f"{slug(Path(path).stem, 60)}.{slug(label)}"
        name, number = base, 2
        while name.lower() in self.used:
            name, number = f"{base}-{number}", number + 1
        self.used.add(name.lower())
        return name


def save_located(found: Located, out_dir: Path, names: OutputNames, plot: bool = True) -> list[LocateRow]:
    """Write ``found``'s grids (``.npy``) and heatmap pictures (``.png``, unless ``plot`` is
    False) into ``out_dir``; the rows that describe them."""
    from ..output.plots import save_heatmap
    from ..output.writers import atomic_file

    if found.error is not None:
        return [LocateRow(found.path, error=found.error)]
    rows = []
    for heat in found.heatmaps:
        stem = names.stem(found.path, heat.label)
        grid_path = out_dir / f"{stem}.npy"
        with atomic_file(grid_path, binary=True, option="--out") as handle:
            np.save(handle, heat.grid.values)
        png = None
        if plot:
            png = out_dir / f"{stem}.png"
            save_heatmap(found.image, heat.grid.pixels, png, title=f"{heat.label} ({heat.method})",
                         colorbar_label=heat.kind, box=(heat.box.x0, heat.box.y0, heat.box.x1, heat.box.y1))
        rows.append(LocateRow(found.path, heat.label, heat.method, heat.box,
                              str(png) if png else None, str(grid_path)))
    return rows
