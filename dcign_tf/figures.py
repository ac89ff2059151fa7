"""Evaluation figures: labelled image grids (numpy tiles, PIL labels) and scatter plots (matplotlib).

Every function returns a uint8 array (grayscale [H, W] or RGB [H, W, 3]) that goes both into a
PNG (`save_png`) and into TensorBoard (`tf.summary.image`), so the two always show the same thing.
Grids stay pixel-exact (each cell an image, enlarged by a whole factor); plots are drawn by matplotlib's
Agg canvas (`rendered`: no display, no pyplot state), imported only when a plot is drawn.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from dcign_tf import io_utils

# Cells of a figure grid are enlarged (nearest neighbour) to at least this many pixels, so that
# 32x32 faces stay visible and a column label fits above each.
MIN_CELL_PIXELS = 64
PADDING = 2
BACKGROUND = 128
LABEL_HEIGHT = 14
POINT_COLOUR = "#1f77b4"
LINE_COLOUR = "#d62728"
DPI = 100
PLOT_MARGINS = (66, 12, 24, 40)  # a plot's left, right, top and bottom margins in pixels: ticks and labels


def _font(size: int = 10):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the fixed bitmap font.
        return ImageFont.load_default()


def enlarge(image: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour enlargement of [H, W, ...] by an integer factor."""
    if factor <= 1:
        return image
    return np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)


def labelled_grid(cells, column_labels: Sequence[str] | None = None, row_labels: Sequence[str] | None = None,
                  min_cell: int = MIN_CELL_PIXELS) -> np.ndarray:
    """Tiles images into a grayscale figure with optional column labels (above) and row labels (left).

    Args:
      cells: [rows, cols, S, S] or [rows, cols, S, S, 1], floats in [0, 1].
      column_labels: `cols` short strings (e.g. "input", "-1.50 rad").
      row_labels: `rows` short strings.
      min_cell: cells are enlarged by the smallest integer factor that makes them at least this wide.

    Returns:
      uint8 [H, W].
    """
    cells = np.asarray(cells, np.float32)
    if cells.ndim == 5:
        cells = cells[..., 0]
    rows, cols, height, width = cells.shape
    factor = max(1, math.ceil(min_cell / max(height, width)))
    cell_h, cell_w = height * factor, width * factor
    font = _font()
    top = LABEL_HEIGHT if column_labels else 0
    left = 0
    if row_labels:
        left = max(int(font.getlength(str(label))) for label in row_labels) + 2 * PADDING
    canvas = Image.new("L", (left + cols * (cell_w + PADDING) + PADDING, top + rows * (cell_h + PADDING) + PADDING),
                       BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    # Labels sit on white strips, the images on the grey grid.
    if top:
        draw.rectangle([0, 0, canvas.width - 1, top - 1], fill=255)
    if left:
        draw.rectangle([0, 0, left - 1, canvas.height - 1], fill=255)
    for row in range(rows):
        for col in range(cols):
            x = left + PADDING + col * (cell_w + PADDING)
            y = top + PADDING + row * (cell_h + PADDING)
            canvas.paste(Image.fromarray(enlarge(io_utils.to_uint8(cells[row, col]), factor)), (x, y))
    for col, label in enumerate(column_labels or []):
        x = left + PADDING + col * (cell_w + PADDING) + cell_w / 2
        draw.text((x, top / 2 + 1), str(label), fill=0, font=font, anchor="mm")
    for row, label in enumerate(row_labels or []):
        draw.text((PADDING, top + PADDING + row * (cell_h + PADDING) + cell_h / 2), str(label), fill=0, font=font,
                  anchor="lm")
    return np.asarray(canvas)


@dataclasses.dataclass(frozen=True)
class ScatterPanel:
    """One scatter plot: y [N] against x [N] (non-finite points are dropped), with an optional fitted line
    y = slope x + intercept (data units) drawn across it."""

    x: np.ndarray
    y: np.ndarray
    title: str
    x_label: str
    y_label: str
    line: tuple[float, float] | None = None


def rendered(figure) -> np.ndarray:
    """A matplotlib Figure drawn by the Agg canvas (no display) -> uint8 RGB [H, W, 3]."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def scatter_plots(panels: Sequence[ScatterPanel], panel_size: tuple[int, int] = (360, 320), max_points: int = 3000,
                  seed: int = 0) -> np.ndarray:
    """The panels side by side, each with axes, ticks, labels and its line.

    Args:
      panels: one per plot, left to right.
      panel_size: (width, height) of each panel in pixels.
      max_points: a random subset (from `seed`) of at most this many points is drawn per panel.

    Returns:
      uint8 RGB [height, width * len(panels), 3].
    """
    from matplotlib.figure import Figure

    width, height = panel_size
    total = width * len(panels)
    figure = Figure(figsize=(total / DPI, height / DPI), dpi=DPI)
    left, right, top, bottom = PLOT_MARGINS
    for index, panel in enumerate(panels):
        # Fixed margins in pixels rather than a layout engine, which costs more than the plot itself.
        axes = figure.add_axes(((index * width + left) / total, bottom / height, (width - left - right) / total,
                                (height - top - bottom) / height))
        x = np.asarray(panel.x, np.float64).reshape(-1)
        y = np.asarray(panel.y, np.float64).reshape(-1)
        keep = np.isfinite(x) & np.isfinite(y)
        x, y = x[keep], y[keep]
        if x.size > max_points:
            chosen = np.random.default_rng(seed).choice(x.size, max_points, replace=False)
            x, y = x[chosen], y[chosen]
        axes.set_title(panel.title, fontsize=8)
        axes.set_xlabel(panel.x_label, fontsize=8)
        axes.set_ylabel(panel.y_label, fontsize=8)
        axes.tick_params(labelsize=7)
        axes.locator_params(nbins=5)  # about five round ticks per axis, as many as the narrow panel holds
        if x.size == 0:
            axes.text(0.5, 0.5, "no finite points", transform=axes.transAxes, ha="center", va="center", fontsize=8)
            continue
        axes.scatter(x, y, s=6, color=POINT_COLOUR, linewidths=0)
        if panel.line is not None and all(math.isfinite(value) for value in panel.line):
            slope, intercept = panel.line
            axes.set_xlim(axes.get_xlim())  # the points' limits, fixed: the line must not widen them
            axes.set_ylim(axes.get_ylim())
            axes.axline((0.0, intercept), slope=slope, color=LINE_COLOUR, linewidth=1)
    return rendered(figure)


def save_png(path: str, image) -> None:
    """Writes a uint8 (or [0, 1] float) grayscale or RGB image as PNG, atomically (io_utils.atomic_path)."""
    with io_utils.atomic_path(path) as temp_path:
        Image.fromarray(io_utils.to_uint8(image)).save(temp_path, format="PNG")
