"""The smallNORB converter, offline on tfds' mock data (`tfds.testing.mock_data`): nothing is downloaded.

Most tests replace tfds's reader with a small full-factorial smallNORB (2 categories x 2 instances x 3
elevations x 4 azimuths x 3 lightings per split) whose images paint their labels into four horizontal
bands, so the pixels show which factor varies in a group. One test uses tfds' own random mock examples.
"""

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from dcign_tf.data import input_pipeline
from dcign_tf.data.sources import common, smallnorb
from dcign_tf.data.records import DatasetInfo
from dcign_tf.data.sources.common import ConversionError
from data_checks import file_bytes, read_groups

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INSTANCES = {"train": (4, 6), "test": (0, 1)}  # smallNORB's split is by instance, as in the real data.
CATEGORIES, ELEVATIONS, AZIMUTHS, LIGHTINGS = (0, 3), (0, 4, 8), (0, 5, 9, 17), (0, 2, 5)
CONFIG = smallnorb.SmallNorbConfig(image_size=32, group_size=3, num_shards=2, seed=1)
LABELS = ("label_category", "instance", "label_elevation", "label_azimuth", "label_lighting")


def band_values(object_id, elevation, azimuth, lighting):
    """The gray levels of the four 24-row bands that encode an image's labels."""
    return 10 + 6 * object_id, 20 + 25 * elevation, 15 + 12 * azimuth, 30 + 40 * lighting


def factorial_examples(split, drop=(), **overrides):
    """Every (category, instance, elevation, azimuth, lighting) of the split as smallnorb-like examples."""
    rows = np.array([(c, i, e, a, l) for c in CATEGORIES for i in INSTANCES[split] for e in ELEVATIONS
                     for a in AZIMUTHS for l in LIGHTINGS], np.int64)
    images = np.zeros((len(rows), 96, 96, 1), np.uint8)
    for image, (category, instance, elevation, azimuth, lighting) in zip(images, rows):
        for band, value in enumerate(band_values(10 * category + instance, elevation, azimuth, lighting)):
            image[24 * band:24 * (band + 1)] = value
    examples = {"image": images, "image2": images, **{name: rows[:, k] for k, name in enumerate(LABELS)}}
    examples.update(overrides)
    return {name: value for name, value in examples.items() if name not in drop}


def mock_smallnorb(**example_options):
    """tfds mocked so that smallnorb's splits are the factorial examples (after `example_options`)."""
    def as_dataset(self, split, decoders=None, read_config=None, shuffle_files=False):
        del self, decoders, read_config, shuffle_files
        return tf.data.Dataset.from_tensor_slices(factorial_examples(str(split), **example_options))
    return tfds.testing.mock_data(as_dataset_fn=as_dataset)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("smallnorb"))
    with mock_smallnorb():
        smallnorb.convert(data_dir, CONFIG, tfds_data_dir=str(tmp_path_factory.mktemp("tfds")))
    return data_dir

def test_dataset_json(converted):
    info = DatasetInfo.load(converted)
    assert info.factor_names == ("azimuth", "elevation", "lighting", "identity")
    assert info.factors[0].range == pytest.approx((0.0, np.radians(340)))
    assert info.factors[1].range == pytest.approx((np.radians(30), np.radians(70)))
    assert (info.factors[2].range, info.factors[2].units) == ((0.0, 5.0), "index")
    assert info.factors[3].range is None
    assert dict(info.latent_layout) == {"azimuth": (0,), "elevation": (1,), "lighting": (2,), "identity": "rest"}
    assert (info.image_size, info.group_size) == (32, 3)
    # 4 objects per split; groups of 3 from 4 azimuths, 3 elevations, 3 lightings, 4 objects per context.
    counts = {"azimuth": 4 * 3 * 3, "elevation": 4 * 4 * 3, "lighting": 4 * 3 * 4, "identity": 3 * 4 * 3}
    assert info.splits == {"train": counts, "test": counts}
    assert info.generator["name"] == "dcign_tf.data.make_smallnorb" and info.generator["camera"] == "image"


def test_each_group_varies_only_its_factor_and_values_match_the_labels(converted):
    varying_band = {"azimuth": 2, "elevation": 1, "lighting": 3, "identity": 0}
    for split in ("train", "test"):
        objects = {10 * category + instance for category in CATEGORIES for instance in INSTANCES[split]}
        for factor, band in varying_band.items():
            groups = read_groups(converted, split, factor)
            assert groups
            for images, values, identity, active in groups:
                assert active == factor and images.shape == (3, 32, 32)
                azimuth = np.round(np.degrees(values[:, 0]) / 20).astype(int)
                elevation = np.round((np.degrees(values[:, 1]) - 30) / 5).astype(int)
                lighting = values[:, 2].astype(int)
                assert np.array_equal(values[:, 3], identity) and set(identity) <= objects
                # The pixels (bands 8 rows high after 96 -> 32) carry the labels the values claim.
                for image, labels in zip(images, zip(identity, elevation, azimuth, lighting)):
                    assert [int(image[8 * k + 4, 16]) for k in range(4)] == list(band_values(*labels))
                columns = [identity, elevation, azimuth, lighting]
                for index, column in enumerate(columns):
                    assert len(set(column)) == (3 if index == band else 1), (factor, columns)
                assert list(columns[band]) == sorted(columns[band])


def test_deterministic_reread_and_refuses_another_dataset(converted, tmp_path):
    again = str(tmp_path / "again")
    with mock_smallnorb():
        smallnorb.convert(again, CONFIG)
        assert file_bytes(again) == file_bytes(converted)
        inodes = {name: os.stat(os.path.join(again, name)).st_ino for name in os.listdir(again)}
        smallnorb.convert(again, CONFIG)  # already complete: nothing rewritten
        assert {name: os.stat(os.path.join(again, name)).st_ino for name in os.listdir(again)} == inodes
        with pytest.raises(common.OutputConflictError, match="was made with other settings"):
            smallnorb.convert(again, smallnorb.SmallNorbConfig(image_size=32, group_size=2))
    for split in ("train", "test"):
        input_pipeline.check_shards(converted, split)
    batch = next(iter(input_pipeline.make_dataset(converted, "train", 4, deterministic=True)))
    assert batch["images"].shape == (4, 3, 32, 32, 1) and batch["factor_values"].shape == (4, 3, 4)


def test_tfds_random_mock_data_too_small_for_the_group_size(tmp_path):
    """tfds' own random mock examples: a few dozen random labels never share an object and view."""
    with tfds.testing.mock_data(num_examples=40):
        with pytest.raises(ConversionError, match=r"no group of 2 images in which only \w+ varies"):
            smallnorb.convert(str(tmp_path / "out"), smallnorb.SmallNorbConfig(image_size=32, group_size=2))
    assert not os.path.exists(tmp_path / "out")


def test_bad_input_is_a_one_line_conversion_error(tmp_path):
    out = str(tmp_path / "out")
    cases = [
        ({"drop": ("label_lighting",)}, "has no features ['label_lighting']"),
        ({"label_azimuth": np.full(144, 18)}, "label_azimuth takes values 18..18"),
        ({"image": np.zeros((144, 64, 64, 1), np.uint8)}, "expected (96, 96, 1)"),
    ]
    for options, message in cases:
        with mock_smallnorb(**options):
            with pytest.raises(ConversionError) as raised:
                smallnorb.convert(out, CONFIG)
        assert message in str(raised.value) and "\n" not in str(raised.value)
    # Only 2 lightings per object and view: too few for groups of 3.
    with mock_smallnorb(label_lighting=np.tile([0, 1], 72)):
        with pytest.raises(ConversionError, match=r"only lighting varies .*at most 2.*--group_size to 2"):
            smallnorb.convert(out, CONFIG)
    with pytest.raises(ConversionError, match="more than smallNORB's 6 lighting"):
        smallnorb.convert(out, smallnorb.SmallNorbConfig(group_size=7))
    # A corrupt tfds file.
    corrupt = tmp_path / "corrupt.tfrecord"
    corrupt.write_bytes(b"\x00" * 64)

    def corrupt_dataset(self, split, decoders=None, read_config=None, shuffle_files=False):
        return tf.data.TFRecordDataset(str(corrupt)).map(lambda record: {
            "image": tf.zeros([96, 96, 1], tf.uint8), **{name: tf.constant(0, tf.int64) for name in LABELS}})
    with tfds.testing.mock_data(as_dataset_fn=corrupt_dataset):
        with pytest.raises(ConversionError, match="unreadable data"):
            smallnorb.convert(out, CONFIG)
    # smallnorb not prepared and no download allowed: the "missing files" case.
    with pytest.raises(ConversionError, match=r"cannot load tfds 'smallnorb' split 'train' from .*--tfds_data_dir"):
        smallnorb.convert(out, CONFIG, tfds_data_dir=str(tmp_path / "empty_tfds"), download=False)
    assert not os.path.exists(out)


def test_command_line_errors_are_one_line_exit_2(tmp_path):
    """Every ConversionError takes this path (cli.run with common.user_error_types); the cases above check
    their messages.
    (A missing tfds dataset reads `dcign_tf.data.make_smallnorb: error: cannot load tfds 'smallnorb' ...`, exit 2, too; not
    run here because the subprocess would import TensorFlow and tfds for it.)"""
    for args, message in [
        (["--group_size=8"], "--group_size=8 is more than smallNORB's 6 lighting conditions"),
        (["--image_size=16"], "--image_size must be in 32..256"),
        (["--unknown_flag=1"], "Unknown command line flag 'unknown_flag'"),
    ]:
        result = subprocess.run([sys.executable, "-m", "dcign_tf.data.make_smallnorb", f"--data_dir={tmp_path}/out",
                                 *args], cwd=REPO, capture_output=True, text=True, timeout=120)
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr
        errors = [line for line in result.stderr.splitlines() if line.startswith("dcign_tf.data.make_smallnorb: error:")]
        assert len(errors) == 1 and message in errors[0], result.stderr
    assert not os.path.exists(tmp_path / "out")
