"""What the data tests check the same way for every source: a data directory's files and its groups."""

import os

import numpy as np
import tensorflow as tf

from dcign_tf.data import records
from dcign_tf.data.records import DatasetInfo


def file_bytes(data_dir):
    """relative path -> contents of every file under data_dir."""
    contents = {}
    for root, _, names in os.walk(data_dir):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as file:
                contents[os.path.relpath(path, data_dir)] = file.read()
    return contents


def read_groups(data_dir, split, factor):
    """Every group of one (split, factor), in order: (images uint8 [G, S, S], factor_values [G, F],
    identity [G], active factor name), read back with the record format's own feature spec."""
    info = DatasetInfo.load(data_dir)
    groups = []
    for path in info.shard_paths(data_dir, split, factor):
        for serialized in tf.data.TFRecordDataset(path):
            example = tf.io.parse_single_example(serialized, records.feature_spec(info))
            images = np.stack([tf.io.decode_png(png).numpy()[..., 0] for png in example["images"]])
            values = example["factor_values"].numpy().reshape(info.group_size, len(info.factors))
            groups.append((images, values, example["identity"].numpy(), example["active_factor"].numpy().decode()))
    return groups
