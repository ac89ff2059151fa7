"""Image panels for TensorBoard: grids of images, and inputs over their reconstructions."""

from __future__ import annotations

import numpy as np


def image_grid(images: np.ndarray, padding: int = 2, background: float = 0.5) -> np.ndarray:
    """Tiles images [rows, cols, H, W] (or [rows, cols, H, W, 1]) into one [rows*(H+p)+p, cols*(W+p)+p] image."""
    images = np.asarray(images, np.float32)
    if images.ndim == 5:
        images = images[..., 0]
    rows, cols, height, width = images.shape
    grid = np.full((rows * (height + padding) + padding, cols * (width + padding) + padding), background, np.float32)
    for row in range(rows):
        for col in range(cols):
            top = padding + row * (height + padding)
            left = padding + col * (width + padding)
            grid[top:top + height, left:left + width] = images[row, col]
    return grid


def reconstruction_panel(model, images: np.ndarray) -> np.ndarray:
    """Inputs (top row) over their reconstructions from the posterior mean (bottom row).

    images [N, S, S, 1] in [0, 1] -> a grid image in [0, 1].
    """
    reconstructions = np.asarray(model(images))
    return image_grid(np.stack([images, reconstructions]))

