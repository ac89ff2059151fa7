"""Corrupt, unwritable and full data directories: every fault is one line that names the file.

Corruption is tested as classes (file, record and image level), each with several members, on tiny
datasets written with the project's own record writer and then damaged.
"""

import contextlib
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from dcign_tf.data import input_pipeline, records
from dcign_tf.data.records import DatasetError
from test_input_pipeline import write_synthetic_dataset

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BAD_RECORD, BAD_IMAGE = 1, 2  # Which record of the damaged shard, and which image of it, is broken.


def shard_records(path):
    return [record.numpy() for record in tf.data.TFRecordDataset(path)]


def rewrite_record(path, change):
    """Rewrites shard `path` with record BAD_RECORD replaced by change(its tf.train.Example) (valid CRCs)."""
    serialized = shard_records(path)
    example = tf.train.Example.FromString(serialized[BAD_RECORD])
    change(example.features.feature)
    serialized[BAD_RECORD] = example.SerializeToString()
    records.write_shard(path, serialized)


def replace_image(path, png):
    def change(features):
        features[records.IMAGES_KEY].bytes_list.value[BAD_IMAGE] = png
    rewrite_record(path, change)


def raw_bytes(path, change):
    data = bytearray(open(path, "rb").read())
    change(data)
    with open(path, "wb") as file:
        file.write(bytes(data))


def flip_middle(data):
    data[len(data) // 2] ^= 0xFF


def png_of(size, seed=0):
    return records.encode_png(np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8))


def damaged_png(png):
    """The same PNG with bytes of its compressed pixel data (IDAT) overwritten: the header still reads fine."""
    data = bytearray(png)
    start = data.index(b"IDAT") + 8
    data[start:start + 16] = bytes(16)
    return bytes(data)


# name -> (damage(path), what the one line must also contain besides the path)
FILE_LEVEL = {
    "truncated mid-record": (lambda path: os.truncate(path, os.path.getsize(path) - 100), "record 1"),
    "a byte flipped, CRC left stale": (lambda path: raw_bytes(path, flip_middle), "corrupt or truncated"),
    "not a TFRecord file": (lambda path: open(path, "wb").write(os.urandom(3000)), "record 0"),
    "empty file": (lambda path: open(path, "wb").close(), "0 groups but dataset.json implies 2"),
    "one record short": (lambda path: records.write_shard(path, shard_records(path)[:1]),
                         "1 groups but dataset.json implies 2"),
    "one record too many": (lambda path: records.write_shard(path, shard_records(path) * 2),
                            "4 groups but dataset.json implies 2"),
}
RECORD_LEVEL = {
    "payload bytes flipped, CRC fixed": (
        lambda path: records.write_shard(path, [record if index != BAD_RECORD else
                                                record[:40] + bytes(b ^ 0x5A for b in record[40:80]) + record[80:]
                                                for index, record in enumerate(shard_records(path))]),
        "record 1"),
    "not a tf.train.Example": (
        lambda path: records.write_shard(path, [shard_records(path)[0], b"\x07" * 500]), "record 1"),
    "an image missing": (
        lambda path: rewrite_record(path, lambda features: features[records.IMAGES_KEY].bytes_list.value.pop()),
        "feature 'images' is missing or not 4 bytes values"),
    "factor values missing": (
        lambda path: rewrite_record(path, lambda features: features.pop(records.FACTOR_VALUES_KEY)),
        "feature 'factor_values'"),
    "another active factor": (
        lambda path: rewrite_record(path, lambda features: features[records.ACTIVE_FACTOR_KEY].bytes_list.value
                                    .__setitem__(0, b"light")), "active factor is 'light'"),
    "another image_size": (
        lambda path: rewrite_record(path, lambda features: features[records.IMAGE_SIZE_KEY].int64_list.value
                                    .__setitem__(0, 48)), "image_size 48"),
}
IMAGE_LEVEL = {
    "a PNG of the wrong size": (lambda path: replace_image(path, png_of(40)), "image 2 is 40x40"),
    "bytes that are not a PNG": (lambda path: replace_image(path, b"\xff\xd8\xff\xe0 JFIF, not a PNG" * 8),
                                 "image 2 is not a PNG"),
    "a PNG cut short": (lambda path: replace_image(path, png_of(32)[:200]), "image 2 is a damaged PNG"),
    "damaged pixel data": (lambda path: replace_image(path, damaged_png(png_of(32))), "image 2 is a damaged PNG"),
    "an empty image": (lambda path: replace_image(path, b""), "image 2 is not a PNG"),
}
ALL_CASES = {**FILE_LEVEL, **RECORD_LEVEL, **IMAGE_LEVEL}


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("pristine"))
    write_synthetic_dataset(directory, train_groups=4, test_groups=2, num_shards=2)
    return directory


@pytest.fixture
def damaged(pristine, tmp_path, request):
    """A copy of the pristine set whose train/elevation shard 0 was damaged by the case's function.
    Returns (data_dir, the damaged shard, the fragment its error must contain)."""
    import shutil

    data_dir = str(tmp_path / "data")
    shutil.copytree(pristine, data_dir)
    damage, fragment = ALL_CASES[request.param]
    path = os.path.join(data_dir, "train", "elevation-00000-of-00002.tfrecord")
    damage(path)
    return data_dir, path, fragment


def assert_one_line(error, *fragments):
    message = str(error)
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, message


def test_a_pristine_dataset_passes(pristine):
    for split in records.SPLITS:
        input_pipeline.check_shards(pristine, split)
    assert input_pipeline.locate_bad_record(pristine) is None


class TestCorruptData:
    """check_shards (run by train before training) names the file and, where it can, the record and image."""

    @pytest.mark.parametrize("damaged", list(FILE_LEVEL), indirect=True)
    def test_file_level(self, damaged):
        data_dir, path, fragment = damaged
        with pytest.raises(DatasetError) as error:
            input_pipeline.check_shards(data_dir, "train")
        assert_one_line(error.value, path, fragment, "rerun the dataset's generator")

    @pytest.mark.parametrize("damaged", list(RECORD_LEVEL), indirect=True)
    def test_record_level(self, damaged):
        data_dir, path, fragment = damaged
        with pytest.raises(DatasetError) as error:
            input_pipeline.check_shards(data_dir, "train")
        assert_one_line(error.value, f"{path}: record {BAD_RECORD}: ", fragment)

    @pytest.mark.parametrize("damaged", list(IMAGE_LEVEL), indirect=True)
    def test_image_level(self, damaged):
        data_dir, path, fragment = damaged
        with pytest.raises(DatasetError) as error:
            input_pipeline.check_shards(data_dir, "train")
        assert_one_line(error.value, f"{path}: record {BAD_RECORD}: ", fragment)

    # One case for each way the pipeline fails: parsing, an assertion, the PNG header, PNG decoding.
    @pytest.mark.parametrize("damaged", ["not a tf.train.Example", "another active factor", "a PNG of the wrong size",
                                         "damaged pixel data"], indirect=True)
    def test_the_training_pipeline_fails_and_the_bad_record_is_located(self, damaged):
        """Damage that appears after the check: the pipeline fails (never yields the bad group silently),
        and locate_bad_record, which train runs then, names the file and record."""
        data_dir, path, fragment = damaged
        dataset = input_pipeline.make_dataset(data_dir, "train", 1, factors=["elevation"], shuffle=False,
                                              repeat=False, deterministic=True)
        with pytest.raises(input_pipeline.PIPELINE_DATA_ERRORS):
            for _ in dataset:
                pass
        located = input_pipeline.locate_bad_record(data_dir)
        assert isinstance(located, DatasetError)
        assert_one_line(located, f"{path}: record {BAD_RECORD}: ", fragment)

    @pytest.mark.parametrize("damaged", ["a PNG of the wrong size", "bytes that are not a PNG"], indirect=True)
    def test_the_pipelines_own_error_names_the_shard(self, damaged):
        data_dir, path, _ = damaged
        dataset = input_pipeline.make_dataset(data_dir, "train", 1, factors=["elevation"], shuffle=False,
                                              repeat=False, deterministic=True)
        with pytest.raises(tf.errors.InvalidArgumentError, match="Bad image in shard") as error:
            for _ in dataset:
                pass
        assert path in error.value.message


def run_train(data_dir, workdir, *extra, prelude=""):
    """`python -m dcign_tf.train` on configs/test.flags with a prebuilt dataset; `prelude` runs first."""
    argv = ["dcign_tf.train", f"--flagfile={REPO}/configs/test.flags", f"--data_dir={data_dir}",
            f"--workdir={workdir}", "--dataset=prebuilt", "--progress=none", "--eval_every=0", "--steps=4", *extra]
    script = textwrap.dedent(prelude) + f"\nimport runpy, sys\nsys.argv = {argv!r}\n" \
        "runpy.run_module('dcign_tf.train', run_name='__main__', alter_sys=True)\n"
    return subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)


def error_lines(result, program):
    return [line for line in result.stderr.splitlines() if line.startswith(f"{program}: error:")]


class TestTrainOnCorruptData:
    @pytest.mark.parametrize("damaged", ["a PNG of the wrong size"], indirect=True)
    def test_found_before_training(self, damaged, tmp_path):
        data_dir, path, fragment = damaged
        result = run_train(data_dir, tmp_path / "run")
        assert result.returncode == 2, result.stderr[-2000:]
        assert "Traceback" not in result.stderr
        (line,) = error_lines(result, "dcign_tf.train")
        assert f"{path}: record {BAD_RECORD}: " in line and fragment in line

    @pytest.mark.parametrize("damaged", ["damaged pixel data"], indirect=True)
    def test_found_during_training(self, damaged, tmp_path):
        """The start-up check is skipped here, as if the shard broke after it: training still ends with
        one line naming the file and record, exit 2."""
        data_dir, path, fragment = damaged
        skip_startup_check = """
            from dcign_tf.data import input_pipeline
            real_check, calls = input_pipeline.check_shards, []
            def check_after_startup(data_dir, split, factors=None):
                calls.append(split)  # train checks both splits once at start-up: skipped.
                return real_check(data_dir, split, factors) if len(calls) > 2 else input_pipeline.load_info(data_dir)
            input_pipeline.check_shards = check_after_startup
        """
        result = run_train(data_dir, tmp_path / "run", "--factor_weights=azimuth=0,light=0,identity=0",
                           prelude=skip_startup_check)
        assert result.returncode == 2, result.stderr[-2000:]
        assert "Traceback" not in result.stderr
        (line,) = error_lines(result, "dcign_tf.train")
        assert f"{path}: record {BAD_RECORD}: " in line and fragment in line
