"""How well a latent tracks its generating factor, and how still the other latents stay.

These quantify the paper's Figure 6 (inferred vs true azimuth / elevation / light, §4.1) and the
invariance the clamped training aims for (inactive latents constant within a batch where only
one factor varies). Pure numpy / scipy, no TensorFlow.
"""
from __future__ import annotations

import numpy as np
import scipy.stats

__all__ = ["equivariance", "invariance"]


def _as_finite_vector(values, name: str) -> np.ndarray:
    """``values`` as a finite float64 1-D array; an ``[N, 1]`` column is flattened."""
    vector = np.asarray(values, dtype=np.float64)
    if vector.ndim == 2 and vector.shape[1] == 1:
        vector = vector[:, 0]
    if vector.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array [N]; got shape {vector.shape}.")
    if not np.all(np.isfinite(vector)):
        raise ValueError(f"{name} contains NaN or infinite values.")
    return vector


def equivariance(inferred, true) -> dict:
    """Agreement between one inferred latent and the true factor it should encode.

    Args:
      inferred: ``[N]`` the latent's posterior mean per image (arbitrary units).
      true: ``[N]`` the true factor value per image (e.g. azimuth in degrees).

    Returns:
      ``{"pearson": r, "spearman": rho, "r2": R^2}``: Pearson's linear correlation, Spearman's
      rank correlation (1 for any increasing map, -1 for any decreasing one), and the R^2 of the
      least-squares line ``true ~ a * inferred + b`` (= r^2; how much of the factor's variance a
      linear read-out of the latent explains). Correlations are ``nan`` when either input is
      constant (undefined); R^2 is 0 when ``inferred`` is constant (the best line is the mean)
      and ``nan`` when ``true`` is.
    """
    inferred = _as_finite_vector(inferred, "inferred")
    true = _as_finite_vector(true, "true")
    if inferred.shape != true.shape:
        raise ValueError(
            f"inferred and true must have the same length; got {inferred.shape[0]} and {true.shape[0]}."
        )
    if inferred.shape[0] < 3:
        raise ValueError(f"need at least 3 points; got {inferred.shape[0]}.")
    # Exact constancy (np.ptp), not a variance threshold: np.var of a constant can be ~1e-33.
    inferred_constant = np.ptp(inferred) == 0
    true_constant = np.ptp(true) == 0
    if inferred_constant or true_constant:
        pearson = spearman = float("nan")
    else:
        pearson = float(scipy.stats.pearsonr(inferred, true).statistic)
        spearman = float(scipy.stats.spearmanr(inferred, true).statistic)

    if true_constant:
        r2 = float("nan")
    elif inferred_constant:
        r2 = 0.0
    else:
        design = np.stack([inferred, np.ones_like(inferred)], axis=1)
        coefficients, *_ = np.linalg.lstsq(design, true, rcond=None)
        residual = true - design @ coefficients
        centred_true = true - true.mean()
        r2 = float(1.0 - (residual @ residual) / (centred_true @ centred_true))
    return {"pearson": pearson, "spearman": spearman, "r2": r2}


def invariance(codes, group_ids, other_latents) -> float:
    """Within-group variance of latents that should not change, relative to their overall variance.

    For each latent l in ``other_latents``: the unbiased (ddof=1) variance of ``codes[:, l]``
    within each group, averaged over groups with equal weight, divided by the unbiased variance
    of ``codes[:, l]`` over all N points; the result is the mean of that ratio over the latents.
    0 means the latents are constant within every group (perfect invariance); about 1 means they
    vary as much within a group as across the set (no invariance); above 1 is possible when the
    groups differ less from each other than their members do.

    Groups of a single point have no within-group variance and are ignored; latents constant over
    all N points have no variance to explain and are ignored.

    Args:
      codes: ``[N, L]`` posterior means.
      group_ids: ``[N]`` hashable-as-numpy labels (ints, strings), e.g. the index of the batch in
        which only one factor varied.
      other_latents: indices (sequence of ints) or a ``[L]`` bool mask of the latents that should
        stay put within a group, e.g. every latent except the varying factor's.

    Returns:
      float >= 0, lower is better.

    Raises:
      ValueError: on mismatched lengths, no group with 2+ points, an empty latent selection, or
        when every selected latent is constant over the whole set.
    """
    codes = np.asarray(codes, dtype=np.float64)
    if codes.ndim == 1:
        codes = codes[:, None]
    if codes.ndim != 2:
        raise ValueError(f"codes must be a 2-D array [N, L]; got shape {codes.shape}.")
    if not np.all(np.isfinite(codes)):
        raise ValueError("codes contains NaN or infinite values.")
    group_ids = np.asarray(group_ids)
    if group_ids.ndim != 1 or group_ids.shape[0] != codes.shape[0]:
        raise ValueError(
            f"group_ids must be 1-D with one label per row of codes; got group_ids {group_ids.shape} "
            f"and codes {codes.shape}."
        )
    latent_index = np.asarray(other_latents)
    if latent_index.dtype == bool:
        if latent_index.shape != (codes.shape[1],):
            raise ValueError(
                f"a bool other_latents mask must have one entry per latent ({codes.shape[1]}); "
                f"got shape {latent_index.shape}."
            )
        latent_index = np.flatnonzero(latent_index)
    latent_index = np.atleast_1d(latent_index).astype(np.int64)
    if latent_index.size == 0:
        raise ValueError("other_latents selects no latent.")
    if latent_index.min() < -codes.shape[1] or latent_index.max() >= codes.shape[1]:
        raise ValueError(f"other_latents {latent_index.tolist()} out of range for {codes.shape[1]} latents.")

    selected = codes[:, latent_index]
    varies = np.ptp(selected, axis=0) > 0
    if not varies.any():
        raise ValueError("every latent in other_latents is constant over the whole set; invariance is undefined.")
    selected = selected[:, varies]

    _, group_of_point, group_sizes = np.unique(group_ids, return_inverse=True, return_counts=True)
    group_of_point = group_of_point.reshape(-1)
    usable_groups = np.flatnonzero(group_sizes >= 2)
    if usable_groups.size == 0:
        raise ValueError("no group has 2 or more points; within-group variance is undefined.")

    # Two-pass per-group variance: group means first, then squared deviations from them.
    num_groups = group_sizes.size
    group_sums = np.zeros((num_groups, selected.shape[1]))
    np.add.at(group_sums, group_of_point, selected)
    deviations = selected - (group_sums / group_sizes[:, None])[group_of_point]
    group_squares = np.zeros_like(group_sums)
    np.add.at(group_squares, group_of_point, deviations**2)
    within_variance = np.mean(group_squares[usable_groups] / (group_sizes[usable_groups, None] - 1), axis=0)
    total_variance = selected.var(axis=0, ddof=1)
    return float(np.mean(within_variance / total_variance))
