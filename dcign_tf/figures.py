"""Evaluation figures drawn with PIL (no plotting library): labelled image grids and scatter plots.

Every function returns a uint8 array (grayscale [H, W] or RGB [H, W, 3]) that goes both into a
PNG (`save_png`) and into TensorBoard (`tf.summary.image`), so the two always show the same thing.
"""

from __future__ import annotations

import math
import os
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# Cells of a figure grid are enlarged (nearest neighbour) to at least this many pixels, so that
# 32x32 faces stay visible and a column label fits above each.
MIN_CELL_PIXELS = 64
PADDING = 2
BACKGROUND = 128
LABEL_HEIGHT = 14
POINT_COLOUR = (31, 119, 180)
LINE_COLOUR = (214, 39, 40)


def _font(size: int = 10):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the fixed bitmap font.
        return ImageFont.load_default()


def to_uint8(image) -> np.ndarray:
    """Floats in [0, 1] -> uint8 0..255 (rounded, clipped); uint8 passes through."""
    image = np.asarray(image)
    if image.dtype == np.uint8:
        return image
    return np.clip(np.rint(image.astype(np.float32) * 255.0), 0, 255).astype(np.uint8)


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
            canvas.paste(Image.fromarray(enlarge(to_uint8(cells[row, col]), factor)), (x, y))
    for col, label in enumerate(column_labels or []):
        x = left + PADDING + col * (cell_w + PADDING) + cell_w / 2
        draw.text((x, top / 2 + 1), str(label), fill=0, font=font, anchor="mm")
    for row, label in enumerate(row_labels or []):
        draw.text((PADDING, top + PADDING + row * (cell_h + PADDING) + cell_h / 2), str(label), fill=0, font=font,
                  anchor="lm")
    return np.asarray(canvas)


def _nice_ticks(low: float, high: float, count: int = 5) -> np.ndarray:
    """About `count` round tick values covering [low, high]."""
    if not high > low:
        return np.array([low])
    raw = (high - low) / max(1, count - 1)
    magnitude = 10.0 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.ceil(low / step) * step
    ticks = np.round(np.arange(first, high + step * 1e-6, step) / step) * step
    ticks[np.abs(ticks) < step * 1e-9] = 0.0  # "0", not "1.1e-17" from accumulated rounding
    return ticks


def _padded_range(values: np.ndarray) -> tuple[float, float]:
    low, high = float(np.min(values)), float(np.max(values))
    margin = 0.05 * (high - low) if high > low else max(abs(low) * 0.05, 0.5)
    return low - margin, high + margin


def scatter_panel(x, y, title: str, x_label: str, y_label: str, line: tuple[float, float] | None = None,
                  size: tuple[int, int] = (360, 320), max_points: int = 3000, seed: int = 0) -> np.ndarray:
    """One scatter plot of y against x, with axes, ticks, labels and an optional line y = a x + b.

    Args:
      x, y: [N] floats (non-finite points are dropped).
      title: drawn above the plot (e.g. the factor and its correlations).
      line: (slope, intercept) of a fitted line to overlay, in data units.
      size: (width, height) in pixels.
      max_points: a random subset of at most this many points is drawn.

    Returns:
      uint8 RGB [height, width, 3].
    """
    x = np.asarray(x, np.float64).reshape(-1)
    y = np.asarray(y, np.float64).reshape(-1)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    if x.size > max_points:
        chosen = np.random.default_rng(seed).choice(x.size, max_points, replace=False)
        x, y = x[chosen], y[chosen]
    width, height = size
    margin_left, margin_right, margin_top, margin_bottom = 56, 12, 24, 40
    image = Image.new("RGB", size, (255, 255, 255))
    draw = ImageDraw.Draw(image)
    font = _font()
    draw.text((width / 2, margin_top / 2), title, fill=(0, 0, 0), font=font, anchor="mm")
    plot_w, plot_h = width - margin_left - margin_right, height - margin_top - margin_bottom
    draw.rectangle([margin_left, margin_top, margin_left + plot_w, margin_top + plot_h], outline=(0, 0, 0))
    if x.size == 0:
        draw.text((margin_left + plot_w / 2, margin_top + plot_h / 2), "no finite points", fill=(0, 0, 0),
                  font=font, anchor="mm")
        return np.asarray(image)
    x_low, x_high = _padded_range(x)
    y_low, y_high = _padded_range(y)

    def to_pixel(px, py):
        return (margin_left + (px - x_low) / (x_high - x_low) * plot_w,
                margin_top + plot_h - (py - y_low) / (y_high - y_low) * plot_h)

    for tick in _nice_ticks(x_low, x_high):
        px, _ = to_pixel(tick, y_low)
        draw.line([px, margin_top + plot_h, px, margin_top + plot_h + 4], fill=(0, 0, 0))
        draw.text((px, margin_top + plot_h + 6), f"{tick:.3g}", fill=(0, 0, 0), font=font, anchor="mt")
    for tick in _nice_ticks(y_low, y_high):
        _, py = to_pixel(x_low, tick)
        draw.line([margin_left - 4, py, margin_left, py], fill=(0, 0, 0))
        draw.text((margin_left - 6, py), f"{tick:.3g}", fill=(0, 0, 0), font=font, anchor="rm")
    draw.text((margin_left + plot_w / 2, height - 4), x_label, fill=(0, 0, 0), font=font, anchor="mb")
    label = Image.new("RGB", (int(font.getlength(y_label)) + 4, 14), (255, 255, 255))
    ImageDraw.Draw(label).text((2, 7), y_label, fill=(0, 0, 0), font=font, anchor="lm")
    label = label.rotate(90, expand=True)
    image.paste(label, (2, int(margin_top + plot_h / 2 - label.height / 2)))
    if line is not None and all(math.isfinite(value) for value in line):
        segment = _clip_line(*line, x_low, x_high, y_low, y_high)
        if segment is not None:
            (x0, y0), (x1, y1) = segment
            draw.line([to_pixel(x0, y0), to_pixel(x1, y1)], fill=LINE_COLOUR, width=1)
    for px, py in zip(*to_pixel(x, y)):
        draw.ellipse([px - 1.5, py - 1.5, px + 1.5, py + 1.5], fill=POINT_COLOUR)
    return np.asarray(image)


def _clip_line(slope, intercept, x_low, x_high, y_low, y_high):
    """The part of y = slope x + intercept inside the box, as two (x, y) ends, or None."""
    if slope == 0:
        return ((x_low, intercept), (x_high, intercept)) if y_low <= intercept <= y_high else None
    ends = sorted([(y_low - intercept) / slope, (y_high - intercept) / slope])
    start, stop = max(x_low, ends[0]), min(x_high, ends[1])
    if start >= stop:
        return None
    return (start, slope * start + intercept), (stop, slope * stop + intercept)


def side_by_side(panels: Sequence[np.ndarray]) -> np.ndarray:
    """Concatenates same-height RGB panels left to right."""
    return np.concatenate(list(panels), axis=1)


def save_png(path: str, image) -> None:
    """Writes a uint8 (or [0, 1] float) grayscale or RGB image as PNG, atomically (temp file, rename)."""
    temporary = f"{path}.tmp-{os.getpid()}.png"
    Image.fromarray(to_uint8(image)).save(temporary, format="PNG")
    os.replace(temporary, path)
