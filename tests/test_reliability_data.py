"""Corrupt, unwritable and full data directories: every fault is one line that names the file.

Corruption is tested as classes (file, record and image level), each with several members, on tiny
datasets written with the project's own record writer and then damaged.
"""

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import tensorflow as tf

from dcign_tf import io_utils
from dcign_tf.data import input_pipeline, records
from dcign_tf.data.sources import faces
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

    @pytest.mark.parametrize("damaged", [*RECORD_LEVEL, *IMAGE_LEVEL], indirect=True)
    def test_record_and_image_level(self, damaged):
        data_dir, path, fragment = damaged
        with pytest.raises(DatasetError) as error:
            input_pipeline.check_shards(data_dir, "train")
        assert_one_line(error.value, f"{path}: record {BAD_RECORD}: ", fragment)

    @pytest.mark.parametrize("damaged", ["a PNG of the wrong size", "bytes that are not a PNG", "damaged pixel data"],
                             indirect=True)
    def test_a_split_too_big_to_decode_gets_its_headers_checked(self, damaged, monkeypatch):
        """Above FULL_DECODE_PIXELS check_shards reads every image's header but decodes none: wrong sizes and
        bytes that are not PNGs are still found; damaged pixel data behind a good header is left to training,
        which locates it (locate_bad_record decodes)."""
        data_dir, path, fragment = damaged
        monkeypatch.setattr(input_pipeline, "FULL_DECODE_PIXELS", 0)
        if "pixel" in fragment or "damaged PNG" in fragment:
            input_pipeline.check_shards(data_dir, "train")
        else:
            with pytest.raises(DatasetError) as error:
                input_pipeline.check_shards(data_dir, "train")
            assert_one_line(error.value, f"{path}: record {BAD_RECORD}: ", fragment)
        assert_one_line(input_pipeline.locate_bad_record(data_dir), f"{path}: record {BAD_RECORD}: ", fragment)

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
            def check_after_startup(data_dir, split, factors=None, **options):
                calls.append(split)  # train checks both splits once at start-up: skipped.
                if len(calls) > 2:
                    return real_check(data_dir, split, factors, **options)
                return input_pipeline.load_info(data_dir)
            input_pipeline.check_shards = check_after_startup
        """
        result = run_train(data_dir, tmp_path / "run", "--factor_weights=azimuth=0,light=0,identity=0",
                           prelude=skip_startup_check)
        assert result.returncode == 2, result.stderr[-2000:]
        assert "Traceback" not in result.stderr
        (line,) = error_lines(result, "dcign_tf.train")
        assert f"{path}: record {BAD_RECORD}: " in line and fragment in line


# ---------------------------------------------------------------------------------------------------
# Data directories that cannot be written, full disks, and what killed writers leave behind.

TINY_FACES = faces.FacesConfig(image_size=32, group_size=4, groups_per_factor=12, test_groups_per_factor=2,
                                    num_shards=2, seed=3)
TINY_FACES_FLAGS = ["--image_size=32", "--group_size=4", "--groups_per_factor=12", "--test_groups_per_factor=2",
                    "--num_shards=2", "--seed=3", "--processes=1", "--noprogress"]


@contextlib.contextmanager
def tmpfs(path, size, read_only=False):
    """A tmpfs of `size` mounted at `path` for the block; skips the test where mounting is not allowed."""
    os.makedirs(path, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    try:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True,
                                 text=True, timeout=30)
    except FileNotFoundError:
        pytest.skip("no mount command here, so no small filesystem to fill")
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN): {mounted.stderr.strip()}")
    try:
        yield str(path)
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30)


def remount(path, options):
    subprocess.run(["mount", "-o", f"remount,{options}", str(path)], check=True, capture_output=True, timeout=30)


def temp_files(directory):
    return sorted(os.path.join(root, name) for root, _, names in os.walk(directory) for name in names
                  if io_utils.TEMP_INFIX in name)


def run_make_faces(data_dir, *extra):
    return subprocess.run([sys.executable, "-m", "dcign_tf.data.make_faces", f"--data_dir={data_dir}",
                           *TINY_FACES_FLAGS, *extra], cwd=REPO, capture_output=True, text=True, timeout=300)


@pytest.fixture(params=["under a file", "read-only mount", "no write permission"])
def unwritable_dir(request, tmp_path):
    """A --data_dir that cannot be created or written, three ways."""
    if request.param == "under a file":
        (tmp_path / "a_file").write_text("not a directory")
        yield str(tmp_path / "a_file" / "faces")
    elif request.param == "read-only mount":
        with tmpfs(tmp_path / "ro", "1m", read_only=True) as mount:
            yield os.path.join(mount, "faces")
    else:
        if os.geteuid() == 0:
            pytest.skip("root writes through permission bits; the read-only mount covers this case")
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        try:
            yield str(locked / "faces")
        finally:
            locked.chmod(0o755)


class TestUnwritableDataDir:
    def test_make_faces_says_so_in_one_line(self, unwritable_dir):
        result = run_make_faces(unwritable_dir)
        assert result.returncode == 2, result.stderr[-2000:]
        assert "Traceback" not in result.stderr
        (line,) = error_lines(result, "dcign_tf.data.make_faces")
        assert "cannot write" in line and "choose a --data_dir you can write to" in line, line

    def test_the_writers_raise_dataset_errors(self, unwritable_dir):
        with pytest.raises(DatasetError, match="cannot write"):
            faces.generate(unwritable_dir, TINY_FACES, processes=1, progress=False)
        with pytest.raises(DatasetError, match="cannot write"):
            records.write_shard(os.path.join(unwritable_dir, "train", "x.tfrecord"), [b"record"])
        with pytest.raises(DatasetError, match="cannot write"):
            records.write_file_atomically(os.path.join(unwritable_dir, "x.json"), b"{}")

    def test_train_building_its_dataset_there_exits_2(self, tmp_path):
        (tmp_path / "a_file").write_text("not a directory")
        data_dir = str(tmp_path / "a_file" / "faces")
        result = run_train(data_dir, tmp_path / "run", "--dataset=faces")
        assert result.returncode == 2, result.stderr[-2000:]
        assert "Traceback" not in result.stderr
        (line,) = error_lines(result, "dcign_tf.train")
        assert data_dir in line and "cannot write" in line


class TestFullDisk:
    def test_the_generator_fails_in_one_line_leaves_no_temp_file_and_resumes(self, tmp_path):
        """In-process (the CLI turns this DatasetError into its one line and exit 2, as in TestUnwritableDataDir)."""
        with tmpfs(tmp_path / "small", "48k") as mount:
            data_dir = os.path.join(mount, "faces")
            with pytest.raises(DatasetError) as error:
                faces.generate(data_dir, TINY_FACES, processes=1, progress=False)
            assert_one_line(error.value, data_dir, "no space left on device", "rerun the same command")
            assert temp_files(mount) == []
            made = [name for name in os.listdir(os.path.join(data_dir, "train")) if name.endswith(".tfrecord")]
            assert made, "the disk filled up before the first shard: make the tmpfs larger"

            remount(mount, "size=2m")  # Space freed: the same command finishes the set.
            faces.generate(data_dir, TINY_FACES, processes=1, progress=False)
            for split in records.SPLITS:
                input_pipeline.check_shards(data_dir, split)
            assert temp_files(mount) == []

    def test_every_writer_removes_its_temp_file(self, tmp_path):
        with tmpfs(tmp_path / "small", "16k") as mount:
            big = os.urandom(64 * 1024)
            with pytest.raises(DatasetError, match="no space left on device"):
                records.write_shard(os.path.join(mount, "train", "a.tfrecord"), [big])
            with pytest.raises(DatasetError, match="no space left on device"):
                records.write_file_atomically(os.path.join(mount, "dataset.json"), big)
            assert temp_files(mount) == [] and not os.path.exists(os.path.join(mount, "dataset.json"))


def dead_pid():
    """The pid of a process that has exited (and been reaped)."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


class TestLeftoverTempFiles:
    def test_stale_ones_are_removed_by_the_next_run_and_live_ones_kept(self, tmp_path):
        data_dir = str(tmp_path / "faces")
        faces.generate(data_dir, TINY_FACES, processes=1, progress=False)
        shard = records.shard_path(data_dir, "train", "azimuth", 0, TINY_FACES.num_shards)
        here = socket.gethostname()
        sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        try:
            leftovers = {
                f"{shard}.tmp-{here}-{dead_pid()}": False,              # killed writer on this host
                f"{data_dir}/dataset.json.tmp-{here}-{dead_pid()}": False,
                f"{shard}.tmp-{here}-{os.getpid()}": False,             # a previous life of this pid
                f"{shard}.tmp-{here}-{sleeper.pid}": True,              # a writer still running
                f"{shard}.tmp-other-host-7": True,                      # another host's, fresh
                f"{data_dir}/test/x.tfrecord.tmp-other-host-8": False,  # another host's, hours old
            }
            for path in leftovers:
                with open(path, "wb") as file:
                    file.write(b"partial")
            old = time.time() - records.STALE_TEMP_SECONDS - 60
            os.utime(f"{data_dir}/test/x.tfrecord.tmp-other-host-8", (old, old))

            faces.generate(data_dir, TINY_FACES, processes=1, progress=False)  # Complete: it only sweeps.
            assert {path for path in leftovers if os.path.exists(path)} == {p for p, kept in leftovers.items() if kept}
            input_pipeline.check_shards(data_dir, "train")
        finally:
            sleeper.kill()
            sleeper.wait()
