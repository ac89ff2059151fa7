"""The DC-IGN faces dataset: groups of rendered faces in which exactly one factor varies.

The command line is dcign_tf.data.make_faces; the training job calls `ensure_dataset`.

The factors are the face's azimuth, its elevation, the light's azimuth (all radians) and the identity
(the face's shape and texture, whose value is the identity id). Every group draws one identity and one
scene uniformly in the configured ranges and then varies only its active factor over `group_size`
images: uniform draws in that factor's range, or `group_size` different identities for identity groups
(pose and light fixed). Train and test identities are disjoint.

The output is deterministic: the same flags give byte-identical files whatever --processes and
--shard_index/--num_tasks are, because every group's random stream is seeded from
(seed, split, factor, group index). Shards are written atomically, so a killed run is resumed by running
the same command again: complete shards are kept and only the missing ones are made. dataset.json is
written first; a data_dir whose dataset.json disagrees with the flags is an error, never overwritten.

For a Kubernetes Indexed Job, task i of n (--shard_index=i --num_tasks=n) makes the shards j with
j % n == i of the fixed enumeration (split, factor, shard index); every task writes the same dataset.json.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from typing import Callable

import numpy as np
from absl import logging

from dcign_tf import io_utils, progress as progress_lib
from dcign_tf.data import records
from dcign_tf.data.records import DatasetInfo
from dcign_tf.data.sources import common, face_model
from dcign_tf.data.sources.rasterizer import render_batch

SCENE_FACTORS = ("azimuth", "elevation", "light")
IDENTITY_FACTOR = "identity"
FACTOR_NAMES = SCENE_FACTORS + (IDENTITY_FACTOR,)  # dataset.json's order: the factor_values columns
# The encoder latents the paper assigns to each factor (z1 azimuth, z2 elevation, z3 light, rest intrinsic).
LATENT_LAYOUT = {"azimuth": [0], "elevation": [1], "light": [2], "identity": "rest"}
# The command line's module, recorded in dataset.json: fixed, or datasets made before would be refused.
GENERATOR_NAME = "dcign_tf.data.make_faces"
# Bump when the face model, the renderer or the scene sampling changes the images: a dataset made
# by another version is then refused instead of being resumed with shards of mixed looks.
GENERATOR_VERSION = 1


@dataclasses.dataclass(frozen=True)
class FacesConfig(common.SourceConfig):
    """What the faces dataset is made of; equal configs give byte-identical datasets.

    Ranges are (lo, hi) in radians. Defaults follow the paper's scale: 150x150 images, groups of 20,
    3,000 training and 350 test groups per factor.
    """

    groups_per_factor: int = 3000
    test_groups_per_factor: int = 350
    azimuth_range: tuple[float, float] = (-1.5, 1.5)
    elevation_range: tuple[float, float] = (-0.4, 0.4)
    light_range: tuple[float, float] = (math.radians(-80.0), math.radians(80.0))
    face_model: str = "procedural"
    # The fraction of a factor's range that one group's values span (1: the whole range), each group's
    # window placed at random. Tried against the azimuth "switch node" (Fig. 6a), it did not unfold
    # it (2 of 2 runs folded; README, "Results"): --mirror_factors does.
    group_spread: float = 1.0

    def __post_init__(self):
        for name in ("azimuth_range", "elevation_range", "light_range"):
            object.__setattr__(self, name, tuple(float(value) for value in getattr(self, name)))

    def validate(self) -> None:
        """Raises ValueError with a one-line message naming the first bad setting."""
        super().validate()
        for name in ("groups_per_factor", "test_groups_per_factor"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be at least 1, got {getattr(self, name)}")
        for name in ("azimuth_range", "elevation_range", "light_range"):
            value_range = getattr(self, name)
            if len(value_range) != 2 or not all(math.isfinite(value) for value in value_range):
                raise ValueError(f"{name} must be two finite numbers lo,hi, got {value_range}")
            low, high = value_range
            if not -math.pi <= low < high <= math.pi:
                raise ValueError(f"{name} must satisfy -pi <= lo < hi <= pi (radians), got {value_range}")
        if not 0.0 < self.group_spread <= 1.0:
            raise ValueError(f"group_spread must be in (0, 1], got {self.group_spread}")
        if not self.face_model:
            raise ValueError("face_model must name a face model, e.g. 'procedural'")

    def factor_range(self, factor: str) -> tuple[float, float]:
        return {"azimuth": self.azimuth_range, "elevation": self.elevation_range, "light": self.light_range}[factor]

    def _spread_record(self) -> dict:
        # Recorded only when windows are used: whole-range groups are drawn exactly as before the option.
        return {} if self.group_spread == 1.0 else {"group_spread": self.group_spread}

    def num_groups(self, split: str) -> int:
        return self.groups_per_factor if split == "train" else self.test_groups_per_factor

    def dataset_info(self) -> DatasetInfo:
        """The dataset.json this config produces."""
        factors = [records.FactorSpec(name, self.factor_range(name), "radians") for name in SCENE_FACTORS]
        factors.append(records.FactorSpec(IDENTITY_FACTOR, None, "identity id"))
        return DatasetInfo(
            image_size=self.image_size,
            group_size=self.group_size,
            factors=tuple(factors),
            latent_layout=LATENT_LAYOUT,
            splits={split: {name: self.num_groups(split) for name in FACTOR_NAMES} for split in records.SPLITS},
            num_shards=self.num_shards,
            generator={"name": GENERATOR_NAME, "version": GENERATOR_VERSION, "seed": self.seed,
                       "face_model": self.face_model, **self._spread_record()},
        )


def load_face_model(spec: str):
    """The MorphableModel a `--face_model` spec names: "procedural" (the built-in seeded model) or "bfm:PATH"
    (the Basel Face Model file at PATH, 2009 .mat or 2017 .h5; see dcign_tf.data.sources.bfm). Both are cached.
    A bad spec or file raises ValueError (bfm.BfmError is one) with a one-line message."""
    if spec == "procedural":
        return face_model.procedural_face_model()
    if spec.startswith("bfm:"):
        from dcign_tf.data.sources import bfm  # Lazy: h5py and scipy.io only when a BFM is asked for.

        path = spec[len("bfm:"):]
        if not path:
            raise bfm.BfmError("face_model 'bfm:' names no file; pass bfm:PATH to a Basel Face Model .mat or .h5")
        return bfm.load_bfm(path)
    raise ValueError(f"unknown face_model {spec!r}; known: 'procedural', 'bfm:PATH'")


# ---------------------------------------------------------------------------------------------------
# One group: sampling and rendering (runs in the worker processes: numpy and PIL, no TensorFlow).


def identities_per_group(factor: str, group_size: int) -> int:
    return group_size if factor == IDENTITY_FACTOR else 1


def first_identity_id(config: FacesConfig, split: str, factor: str, group_index: int) -> int:
    """The id of the group's first identity; ids are consecutive and never shared by two groups or splits.

    Ids are numbered split by split (train first), factor by factor, group by group.
    """
    per_group = {name: identities_per_group(name, config.group_size) for name in FACTOR_NAMES}
    first = 0
    for earlier_split in records.SPLITS[: records.SPLITS.index(split)]:
        first += config.num_groups(earlier_split) * sum(per_group.values())
    for earlier_factor in FACTOR_NAMES[: FACTOR_NAMES.index(factor)]:
        first += config.num_groups(split) * per_group[earlier_factor]
    return first + group_index * per_group[factor]


def sample_group(model, config: FacesConfig, split: str, factor: str, group_index: int):
    """Draws and renders one group in which only `factor` varies.

    Returns:
      images [G, S, S] float32 in [0, 1], factor_values [G, 4] float64 (azimuth, elevation, light in
      radians, identity id), identity [G] int64.
    """
    group_size = config.group_size
    rng = np.random.default_rng([config.seed, common.SPLIT_IDS[split], FACTOR_NAMES.index(factor), group_index])
    shape_coeffs, albedo_coeffs = model.sample_identity(rng)
    scene = {name: np.full(group_size, rng.uniform(*config.factor_range(name))) for name in SCENE_FACTORS}
    identity = first_identity_id(config, split, factor, group_index) + np.zeros(group_size, np.int64)
    if factor == IDENTITY_FACTOR:
        # Pose and light stay fixed while group_size different faces are drawn.
        shape_coeffs, albedo_coeffs = model.sample_identities(rng, group_size)
        vertices, albedo = model.instances(shape_coeffs, albedo_coeffs)
        identity += np.arange(group_size)
    else:
        low, high = config.factor_range(factor)
        if config.group_spread < 1.0:
            # A window of the range at a random place; the window's start is uniform.
            width = config.group_spread * (high - low)
            low = rng.uniform(low, high - width)
            high = low + width
        scene[factor] = rng.uniform(low, high, size=group_size)
        vertices, albedo = model.instance(shape_coeffs, albedo_coeffs)
    images = render_batch(vertices, model.triangles, albedo, scene["azimuth"], scene["elevation"],
                          scene["light"], config.image_size, frame_radius=model.frame_radius)
    factor_values = np.stack([scene["azimuth"], scene["elevation"], scene["light"], identity], axis=1)
    return images, factor_values, identity


# Per-process state set by _init_worker: (face model, config).
_worker_state = None


def _init_worker(config: FacesConfig) -> None:
    """Sets up a rendering process: its face model (a cache hit in forked workers)."""
    global _worker_state
    _worker_state = (load_face_model(config.face_model), config)


def _render_group(task: tuple[str, str, int]) -> tuple[list[bytes], np.ndarray, np.ndarray]:
    """(split, factor, group index) -> (G PNG images, factor_values [G, F] float32, identity [G])."""
    model, config = _worker_state
    images, factor_values, identity = sample_group(model, config, *task)
    pngs = [records.encode_png(image) for image in io_utils.to_uint8(images)]
    return pngs, factor_values.astype(np.float32), identity


# ---------------------------------------------------------------------------------------------------
# The whole dataset: dataset.json, then the shards in a fixed order.


@dataclasses.dataclass(frozen=True)
class Shard:
    split: str
    factor: str
    index: int
    path: str
    group_indices: range


def all_shards(data_dir: str, config: FacesConfig) -> list[Shard]:
    """Every shard of the dataset in the fixed enumeration order that --shard_index/--num_tasks split."""
    return [
        Shard(split, factor, index, records.shard_path(data_dir, split, factor, index, config.num_shards),
              records.shard_group_range(config.num_groups(split), config.num_shards, index))
        for split in records.SPLITS
        for factor in FACTOR_NAMES
        for index in range(config.num_shards)
    ]


def _write_or_check_dataset_json(data_dir: str, config: FacesConfig) -> DatasetInfo:
    """Writes dataset.json, or checks that an existing one agrees with `config` (DatasetError if not)."""
    expected = config.dataset_info()
    existing = common.existing_dataset(data_dir, expected)
    if existing is None:
        expected.save(data_dir)
    return expected if existing is None else existing


def generate(
    data_dir: str,
    config: FacesConfig,
    *,
    processes: int | None = None,
    shard_index: int = 0,
    num_tasks: int = 1,
    progress: bool = True,
) -> DatasetInfo:
    """Makes this task's missing shards of the dataset `config` describes in `data_dir`.

    Writes (or checks) dataset.json first, skips shards that exist, renders the others with `processes`
    worker processes (default: one per core; 1 renders in this process) and writes each shard
    atomically in order, after removing the temp files killed runs left (records.remove_stale_temp_files).
    Raises ValueError for a bad config or task split, DatasetError when data_dir holds a dataset made with
    other settings or cannot be written (read-only, full: no temp file is left behind).
    """
    config.validate()
    check_task(shard_index, num_tasks)
    processes = common.check_processes(processes)

    info = _write_or_check_dataset_json(data_dir, config)
    common.remove_leftovers(data_dir)
    task_shards = all_shards(data_dir, config)[shard_index::num_tasks]
    missing = [shard for shard in task_shards if not os.path.exists(shard.path)]
    logging.info("%s: %d of this task's %d shards already complete, making %d",
                 data_dir, len(task_shards) - len(missing), len(task_shards), len(missing))
    if not missing:
        return info
    for split in records.SPLITS:
        records.make_dirs(os.path.join(data_dir, split))

    tasks = [(shard.split, shard.factor, group_index) for shard in missing for group_index in shard.group_indices]
    bar = progress_lib.Progress(len(tasks), "rendered", "group", mode="auto" if progress else "none")
    start = time.monotonic()
    load_face_model(config.face_model)  # Built once here; cached, so the forked workers inherit it.
    with common.ordered_map(_render_group, tasks, processes, initializer=_init_worker,
                            initargs=(config,)) as rendered_groups:
        for shard in missing:
            group_records = []
            for _ in shard.group_indices:
                pngs, factor_values, identity = next(rendered_groups)
                group_records.append(records.serialize_group(pngs, factor_values, shard.factor, identity,
                                                             config.image_size))
            records.write_shard(shard.path, group_records)
            bar.update(len(group_records))
    bar.close()
    elapsed = time.monotonic() - start
    logging.info("%s: made %d shards, %d groups (%d images) in %.1f s, %.0f images/s", data_dir, len(missing),
                 len(tasks), len(tasks) * config.group_size, elapsed,
                 len(tasks) * config.group_size / max(elapsed, 1e-9))
    return info


def check_task(shard_index: int, num_tasks: int) -> None:
    """ValueError unless this is task shard_index of num_tasks >= 1."""
    if num_tasks < 1 or not 0 <= shard_index < num_tasks:
        raise ValueError(f"need num_tasks >= 1 and 0 <= shard_index < num_tasks, "
                         f"got shard_index={shard_index} num_tasks={num_tasks}")


def missing_shards(data_dir: str, config: FacesConfig) -> list[Shard]:
    return [shard for shard in all_shards(data_dir, config) if not os.path.exists(shard.path)]


def ensure_dataset(data_dir: str, config: FacesConfig, *, log: Callable[[str], None] = logging.info,
                   processes: int | None = None) -> DatasetInfo:
    """The dataset `config` describes in `data_dir`: generated if absent, resumed if incomplete.

    Raises DatasetError when data_dir holds a dataset made with other settings (nothing is overwritten).
    """
    config.validate()
    if not os.path.exists(records.dataset_json_path(data_dir)):
        log(f"{data_dir} holds no dataset: generating the faces dataset there "
            f"({config.image_size}x{config.image_size}, {config.groups_per_factor} training and "
            f"{config.test_groups_per_factor} test groups per factor, seed {config.seed})")
        return generate(data_dir, config, processes=processes)
    info = _write_or_check_dataset_json(data_dir, config)
    missing = missing_shards(data_dir, config)
    if missing:
        log(f"{data_dir}: {len(missing)} of {len(all_shards(data_dir, config))} shards missing, resuming generation")
        return generate(data_dir, config, processes=processes)
    common.remove_leftovers(data_dir, log)
    return info
