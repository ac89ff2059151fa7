"""Converts Aubry et al.'s rendered 3D chairs into the grouped record format (the paper's §4.2 dataset).

    python -m dcign_tf.data.make_chairs --src=rendered_chairs/ --data_dir=data/chairs \\
        [--image_size=150] [--group_size=20] [--num_test_chairs=193] [--seed=0] [--num_shards=16]

The source layout, the factors, the groups and the split: dcign_tf.data.sources.chairs. Rerunning a
finished conversion with the same flags does nothing; the output is byte-identical whatever --processes.

Exit status: 0 on success; 2 for bad flags or bad input (wrong layout, missing files, unreadable images,
too few chairs or views for the group size), a --data_dir that holds another dataset or cannot be
written; always with one line on stderr.
"""

from __future__ import annotations

import sys
from typing import Sequence

from absl import flags

from dcign_tf import cli
from dcign_tf.data.sources import chairs, common

PROGRAM = "dcign_tf.data.make_chairs"


def define_flags(flag_values: flags.FlagValues) -> None:
    """The command's flags, in its own FlagValues (the training job has flags of the same names)."""
    defaults = chairs.ChairsConfig()
    flags.DEFINE_string("src", None, f"The rendered_chairs folder ({chairs.EXPECTED_LAYOUT}).", flag_values=flag_values)
    common.define_source_flags(
        flag_values, defaults, data_dir_help="Output directory (dataset.json, identities.tsv, train/, test/).",
        image_size_help="Output image side S in pixels (the paper: 150).",
        group_size_help="Images per group (the paper: 20).",
        seed_help="Seeds the split and the groups; the same flags give identical files.",
        processes_help="Worker processes decoding and resizing (default: one per core).")
    flags.DEFINE_integer("num_test_chairs", defaults.num_test_chairs,
                         "Chairs held out for the test split (193 of 1393 leaves the paper's 1200 for training).",
                         flag_values=flag_values)
    flags.DEFINE_float("crop_fraction", defaults.crop_fraction,
                       "Keep the central fraction of each side before resizing (1: the whole render).",
                       flag_values=flag_values)
    flags.DEFINE_bool("invert", defaults.invert, "Invert gray levels: black background instead of the renders' white.",
                      flag_values=flag_values)


def body(flag_values: flags.FlagValues) -> None:
    for name in ("src", "data_dir"):
        if not flag_values[name].value:
            raise cli.UsageError(f"--{name} is required")
    config = chairs.ChairsConfig(image_size=flag_values.image_size, group_size=flag_values.group_size,
                                 num_test_chairs=flag_values.num_test_chairs, num_shards=flag_values.num_shards,
                                 seed=flag_values.seed, crop_fraction=flag_values.crop_fraction,
                                 invert=flag_values.invert)
    chairs.convert(flag_values.src, flag_values.data_dir, config, processes=flag_values.processes)


def main(argv: Sequence[str] | None = None) -> int:
    return cli.run(argv, PROGRAM, __doc__, define_flags, body, common.user_error_types)


if __name__ == "__main__":
    sys.exit(main())
