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

DISPLAY_SIDE = (320, 800)  # the image under a heatmap is shown with its longest side in this range
# Heatmap picture layout in pixels (at 100 dpi): the image at the left, a colour bar at the right,
# the title above. The PNG is (display width + HEAT_MARGIN_X, display height + HEAT_MARGIN_Y).
HEAT_LEFT, HEAT_BOTTOM, HEAT_TOP, HEAT_GAP, HEAT_BAR, HEAT_RIGHT = 10, 10, 40, 15, 15, 110
HEAT_MARGIN_X = HEAT_LEFT + HEAT_GAP + HEAT_BAR + HEAT_RIGHT
HEAT_MARGIN_Y = HEAT_BOTTOM + HEAT_TOP
# Similarity picture: a thumbnail column, a cell per (image, text), the colour bar.
SIM_THUMB, SIM_CELL_W, SIM_CELL_H, SIM_HEADER, SIM_BAR, SIM_BOTTOM = 90, 120, 80, 90, 110, 10
COLOUR_MAP = "jet"


def pyplot(option: str = "--out", hint: str = "") -> Any:
    """matplotlib's pyplot on the Agg backend, or a one-line error saying how to install it."""
    try:
        import matplotlib
    except ImportError:
        raise UsageError(f"{option} draws pictures with matplotlib, which is not installed: "
                         f"pip install 'zeroshot[see]'{hint}") from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def display_size(size: tuple[int, int], side: tuple[int, int] = DISPLAY_SIDE) -> tuple[int, int]:
    """``size`` scaled (same aspect) so its longest side is within ``side`` (min, max)."""
    longest = max(size)
    scale = min(max(1.0, side[0] / longest), side[1] / longest)
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def heatmap_png_size(image_size: tuple[int, int]) -> tuple[int, int]:
    """The (width, height) of the PNG :func:`save_heatmap` draws for an image of ``image_size``."""
    width, height = display_size(image_size)
    return width + HEAT_MARGIN_X, height + HEAT_MARGIN_Y


def similarity_png_size(images: int, texts: int) -> tuple[int, int]:
    """The (width, height) of the PNG :func:`save_similarity_plot` draws."""
    return SIM_THUMB + texts * SIM_CELL_W + SIM_BAR, SIM_HEADER + images * SIM_CELL_H + SIM_BOTTOM


def _figure(plt: Any, size: tuple[int, int]) -> Any:
    return plt.figure(figsize=(size[0] / 100, size[1] / 100), dpi=100)


def _axes(fig: Any, size: tuple[int, int], left: int, bottom: int, width: int, height: int) -> Any:
    """Axes placed in pixels from the figure's bottom-left corner."""
    return fig.add_axes((left / size[0], bottom / size[1], width / size[0], height / size[1]))


def _save(fig: Any, path: Path, option: str) -> None:
    with atomic_file(Path(path), binary=True, option=option) as handle:
        fig.savefig(handle, format="png", dpi=100)


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
    canvas = heatmap_png_size(image.size)
    fig = _figure(plt, canvas)
    try:
        ax = _axes(fig, canvas, HEAT_LEFT, HEAT_BOTTOM, *size)
        ax.imshow(shown)
        overlay = ax.imshow(values, cmap=COLOUR_MAP, alpha=0.5, interpolation="nearest")
        if box is not None:
            sx, sy = size[0] / image.size[0], size[1] / image.size[1]
            x0, y0, x1, y1 = box
            ax.add_patch(plt.Rectangle((x0 * sx - 0.5, y0 * sy - 0.5), (x1 - x0) * sx, (y1 - y0) * sy,
                                       fill=False, edgecolor="white", linewidth=2))
        ax.set_title(title, fontsize=10)
        ax.set_axis_off()
        bar = _axes(fig, canvas, HEAT_LEFT + size[0] + HEAT_GAP, HEAT_BOTTOM, HEAT_BAR, size[1])
        fig.colorbar(overlay, cax=bar, label=colorbar_label)
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
    canvas = similarity_png_size(rows, cols)
    fig = _figure(plt, canvas)
    try:
        ax = _axes(fig, canvas, SIM_THUMB, SIM_BOTTOM, cols * SIM_CELL_W, rows * SIM_CELL_H)
        shown = ax.imshow(matrix, cmap="viridis", aspect="auto", interpolation="nearest")
        ax.set_xticks(range(cols), [_wrap(t) for t in texts], fontsize=8)
        ax.xaxis.tick_top()
        ax.set_yticks(range(rows), [""] * rows)
        ax.tick_params(axis="y", length=0)
        low, spread = float(matrix.min()), float(matrix.max() - matrix.min()) or 1.0
        for r in range(rows):
            for c in range(cols):
                dark = (matrix[r, c] - low) / spread < 0.6
                ax.text(c, r, f"{matrix[r, c]:.3f}", ha="center", va="center", fontsize=8,
                        color="white" if dark else "black")
        for r, thumb in enumerate(thumbnails):
            if thumb is None:
                continue
            small = thumb.convert("RGB")
            small.thumbnail((SIM_THUMB - 14, SIM_CELL_H - 8))
            badge = OffsetImage(np.asarray(small), zoom=1.0, dpi_cor=False)
            ax.add_artist(AnnotationBbox(badge, (-0.5, r), xybox=(-(SIM_THUMB // 2), 0), boxcoords="offset pixels",
                                         frameon=False, annotation_clip=False))
        fig.suptitle(title, fontsize=10, y=1 - 8 / canvas[1], va="top")
        bar = _axes(fig, canvas, SIM_THUMB + cols * SIM_CELL_W + 10, SIM_BOTTOM, 15, rows * SIM_CELL_H)
        fig.colorbar(shown, cax=bar)
        _save(fig, path, option)
    finally:
        plt.close(fig)
