"""The faces generator: layout, group semantics, determinism, resuming, conflicts and the command line."""

import dataclasses
import math
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from dcign_tf.data import input_pipeline
from dcign_tf.data.sources import faces
from dcign_tf.data.records import DatasetError, DatasetInfo
from data_checks import file_bytes, read_groups

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = faces.FacesConfig(image_size=32, group_size=4, groups_per_factor=3, test_groups_per_factor=2,
                                num_shards=2, seed=7)
FLAGS = ["--image_size=32", "--group_size=4", "--groups_per_factor=3", "--test_groups_per_factor=2",
         "--num_shards=2", "--seed=7"]


@pytest.fixture(scope="module")
def reference_dir(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("faces"))
    faces.generate(data_dir, CONFIG, processes=1, progress=False)
    return data_dir

def file_identities(data_dir):
    """path -> (inode, mtime) of every file: a rewritten (renamed-over) file gets a new inode."""
    return {os.path.join(root, name): (os.stat(os.path.join(root, name)).st_ino,
                                       os.stat(os.path.join(root, name)).st_mtime_ns)
            for root, _, names in os.walk(data_dir) for name in names}

def test_layout_and_dataset_json(reference_dir):
    expected_shards = {f"{split}/{factor}-{index:05d}-of-00002.tfrecord"
                       for split in ("train", "test") for factor in faces.FACTOR_NAMES for index in (0, 1)}
    assert set(file_bytes(reference_dir)) == expected_shards | {"dataset.json"}

    info = DatasetInfo.load(reference_dir)
    assert info == CONFIG.dataset_info()
    assert info.factor_names == ("azimuth", "elevation", "light", "identity")
    assert info.factors[0].range == (-1.5, 1.5) and info.factors[1].range == (-0.4, 0.4)
    assert info.factors[2].range == pytest.approx((-math.radians(80), math.radians(80)))
    assert info.factors[3].range is None
    assert info.latent_layout == {"azimuth": (0,), "elevation": (1,), "light": (2,), "identity": "rest"}
    assert info.splits == {"train": {name: 3 for name in info.factor_names},
                           "test": {name: 2 for name in info.factor_names}}
    assert (info.image_size, info.group_size, info.num_shards) == (32, 4, 2)
    assert info.generator == {"name": "dcign_tf.data.make_faces", "version": faces.GENERATOR_VERSION, "seed": 7,
                              "face_model": "procedural"}
    for split in ("train", "test"):
        input_pipeline.check_shards(reference_dir, split)  # CRCs, parsing and group counts per shard.


def test_each_group_varies_only_its_active_factor(reference_dir):
    ids = {"train": set(), "test": set()}
    images_seen = {"train": set(), "test": set()}
    for split in ("train", "test"):
        for factor_index, factor in enumerate(faces.FACTOR_NAMES):
            groups = read_groups(reference_dir, split, factor)
            assert len(groups) == CONFIG.num_groups(split)
            for images, values, identity, active in groups:
                assert active == factor
                varies = [len(set(values[:, column])) > 1 for column in range(4)]
                assert varies == [column == factor_index for column in range(4)]
                assert len(set(values[:, factor_index])) == CONFIG.group_size  # distinct draws
                np.testing.assert_array_equal(values[:, 3], identity)
                for column, name in enumerate(faces.SCENE_FACTORS):
                    low, high = CONFIG.factor_range(name)
                    assert np.all((values[:, column] >= low) & (values[:, column] <= high))
                # Faces are drawn: bright pixels on a black background, and the images differ.
                assert images.max() > 100 and (images == 0).mean() > 0.2
                assert len({image.tobytes() for image in images}) == CONFIG.group_size
                assert not ids[split] & set(identity.tolist())
                ids[split] |= set(identity.tolist())
                images_seen[split] |= {image.tobytes() for image in images}
    # Disjoint ids, and the faces themselves come from independent streams: no test image repeats a training one.
    assert not ids["train"] & ids["test"]
    assert not images_seen["train"] & images_seen["test"]


def test_same_flags_give_identical_bytes_whatever_processes_and_task_split(reference_dir, tmp_path):
    reference = file_bytes(reference_dir)
    pooled = str(tmp_path / "pooled")
    faces.generate(pooled, CONFIG, processes=2, progress=False)
    assert file_bytes(pooled) == reference

    split_run = str(tmp_path / "tasks")
    faces.generate(split_run, CONFIG, processes=1, shard_index=1, num_tasks=3, progress=False)
    # Task 1 of 3 makes every third shard of the fixed (split, factor, shard) enumeration.
    task_shards = {os.path.relpath(shard.path, split_run)
                   for shard in faces.all_shards(split_run, CONFIG)[1::3]}
    assert set(file_bytes(split_run)) == task_shards | {"dataset.json"}
    for shard_index in (0, 2):
        faces.generate(split_run, CONFIG, processes=1, shard_index=shard_index, num_tasks=3, progress=False)
    assert file_bytes(split_run) == reference

    other_seed = str(tmp_path / "other_seed")
    faces.generate(other_seed, faces.FacesConfig(**{**CONFIG.__dict__, "seed": 8}), processes=1,
                        shard_index=0, num_tasks=16, progress=False)
    shard = "train/azimuth-00000-of-00002.tfrecord"
    assert file_bytes(other_seed)[shard] != reference[shard]


def test_resume_makes_only_the_missing_shards(reference_dir, tmp_path):
    data_dir = str(tmp_path / "faces")
    shutil.copytree(reference_dir, data_dir)
    deleted = os.path.join(data_dir, "train", "light-00001-of-00002.tfrecord")
    os.remove(deleted)
    # A run killed while writing (two hours ago) left a partial temp file instead of the shard.
    interrupted = os.path.join(data_dir, "test", "identity-00000-of-00002.tfrecord")
    leftover = interrupted + ".tmp-otherhost-12345"
    os.replace(interrupted, leftover)
    with open(leftover, "r+b") as file:
        file.truncate(50)
    os.utime(leftover, (time.time() - 7200, time.time() - 7200))
    before = file_identities(data_dir)

    faces.generate(data_dir, CONFIG, processes=1, progress=False)

    after = file_identities(data_dir)
    rewritten = {path for path in after if before.get(path) != after[path]}
    assert rewritten == {deleted, interrupted}
    assert file_bytes(data_dir) == file_bytes(reference_dir)  # and the temp file is gone


def test_a_dataset_json_that_disagrees_is_an_error_and_nothing_is_written(reference_dir, tmp_path):
    data_dir = str(tmp_path / "faces")
    shutil.copytree(reference_dir, data_dir)
    os.remove(os.path.join(data_dir, "train", "azimuth-00000-of-00002.tfrecord"))
    before = file_identities(data_dir)
    other = faces.FacesConfig(**{**CONFIG.__dict__, "seed": 8, "image_size": 48})
    for run in (lambda: faces.generate(data_dir, other, processes=1, progress=False),
                lambda: faces.ensure_dataset(data_dir, other, log=lambda message: None)):
        with pytest.raises(DatasetError, match=r"dataset.json was made with other settings") as error:
            run()
        message = str(error.value)
        assert "\n" not in message and "image_size: 32 vs 48" in message and "'seed': 7" in message
        assert file_identities(data_dir) == before


def test_ensure_dataset_generates_resumes_and_verifies(reference_dir, tmp_path):
    data_dir = str(tmp_path / "faces")
    messages = []
    info = faces.ensure_dataset(data_dir, CONFIG, log=messages.append, processes=1)
    assert info == CONFIG.dataset_info()
    assert len(messages) == 1 and "holds no dataset: generating" in messages[0]
    assert file_bytes(data_dir) == file_bytes(reference_dir)

    before = file_identities(data_dir)
    assert faces.ensure_dataset(data_dir, CONFIG, log=messages.append, processes=1) == info
    assert len(messages) == 1 and file_identities(data_dir) == before  # complete: nothing redone

    os.remove(os.path.join(data_dir, "test", "elevation-00001-of-00002.tfrecord"))
    faces.ensure_dataset(data_dir, CONFIG, log=messages.append, processes=1)
    assert "1 of 16 shards missing, resuming" in messages[-1]
    assert file_bytes(data_dir) == file_bytes(reference_dir)


def test_config_validation():
    for bad, match in [({"image_size": 16}, "image_size must be in 32..256"),
                       ({"group_size": 1}, "group_size must be at least 2"),
                       ({"groups_per_factor": -1}, "groups_per_factor must be at least 1"),
                       ({"azimuth_range": (0.5, -0.5)}, "azimuth_range must satisfy"),
                       ({"light_range": (0.0, math.nan)}, "light_range must be two finite numbers")]:
        with pytest.raises(ValueError, match=match):
            faces.FacesConfig(**{**CONFIG.__dict__, **bad}).validate()
    with pytest.raises(ValueError, match="shard_index"):
        faces.generate("/nonexistent", CONFIG, shard_index=2, num_tasks=2)


def run_cli(*args):
    env = {**os.environ, "PYTHONPATH": REPO_ROOT, "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run([sys.executable, "-m", "dcign_tf.data.make_faces", *args], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_command_line(reference_dir, tmp_path):
    data_dir = str(tmp_path / "faces")
    done = run_cli(f"--data_dir={data_dir}", *FLAGS, "--processes=2", "--light_range_degrees=-80,80")
    assert done.returncode == 0, done.stderr
    assert file_bytes(data_dir) == file_bytes(reference_dir)

    for bad_flags, expected in [(["--image_size=16"], "image_size must be in 32..256"),
                                (["--image_size=abc"], "--image_size"),
                                (["--shard_index=3", "--num_tasks=2"], "shard_index"),
                                (["--azimuth_range=1"], "--azimuth_range must be two numbers")]:
        failed = run_cli(f"--data_dir={tmp_path / 'bad'}", *bad_flags)
        lines = failed.stderr.strip().splitlines()
        assert failed.returncode == 2 and len(lines) == 1 and expected in lines[0], failed.stderr
    assert not os.path.exists(tmp_path / "bad")

    conflict = run_cli(f"--data_dir={data_dir}", *FLAGS, "--seed=8")
    assert conflict.returncode == 2 and len(conflict.stderr.strip().splitlines()) == 1, conflict.stderr
    assert conflict.stderr.strip().splitlines()[-1].startswith(f"dcign_tf.data.make_faces: error: {data_dir}/dataset.json")


def test_group_spread_confines_each_group_to_a_window_of_the_range():
    config = dataclasses.replace(CONFIG, group_spread=0.25, image_size=32)
    model = faces.load_face_model("procedural")
    for factor in ("azimuth", "elevation", "light"):
        low, high = config.factor_range(factor)
        column = faces.SCENE_FACTORS.index(factor)
        starts = []
        for group in range(6):
            _, values, _ = faces.sample_group(model, config, "train", factor, group)
            varying = values[:, column]
            assert np.ptp(varying) <= 0.25 * (high - low) + 1e-9
            assert low <= varying.min() and varying.max() <= high
            starts.append(varying.min())
        assert np.ptp(starts) > 0.1 * (high - low)     # the windows sit at different places
