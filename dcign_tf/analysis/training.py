"""The evaluation a training run logs every few thousand steps: `training_summary`, the same scores as
`dcign_tf.evaluate` on a few hundred test images of a live model, cheaply."""

from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import numpy as np

from dcign_tf import figures
from dcign_tf.analysis import report, scores, selection


def training_summary(model, test_batches: Iterable[Mapping], *, scored_factors: Sequence[str] | None = None,
                     max_images: int = 320, sweep_images: int = 4, sweep_steps: int = 7, pairs_per_group: int = 2
                     ) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Cheap evaluation for a training callback: equivariance, invariance, identity retention, the code's KL and
    sweeps of a live model.

    Args:
      model: a `DCIGN` (its current weights; nothing is changed).
      test_batches: input-pipeline batches (dicts with images [B, G, S, S, 1], active_factor [B],
        factor_values [B, G, F]; numpy or tensors), e.g. a list made once from
        `make_dataset(data_dir, "test", 4, shuffle=False, repeat=False, deterministic=True)`.
        Whole groups are read until `max_images` images are held.
      scored_factors: factors to score for equivariance (those with a numeric range); None takes every
        factor whose values are not all integers (identity ids are integers).
      max_images: images encoded and reconstructed (the cost: one encoder and one decoder pass over them).
      sweep_images, sweep_steps: the size of each sweep grid (sweep_images x (1 + sweep_steps) decodes
        per factor).
      pairs_per_group: novel-view pairs per group of each scored factor (drawn as `evaluate` draws them).

    Returns:
      (scalars, images):
        scalars {"equivariance/<factor>/pearson", "equivariance/<factor>/spearman",
                 "equivariance/<factor>/r2", "invariance/<factor>": float (nan when undefined),
                 "novel_view_mse/<factor>",
                 "identity_retention/<factor>", "identity_retention/reconstruction", "stranger_mse",
                 "mean_face_mse": as in metrics.json, but the stranger MSE comes from the identity
                   groups this small sample holds (4 of the 16 groups in the quickstart's 320 images,
                   760 pairs); left out when it holds none,
                 "kl/total", "kl/active_latents", "kl/by_factor/<factor>": nats},
        images {"sweep/<factor>": float32 [H, W] in [0, 1]}: inputs in the first column, then the
                factor's latent swept over its observed range.
    """
    sample = selection.sample_from_batches(test_batches, model.factor_names, scored_factors, max_images)
    pairs = selection.novel_view_pairs_by_factor(sample, pairs_per_group)
    references = scores.stranger_references(sample.images, selection.same_view_groups(sample))
    rows = selection.sweep_rows(sample, sweep_images)
    analysis = scores.analyse(model, sample, pairs, np.arange(sample.num_images), rows, sweep_steps,
                              references["stranger_mse"], calibrate=False)
    kl = analysis.metrics["kl"]
    summary = {key: analysis.metrics[key] for key in ("equivariance", "invariance", "novel_view_mse")}
    summary["kl"] = {"total": kl["total"], "active_latents": kl["active_latents"], "by_factor": kl["by_factor"]}
    if references["stranger_pairs"]:
        summary.update(identity_retention=analysis.metrics["identity_retention"],
                       stranger_mse=references["stranger_mse"], mean_face_mse=references["mean_face_mse"])
    images = {}
    for factor, (_, renders) in analysis.sweeps.items():
        cells = np.concatenate([sample.images[rows][:, None], renders], axis=1)
        images[f"sweep/{factor}"] = figures.labelled_grid(cells, min_cell=1).astype(np.float32) / 255.0
    return report.flatten(summary), images
