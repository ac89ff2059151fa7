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

For training: `training_summary(model, test_batches)` gives the equivariance, invariance, novel-view,
identity-retention and KL scalars and sweep grids from a few hundred test images, cheaply enough to call
every few thousand steps.

Rerunning writes the eval directory's TensorBoard events again: one event file holds every evaluated
step once (`write_tensorboard`), so a rerun replaces its points rather than duplicating them.

Exit status: 0 on success; 2 with one line on stderr for bad flags, a missing run or data, a corrupt test
shard (named), a model that does not match its data, or a baseline that is not a baseline of this data.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import socket
import sys
import time
from typing import Iterable, Mapping, Sequence

import numpy as np
from absl import flags

from dcign_tf import calibration as calibration_lib
from dcign_tf import cli
from dcign_tf import figures
from dcign_tf.data import records

PROGRAM = "dcign_tf.evaluate"
EVAL_DIR = "eval"
METRICS_FILE = "metrics.json"
# Images per encoder / decoder call: large enough to use the cores, small enough for memory at 150x150.
INFERENCE_BATCH = 128
# Labels of the two runs in side-by-side results.
MAIN_LABEL, BASELINE_LABEL = "dcign", "baseline"


class EvaluationError(ValueError):
    """A run, data directory or setting that cannot be evaluated; one line saying what to fix."""


@dataclasses.dataclass(frozen=True)
class Settings:
    """Sizes of an evaluation. The reference DCI dominates the time: 35 CPU-seconds per scene factor with
    the defaults (1,280 images of data/faces_small), 120 on its whole test split (--groups_per_factor=0,
    4,000 images: 6 CPU-minutes per run), spread over the cores (--disentanglement_jobs)."""

    groups_per_factor: int = 16  # test groups read per factor (0: all)
    pairs_per_group: int = 2  # (i, j) novel-view pairs per group
    sweep_images: int = 8  # test images in each sweep figure
    sweep_steps: int = 9  # latent values per sweep
    mse_images: int = 512  # test images reconstructed for test_mse (0: all evaluated)
    figure_rows: int = 6  # pairs shown in each novel-view figure
    fast_disentanglement: bool = False  # DCI's fast approximation (dci_fast_*) instead of the reference (dci_*)
    disentanglement_jobs: int = 0  # boosted-tree fits run at once (0: one per available core)
    seed: int = 0  # pairs, MSE subset, SAP / DCI splits
    calibrate: bool = True  # write the calibration into RUN/export/model_info.json

    def __post_init__(self):
        for name in ("pairs_per_group", "sweep_images", "sweep_steps", "figure_rows"):
            if getattr(self, name) < 1:
                raise EvaluationError(f"--{name} must be at least 1, got {getattr(self, name)}")
        for name in ("groups_per_factor", "mse_images", "disentanglement_jobs"):
            if getattr(self, name) < 0:
                raise EvaluationError(f"--{name} must be 0 (all) or positive, got {getattr(self, name)}")
        if self.sweep_steps < 2:
            raise EvaluationError(f"--sweep_steps must be at least 2, got {self.sweep_steps}")


# ---------------------------------------------------------------------------------------------------
# Runs and their data (no TensorFlow needed: bad input is reported before it loads).


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """A run directory: its export and the facts in model_info.json."""

    workdir: str
    export_dir: str
    info: Mapping

    @property
    def mode(self) -> str:
        return str(self.info.get("mode", "dcign"))

    @property
    def step(self) -> int:
        return int(self.info.get("step") or 0)


def resolve_run(workdir: str, flag_name: str = "workdir") -> RunSpec:
    """Finds RUN/export and reads its model_info.json; EvaluationError naming what is missing."""
    if not workdir:
        raise EvaluationError(f"--{flag_name} is required")
    if not os.path.isdir(workdir):
        raise EvaluationError(f"--{flag_name}={workdir}: no such run directory")
    export_dir = os.path.join(workdir, "export")
    keras_file = os.path.join(export_dir, "dcign.keras")
    info_file = os.path.join(export_dir, "model_info.json")
    if not os.path.exists(keras_file):
        raise EvaluationError(f"{keras_file} is missing: {workdir} has no exported model; train the run to "
                              "completion first (python -m dcign_tf.train --workdir=... ), which exports it")
    try:
        with open(info_file, encoding="utf-8") as file:
            info = json.load(file)
    except FileNotFoundError:
        raise EvaluationError(f"{info_file} is missing; re-export the run") from None
    except (OSError, json.JSONDecodeError) as error:
        raise EvaluationError(f"{info_file} is unreadable ({error}); re-export the run") from None
    for key in ("factors", "image_size", "num_latents"):
        if key not in info:
            raise EvaluationError(f"{info_file} has no {key!r}; re-export the run with this dcign_tf")
    return RunSpec(workdir=workdir, export_dir=export_dir, info=info)


def recorded_data_dirs(run: RunSpec) -> list[str]:
    """The data_dir(s) the run records having been trained on: model_info.json's, then flags.txt's."""
    candidates = [run.info.get("data_dir")]
    flags_path = os.path.join(run.workdir, "flags.txt")
    if os.path.exists(flags_path):
        with open(flags_path, encoding="utf-8") as file:
            for line in file:
                if line.startswith("--data_dir="):
                    candidates.append(line.strip().split("=", 1)[1])
    return [candidate for candidate in candidates if candidate]


def resolve_data_dir(run: RunSpec, data_dir: str | None) -> str:
    """--data_dir, else model_info.json's data_dir, else flags.txt's; EvaluationError if none is there."""
    if data_dir:
        return data_dir
    candidates = recorded_data_dirs(run)
    for candidate in candidates:
        if os.path.exists(records.dataset_json_path(candidate)):
            return candidate
    tried = ", ".join(candidates) or "none recorded"
    raise EvaluationError(f"cannot find the dataset of {run.workdir} (tried {tried}); pass --data_dir=DIR")


def check_compatible(run: RunSpec, dataset: records.DatasetInfo, data_dir: str) -> None:
    """EvaluationError unless the export was made for data like `dataset` (image size, factors, units)."""
    json_path = records.dataset_json_path(data_dir)
    if int(run.info["image_size"]) != dataset.image_size:
        raise EvaluationError(
            f"the model in {run.export_dir} takes {run.info['image_size']}x{run.info['image_size']} images but "
            f"{json_path} has {dataset.image_size}x{dataset.image_size}; pass the run's own --data_dir")
    model_factors = {f["name"]: f for f in run.info["factors"]}
    if set(model_factors) != set(dataset.factor_names):
        raise EvaluationError(
            f"the model in {run.export_dir} has factors {sorted(model_factors)} but {json_path} has "
            f"{sorted(dataset.factor_names)}; pass the run's own --data_dir")
    for factor in dataset.factors:
        theirs = model_factors[factor.name]
        if (theirs.get("range") is None) != (factor.range is None) or theirs.get("units") != factor.units:
            raise EvaluationError(
                f"factor {factor.name!r} is {theirs.get('units')} with range {theirs.get('range')} in "
                f"{run.export_dir} but {factor.units} with range {factor.range and list(factor.range)} in "
                f"{json_path}; pass the run's own --data_dir")
    if not any(dataset.splits.get("test", {}).values()):
        raise EvaluationError(f"{json_path} has no test groups to evaluate on")


def training_dataset(run: RunSpec) -> tuple[str | None, records.DatasetInfo | None]:
    """(the absolute data_dir the run was trained on, its dataset.json) — the first recorded one that can be
    read; (the first recorded path, None) when none can; (None, None) when none is recorded."""
    candidates = recorded_data_dirs(run)
    for candidate in candidates:
        try:
            return os.path.abspath(candidate), records.DatasetInfo.load(candidate)
        except records.DatasetError:
            continue
    return (os.path.abspath(candidates[0]) if candidates else None), None


def check_baseline(run: RunSpec, baseline: RunSpec) -> None:
    """EvaluationError unless `baseline` is a baseline-mode run trained on the same data as `run`.

    "The same data": both runs' training datasets have equal dataset.json contents (image size, factors,
    splits, shards and the generator's settings, seed included), wherever they are stored. When either
    dataset can no longer be read (moved, or on another machine), the recorded paths must agree.
    """
    if baseline.mode != "baseline":
        raise EvaluationError(f"--baseline_workdir={baseline.workdir} is a {baseline.mode}-mode run; pass a run "
                              "trained with --mode=baseline (the plain SGVB comparison)")
    paths, infos = {}, {}
    for label, spec in (("workdir", run), ("baseline_workdir", baseline)):
        paths[label], infos[label] = training_dataset(spec)
    if infos["workdir"] is not None and infos["baseline_workdir"] is not None:
        differences = infos["workdir"].differences(infos["baseline_workdir"])
        if differences:
            raise EvaluationError(
                f"--baseline_workdir={baseline.workdir} was trained on other data than --workdir={run.workdir} "
                f"({paths['baseline_workdir']} vs {paths['workdir']}: {'; '.join(differences)[:300]}); "
                "pass a baseline trained on the same dataset")
    elif paths["workdir"] != paths["baseline_workdir"]:
        raise EvaluationError(
            f"cannot confirm that --baseline_workdir={baseline.workdir} was trained on the same data as "
            f"--workdir={run.workdir}: they record {paths['baseline_workdir']} and {paths['workdir']}, and "
            "not both can be read; pass a baseline trained on the same dataset")


# ---------------------------------------------------------------------------------------------------
# The evaluated test images.


@dataclasses.dataclass
class TestSample:
    """Test images held in memory, with their groups.

    images: [N, S, S, 1] float32 in [0, 1].
    factor_values: [N, F] float32, columns in `factor_names` order (radians; identity as its id).
    factor_names: the data's factors.
    scene_factors: the factors with a numeric range, which are scored (azimuth, elevation, light).
    groups: factor -> int [g, G] row indices of the groups in which that factor varies.
    """

    images: np.ndarray
    factor_values: np.ndarray
    factor_names: tuple[str, ...]
    scene_factors: tuple[str, ...]
    groups: dict[str, np.ndarray]
    units: dict[str, str] = dataclasses.field(default_factory=dict)  # factor -> units, for axis labels

    def values(self, factor: str) -> np.ndarray:
        """[N] the true value of `factor` for every image."""
        return self.factor_values[:, self.factor_names.index(factor)]

    @property
    def num_images(self) -> int:
        return int(self.images.shape[0])

    @property
    def group_ids(self) -> np.ndarray:
        """[N] int: the group each image came from (groups numbered factor by factor); SAP / DCI split by it."""
        ids = np.full(self.num_images, -1, np.int64)
        first = 0
        for rows in self.groups.values():
            ids[rows] = first + np.arange(len(rows))[:, None]
            first += len(rows)
        return ids


def sample_from_groups(group_images: Sequence[np.ndarray], group_values: Sequence[np.ndarray],
                       group_factors: Sequence[str], factor_names: Sequence[str],
                       scene_factors: Sequence[str]) -> TestSample:
    """Assembles a TestSample from whole groups: images [G, S, S, 1], values [G, F], active factor name."""
    if not group_images:
        raise EvaluationError("no test groups to evaluate")
    sizes = {len(images) for images in group_images}
    if len(sizes) != 1:
        raise EvaluationError(f"groups of different sizes {sorted(sizes)}")
    group_size = sizes.pop()
    rows: dict[str, list[np.ndarray]] = {}
    for index, factor in enumerate(group_factors):
        rows.setdefault(factor, []).append(np.arange(index * group_size, (index + 1) * group_size))
    return TestSample(images=np.concatenate(group_images).astype(np.float32),
                      factor_values=np.concatenate(group_values).astype(np.float32),
                      factor_names=tuple(factor_names), scene_factors=tuple(scene_factors),
                      groups={factor: np.stack(indices) for factor, indices in rows.items()})


def load_test_sample(data_dir: str, dataset: records.DatasetInfo, groups_per_factor: int) -> TestSample:
    """The first `groups_per_factor` test groups of every factor (0: all), in file order."""
    import tensorflow as tf

    from dcign_tf.data import input_pipeline

    input_pipeline.validate(data_dir, "test")
    group_images, group_values, group_factors = [], [], []
    for factor in dataset.factor_names:
        available = dataset.splits["test"].get(factor, 0)
        wanted = available if groups_per_factor == 0 else min(available, groups_per_factor)
        if wanted == 0:
            continue
        batches = input_pipeline.make_dataset(data_dir, "test", min(wanted, 32), factors=[factor], shuffle=False,
                                              repeat=False, deterministic=True)
        taken = 0
        try:
            for batch in batches:
                for images, values in zip(batch["images"].numpy(), batch["factor_values"].numpy()):
                    if taken < wanted:
                        group_images.append(images)
                        group_values.append(values)
                        group_factors.append(factor)
                        taken += 1
                if taken == wanted:
                    break
        except (tf.errors.OpError, UnicodeDecodeError) as error:  # UnicodeDecodeError: TF quoting a binary record
            raise unreadable_test_data(data_dir, factor, error) from None
    scene = [factor.name for factor in dataset.factors if factor.range is not None]
    sample = sample_from_groups(group_images, group_values, group_factors, dataset.factor_names, scene)
    sample.units = {factor.name: factor.units for factor in dataset.factors}
    return sample


def unreadable_test_data(data_dir: str, factor: str, error: Exception) -> Exception:
    """The error to raise when reading `factor`'s test groups failed with `error`: one naming the bad shard file.

    The interleaved pipeline's error does not say which file failed, so the factor's test shards are
    read again one by one by input_pipeline.check_shards, decoding every image (file, record and image
    level), which names the file and record.
    """
    from dcign_tf.data import input_pipeline

    try:
        input_pipeline.check_shards(data_dir, "test", [factor], decode=True)
    except records.DatasetError as named:
        return named
    message = str(getattr(error, "message", error)).strip()
    return EvaluationError(f"cannot read the test groups of factor {factor!r} in {data_dir} "
                           f"({message.splitlines()[0] if message else type(error).__name__}); regenerate the dataset")


def sample_from_batches(batches: Iterable[Mapping], factor_names: Sequence[str],
                        scene_factors: Sequence[str] | None = None, max_images: int = 320) -> TestSample:
    """A TestSample from input-pipeline batches (images [B, G, S, S, 1], active_factor [B], factor_values
    [B, G, F]), stopping once `max_images` images are held (whole groups only).

    scene_factors: the factors to score; None takes every factor whose values are not all integers
    (identity ids are integers, angles in radians are not).
    """
    group_images, group_values, group_factors = [], [], []
    held = 0
    for batch in batches:
        images = np.asarray(batch["images"])
        values = np.asarray(batch["factor_values"])
        active = np.asarray(batch["active_factor"]).reshape(-1)
        for index in range(images.shape[0]):
            if held and held + images.shape[1] > max_images:
                break
            group_images.append(images[index])
            group_values.append(values[index])
            group_factors.append(factor_names[int(active[index])])
            held += images.shape[1]
        if held + images.shape[1] > max_images:
            break
    if scene_factors is None:
        all_values = np.concatenate(group_values) if group_values else np.zeros((0, len(factor_names)))
        scene_factors = [name for column, name in enumerate(factor_names)
                         if np.any(all_values[:, column] != np.round(all_values[:, column]))]
    return sample_from_groups(group_images, group_values, group_factors, factor_names, scene_factors)


# ---------------------------------------------------------------------------------------------------
# Latent choice and the metrics, on codes (pure numpy: tested on constructed latents).


def within_group_variance(codes: np.ndarray, group_rows: np.ndarray) -> np.ndarray:
    """[L] the variance (ddof=1) of each latent within a group, averaged over groups.

    codes: [N, L]; group_rows: [g, G] row indices of g groups of G images.
    """
    grouped = np.asarray(codes, np.float64)[np.asarray(group_rows)]  # [g, G, L]
    return grouped.var(axis=1, ddof=1).mean(axis=0)


def choose_latents(codes: np.ndarray, groups: Mapping[str, np.ndarray], layout: Mapping[str, Sequence[int]],
                   mode: str) -> dict[str, int]:
    """Factor -> the latent that stands for it (see the module docstring for the rule).

    codes: [N, L] posterior means; groups: factor -> [g, G] rows of its groups;
    layout: factor -> its latent indices (the model's LatentLayout); mode: "dcign" or "baseline".
    A factor with several candidates and no groups gets no entry.
    """
    num_latents = np.asarray(codes).shape[1]
    chosen = {}
    for factor, indices in layout.items():
        candidates = list(indices) if mode == "dcign" else list(range(num_latents))
        if len(candidates) == 1:
            chosen[factor] = int(candidates[0])
        elif factor in groups:
            variance = within_group_variance(codes, groups[factor])[candidates]
            chosen[factor] = int(candidates[int(np.argmax(variance))])
    return chosen


def own_latents(layout: Mapping[str, Sequence[int]], mode: str, chosen: Mapping[str, int],
                scene_factors: Sequence[str], num_latents: int) -> dict[str, tuple[int, ...]]:
    """Factor -> the latents that belong to it: swapped in novel views, excluded from its invariance.

    DC-IGN: the layout's latents. Baseline: a scene factor's chosen latent; any other factor
    (identity) gets every latent not chosen for a scene factor.
    """
    if mode == "dcign":
        return {factor: tuple(int(i) for i in indices) for factor, indices in layout.items()}
    scene_latents = {chosen[factor] for factor in scene_factors if factor in chosen}
    return {factor: ((chosen[factor],) if factor in scene_factors and factor in chosen
                     else tuple(i for i in range(num_latents) if i not in scene_latents))
            for factor in layout}


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


def novel_view_pairs(group_rows: np.ndarray, pairs_per_group: int, seed: int) -> np.ndarray:
    """[P, 2] (input row i, target row j), i != j from the same group, `pairs_per_group` per group
    (fewer when a group has fewer ordered pairs), drawn without replacement from `seed`."""
    group_rows = np.asarray(group_rows)
    group_size = group_rows.shape[1]
    ordered = np.array([(a, b) for a in range(group_size) for b in range(group_size) if a != b])
    rng = np.random.default_rng(seed)
    pairs = []
    for rows in group_rows:
        picked = ordered[rng.choice(len(ordered), min(pairs_per_group, len(ordered)), replace=False)]
        pairs.append(rows[picked])
    return np.concatenate(pairs).astype(np.int64)


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


def same_view_groups(sample: TestSample) -> np.ndarray:
    """[g, G] rows of the groups that show G different objects at one view: groups of a factor without a
    numeric range (identity) in which every scene factor (pose, light) is the same for all G images.

    In the faces data these are the identity groups: make_faces draws one scene per group and, for an
    identity group, G different faces in it. Groups are checked, not assumed, so other data cannot
    pass a group whose view changes. Empty [0, 0] when there is none.
    """
    columns = [sample.factor_names.index(factor) for factor in sample.scene_factors]
    found = []
    for factor, rows in sample.groups.items():
        if factor in sample.scene_factors:
            continue
        for group in rows:
            scene = sample.factor_values[group][:, columns]
            if np.all(scene == scene[:1]):
                found.append(group)
    return np.stack(found) if found else np.zeros((0, 0), np.int64)


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


# A latent "carries information" above this many nats of KL (averaged over test images).
ACTIVE_LATENT_NATS = 0.1


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


def sweep_rows(sample: TestSample, count: int) -> np.ndarray:
    """`count` test images for sweep figures: the first image of each group, taking the factors' groups in turn."""
    per_factor = [rows[:, 0] for rows in sample.groups.values()]
    ordered = [rows[index] for index in range(max(len(rows) for rows in per_factor))
               for rows in per_factor if index < len(rows)]
    return np.array(ordered[:count], np.int64)


# ---------------------------------------------------------------------------------------------------
# Running a model.


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


def check_model(model, sample: TestSample, where: str) -> None:
    """EvaluationError unless the loaded model takes the data's images and names the data's factors."""
    if model.config.image_size != sample.images.shape[1]:
        raise EvaluationError(f"the model in {where} takes {model.config.image_size}x{model.config.image_size} "
                              f"images but the data has {sample.images.shape[1]}x{sample.images.shape[1]}")
    if set(model.layout.factor_latents) != set(sample.factor_names):
        raise EvaluationError(f"the model in {where} has factors {sorted(model.layout.factor_latents)} "
                              f"but the data has {sorted(sample.factor_names)}")


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


def analyse(model, sample: TestSample, settings: Settings, pairs: Mapping[str, np.ndarray],
            mse_rows: np.ndarray, figure_rows: np.ndarray, stranger_mse: float = math.nan) -> Analysis:
    """Every metric of one model on `sample` but the disentanglement scores (`disentanglement_for_runs`
    scores all runs at once), with the novel-view `pairs` and MSE rows shared across runs and the data's
    `stranger_mse` (`stranger_references`) as the scale of identity retention."""
    codes, log_variances = encode_posterior(model, sample.images)
    decode = decoder_of(model)
    layout = {factor: tuple(indices) for factor, indices in model.layout.factor_latents.items()}
    chosen = choose_latents(codes, sample.groups, layout, model.mode)
    own = own_latents(layout, model.mode, chosen, sample.scene_factors, codes.shape[1])

    reconstructions = decode(codes[mse_rows])
    test_mse = float(np.mean(np.square(reconstructions - sample.images[mse_rows])))
    novel_mse, novel_views = {}, {}
    for factor, factor_pairs in pairs.items():
        novel_mse[factor], novel_views[factor] = novel_view(decode, codes, sample.images, factor_pairs, own[factor])
    retention = {factor: identity_retention(mse, stranger_mse) for factor, mse in novel_mse.items()}
    retention["reconstruction"] = identity_retention(test_mse, stranger_mse)
    try:
        calibration = calibration_lib.fit_calibration(
            {factor: sample.values(factor) for factor in sample.scene_factors if factor in chosen}, codes, chosen)
    except calibration_lib.CalibrationError as error:
        raise EvaluationError(f"cannot calibrate: {error}") from None
    sweeps = {}
    for factor, latent in chosen.items():
        values = sweep_values(codes, latent, settings.sweep_steps)
        sweeps[factor] = (values, sweep(decode, codes[figure_rows], latent, values))
    metrics = {
        "mode": model.mode,
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


def disentanglement_for_runs(codes_by_run: Mapping[str, np.ndarray], sample: TestSample,
                             settings: Settings) -> tuple[dict[str, dict[str, float]], dict]:
    """MIG, SAP, DCI of every run's codes against the scene factors (metrics.disentanglement_scores_many),
    split by group, with DCI's fits for all runs in one pool.

    Returns (run -> {key: score}, the settings each key comes from); scores are nan when the sample
    cannot be scored (e.g. a single group).
    """
    from dcign_tf.metrics import disentanglement_scores_many  # Lazy: scikit-learn loads slowly.

    scene_values = np.stack([sample.values(factor) for factor in sample.scene_factors], axis=1)
    jobs = settings.disentanglement_jobs or available_cores()
    try:
        results = disentanglement_scores_many(codes_by_run, scene_values, groups=sample.group_ids,
                                              fast=settings.fast_disentanglement, seed=settings.seed, n_jobs=jobs)
    except ValueError as error:
        keys = FAST_DISENTANGLEMENT_KEYS if settings.fast_disentanglement else DISENTANGLEMENT_KEYS
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


# ---------------------------------------------------------------------------------------------------
# Figures.


def sweep_figure(sample: TestSample, rows: np.ndarray, values: np.ndarray, renders: np.ndarray) -> np.ndarray:
    """Inputs (first column) and their sweeps; column labels are the latent values. uint8 [H, W]."""
    cells = np.concatenate([sample.images[rows][:, None], renders], axis=1)
    return figures.labelled_grid(cells, ["input"] + [f"{value:.3g}" for value in values])


def scatter_figure(factor: str, sample: TestSample, analyses: Mapping[str, Analysis]) -> np.ndarray:
    """Fig 6: one panel per run, the chosen latent against the true value, with the calibration line."""
    panels = []
    unit = sample.units.get(factor, "dataset units")
    for label, analysis in analyses.items():
        latent = analysis.chosen[factor]
        scores = analysis.metrics["equivariance"][factor]
        line = analysis.calibration.get(factor)
        panels.append(figures.scatter_panel(
            sample.values(factor), analysis.codes[:, latent],
            f"{label} {factor}: pearson {scores['pearson']:.2f}, spearman {scores['spearman']:.2f}",
            f"true {factor} ({unit})", f"latent z{latent} (posterior mean)",
            line=(line["slope"], line["intercept"]) if line else None))
    return figures.side_by_side(panels)


def novel_view_figure(sample: TestSample, pairs: np.ndarray, analyses: Mapping[str, Analysis], factor: str,
                      rows: int) -> np.ndarray:
    """Fig 5b: per pair (one per group, the first `rows` groups) input, target and each run's render."""
    pairs_per_group = max(1, len(pairs) // len(sample.groups[factor]))
    shown = np.arange(0, len(pairs), pairs_per_group)[:rows]
    columns = [sample.images[pairs[shown, 0]], sample.images[pairs[shown, 1]]]
    columns += [analysis.novel_views[factor][shown] for analysis in analyses.values()]
    labels = ["input", "target"] + [("DC-IGN" if label == MAIN_LABEL else label) for label in analyses]
    return figures.labelled_grid(np.stack(columns, axis=1), labels)


# ---------------------------------------------------------------------------------------------------
# Output.


def _finite_or_none(value):
    """JSON has no NaN: non-finite numbers are written as null."""
    if isinstance(value, Mapping):
        return {key: _finite_or_none(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(item) for item in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def flatten(metrics: Mapping, prefix: str = "") -> dict[str, float]:
    """Nested numeric metrics -> {"a/b/c": float}; non-numeric entries are left out."""
    flat = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, name + "/"))
        elif isinstance(value, (int, float, np.number)) and not isinstance(value, bool):
            flat[name] = float(value)
    return flat


# Scalars shown in the table and TensorBoard, in this order (calibration and latents are facts, not scores).
SCORED_SECTIONS = ("test_mse", "identity_retention", "stranger_mse", "mean_face_mse", "equivariance", "invariance",
                   "novel_view_mse", "disentanglement", "kl")


def scored(metrics: Mapping) -> dict[str, float]:
    return flatten({key: metrics[key] for key in SCORED_SECTIONS if key in metrics})


EVENTS_PATTERN = "tfevents"  # TensorBoard reads every file whose name contains it
STAGING_PREFIX = ".events.tmp-"  # eval/.events.tmp-PID: where a new event file is written before it replaces the old
STALE_STAGING_SECONDS = 3600


def write_tensorboard(logdir: str, step: int, scalars: Mapping[str, float], images: Mapping[str, np.ndarray]) -> None:
    """Scalars and uint8 figures ([H, W] or [H, W, 3]) as TF2 summaries at `step`, replacing earlier evaluations'.

    logdir ends up with exactly one event file: the events of earlier evaluations at *other* steps
    (e.g. of the export before training was extended), then this evaluation's, in step order. A rerun
    at the same step therefore replaces its points instead of adding a second set, which TensorBoard
    would draw as duplicates. The file is built in logdir/.events.tmp-PID and renamed into place
    before the old files are removed, so a kill at any moment leaves the old events or the new ones
    (or both, which the next evaluation merges); staging directories older than an hour are removed.
    """
    import tensorflow as tf
    from tensorflow.core.util import event_pb2

    os.makedirs(logdir, exist_ok=True)
    remove_stale_staging(logdir)
    staging = os.path.join(logdir, f"{STAGING_PREFIX}{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    writer = tf.summary.create_file_writer(staging)
    with writer.as_default():
        for tag, value in scalars.items():
            if math.isfinite(value):
                tf.summary.scalar(tag, value, step=step)
        for tag, image in images.items():
            image = np.asarray(image)
            if image.ndim == 2:
                image = image[..., None]
            tf.summary.image(tag, image[None], step=step, max_outputs=1)
    writer.flush()
    writer.close()

    old_files = sorted(os.path.join(logdir, name) for name in os.listdir(logdir) if EVENTS_PATTERN in name)
    new_files = [os.path.join(staging, name) for name in os.listdir(staging) if EVENTS_PATTERN in name]
    kept = {}  # (step, tags) -> serialized event; later files win, so a repeated (step, tags) appears once
    for path in old_files + new_files:
        for record in tf.data.TFRecordDataset(path).as_numpy_iterator():
            event = event_pb2.Event.FromString(record)
            tags = tuple(value.tag for value in event.summary.value)
            if not tags or (path in old_files and event.step == step):
                continue  # file_version headers are rewritten once; this step's old points are replaced
            kept[(event.step, tags)] = (event.wall_time, record)
    merged = os.path.join(staging, f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}"
                                   ".evaluate.v2")
    with tf.io.TFRecordWriter(merged) as out:
        out.write(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2").SerializeToString())
        for _, (_, record) in sorted(kept.items(), key=lambda item: (item[0][0], item[1][0])):
            out.write(record)
    target = os.path.join(logdir, os.path.basename(merged))
    os.replace(merged, target)
    for path in old_files:
        if path != target:
            os.remove(path)
    shutil.rmtree(staging, ignore_errors=True)


def remove_stale_staging(logdir: str) -> None:
    """Removes logdir/.events.tmp-* directories left by killed evaluations: those older than STALE_STAGING_SECONDS
    (an evaluation writes its events in seconds; a fresh one may belong to an evaluation running right now)."""
    for name in os.listdir(logdir):
        path = os.path.join(logdir, name)
        try:
            if name.startswith(STAGING_PREFIX) and time.time() - os.path.getmtime(path) > STALE_STAGING_SECONDS:
                shutil.rmtree(path, ignore_errors=True)
        except FileNotFoundError:  # Removed by its own evaluation meanwhile.
            continue


def format_table(columns: Mapping[str, Mapping[str, float]]) -> str:
    """Rows: the metrics of the first column (plus any only the others have); one column per run."""
    names = list(next(iter(columns.values())))
    for values in list(columns.values())[1:]:
        names += [name for name in values if name not in names]
    width = max(len(name) for name in names) + 2
    lines = ["metric".ljust(width) + "".join(label.rjust(12) for label in columns)]
    for name in names:
        cells = []
        for values in columns.values():
            value = values.get(name)
            cells.append(("-" if value is None or not math.isfinite(value) else f"{value:.4g}").rjust(12))
        lines.append(name.ljust(width) + "".join(cells))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------
# The whole evaluation.


def evaluate(workdir: str, baseline_workdir: str | None = None, data_dir: str | None = None,
             settings: Settings = Settings(), log=print) -> dict:
    """Evaluates RUN (and a baseline on the same images and pairs); writes RUN/eval; returns metrics.json's dict."""
    started = time.perf_counter()
    run = resolve_run(workdir)
    baseline = resolve_run(baseline_workdir, "baseline_workdir") if baseline_workdir else None
    if baseline and os.path.realpath(baseline.workdir) == os.path.realpath(run.workdir):
        raise EvaluationError("--baseline_workdir is the same run as --workdir")
    data_dir = resolve_data_dir(run, data_dir)
    dataset = records.DatasetInfo.load(data_dir)
    check_compatible(run, dataset, data_dir)
    if baseline:
        check_baseline(run, baseline)
        check_compatible(baseline, dataset, data_dir)
        if run.mode != "dcign":
            log(f"note: comparing a {run.mode} run (column {MAIN_LABEL!r}) with a {baseline.mode} run "
                f"(column {BASELINE_LABEL!r})")

    from dcign_tf import export as export_lib  # TensorFlow loads here, after the input checks.

    sample = load_test_sample(data_dir, dataset, settings.groups_per_factor)
    models = {MAIN_LABEL: export_lib.load_model(run.export_dir)[0]}
    if baseline:
        models[BASELINE_LABEL] = export_lib.load_model(baseline.export_dir)[0]
    for label, model in models.items():
        check_model(model, sample, (run if label == MAIN_LABEL else baseline).export_dir)
    loaded = time.perf_counter()

    # The same pairs, MSE images and figure images for every run.
    pairs = {factor: novel_view_pairs(sample.groups[factor], settings.pairs_per_group,
                                      settings.seed * 1000 + sample.factor_names.index(factor))
             for factor in sample.scene_factors if factor in sample.groups}
    rng = np.random.default_rng(settings.seed)
    mse_count = sample.num_images if settings.mse_images == 0 else min(settings.mse_images, sample.num_images)
    mse_rows = np.sort(rng.choice(sample.num_images, mse_count, replace=False))
    figure_rows = sweep_rows(sample, settings.sweep_images)
    references = stranger_references(sample.images, same_view_groups(sample))
    analyses, analyse_seconds = {}, {}
    for label, model in models.items():
        clock = time.perf_counter()
        analyses[label] = analyse(model, sample, settings, pairs, mse_rows, figure_rows, references["stranger_mse"])
        analyse_seconds[label] = round(time.perf_counter() - clock, 2)
    clock = time.perf_counter()
    scores, disentanglement_settings = disentanglement_for_runs(
        {label: analysis.codes for label, analysis in analyses.items()}, sample, settings)
    for label, analysis in analyses.items():
        analysis.metrics["disentanglement"] = scores[label]
    disentanglement_seconds = round(time.perf_counter() - clock, 2)
    primary = analyses[MAIN_LABEL]

    metrics = dict(primary.metrics)
    if baseline:
        for section in ("novel_view_mse", "identity_retention"):
            metrics[section] = {key: {label: analysis.metrics[section][key] for label, analysis in analyses.items()}
                                for key in primary.metrics[section]}
        metrics["baseline"] = {**analyses[BASELINE_LABEL].metrics, "workdir": os.path.abspath(baseline.workdir),
                               "step": baseline.step}
    metrics.update({
        "workdir": os.path.abspath(run.workdir),
        "step": run.step,
        "data_dir": os.path.abspath(data_dir),
        "test_images": sample.num_images,
        "test_groups": {factor: int(len(rows)) for factor, rows in sample.groups.items()},
        "novel_view_pairs": {factor: int(len(factor_pairs)) for factor, factor_pairs in pairs.items()},
        "test_mse_images": int(mse_count),
        **references,
        "disentanglement_settings": disentanglement_settings,
        "settings": dataclasses.asdict(settings),
    })

    eval_dir = os.path.join(run.workdir, EVAL_DIR)
    os.makedirs(eval_dir, exist_ok=True)
    images = {}
    for factor, (values, renders) in primary.sweeps.items():
        images[f"sweep_{factor}"] = sweep_figure(sample, figure_rows, values, renders)
    if baseline:
        for factor, (values, renders) in analyses[BASELINE_LABEL].sweeps.items():
            images[f"baseline_sweep_{factor}"] = sweep_figure(sample, figure_rows, values, renders)
    for factor in sample.scene_factors:
        if all(factor in analysis.chosen for analysis in analyses.values()):
            images[f"scatter_{factor}"] = scatter_figure(factor, sample, analyses)
    for factor, factor_pairs in pairs.items():
        images[f"novel_view_{factor}"] = novel_view_figure(sample, factor_pairs, analyses, factor,
                                                           settings.figure_rows)
    for name, image in images.items():
        figures.save_png(os.path.join(eval_dir, f"{name}.png"), image)

    scalars = scored(metrics)
    if baseline:
        scalars.update({f"baseline/{name}": value for name, value in scored(metrics["baseline"]).items()})
    write_tensorboard(eval_dir, run.step, scalars, {f"figures/{name}": image for name, image in images.items()})

    if settings.calibrate:
        calibration_lib.save(run.export_dir, primary.calibration)
    metrics["calibration_saved"] = bool(settings.calibrate)
    metrics["seconds"] = {"load": round(loaded - started, 2), "analyse": analyse_seconds,
                          "disentanglement": disentanglement_seconds,
                          "total": round(time.perf_counter() - started, 2)}
    from dcign_tf.export import write_json_atomic

    write_json_atomic(os.path.join(eval_dir, METRICS_FILE), _finite_or_none(metrics))

    columns = {MAIN_LABEL: scored(primary.metrics)}
    if baseline:
        columns[BASELINE_LABEL] = scored(analyses[BASELINE_LABEL].metrics)
    log(format_table(columns))
    log(f"the data: stranger_mse {references['stranger_mse']:.4g} (another identity at the same view, "
        f"{references['stranger_pairs']} pairs), mean_face_mse {references['mean_face_mse']:.4g} (identity "
        f"retention {references['mean_face_retention']:.3f} with no identity at all)")
    log("latents used: " + ", ".join(
        f"{label}: " + " ".join(f"{factor}=z{latent}" for factor, latent in analysis.chosen.items())
        for label, analysis in analyses.items()))
    if settings.calibrate:
        log(f"calibration written to {os.path.join(run.export_dir, 'model_info.json')}: " + "; ".join(
            f"{factor} z{line['latent']} = {line['slope']:.3g} * value + {line['intercept']:.3g} "
            f"(r2 {line['r2']:.2f})" for factor, line in primary.calibration.items()))
    log(f"wrote {os.path.join(eval_dir, METRICS_FILE)}, {len(images)} figures and TensorBoard events (step "
        f"{run.step}) in {metrics['seconds']['total']:.1f} s on {sample.num_images} test images "
        f"({disentanglement_seconds:.1f} s of it the disentanglement scores)")
    return metrics


# ---------------------------------------------------------------------------------------------------
# During training.


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
    sample = sample_from_batches(test_batches, model.factor_names, scored_factors, max_images)
    codes, log_variances = encode_posterior(model, sample.images)
    layout = {factor: tuple(indices) for factor, indices in model.layout.factor_latents.items()}
    chosen = choose_latents(codes, sample.groups, layout, model.mode)
    own = own_latents(layout, model.mode, chosen, sample.scene_factors, codes.shape[1])
    decode = decoder_of(model)
    test_mse = float(np.mean(np.square(decode(codes) - sample.images)))
    novel_mse = {}
    for factor in sample.scene_factors:
        if factor in sample.groups:
            pairs = novel_view_pairs(sample.groups[factor], pairs_per_group, sample.factor_names.index(factor))
            novel_mse[factor] = novel_view(decode, codes, sample.images, pairs, own[factor])[0]
    references = stranger_references(sample.images, same_view_groups(sample))
    kl = kl_summary(kl_per_latent(codes, log_variances), own)
    summary = {"equivariance": equivariance_scores(codes, sample, chosen),
               "invariance": invariance_scores(codes, sample, own),
               "novel_view_mse": novel_mse,
               "kl": {"total": kl["total"], "active_latents": kl["active_latents"], "by_factor": kl["by_factor"]}}
    if references["stranger_pairs"]:
        stranger = references["stranger_mse"]
        summary["identity_retention"] = {**{factor: identity_retention(mse, stranger) for factor, mse in novel_mse.items()},
                                         "reconstruction": identity_retention(test_mse, stranger)}
        summary.update(stranger_mse=stranger, mean_face_mse=references["mean_face_mse"])
    scalars = flatten(summary)
    rows = sweep_rows(sample, sweep_images)
    images = {}
    for factor, latent in chosen.items():
        values = sweep_values(codes, latent, sweep_steps)
        cells = np.concatenate([sample.images[rows][:, None], sweep(decode, codes[rows], latent, values)], axis=1)
        images[f"sweep/{factor}"] = figures.labelled_grid(cells, min_cell=1).astype(np.float32) / 255.0
    return scalars, images


# ---------------------------------------------------------------------------------------------------
# Command line.


def define_flags(flag_values: flags.FlagValues) -> None:
    """The CLI's flags, in their own FlagValues: dcign_tf.train defines --workdir and --data_dir globally."""
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
