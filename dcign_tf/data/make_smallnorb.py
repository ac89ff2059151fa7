"""Converts smallNORB (LeCun et al. 2004), loaded through tensorflow-datasets, into the grouped record format.

    python -m dcign_tf.data.make_smallnorb --data_dir=data/smallnorb [--tfds_data_dir=~/tensorflow_datasets] \\
        [--image_size=64] [--group_size=6] [--num_shards=4] [--seed=0] [--nodownload]

The source, the factors and the groups: dcign_tf.data.sources.smallnorb.

Exit status: 0 on success; 2 for bad flags or bad input (smallnorb not prepared and not downloadable,
unexpected features or labels, too few images for the group size), a --data_dir that holds another
dataset or cannot be written; always with one line on stderr.
"""

from __future__ import annotations

import sys
from typing import Sequence

from absl import flags

from dcign_tf import cli
from dcign_tf.data.sources import common, smallnorb

PROGRAM = "dcign_tf.data.make_smallnorb"


def define_flags(flag_values: flags.FlagValues) -> None:
    """The command's flags, in its own FlagValues (the training job has flags of the same names)."""
    defaults = smallnorb.SmallNorbConfig()
    common.define_source_flags(
        flag_values, defaults, data_dir_help="Output directory (dataset.json, train/, test/).",
        image_size_help="Output image side S in pixels (source: 96).",
        group_size_help="Images per group (at most 6: the lighting conditions).",
        seed_help="Seeds the groups; the same flags give identical files.")
    flags.DEFINE_string("tfds_data_dir", None, "tfds's data_dir holding (or to receive) smallnorb "
                        "(default: tfds's own, ~/tensorflow_datasets).", flag_values=flag_values)
    flags.DEFINE_bool("download", True, "Let tfds download and prepare smallnorb when it is not there yet.",
                      flag_values=flag_values)


def body(flag_values: flags.FlagValues) -> None:
    if not flag_values.data_dir:
        raise cli.UsageError("--data_dir is required")
    config = smallnorb.SmallNorbConfig(image_size=flag_values.image_size, group_size=flag_values.group_size,
                                       num_shards=flag_values.num_shards, seed=flag_values.seed)
    smallnorb.convert(flag_values.data_dir, config, tfds_data_dir=flag_values.tfds_data_dir,
                      download=flag_values.download)


def main(argv: Sequence[str] | None = None) -> int:
    return cli.run(argv, PROGRAM, __doc__, define_flags, body, common.user_error_types)


if __name__ == "__main__":
    sys.exit(main())
