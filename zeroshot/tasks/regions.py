"""Score grids over an image and the box around their hottest region (pure numpy).

A :class:`ScoreGrid` is a ``[rows, cols]`` array of scores whose cells cover the original image:
cell ``(i, j)`` spans pixels ``x_edges[j] <= x < x_edges[j + 1]`` and ``y_edges[i] <= y <
y_edges[i + 1]``. The dense method's cells are the model's patch tokens; the crops method's cells
are the pieces the overlapping crops cut the image into (irregular, but every pixel of a cell is
covered by the same crops, so the grid is exact).

The hottest region: first the grid is refined (each cell cut into ``refine`` x ``refine`` sub-cells,
at most one per pixel, their values interpolated bilinearly between the cells' centres, so a
box edge can fall inside a coarse cell); then the sub-cells scoring at least ``base + threshold *
(max - base)`` that are connected (4-neighbourhood) to the best one; its box is the union of
those sub-cells' pixels. The base is the grid's median score by default: an object usually
covers less than half of the image, so the median is the background's level, and the region is
what stands out above it (with the minimum as the base, a background only slightly cooler than
the object joins the region). On the shapes benchmark's tuning scenes the refinement turns
boxes that hit a 12x12 grid's cell edges into ones closer to the object's outline (IoU >= 0.5 on
61% -> 70% of objects at threshold 0.3, 100 scenes; see ``benchmarks/locate_quality.py``).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Box:
    """A box in pixels of the original image (``x1``/``y1`` exclusive), the best cell's score
    (``score``, from the grid itself) and the mean score over the region (``region_score``, on
    the refined grid the box was cut from)."""

    x0: int
    y0: int
    x1: int
    y1: int
    score: float
    region_score: float

    @property
    def area(self) -> int:
        return (self.x1 - self.x0) * (self.y1 - self.y0)

    def iou(self, other: tuple[float, float, float, float] | Box) -> float:
        """Intersection over union with another box ``(x0, y0, x1, y1)``."""
        ox0, oy0, ox1, oy1 = (other.x0, other.y0, other.x1, other.y1) if isinstance(other, Box) else other
        w = max(0.0, min(self.x1, ox1) - max(self.x0, ox0))
        h = max(0.0, min(self.y1, oy1) - max(self.y0, oy0))
        inter = w * h
        union = self.area + (ox1 - ox0) * (oy1 - oy0) - inter
        return float(inter / union) if union > 0 else 0.0


@dataclass(frozen=True)
class ScoreGrid:
    """Scores on cells of the original image (see the module docstring)."""

    values: np.ndarray  # [rows, cols] float32
    x_edges: np.ndarray  # [cols + 1] int, 0 ... width
    y_edges: np.ndarray  # [rows + 1] int, 0 ... height

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the original image."""
        return int(self.x_edges[-1]), int(self.y_edges[-1])

    def pixels(self, size: tuple[int, int] | None = None) -> np.ndarray:
        """The map at pixel resolution ``[height, width]`` (each cell's score over its pixels),
        optionally resampled to ``size`` (width, height) by nearest cell."""
        width, height = size or self.size
        cols = np.searchsorted(self.x_edges, (np.arange(width) + 0.5) * self.size[0] / width, side="right") - 1
        rows = np.searchsorted(self.y_edges, (np.arange(height) + 0.5) * self.size[1] / height, side="right") - 1
        cols = cols.clip(0, self.values.shape[1] - 1)
        rows = rows.clip(0, self.values.shape[0] - 1)
        return self.values[np.ix_(rows, cols)]


def centre_weights(edges: np.ndarray, points: np.ndarray) -> np.ndarray:
    """``[len(points), cells]`` weights that interpolate linearly between the centres of the
    cells cut by ``edges`` at ``points`` (a point beyond the first or last centre takes that
    cell's value)."""
    edges = np.asarray(edges, dtype=np.float64)
    centres = (edges[:-1] + edges[1:]) / 2
    eye = np.eye(len(centres))
    return np.stack([np.interp(points, centres, eye[i]) for i in range(len(centres))], axis=1)


def resample(grid: ScoreGrid, x_edges: np.ndarray, y_edges: np.ndarray) -> ScoreGrid:
    """``grid``'s scores on other cells of the same image: bilinear between cell centres."""
    wx = centre_weights(grid.x_edges, (x_edges[:-1] + x_edges[1:]) / 2)
    wy = centre_weights(grid.y_edges, (y_edges[:-1] + y_edges[1:]) / 2)
    values = wy @ np.asarray(grid.values, dtype=np.float64) @ wx.T
    return ScoreGrid(values.astype(np.float32), np.asarray(x_edges), np.asarray(y_edges))


def refined(grid: ScoreGrid, factor: int) -> ScoreGrid:
    """``grid`` on ``factor`` times as many even cells per side (at most one per pixel)."""
    width, height = grid.size
    cols, rows = grid.values.shape[1], grid.values.shape[0]
    return resample(grid, even_edges(width, min(width, factor * cols)), even_edges(height, min(height, factor * rows)))


def even_edges(length: int, cells: int) -> np.ndarray:
    """Edges of ``cells`` equal cells over ``length`` pixels, rounded to whole pixels."""
    return np.round(np.arange(cells + 1) * length / cells).astype(np.int64)


def connected_region(mask: np.ndarray, seed: tuple[int, int]) -> np.ndarray:
    """The cells of ``mask`` 4-connected to ``seed`` (which must be in the mask)."""
    region = np.zeros_like(mask, dtype=bool)
    region[seed] = True
    todo = deque([seed])
    rows, cols = mask.shape
    while todo:
        r, c = todo.popleft()
        for nr, nc in ((r - 1, c), (r + 1, c), (r, c - 1), (r, c + 1)):
            if 0 <= nr < rows and 0 <= nc < cols and mask[nr, nc] and not region[nr, nc]:
                region[nr, nc] = True
                todo.append((nr, nc))
    return region


BASELINES = ("median", "min")


DEFAULT_THRESHOLD = 0.3
REFINE = 4


def hottest_box(grid: ScoreGrid, threshold: float = DEFAULT_THRESHOLD, baseline: str = "median",
                refine: int = REFINE) -> Box:
    """The box around the hottest region of ``grid`` (see the module docstring); ``threshold``
    in [0, 1] is the fraction of the way from the base (the ``baseline``: the grid's median or
    minimum score) to the highest score a cell needs; ``refine`` sub-cells per cell side (1: the
    grid's own cells)."""
    if baseline not in BASELINES:
        raise ValueError(f"baseline {baseline!r} is not one of {', '.join(BASELINES)}")
    best = float(np.max(grid.values))
    if refine > 1:
        grid = refined(grid, refine)
    values = np.asarray(grid.values, dtype=np.float64)
    seed = tuple(int(i) for i in np.unravel_index(np.argmax(values), values.shape))
    base = float(np.median(values) if baseline == "median" else values.min())
    mask = values >= base + threshold * (float(values.max()) - base)
    mask[seed] = True
    region = connected_region(mask, seed)
    rows, cols = np.nonzero(region)
    return Box(
        x0=int(grid.x_edges[cols.min()]), y0=int(grid.y_edges[rows.min()]),
        x1=int(grid.x_edges[cols.max() + 1]), y1=int(grid.y_edges[rows.max() + 1]),
        score=best, region_score=float(values[region].mean()),
    )
