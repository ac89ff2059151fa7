"""The numbers of an evaluation: from a model's codes and renders of the test images to the metrics.

Pure numpy on codes (tested on constructed latents with known answers), plus `encode_posterior` /
`decoder_of`, which run a model in batches; scikit-learn (the metrics package) loads lazily, as it loads
slowly. Which images, pairs and latents are scored comes from `dcign_tf.analysis.selection`.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Mapping, Sequence

import numpy as np

from dcign_tf import calibration as calibration_lib
from dcign_tf.analysis.selection import EvaluationError, TestSample, choose_latents, own_latents


# Images per encoder / decoder call: large enough to use the cores, small enough for memory at 150x150.
INFERENCE_BATCH = 128
# A latent "carries information" above this many nats of KL (averaged over test images).
ACTIVE_LATENT_NATS = 0.1


def encode_posterior(model, images: np.ndarray, batch_size: int = INFERENCE_BATCH) -> tuple[np.ndarray, np.ndarray]:
    """images [N, S, S, 1] -> (posterior means [N, L], log-variances [N, L]) float32."""
    means, log_variances = [], []
    for start in range(0, len(images), batch_size):
        mean, log_variance = model.encode(images[start:start + batch_size])
        means.append(np.asarray(mean, np.float32))
        log_variances.append(np.asarray(log_variance, np.float32))
    if not means:
        empty = np.zeros((0, model.config.num_latents), np.float32)
        return empty, empty
    return np.concatenate(means), np.concatenate(log_variances)


def encode_means(model, images: np.ndarray, batch_size: int = INFERENCE_BATCH) -> np.ndarray:
    """images [N, S, S, 1] -> posterior means [N, L] float32."""
    return encode_posterior(model, images, batch_size)[0]


def decoder_of(model, batch_size: int = INFERENCE_BATCH):
    """latents [N, L] -> images [N, S, S, 1] float32, in batches."""
    def decode(codes):
        codes = np.asarray(codes, np.float32)
        return np.concatenate([np.asarray(model.decode(codes[start:start + batch_size]), np.float32)
                               for start in range(0, len(codes), batch_size)])
    return decode


def equivariance_scores(codes: np.ndarray, sample: TestSample, chosen: Mapping[str, int]) -> dict:
    """Scene factor -> {pearson, spearman, r2} of its chosen latent against its true value (all images)."""
    from dcign_tf.metrics import equivariance  # Lazy, like every metrics import: scikit-learn loads slowly.

    scores = {}
    for factor in sample.scene_factors:
        if factor not in chosen:
            continue
        try:
            scores[factor] = equivariance(codes[:, chosen[factor]], sample.values(factor))
        except ValueError:
            scores[factor] = {"pearson": math.nan, "spearman": math.nan, "r2": math.nan}
    return scores


def invariance_scores(codes: np.ndarray, sample: TestSample, own: Mapping[str, Sequence[int]]) -> dict:
    """Factor -> within-group variance of the other factors' latents over its groups, relative to their
    variance over every evaluated image (metrics.invariance); nan when it is undefined."""
    from dcign_tf.metrics import invariance

    num_images, num_latents = np.asarray(codes).shape
    scores = {}
    for factor, rows in sample.groups.items():
        others = [i for i in range(num_latents) if i not in set(own.get(factor, ()))]
        # Images outside this factor's groups get singleton ids, which invariance() skips for the
        # within-group part but keeps in the total variance: the whole set is the reference.
        group_ids = -1 - np.arange(num_images)
        for group_index, group in enumerate(rows):
            group_ids[group] = group_index
        try:
            scores[factor] = invariance(codes, group_ids, others) if others else math.nan
        except ValueError:
            scores[factor] = math.nan
    return scores


def novel_view(decode, codes: np.ndarray, images: np.ndarray, pairs: np.ndarray,
               swap_latents: Sequence[int]) -> tuple[float, np.ndarray]:
    """Renders image i with the factor's latents of image j; scores it against image j.

    Args:
      decode: latents [P, L] -> images [P, S, S, 1] in [0, 1].
      codes: [N, L] posterior means; images: [N, S, S, 1].
      pairs: [P, 2] rows (i, j); swap_latents: the factor's latent indices.

    Returns:
      (per-pixel MSE averaged over the pairs, the renders [P, S, S, 1]).
    """
    pairs = np.asarray(pairs)
    swap = list(swap_latents)
    mixed = np.array(codes[pairs[:, 0]], np.float32)
    mixed[:, swap] = codes[pairs[:, 1]][:, swap]
    rendered = np.asarray(decode(mixed), np.float32)
    return float(np.mean(np.square(rendered - images[pairs[:, 1]]))), rendered


def stranger_references(images: np.ndarray, view_groups: np.ndarray) -> dict:
    """What an image of *another* object at the same view scores: the scale of identity retention.

    Args:
      images: [N, S, S, C] in [0, 1]; view_groups: [g, G] rows, G different objects at one view per group.

    Returns:
      {"stranger_mse": per-pixel MSE between two different objects at the same view, over every
                       unordered pair in every group (g * G * (G - 1) / 2 pairs),
       "mean_face_mse": per-pixel MSE between each object and the mean of the *other* G - 1 objects
                       at its view (the best guess that knows the view and nothing of the object),
       "mean_face_retention": 1 - mean_face_mse / stranger_mse,
       "stranger_pairs": the number of pairs}; the MSEs are nan when there is no group of 2+ images.
    Within a group, the mean over pairs of |x_i - x_j|^2 is exactly twice the (ddof=1) variance of
    the objects, while the mean face's error is that variance times G / (G - 1): so the mean face
    retains (G - 2) / (2 (G - 1)) of the identity (0.474 for G = 20), 0.5 as G grows.
    """
    view_groups = np.asarray(view_groups)
    if view_groups.size == 0 or view_groups.shape[1] < 2:
        return {"stranger_mse": math.nan, "mean_face_mse": math.nan, "mean_face_retention": math.nan,
                "stranger_pairs": 0}
    pair_sums, mean_face_sums, num_pairs, num_images = 0.0, 0.0, 0, 0
    group_size = view_groups.shape[1]
    first, second = np.triu_indices(group_size, k=1)
    for rows in view_groups:
        group = np.asarray(images[rows], np.float64).reshape(group_size, -1)
        pair_sums += float(np.square(group[first] - group[second]).mean(axis=1).sum())
        others_mean = (group.sum(axis=0, keepdims=True) - group) / (group_size - 1)
        mean_face_sums += float(np.square(group - others_mean).mean(axis=1).sum())
        num_pairs += len(first)
        num_images += group_size
    stranger, mean_face = pair_sums / num_pairs, mean_face_sums / num_images
    return {"stranger_mse": stranger, "mean_face_mse": mean_face,
            "mean_face_retention": identity_retention(mean_face, stranger), "stranger_pairs": int(num_pairs)}


def identity_retention(mse: float, stranger_mse: float) -> float:
    """1 - mse / stranger_mse: 1 is the exact image, 0 no closer than another object at that view (nan if
    the stranger MSE is unknown). See the module docstring for what it means and what it cannot tell."""
    if not (math.isfinite(stranger_mse) and stranger_mse > 0 and math.isfinite(mse)):
        return math.nan
    return 1.0 - mse / stranger_mse


def kl_per_latent(means: np.ndarray, log_variances: np.ndarray) -> np.ndarray:
    """[L] nats: KL(q(z_i|x) || N(0, 1)) = (mu^2 + sigma^2 - 1 - log sigma^2) / 2, averaged over the N images.

    means, log_variances: [N, L] posterior parameters."""
    means = np.asarray(means, np.float64)
    log_variances = np.asarray(log_variances, np.float64)
    return (0.5 * (np.square(means) + np.exp(log_variances) - 1.0 - log_variances)).mean(axis=0)


def kl_summary(per_latent: np.ndarray, own: Mapping[str, Sequence[int]]) -> dict:
    """{"total": nats, "per_latent": [L] nats, "active_latents": count above ACTIVE_LATENT_NATS,
    "by_factor": factor -> nats summed over its latents (`own_latents`: a DC-IGN run's layout; for a
    baseline its chosen latent, identity the rest)}."""
    per_latent = np.asarray(per_latent, np.float64)
    return {"total": float(per_latent.sum()), "per_latent": [float(value) for value in per_latent],
            "active_latents": int(np.sum(per_latent > ACTIVE_LATENT_NATS)),
            "by_factor": {factor: float(per_latent[list(indices)].sum()) for factor, indices in own.items()}}


def sweep_values(codes: np.ndarray, latent: int, steps: int) -> np.ndarray:
    """[steps] evenly spaced values spanning the latent's posterior means over the test images."""
    column = np.asarray(codes)[:, latent]
    low, high = float(column.min()), float(column.max())
    if high - low < 1e-6:
        low, high = low - 1.0, high + 1.0
    return np.linspace(low, high, steps, dtype=np.float32)


def sweep(decode, codes: np.ndarray, latent: int, values: np.ndarray) -> np.ndarray:
    """codes [n, L] -> [n, V, S, S, 1]: each code decoded with `latent` set to each value, others fixed."""
    repeated = np.repeat(np.asarray(codes, np.float32)[:, None, :], len(values), axis=1)
    repeated[:, :, latent] = values[None, :]
    decoded = np.asarray(decode(repeated.reshape(-1, repeated.shape[-1])))
    return decoded.reshape(len(codes), len(values), *decoded.shape[1:])


@dataclasses.dataclass
class Analysis:
    """One run's results on a TestSample: metrics (JSON-ready) and what the figures need."""

    metrics: dict
    codes: np.ndarray  # [N, L]
    chosen: dict  # factor -> latent index
    own: dict  # factor -> latent indices
    calibration: dict  # scene factor -> line
    novel_views: dict  # scene factor -> renders [P, S, S, 1]
    sweeps: dict  # factor -> (values [V], renders [n, V, S, S, 1])


def analyse(model, sample: TestSample, pairs: Mapping[str, np.ndarray], mse_rows: np.ndarray,
            figure_rows: np.ndarray, sweep_steps: int, stranger_mse: float = math.nan,
            calibrate: bool = True) -> Analysis:
    """Every metric of one model on `sample` but the disentanglement scores (`disentanglement_for_runs`
    scores all runs at once).

    Args:
      model: a `DCIGN` (an export's, or a live one during training).
      sample: the test images held.
      pairs: scene factor -> [P, 2] novel-view rows (`selection.novel_view_pairs`), shared across runs.
      mse_rows: [M] rows reconstructed for test_mse; figure_rows: [n] rows swept for the figures.
      sweep_steps: latent values per sweep.
      stranger_mse: the data's scale of identity retention (`stranger_references`); nan leaves it nan.
      calibrate: fit the calibration (an empty one when False: a training-time sample may hold too few
        images of a factor to fit a line).
    """
    codes, log_variances = encode_posterior(model, sample.images)
    decode = decoder_of(model)
    layout = {factor: tuple(indices) for factor, indices in model.layout.factor_latents.items()}
    chosen = choose_latents(codes, sample.groups, layout, model.config.mode)
    own = own_latents(layout, model.config.mode, chosen, sample.scene_factors, codes.shape[1])

    reconstructions = decode(codes[mse_rows])
    test_mse = float(np.mean(np.square(reconstructions - sample.images[mse_rows])))
    novel_mse, novel_views = {}, {}
    for factor, factor_pairs in pairs.items():
        novel_mse[factor], novel_views[factor] = novel_view(decode, codes, sample.images, factor_pairs, own[factor])
    retention = {factor: identity_retention(mse, stranger_mse) for factor, mse in novel_mse.items()}
    retention["reconstruction"] = identity_retention(test_mse, stranger_mse)
    calibration = {}
    if calibrate:
        try:
            calibration = calibration_lib.fit_calibration(
                {factor: sample.values(factor) for factor in sample.scene_factors if factor in chosen}, codes, chosen)
        except calibration_lib.CalibrationError as error:
            raise EvaluationError(f"cannot calibrate: {error}") from None
    sweeps = {}
    for factor, latent in chosen.items():
        values = sweep_values(codes, latent, sweep_steps)
        sweeps[factor] = (values, sweep(decode, codes[figure_rows], latent, values))
    metrics = {
        "mode": model.config.mode,
        "latents": chosen,
        "test_mse": test_mse,
        "identity_retention": retention,
        "equivariance": equivariance_scores(codes, sample, chosen),
        "invariance": invariance_scores(codes, sample, own),
        "novel_view_mse": novel_mse,
        "kl": kl_summary(kl_per_latent(codes, log_variances), own),
        "calibration": calibration,
    }
    return Analysis(metrics, codes, chosen, own, calibration, novel_views, sweeps)


DISENTANGLEMENT_KEYS = ("mig", "sap", "dci_disentanglement", "dci_completeness", "dci_informativeness")
FAST_DISENTANGLEMENT_KEYS = ("mig", "sap", "sap_correlation", "dci_fast_disentanglement", "dci_fast_completeness",
                             "dci_fast_informativeness")


def disentanglement_for_runs(codes_by_run: Mapping[str, np.ndarray], sample: TestSample, *, fast: bool, seed: int,
                             jobs: int = 0) -> tuple[dict[str, dict[str, float]], dict]:
    """MIG, SAP, DCI of every run's codes against the scene factors (metrics.disentanglement_scores_many),
    split by group, with DCI's fits for all runs in one pool: `jobs` at once (0: one per available core).
    `fast` takes DCI's fast approximation (keys dci_fast_*, and sap_correlation); `seed` the splits.

    Returns (run -> {key: score}, the settings each key comes from); scores are nan when the sample
    cannot be scored (e.g. a single group).
    """
    from dcign_tf.metrics import disentanglement_scores_many  # Lazy: scikit-learn loads slowly.

    scene_values = np.stack([sample.values(factor) for factor in sample.scene_factors], axis=1)
    try:
        results = disentanglement_scores_many(codes_by_run, scene_values, groups=sample.group_ids, fast=fast,
                                              seed=seed, n_jobs=jobs or available_cores())
    except ValueError as error:
        keys = FAST_DISENTANGLEMENT_KEYS if fast else DISENTANGLEMENT_KEYS
        return ({label: dict.fromkeys(keys, math.nan) for label in codes_by_run},
                {"unscored": f"the disentanglement scores are undefined on this sample: {error}"})
    scores = {label: {key: float(value) for key, value in result["scores"].items()}
              for label, result in results.items()}
    return scores, next(iter(results.values()))["settings"]


def available_cores() -> int:
    """CPU cores this process may run on (the affinity mask, not the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # Not Linux.
        return max(1, os.cpu_count() or 1)
