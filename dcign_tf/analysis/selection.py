"""What an evaluation looks at: the run(s) and their data, the test images held in memory, and the
latent that stands for each factor.

Everything here runs before TensorFlow loads (the data are read through it only in `load_test_sample`),
so that bad input is reported in one line, fast. The rule for "the latent of a factor":

  * a DC-IGN run whose layout gives F exactly one latent: that latent;
  * F has several latents, or the run is a baseline (its layout means nothing): the candidate latent
    (F's latents; for a baseline, every latent) with the highest within-group variance over F's test
    groups, averaged over the groups: the paper's rule (section 4.1.1) for finding z_azimuth in a baseline.

"F's latents" (`own_latents`), the ones swapped for novel views and excluded from F's invariance, are
F's layout latents in a DC-IGN run; in a baseline, F's chosen latent, and for a factor without a
numeric range (identity) every latent not chosen for a factor with one.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Iterable, Mapping, Sequence

import numpy as np

from dcign_tf.data import records


class EvaluationError(ValueError):
    """A run, data directory or setting that cannot be evaluated; one line saying what to fix."""


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


def resolve_runs(workdir: str, baseline_workdir: str | None, data_dir: str | None
                 ) -> tuple[RunSpec, RunSpec | None, str, records.DatasetInfo]:
    """(the run, its baseline or None, the data_dir, its dataset), every one checked against the others
    (`check_compatible`, `check_baseline`); EvaluationError or records.DatasetError saying what to fix."""
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
    return run, baseline, data_dir, dataset


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


def check_model(model, sample: TestSample, where: str) -> None:
    """EvaluationError unless the loaded model takes the data's images and names the data's factors."""
    if model.config.image_size != sample.images.shape[1]:
        raise EvaluationError(f"the model in {where} takes {model.config.image_size}x{model.config.image_size} "
                              f"images but the data has {sample.images.shape[1]}x{sample.images.shape[1]}")
    if set(model.layout.factor_latents) != set(sample.factor_names):
        raise EvaluationError(f"the model in {where} has factors {sorted(model.layout.factor_latents)} "
                              f"but the data has {sorted(sample.factor_names)}")


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


def novel_view_pairs_by_factor(sample: TestSample, pairs_per_group: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Scene factor -> [P, 2] novel-view pairs over its groups (`novel_view_pairs`), drawn from `seed` and the
    factor's column, so that every run evaluated with the same seed is scored on the same pairs."""
    return {factor: novel_view_pairs(sample.groups[factor], pairs_per_group,
                                     seed * 1000 + sample.factor_names.index(factor))
            for factor in sample.scene_factors if factor in sample.groups}


def mse_rows(num_images: int, count: int, seed: int) -> np.ndarray:
    """[M] sorted rows reconstructed for test_mse: `count` of the `num_images` (0: all), drawn from `seed`."""
    count = num_images if count == 0 else min(count, num_images)
    return np.sort(np.random.default_rng(seed).choice(num_images, count, replace=False))


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


def sweep_rows(sample: TestSample, count: int) -> np.ndarray:
    """`count` test images for sweep figures: the first image of each group, taking the factors' groups in turn."""
    per_factor = [rows[:, 0] for rows in sample.groups.values()]
    ordered = [rows[index] for index in range(max(len(rows) for rows in per_factor))
               for rows in per_factor if index < len(rows)]
    return np.array(ordered[:count], np.int64)
