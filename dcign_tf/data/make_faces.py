r"""Generates the DC-IGN faces dataset: groups of rendered faces in which exactly one factor varies.

    python -m dcign_tf.data.make_faces --data_dir=data/faces_small --image_size=64 \
        --groups_per_factor=600 --test_groups_per_factor=100 --num_shards=8 --seed=0

The factors are the face's azimuth, its elevation, the light's azimuth (all radians) and the identity.
The same flags give byte-identical files whatever --processes and --shard_index/--num_tasks are; a killed
run is resumed by running the same command again (dcign_tf.data.sources.faces says how). For a Kubernetes
Indexed Job, task i of n (--shard_index=i --num_tasks=n) makes every n-th shard.

Exit status: 0 on success; 2, with one line on stderr, for bad flags, a data_dir that holds a dataset
that disagrees with the flags, and a data_dir that cannot be written (read-only, full).
"""

from __future__ import annotations

import math
import sys
from typing import Sequence

from absl import flags

from dcign_tf import cli
from dcign_tf.data.sources import common, faces

PROGRAM = "dcign_tf.data.make_faces"


def define_flags(flag_values: flags.FlagValues) -> None:
    """The command's flags, in its own FlagValues (the training job has flags of the same names)."""
    defaults = faces.FacesConfig()
    common.define_source_flags(
        flag_values, defaults, data_dir_help="Output directory (dataset.json, train/, test/).",
        image_size_help=f"Image side S in pixels ({common.MIN_IMAGE_SIZE}..{common.MAX_IMAGE_SIZE}).",
        group_size_help="Images per group (the paper: 20).",
        seed_help="Random seed; the same flags give byte-identical files.",
        processes_help="Worker processes (default: one per core).")
    flags.DEFINE_integer("groups_per_factor", defaults.groups_per_factor, "Training groups per factor.",
                         flag_values=flag_values)
    flags.DEFINE_integer("test_groups_per_factor", defaults.test_groups_per_factor, "Test groups per factor.",
                         flag_values=flag_values)
    flags.DEFINE_string("azimuth_range", "-1.5,1.5",
                        "Face azimuth range lo,hi in RADIANS (positive: nose to image right).", flag_values=flag_values)
    flags.DEFINE_string("elevation_range", "-0.4,0.4", "Face elevation range lo,hi in RADIANS (positive: nose up).",
                        flag_values=flag_values)
    flags.DEFINE_string("light_range_degrees", "-80,80",
                        "Light azimuth range lo,hi in DEGREES (positive: light from image right); stored in radians.",
                        flag_values=flag_values)
    flags.DEFINE_string("face_model", defaults.face_model, "Face model: 'procedural' or 'bfm:PATH'.",
                        flag_values=flag_values)
    flags.DEFINE_float("group_spread", defaults.group_spread,
                       "Fraction of a factor's range one group's values span (1: the whole range).",
                       flag_values=flag_values)
    flags.DEFINE_integer("shard_index", 0, "This task's index for a split run (0..num_tasks-1).",
                         flag_values=flag_values)
    flags.DEFINE_integer("num_tasks", 1,
                         "Number of tasks sharing the work (e.g. a Kubernetes Indexed Job's completions).",
                         flag_values=flag_values)
    flags.DEFINE_bool("progress", True, "Show a progress bar (on a terminal) or periodic log lines.",
                      flag_values=flag_values)


def _parse_range(flag_name: str, text: str, scale: float = 1.0) -> tuple[float, float]:
    try:
        low, high = (float(part) * scale for part in text.split(","))
    except ValueError:
        raise cli.UsageError(f"--{flag_name} must be two numbers lo,hi, got {text!r}") from None
    return low, high


def config_from_flags(flag_values: flags.FlagValues) -> faces.FacesConfig:
    return faces.FacesConfig(
        image_size=flag_values.image_size,
        group_size=flag_values.group_size,
        groups_per_factor=flag_values.groups_per_factor,
        test_groups_per_factor=flag_values.test_groups_per_factor,
        num_shards=flag_values.num_shards,
        seed=flag_values.seed,
        azimuth_range=_parse_range("azimuth_range", flag_values.azimuth_range),
        elevation_range=_parse_range("elevation_range", flag_values.elevation_range),
        light_range=_parse_range("light_range_degrees", flag_values.light_range_degrees, math.pi / 180.0),
        face_model=flag_values.face_model,
        group_spread=flag_values.group_spread,
    )


def body(flag_values: flags.FlagValues) -> None:
    if not flag_values.data_dir:
        raise cli.UsageError("--data_dir is required")
    config = config_from_flags(flag_values)
    try:
        config.validate()
        faces.load_face_model(config.face_model)  # A bad spec fails here, once; the model is cached for the workers.
        faces.check_task(flag_values.shard_index, flag_values.num_tasks)
        common.check_processes(flag_values.processes)
    except ValueError as error:  # Settings only: a ValueError from the generation itself would be a bug.
        raise cli.UsageError(str(error)) from None
    faces.generate(flag_values.data_dir, config, processes=flag_values.processes,
                   shard_index=flag_values.shard_index, num_tasks=flag_values.num_tasks,
                   progress=flag_values.progress)


def main(argv: Sequence[str] | None = None) -> int:
    return cli.run(argv, PROGRAM, __doc__, define_flags, body, common.user_error_types)


if __name__ == "__main__":
    sys.exit(main())
