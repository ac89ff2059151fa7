r"""Evaluates a trained run: `python -m dcign_tf.evaluate --workdir=RUN [--baseline_workdir=RUN2]`.

Reads RUN/export (the exported model and model_info.json) and the test split of the run's dataset
(--data_dir, else the data_dir recorded in model_info.json, else the one in RUN/flags.txt), and writes

  RUN/eval/metrics.json            every number below (written atomically)
  RUN/eval/sweep_<factor>.png      Figs 4, 5a, 7: test images re-rendered with one latent swept
  RUN/eval/scatter_<factor>.png    Fig 6: inferred latent (posterior mean) against the true value
  RUN/eval/novel_view_<factor>.png Fig 5b: input, target, DC-IGN result (, baseline result)
  RUN/eval/events.out.tfevents.*   the same scalars and figures for TensorBoard, at the export's step
  RUN/export/model_info.json       its "calibration" field (--nocalibrate leaves the export alone)

and prints a table (one column per run). Nothing else is written; RUN2 is only read.

What is measured, on `--groups_per_factor` test groups of every factor (posterior means throughout):
  test_mse            per-pixel MSE on [0, 1] of decode(mean) against the image (--mse_images of them,
                      `test_mse_images`).
  equivariance.F      {pearson, spearman, r2} of F's latent against F's true value, over all the
                      evaluated test images (every factor's groups: each draws its scene at random).
  invariance.F        over F's groups, the within-group variance of the latents of the *other* factors
                      divided by their variance over all evaluated test images, averaged over those
                      latents (metrics.invariance); 0 is perfectly invariant, about 1 is not at all.
  novel_view_mse.F    over F's groups (F a factor with a numeric range): encode image i, replace F's
                      latent(s) by those encoded from image j of the same group, decode, MSE against
                      image j; --pairs_per_group random ordered pairs (i != j) per group. With
                      --baseline_workdir it is {"dcign": ..., "baseline": ...} on the same pairs.
  stranger_mse        a property of the data, reported once: the per-pixel MSE between two different
                      identities at the same view, over every pair within the test groups that show
                      G identities at one fixed view (the faces data's identity groups; checked, see
                      same_view_groups). `stranger_pairs` counts the pairs.
  mean_face_mse       the same data's reference point: each identity against the mean of the other
                      G - 1 identities at its view (`mean_face_retention` = its retention, ~0.47).
  identity_retention  .F = 1 - novel_view_mse.F / stranger_mse for every F with a range, and
                      .reconstruction = 1 - test_mse / stranger_mse (the test_mse images); 1 is the
                      exact target, 0 no closer than another person at that view. Paired like
                      novel_view_mse with --baseline_workdir.
  kl                  the code's KL to the prior in nats, averaged over the evaluated images:
                      total, per_latent [L], active_latents (latents above 0.1 nats) and by_factor.F
                      (summed over F's latents, see below).
  disentanglement     MIG, SAP, DCI (disentanglement, completeness, informativeness) of the codes
                      against the factors with a numeric range (identity is not scored), in
                      disentanglement_lib's reference settings; SAP's and DCI's train / test splits
                      take whole groups (metrics.disentanglement_scores). --fast_disentanglement
                      replaces the reference DCI by its fast approximation under other names
                      (dci_fast_*) and adds sap_correlation. `disentanglement_settings` records the
                      setting and the train / test points of each number.
  calibration.F       latent = slope * value + intercept fitted on the test images (dcign_tf.calibration),
                      with the latent index and the fit's r2; the render CLI reads it from the export.
  latents.F           the latent index used for F.
With --baseline_workdir the baseline's own numbers (same images, same pairs) are under "baseline". The
baseline must be a --mode=baseline run trained on the same data (equal dataset.json): anything else
is refused.

What identity retention can and cannot tell. Both terms are per-pixel MSEs against the same kind of
target (a test image at a random view of the ranges), and the pairs are drawn uniformly within groups
from --seed, identical for both runs, so neither the model nor the comparison picks easy pairs; with
a dataset made with --group_spread < 1 the two images of a pair are closer in the swapped factor, which
makes every run's task easier alike (the dataset.json records it). The stranger term is fixed by the
data, so no model can move it. Copying does not pay: returning the input image i unchanged scores
-0.94 / 0.26 / -1.08 for azimuth / elevation / light on data/faces_small's test split (elevation's
range is small, so its views differ little). Retention CAN be approached without any identity: under MSE the best identity-free guess is the mean face at
the target's view, and its error is exactly half the stranger MSE in expectation (within a group the
mean squared difference of two faces is twice their variance), so a renderer that draws only the
average face at the right pose scores ~0.5 (0.47 measured with G = 20, `mean_face_retention`). Read
retention against that line: 0.5 means no identity kept; only the part above 0.5 is the person.
Pixel MSE also rewards blur, so a high retention with blurred figures means the average was matched,
not the face; look at the figures too.

Which latent is "the latent" of a factor F:
  * a DC-IGN run whose layout gives F exactly one latent: that latent;
  * F has several latents, or the run is a baseline (its layout means nothing): the candidate latent
    (F's latents; for a baseline, every latent) with the highest within-group variance over F's test
    groups, averaged over the groups: the paper's rule (§4.1.1) for finding z_azimuth in a baseline.
"F's latents", the ones swapped for novel views and excluded from F's invariance, are F's layout
latents in a DC-IGN run; in a baseline, F's chosen latent, and for a factor without a numeric range
(identity) every latent not chosen for a factor with one.

For training: `dcign_tf.analysis.training.training_summary(model, test_batches)` gives the equivariance,
invariance, novel-view, identity-retention and KL scalars and sweep grids from a few hundred test images,
cheaply enough to call every few thousand steps.

Rerunning writes the eval directory's TensorBoard events again: one event file holds every evaluated
step once (`dcign_tf.analysis.report.write_tensorboard`), so a rerun replaces its points rather than
duplicating them.

This module is the command line only; the evaluation is `dcign_tf.analysis.evaluation.evaluate`.

Exit status: 0 on success; 2 with one line on stderr for bad flags, a missing run or data, a corrupt test
shard (named), a model that does not match its data, or a baseline that is not a baseline of this data.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Sequence

from absl import flags

from dcign_tf import calibration as calibration_lib
from dcign_tf import cli
from dcign_tf.analysis.evaluation import Settings, evaluate
from dcign_tf.analysis.selection import EvaluationError
from dcign_tf.data import records

PROGRAM = "dcign_tf.evaluate"


def define_flags(flag_values: flags.FlagValues) -> None:
    """The CLI's flags, defined into `flag_values` (cli.run's private FlagValues), never at import."""
    defaults = Settings()
    flags.DEFINE_string("workdir", None, "Run directory to evaluate (with export/ from dcign_tf.train).",
                        flag_values=flag_values)
    flags.DEFINE_string("baseline_workdir", None, "A baseline run (--mode=baseline) to score side by side on "
                        "the same test images and novel-view pairs; it is only read.", flag_values=flag_values)
    flags.DEFINE_string("data_dir", None, "Dataset to evaluate on (default: the run's own).", flag_values=flag_values)
    flags.DEFINE_integer("groups_per_factor", defaults.groups_per_factor,
                         "Test groups read per factor (0: all).", flag_values=flag_values)
    flags.DEFINE_integer("pairs_per_group", defaults.pairs_per_group, "Novel-view (i, j) pairs per group.",
                         flag_values=flag_values)
    flags.DEFINE_integer("sweep_images", defaults.sweep_images, "Test images per sweep figure.",
                         flag_values=flag_values)
    flags.DEFINE_integer("sweep_steps", defaults.sweep_steps, "Latent values per sweep.", flag_values=flag_values)
    flags.DEFINE_integer("mse_images", defaults.mse_images, "Test images reconstructed for test_mse (0: all read).",
                         flag_values=flag_values)
    flags.DEFINE_integer("figure_rows", defaults.figure_rows, "Pairs shown per novel-view figure.",
                         flag_values=flag_values)
    flags.DEFINE_bool("fast_disentanglement", defaults.fast_disentanglement,
                      "Score DCI with its fast approximation (keys dci_fast_*; seconds) instead of "
                      "disentanglement_lib's reference setting (keys dci_*; minutes), and add the squared-correlation "
                      "SAP (sap_correlation). MIG and the reference SAP are computed either way.",
                      flag_values=flag_values)
    flags.DEFINE_integer("disentanglement_jobs", defaults.disentanglement_jobs,
                         "DCI's boosted-tree fits (one per run and factor) run at once, in threads "
                         "(0: one per available core). The scores do not depend on it.", flag_values=flag_values)
    # Gone since the reference setting became the default; named here so that old commands get a clear line.
    flags.DEFINE_bool("full_disentanglement", None, "Removed: the reference setting is now the default "
                      "(--fast_disentanglement gives the approximation).", flag_values=flag_values)
    flags.DEFINE_integer("seed", defaults.seed, "Seed of the pairs, the MSE subset and the DCI / SAP splits.",
                         flag_values=flag_values)
    flags.DEFINE_bool("calibrate", defaults.calibrate, "Write the calibration into RUN/export/model_info.json "
                      "(--nocalibrate: leave the export untouched).", flag_values=flag_values)


def user_error_types() -> tuple[type, ...]:
    """Errors the user can fix, reported as one line; those of modules that load TF only once loaded."""
    types = [EvaluationError, records.DatasetError, calibration_lib.CalibrationError]
    for module, name in (("dcign_tf.export", "ExportError"), ("dcign_tf.config", "ConfigError"),
                         ("dcign_tf.latents", "LayoutError")):
        if module in sys.modules:
            types.append(getattr(sys.modules[module], name))
    return tuple(types)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the CLI on argv (argv[0] is the program name); returns the exit status."""
    def body(flag_values):
        if flag_values.full_disentanglement is not None:
            raise EvaluationError("--full_disentanglement is gone: disentanglement_lib's reference setting is now the "
                                  "default; --fast_disentanglement gives the fast approximation")
        settings = Settings(**{field.name: flag_values[field.name].value for field in dataclasses.fields(Settings)})
        evaluate(flag_values.workdir, flag_values.baseline_workdir, flag_values.data_dir, settings)
    return cli.run(argv, PROGRAM, __doc__, define_flags, body, user_error_types)


if __name__ == "__main__":
    sys.exit(main())
