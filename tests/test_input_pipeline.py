"""The tf.data pipeline, on small synthetic datasets that each test writes with the record API."""

import collections
import os

import numpy as np
import pytest
import tensorflow as tf

from dcign_tf.data import input_pipeline, records
from dcign_tf.data.records import DatasetError, DatasetInfo, FactorSpec

FACTORS = ("azimuth", "elevation", "light", "identity")
IMAGE_SIZE, GROUP_SIZE = 32, 4


def write_synthetic_dataset(data_dir, *, train_groups=6, test_groups=3, num_shards=2, image_size=IMAGE_SIZE,
                            stored_image_size=None, seed=0) -> DatasetInfo:
    """A dataset whose groups vary one factor column; identity[0] is unique per group, so groups can be told apart.

    stored_image_size: write images of this size while dataset.json says `image_size` (a broken dataset).
    """
    info = DatasetInfo(
        image_size=image_size,
        group_size=GROUP_SIZE,
        factors=tuple(FactorSpec(name, None if name == "identity" else (-1.0, 1.0), "radians") for name in FACTORS),
        latent_layout={"azimuth": [0], "elevation": [1], "light": [2], "identity": "rest"},
        splits={"train": {name: train_groups for name in FACTORS}, "test": {name: test_groups for name in FACTORS}},
        num_shards=num_shards,
        generator={"name": "synthetic", "seed": seed},
    )
    info.save(data_dir)
    rng = np.random.default_rng(seed)
    next_identity = 0
    for split in records.SPLITS:
        for factor_index, factor in enumerate(FACTORS):
            groups = []
            for _ in range(info.num_groups(split, factor)):
                factor_values = np.tile(rng.uniform(-1, 1, len(FACTORS)), (GROUP_SIZE, 1))
                identity = np.full(GROUP_SIZE, next_identity)
                if factor == "identity":
                    identity += np.arange(GROUP_SIZE)
                    factor_values[:, factor_index] = identity
                else:
                    factor_values[:, factor_index] = rng.uniform(-1, 1, GROUP_SIZE)
                    factor_values[:, 3] = next_identity
                next_identity += GROUP_SIZE
                size = stored_image_size or image_size
                images = rng.integers(0, 256, size=(GROUP_SIZE, size, size), dtype=np.uint8)
                groups.append((images, factor_values, identity))
            records.write_factor_groups(data_dir, info, split, factor, groups)
    return info


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("synthetic"))
    write_synthetic_dataset(directory)
    return directory


def first_batches(dataset, count):
    return [{key: value.numpy() for key, value in batch.items()} for batch in dataset.take(count)]


def group_keys(dataset):
    """identity[0] of every group the dataset yields (one pass)."""
    return [int(key) for batch in dataset for key in batch["identity"][:, 0].numpy()]


def snapshot(directory):
    return {os.path.join(root, name): os.stat(os.path.join(root, name)).st_mtime_ns
            for root, _, names in os.walk(directory) for name in names}


def test_batches_have_static_shapes_dtypes_and_the_stored_pixels(data_dir):
    dataset = input_pipeline.make_dataset(data_dir, "train", 3, deterministic=True)
    spec = dataset.element_spec
    assert spec["images"].shape == (3, GROUP_SIZE, IMAGE_SIZE, IMAGE_SIZE, 1) and spec["images"].dtype == tf.float32
    assert spec["active_factor"].shape == (3,) and spec["active_factor"].dtype == tf.int32
    assert spec["factor_values"].shape == (3, GROUP_SIZE, 4) and spec["factor_values"].dtype == tf.float32
    assert spec["identity"].shape == (3, GROUP_SIZE) and spec["identity"].dtype == tf.int64

    batch = first_batches(dataset, 1)[0]
    # The pixels are the stored PNG's, scaled to [0, 1]: find the group's record and compare.
    factor = FACTORS[batch["active_factor"][0]]
    info = input_pipeline.load_info(data_dir)
    stored = {}
    for path in info.shard_paths(data_dir, "train", factor):
        for serialized in tf.data.TFRecordDataset(path):
            example = tf.io.parse_single_example(serialized, records.feature_spec(info))
            stored[int(example["identity"][0])] = tf.io.decode_png(example["images"][0]).numpy()
    np.testing.assert_allclose(batch["images"][0, 0], stored[batch["identity"][0, 0]] / 255.0, atol=1e-7)


def test_only_the_active_factor_varies_within_each_group(data_dir):
    seen = set()
    for batch in first_batches(input_pipeline.make_dataset(data_dir, "train", 4, seed=1), 8):
        for active, values, identity in zip(batch["active_factor"], batch["factor_values"], batch["identity"]):
            seen.add(int(active))
            varies = values.max(axis=0) > values.min(axis=0)
            assert varies.tolist() == [index == active for index in range(4)]
            assert (len(set(identity)) == GROUP_SIZE) == (FACTORS[active] == "identity")
            np.testing.assert_array_equal(values[:, 3], identity)
    assert seen == {0, 1, 2, 3}


def test_factor_weights_change_the_mix(data_dir):
    def drawn(weights):
        dataset = input_pipeline.make_dataset(data_dir, "train", 8, factor_weights=weights, seed=2)
        return collections.Counter(int(a) for batch in first_batches(dataset, 10) for a in batch["active_factor"])

    without_light = drawn({"light": 0})
    assert without_light[2] == 0 and all(without_light[index] > 0 for index in (0, 1, 3))
    shape_biased = drawn({"identity": 10})
    assert shape_biased[3] > 2 * max(shape_biased[index] for index in (0, 1, 2))
    with pytest.raises(DatasetError, match="this dataset does not have"):
        input_pipeline.make_dataset(data_dir, "train", 8, factor_weights={"color": 1})
    with pytest.raises(DatasetError, match="not all 0"):
        input_pipeline.make_dataset(data_dir, "train", 8, factor_weights={name: 0 for name in FACTORS})


def test_factors_restricts_what_is_read(data_dir):
    # A shape bias for identity still applies; the weight of the held-out light factor is ignored.
    dataset = input_pipeline.make_dataset(data_dir, "train", 4, factors=["azimuth", "identity"], seed=3,
                                          factor_weights={"identity": 2, "light": 5})
    assert {int(a) for batch in first_batches(dataset, 6) for a in batch["active_factor"]} == {0, 3}


def test_deterministic_mode_gives_the_same_batches_twice(data_dir):
    def run(seed):
        return first_batches(input_pipeline.make_dataset(data_dir, "train", 3, deterministic=True, seed=seed), 6)

    first, second, other_seed = run(5), run(5), run(6)
    for a, b in zip(first, second):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    assert any(not np.array_equal(a["identity"], c["identity"]) for a, c in zip(first, other_seed))


def test_one_pass_without_repeat_reads_every_group_once_and_keeps_the_remainder(data_dir):
    dataset = input_pipeline.make_dataset(data_dir, "test", 5, repeat=False, shuffle=False, deterministic=True)
    sizes = [int(batch["images"].shape[0]) for batch in dataset]
    assert sizes == [5, 5, 2]  # 4 factors x 3 groups
    keys = group_keys(dataset)
    assert len(keys) == len(set(keys)) == 12


@pytest.mark.parametrize("num_pipelines", [2, 3])  # 2 shards per factor: shard files for 2, records for 3
def test_input_context_gives_each_pipeline_a_disjoint_part_of_whole_groups(data_dir, num_pipelines):
    parts = []
    for pipeline_id in range(num_pipelines):
        context = tf.distribute.InputContext(num_input_pipelines=num_pipelines, input_pipeline_id=pipeline_id,
                                             num_replicas_in_sync=num_pipelines)
        dataset = input_pipeline.make_dataset(data_dir, "train", 2 * num_pipelines, input_context=context,
                                              repeat=False, shuffle=False)
        assert dataset.element_spec["images"].shape[1:] == (GROUP_SIZE, IMAGE_SIZE, IMAGE_SIZE, 1)
        assert max(int(batch["images"].shape[0]) for batch in dataset) == 2  # the per-replica batch
        parts.append(group_keys(dataset))
    all_keys = [key for part in parts for key in part]
    assert len(all_keys) == len(set(all_keys)) == 4 * 6
    if num_pipelines == 2:
        assert [len(part) for part in parts] == [12, 12]


def test_reading_never_writes_into_the_data_directory(data_dir):
    before = snapshot(data_dir)
    input_pipeline.check_shards(data_dir, "train")
    first_batches(input_pipeline.make_dataset(data_dir, "train", 2), 2)
    assert snapshot(data_dir) == before


# Bad input: each gives a DatasetError (one line naming the file) when the dataset is built.


def assert_clear(error_info, path_fragment):
    message = str(error_info.value)
    assert "\n" not in message and path_fragment in message, message


def test_missing_directory_or_dataset_json(tmp_path):
    with pytest.raises(DatasetError) as missing_dir:
        input_pipeline.make_dataset(str(tmp_path / "nothing"), "train", 2)
    assert_clear(missing_dir, "nothing")
    with pytest.raises(DatasetError, match="dataset.json: not found") as missing_json:
        input_pipeline.make_dataset(str(tmp_path), "train", 2)
    assert_clear(missing_json, str(tmp_path))


def test_missing_split_and_missing_factor(tmp_path):
    data_dir = str(tmp_path)
    write_synthetic_dataset(data_dir, train_groups=2, test_groups=1, num_shards=1)
    with pytest.raises(DatasetError, match="no split 'validation'") as unknown_split:
        input_pipeline.make_dataset(data_dir, "validation", 2)
    assert_clear(unknown_split, "dataset.json")
    with pytest.raises(DatasetError, match="unknown factors") as unknown_factor:
        input_pipeline.make_dataset(data_dir, "train", 2, factors=["azimuth", "color"])
    assert_clear(unknown_factor, "dataset.json")

    os.remove(os.path.join(data_dir, "train", "light-00000-of-00001.tfrecord"))
    with pytest.raises(DatasetError, match="shard missing") as missing_factor:
        input_pipeline.make_dataset(data_dir, "train", 2)
    assert_clear(missing_factor, "train/light-00000-of-00001.tfrecord")
    input_pipeline.make_dataset(data_dir, "train", 2, factors=["azimuth"])  # The other factors still read.
    with pytest.raises(DatasetError, match="shard missing"):
        input_pipeline.validate(data_dir, "train")

    for name in os.listdir(os.path.join(data_dir, "test")):
        os.remove(os.path.join(data_dir, "test", name))
    with pytest.raises(DatasetError, match="shard missing") as missing_split:
        input_pipeline.make_dataset(data_dir, "test", 2)
    assert_clear(missing_split, "test/")


def test_other_format_version(tmp_path):
    data_dir = str(tmp_path)
    info = write_synthetic_dataset(data_dir, train_groups=1, test_groups=1, num_shards=1)
    (tmp_path / "dataset.json").write_text(info.to_json().replace('"format_version": 1', '"format_version": 7'))
    with pytest.raises(DatasetError, match="format_version 7") as error:
        input_pipeline.make_dataset(data_dir, "train", 2)
    assert_clear(error, "dataset.json")


def test_truncated_and_corrupt_shards_are_named_by_check_shards(tmp_path):
    data_dir = str(tmp_path)
    write_synthetic_dataset(data_dir, train_groups=4, test_groups=1, num_shards=2)
    input_pipeline.check_shards(data_dir, "train")  # A good dataset passes.

    truncated = os.path.join(data_dir, "train", "elevation-00001-of-00002.tfrecord")
    with open(truncated, "r+b") as file:
        file.truncate(os.path.getsize(truncated) - 100)
    with pytest.raises(DatasetError, match="corrupt or truncated") as error:
        input_pipeline.check_shards(data_dir, "train")
    assert_clear(error, truncated)

    write_synthetic_dataset(data_dir, train_groups=4, test_groups=1, num_shards=2)
    corrupt = os.path.join(data_dir, "train", "identity-00000-of-00002.tfrecord")
    data = bytearray(open(corrupt, "rb").read())
    data[len(data) // 2] ^= 0xFF  # Inside a PNG: only the CRC can tell.
    open(corrupt, "wb").write(bytes(data))
    with pytest.raises(DatasetError, match="corrupt or truncated") as error:
        input_pipeline.check_shards(data_dir, "train")
    assert_clear(error, corrupt)

    # A shard cut at a record boundary reads cleanly but holds too few groups.
    write_synthetic_dataset(data_dir, train_groups=4, test_groups=1, num_shards=2)
    short = os.path.join(data_dir, "train", "azimuth-00000-of-00002.tfrecord")
    first_record = next(iter(tf.data.TFRecordDataset(short))).numpy()
    records.write_shard(short, [first_record])
    with pytest.raises(DatasetError, match="1 groups but dataset.json implies 2") as error:
        input_pipeline.check_shards(data_dir, "train")
    assert_clear(error, short)


def test_wrong_image_size(tmp_path):
    data_dir = str(tmp_path)
    write_synthetic_dataset(data_dir, train_groups=2, test_groups=1, num_shards=1)
    with pytest.raises(DatasetError, match="images are 32x32 but 64x64 are expected") as error:
        input_pipeline.make_dataset(data_dir, "train", 2, expected_image_size=64)
    assert_clear(error, "dataset.json")

    # Images whose size disagrees with dataset.json fail, before decoding, with a message naming the shard.
    write_synthetic_dataset(data_dir, train_groups=2, test_groups=1, num_shards=1, stored_image_size=48)
    dataset = input_pipeline.make_dataset(data_dir, "train", 2, expected_image_size=32)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"Bad image in shard.*train/\w+-00000-of-00001"):
        first_batches(dataset, 1)
    with pytest.raises(DatasetError, match=r"record 0: image 0 is 48x48, dataset.json says 32x32"):
        input_pipeline.check_shards(data_dir, "train")
