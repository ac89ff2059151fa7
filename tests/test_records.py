"""The record format: dataset.json, shard naming and writing, and one group's encode -> parse round trip."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from dcign_tf.data import records
from dcign_tf.data.records import DatasetError, DatasetInfo, FactorSpec

FACTORS = ("azimuth", "elevation", "light", "identity")


def small_info(**overrides) -> DatasetInfo:
    fields = dict(
        image_size=32,
        group_size=4,
        factors=tuple(FactorSpec(name, None if name == "identity" else (-1.5, 1.5), "radians") for name in FACTORS),
        latent_layout={"azimuth": [0], "elevation": [1], "light": [2], "identity": "rest"},
        splits={"train": {name: 5 for name in FACTORS}, "test": {name: 2 for name in FACTORS}},
        num_shards=2,
        generator={"name": "test", "seed": 3},
    )
    fields.update(overrides)
    return DatasetInfo(**fields)


def test_dataset_json_round_trip_and_contents(tmp_path):
    info = small_info()
    info.save(str(tmp_path))
    assert os.listdir(tmp_path) == ["dataset.json"]  # no temp file left behind
    assert DatasetInfo.load(str(tmp_path)) == info

    obj = json.loads((tmp_path / "dataset.json").read_text())
    assert obj["format_version"] == records.FORMAT_VERSION == 1
    assert obj["image_size"] == 32 and obj["group_size"] == 4 and obj["num_shards"] == 2
    assert [factor["name"] for factor in obj["factors"]] == list(FACTORS)
    assert obj["factors"][0] == {"name": "azimuth", "range": [-1.5, 1.5], "units": "radians"}
    assert obj["factors"][3]["range"] is None
    assert obj["latent_layout"] == {"azimuth": [0], "elevation": [1], "light": [2], "identity": "rest"}
    assert obj["splits"]["test"]["light"] == 2
    assert obj["generator"] == {"name": "test", "seed": 3}


def test_differences_names_the_differing_fields():
    assert small_info().differences(small_info()) == []
    differences = small_info().differences(small_info(image_size=64, generator={"name": "test", "seed": 4}))
    assert len(differences) == 2
    assert differences[0].startswith("image_size: 32 vs 64")
    assert differences[1].startswith("generator:")


def test_shard_paths_follow_the_naming_scheme(tmp_path):
    paths = small_info().shard_paths(str(tmp_path), "train", "light")
    assert paths == [str(tmp_path / "train" / "light-00000-of-00002.tfrecord"),
                     str(tmp_path / "train" / "light-00001-of-00002.tfrecord")]


@pytest.mark.parametrize("num_groups,num_shards", [(10, 3), (2, 4), (7, 1)])
def test_shard_group_ranges_partition_the_groups_in_order(num_groups, num_shards):
    ranges = [records.shard_group_range(num_groups, num_shards, index) for index in range(num_shards)]
    assert [group for group_range in ranges for group in group_range] == list(range(num_groups))
    sizes = [len(group_range) for group_range in ranges]
    assert max(sizes) - min(sizes) <= 1


def test_group_round_trip_through_encode_and_parse():
    rng = np.random.default_rng(0)
    info = small_info()
    images = rng.integers(0, 256, size=(4, 32, 32), dtype=np.uint8)
    factor_values = rng.uniform(-1, 1, size=(4, 4)).astype(np.float32)
    identity = [7, 8, 9, 10]
    serialized = records.serialize_group([records.encode_png(image) for image in images], factor_values,
                                         "identity", identity, 32)

    example = tf.io.parse_single_example(serialized, records.feature_spec(info))
    decoded = np.stack([tf.io.decode_png(png).numpy()[..., 0] for png in example["images"]])
    np.testing.assert_array_equal(decoded, images)
    np.testing.assert_array_equal(example["factor_values"].numpy().reshape(4, 4), factor_values)
    assert example["active_factor"].numpy() == b"identity"
    assert example["identity"].numpy().tolist() == identity
    assert example["image_size"].numpy() == 32


def test_png_encoding_is_deterministic_and_lossless():
    image = np.arange(32 * 32, dtype=np.uint32).reshape(32, 32).astype(np.uint8)
    assert records.encode_png(image) == records.encode_png(image.copy())
    np.testing.assert_array_equal(tf.io.decode_png(records.encode_png(image)).numpy()[..., 0], image)


def test_write_shard_is_atomic_and_replaces(tmp_path):
    path = str(tmp_path / "train" / "azimuth-00000-of-00001.tfrecord")
    records.write_shard(path, [b"first", b"second"])
    records.write_shard(path, [b"third"])
    assert os.listdir(tmp_path / "train") == ["azimuth-00000-of-00001.tfrecord"]
    assert [record.numpy() for record in tf.data.TFRecordDataset(path)] == [b"third"]


def test_load_errors_are_one_line_and_name_the_file(tmp_path):
    with pytest.raises(DatasetError, match="no such data directory") as missing_dir:
        DatasetInfo.load(str(tmp_path / "absent"))
    with pytest.raises(DatasetError, match="dataset.json: not found") as missing_json:
        DatasetInfo.load(str(tmp_path))

    (tmp_path / "dataset.json").write_text(small_info(format_version=2).to_json())
    with pytest.raises(DatasetError, match="format_version 2, but this dcign_tf reads format_version 1") as version:
        DatasetInfo.load(str(tmp_path))

    (tmp_path / "dataset.json").write_text('{"format_version": 1, "image_size": 32}')
    with pytest.raises(DatasetError, match="missing or malformed field") as malformed:
        DatasetInfo.load(str(tmp_path))

    for error in (missing_dir, missing_json, version, malformed):
        message = str(error.value)
        assert "\n" not in message and str(tmp_path) in message
