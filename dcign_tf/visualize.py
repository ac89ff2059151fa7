"""Image panels: reconstructions and latent sweeps, as grids for TensorBoard and PNG files."""

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


def sweep_values(means: np.ndarray, count: int = 9, widen: float = 0.25) -> np.ndarray:
    """`count` values spanning the observed posterior means [N] of one latent, widened by a fraction."""
    low, high = float(np.min(means)), float(np.max(means))
    margin = widen * max(high - low, 1e-3)
    return np.linspace(low - margin, high + margin, count, dtype=np.float32)


def latent_sweep(model, images: np.ndarray, latent: int, values: np.ndarray) -> np.ndarray:
    """Re-renders each image with one latent set to each value, every other latent fixed.

    Args:
      model: a `DCIGN` (anything with `encode` and `decode`).
      images: [N, S, S, 1] in [0, 1].
      latent: index of the latent to change.
      values: [V] latent values.

    Returns:
      [N, V, S, S] in [0, 1]: row n is image n's sweep.
    """
    means = np.asarray(model.encode(images)[0])
    codes = np.repeat(means[:, None, :], len(values), axis=1)
    codes[:, :, latent] = values[None, :]
    decoded = np.asarray(model.decode(codes.reshape(-1, means.shape[-1])))
    return decoded.reshape(len(images), len(values), *decoded.shape[1:3])


def most_variable_latent(model, images: np.ndarray, candidates) -> int:
    """The latent among `candidates` whose posterior mean varies most over `images` [N, S, S, 1]."""
    means = np.asarray(model.encode(images)[0])
    candidates = list(candidates)
    return candidates[int(np.argmax(means[:, candidates].var(axis=0)))]


def factor_sweeps(model, images: np.ndarray, count: int = 9) -> dict[str, np.ndarray]:
    """One sweep grid per factor: its most variable latent swept over its observed range.

    images [N, S, S, 1] -> {factor name: grid image in [0, 1]}.
    """
    means = np.asarray(model.encode(images)[0])
    grids = {}
    for factor, indices in model.layout.factor_latents.items():
        latent = most_variable_latent(model, images, indices)
        grids[factor] = image_grid(latent_sweep(model, images, latent, sweep_values(means[:, latent], count)))
    return grids


def to_uint8(image: np.ndarray) -> np.ndarray:
    """[...] in [0, 1] -> uint8 [...] in 0..255, rounded."""
    return np.clip(np.rint(np.asarray(image) * 255.0), 0, 255).astype(np.uint8)
