"""Pictures: a heatmap over an image (``locate``) and a similarity matrix with image thumbnails
(``similarity``). Drawn with matplotlib (the optional extra ``see``), always off-screen (Agg),
written atomically."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..errors import UsageError
from .writers import atomic_file

DISPLAY_SIDE = 800  # longest side of the image shown under a heatmap, in pixels
COLOUR_MAP = "jet"


def pyplot(option: str = "--out") -> Any:
    """matplotlib's pyplot on the Agg backend, or a one-line error saying how to install it."""
    try:
        import matplotlib
    except ImportError:
        raise UsageError(f"{option}: drawing pictures needs matplotlib: pip install 'zeroshot[see]'") from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def display_size(size: tuple[int, int], longest: int = DISPLAY_SIDE) -> tuple[int, int]:
    """``size`` scaled down (never up) so its longest side is at most ``longest``."""
    scale = min(1.0, longest / max(size))
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def _save(fig: Any, path: Path, option: str, dpi: int = 100) -> None:
    with atomic_file(Path(path), binary=True, option=option) as handle:
        fig.savefig(handle, format="png", dpi=dpi, bbox_inches="tight")


def save_heatmap(
    image: Image.Image,
    heat: Callable[[tuple[int, int]], np.ndarray],
    path: Path,
    title: str,
    colorbar_label: str = "score",
    box: tuple[int, int, int, int] | None = None,
    option: str = "--out",
) -> None:
    """``image`` with the map ``heat(size)`` (``[height, width]`` for a display ``size``) over
    it in a colour map, a colour bar, ``title`` and the ``box`` (original pixels) outlined."""
    plt = pyplot(option)
    size = display_size(image.size)
    shown = image.convert("RGB").resize(size, Image.Resampling.BILINEAR)
    values = heat(size)
    fig, ax = plt.subplots(figsize=(size[0] / 100 + 1.6, size[1] / 100 + 0.8))
    try:
        ax.imshow(shown)
        overlay = ax.imshow(values, cmap=COLOUR_MAP, alpha=0.5, interpolation="nearest")
        if box is not None:
            sx, sy = size[0] / image.size[0], size[1] / image.size[1]
            x0, y0, x1, y1 = box
            ax.add_patch(plt.Rectangle((x0 * sx - 0.5, y0 * sy - 0.5), (x1 - x0) * sx, (y1 - y0) * sy,
                                       fill=False, edgecolor="white", linewidth=2))
        ax.set_title(title)
        ax.set_axis_off()
        fig.colorbar(overlay, ax=ax, fraction=0.046, pad=0.04, label=colorbar_label)
        _save(fig, path, option)
    finally:
        plt.close(fig)


def _wrap(text: str, width: int = 18, lines: int = 3) -> str:
    import textwrap

    wrapped = textwrap.wrap(text, width) or [""]
    if len(wrapped) > lines:
        wrapped = wrapped[:lines]
        wrapped[-1] = wrapped[-1][: width - 1] + "…"
    return "\n".join(wrapped)


def save_similarity_plot(
    matrix: np.ndarray,
    thumbnails: Sequence[Image.Image | None],
    texts: Sequence[str],
    path: Path,
    title: str = "cosine similarity",
    option: str = "--plot",
) -> None:
    """The ``[images, texts]`` ``matrix`` as a heatmap with a thumbnail per row (None: blank)
    and the texts as column labels, each cell annotated with its value."""
    plt = pyplot(option)
    from matplotlib.offsetbox import AnnotationBbox, OffsetImage

    rows, cols = matrix.shape
    cell = 0.9
    fig, ax = plt.subplots(figsize=(2.2 + cols * cell * 1.4, 1.6 + rows * cell))
    try:
        shown = ax.imshow(matrix, cmap="viridis", aspect="auto")
        ax.set_xticks(range(cols), [_wrap(t) for t in texts], rotation=0, fontsize=8)
        ax.xaxis.tick_top()
        ax.set_yticks(range(rows), [""] * rows)
        ax.tick_params(axis="y", length=0)
        spread = float(matrix.max() - matrix.min()) or 1.0
        for r in range(rows):
            for c in range(cols):
                light = (matrix[r, c] - matrix.min()) / spread < 0.6
                ax.text(c, r, f"{matrix[r, c]:.3f}", ha="center", va="center", fontsize=8,
                        color="white" if light else "black")
        for r, thumb in enumerate(thumbnails):
            if thumb is None:
                continue
            small = thumb.convert("RGB")
            small.thumbnail((64, 64))
            badge = OffsetImage(np.asarray(small), zoom=0.8)
            ax.add_artist(AnnotationBbox(badge, (-0.5, r), xybox=(-36, 0), boxcoords="offset points",
                                         frameon=False, annotation_clip=False))
        ax.set_title(title, pad=28 + 10 * max(len(_wrap(t).splitlines()) for t in texts) if texts else 10)
        fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04)
        _save(fig, path, option)
    finally:
        plt.close(fig)
