"""The 3D chairs converter on a small tree in Aubry et al.'s layout that the test writes itself.

Each fake chair is a dark block on a transparent (-> white) background: its gray level is the chair's
number, its column the azimuth and its row the elevation, so the pixels show which factor varies.
"""

import dataclasses
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from dcign_tf import io_utils
from dcign_tf.data import input_pipeline
from dcign_tf.data.sources import chairs, common
from dcign_tf.data.records import DatasetInfo
from data_checks import file_bytes, read_groups

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_CHAIRS = 7
ELEVATIONS = (20, 30)
AZIMUTHS = (0, 45, 90, 135, 180, 225, 270, 315)
SOURCE_WIDTH, SOURCE_HEIGHT = 64, 48  # Not square: the converter pads to 64x64, then halves to 32x32.
CONFIG = chairs.ChairsConfig(image_size=32, group_size=3, num_test_chairs=3, num_shards=2, seed=5)
FLAGS = ["--image_size=32", "--group_size=3", "--num_test_chairs=3", "--num_shards=2", "--seed=5"]


def chair_gray(chair: int) -> int:
    return 10 + 30 * chair


def model_name(chair: int) -> str:
    return f"{chair:02d}{'abcdef0123456789'[chair]}e3f1c2d"  # Folder names sort in chair order.


def write_chair_tree(root, num_chairs=NUM_CHAIRS):
    """rendered_chairs/<model>/renders/image_NNN_pPPP_tTTT_r096.png, RGBA with a transparent background."""
    for chair in range(num_chairs):
        renders = os.path.join(root, model_name(chair), "renders")
        os.makedirs(renders)
        number = 0
        for elevation in ELEVATIONS:
            for azimuth in AZIMUTHS:
                image = np.zeros((SOURCE_HEIGHT, SOURCE_WIDTH, 4), np.uint8)  # transparent
                top, left = 4 + (elevation - 20), 4 + azimuth // 9  # block position: elevation, azimuth
                image[top:top + 12, left:left + 12] = (chair_gray(chair),) * 3 + (255,)
                Image.fromarray(image, "RGBA").save(
                    os.path.join(renders, f"image_{number:03d}_p{elevation:03d}_t{azimuth:03d}_r096.png"))
                number += 1
    with open(os.path.join(root, "all_chair_names.mat"), "wb") as file:  # A stray file next to the chairs.
        file.write(b"not a chair")
    return str(root)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return write_chair_tree(tmp_path_factory.mktemp("rendered_chairs"))


@pytest.fixture(scope="module")
def converted(source, tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("chairs"))
    chairs.convert(source, data_dir, CONFIG, processes=1)
    return data_dir


def block_position(image):
    """(top row, left column) of the dark block; its gray level is the block's minimum."""
    rows, columns = np.nonzero(image < 250)
    return rows.min(), columns.min()


def test_dataset_json_split_and_identity_table(converted):
    info = DatasetInfo.load(converted)
    assert info.factor_names == ("azimuth", "identity")
    assert info.factors[0].units == "radians" and info.factors[1].range is None
    assert info.factors[0].range == pytest.approx((0.0, np.radians(315)))
    assert dict(info.latent_layout) == {"azimuth": (0,), "identity": "rest"}
    assert (info.image_size, info.group_size, info.num_shards) == (32, 3, 2)
    # 4 training and 3 test chairs; azimuth groups: chairs x 2 elevations x floor(8 / 3); identity groups:
    # 16 views x floor(chairs / 3).
    assert info.splits == {"train": {"azimuth": 16, "identity": 16}, "test": {"azimuth": 12, "identity": 16}}
    assert info.generator["num_chairs"] == NUM_CHAIRS and info.generator["elevations_degrees"] == (20, 30)

    with open(os.path.join(converted, chairs.IDENTITIES_FILE)) as file:
        rows = [line.rstrip("\n").split("\t") for line in file][1:]
    assert [(int(chair), model) for chair, _, model in rows] == [(chair, model_name(chair)) for chair in range(7)]
    splits = {split: {int(chair) for chair, row_split, _ in rows if row_split == split} for split in ("train", "test")}
    assert len(splits["train"]) == 4 and len(splits["test"]) == 3 and not splits["train"] & splits["test"]
    # The split depends on the seed only.
    assert np.array_equal(chairs.split_chairs(7, 3, 5)["test"], sorted(splits["test"]))
    assert any(not np.array_equal(chairs.split_chairs(7, 3, seed)["test"], sorted(splits["test"]))
               for seed in range(6, 12))
    assert not [name for name in os.listdir(os.path.join(converted, "train")) if io_utils.TEMP_INFIX in name]


def test_each_group_varies_only_its_factor_and_images_match_their_labels(converted):
    info = DatasetInfo.load(converted)
    with open(os.path.join(converted, chairs.IDENTITIES_FILE)) as file:
        split_of = {int(line.split("\t")[0]): line.split("\t")[1] for line in list(file)[1:]}
    for split in ("train", "test"):
        for factor in ("azimuth", "identity"):
            groups = read_groups(converted, split, factor)
            assert len(groups) == info.num_groups(split, factor)
            for images, values, identity, active in groups:
                assert active == factor and images.shape == (3, 32, 32)
                assert np.array_equal(values[:, 1], identity)
                assert all(split_of[chair] == split for chair in identity)
                assert np.all(images[:, 0, 0] == 255)  # white background kept, padding included
                for image, chair in zip(images, identity):
                    assert image.min() == chair_gray(chair)  # the right chair's render
                positions = [block_position(image) for image in images]
                azimuth_degrees = np.round(np.degrees(values[:, 0])).astype(int)
                assert set(azimuth_degrees) <= set(AZIMUTHS)
                if factor == "azimuth":
                    assert len(set(identity)) == 1 and len(set(azimuth_degrees)) == 3
                    assert list(azimuth_degrees) == sorted(azimuth_degrees)
                    assert len({row for row, _ in positions}) == 1  # one elevation
                    columns = [column for _, column in positions]
                    assert columns == sorted(columns) and len(set(columns)) == 3  # the block moves with azimuth
                else:
                    assert len(set(identity)) == 3 and len(set(azimuth_degrees)) == 1
                    assert len(set(positions)) == 1  # one view


def test_output_is_deterministic_reruns_do_nothing_and_conflicts_are_refused(source, converted, tmp_path):
    parallel = str(tmp_path / "parallel")
    chairs.convert(source, parallel, CONFIG, processes=2)
    assert file_bytes(parallel) == file_bytes(converted)

    stats = {name: os.stat(os.path.join(parallel, name)).st_ino for name in os.listdir(parallel)}
    chairs.convert(source, parallel, CONFIG, processes=2)  # same flags: already complete
    assert {name: os.stat(os.path.join(parallel, name)).st_ino for name in os.listdir(parallel)} == stats

    before = file_bytes(parallel)
    with pytest.raises(common.OutputConflictError, match="was made with other settings"):
        chairs.convert(source, parallel, dataclasses.replace(CONFIG, seed=6))
    assert file_bytes(parallel) == before

    inverted = str(tmp_path / "inverted")
    chairs.convert(source, inverted, dataclasses.replace(CONFIG, invert=True),
                        processes=1)
    images = read_groups(inverted, "test", "identity")[0][0]
    assert np.all(images[:, 0, 0] == 0)


def test_the_input_pipeline_reads_it(converted):
    for split in ("train", "test"):
        input_pipeline.check_shards(converted, split)
    batch = next(iter(input_pipeline.make_dataset(converted, "train", 2, deterministic=True, seed=1)))
    assert batch["images"].shape == (2, 3, 32, 32, 1)
    assert float(tf.reduce_max(batch["images"])) == 1.0  # white background


def run_cli(*args):
    result = subprocess.run([sys.executable, "-m", "dcign_tf.data.make_chairs", *args], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    return result.returncode, result.stderr


def assert_one_line_error(code, stderr, *fragments):
    assert code == 2, stderr
    assert "Traceback" not in stderr
    error_lines = [line for line in stderr.splitlines() if line.startswith("dcign_tf.data.make_chairs: error:")]
    assert len(error_lines) == 1, stderr
    for fragment in fragments:
        assert fragment in error_lines[0], error_lines[0]


def test_bad_input_gives_one_line_and_exit_2(source, tmp_path):
    out = str(tmp_path / "out")
    # Missing source; a chair's own folder instead of the tree; no renders/ folder.
    assert_one_line_error(*run_cli(f"--src={tmp_path}/nowhere", f"--data_dir={out}", *FLAGS),
                          "no such directory", "rendered_chairs")
    assert_one_line_error(*run_cli(f"--src={source}/{model_name(0)}", f"--data_dir={out}", *FLAGS),
                          "one chair's folder")
    wrong = tmp_path / "wrong"
    (wrong / "somechair" / "images").mkdir(parents=True)
    assert_one_line_error(*run_cli(f"--src={wrong}", f"--data_dir={out}", *FLAGS), "no renders/ folder",
                          "image_NNN_pPPP_tTTT_rRRR.png")
    # A badly named render.
    misnamed = write_chair_tree(tmp_path / "misnamed", num_chairs=4)
    os.rename(os.path.join(misnamed, model_name(1), "renders", "image_000_p020_t000_r096.png"),
              os.path.join(misnamed, model_name(1), "renders", "chair_000.png"))
    assert_one_line_error(*run_cli(f"--src={misnamed}", f"--data_dir={out}", "--num_test_chairs=2", "--group_size=2"),
                          "chair_000.png", "unexpected file name")
    # A missing render; an unreadable one.
    incomplete = write_chair_tree(tmp_path / "incomplete", num_chairs=4)
    os.remove(os.path.join(incomplete, model_name(2), "renders", "image_009_p030_t045_r096.png"))
    assert_one_line_error(*run_cli(f"--src={incomplete}", f"--data_dir={out}", "--num_test_chairs=2",
                                   "--group_size=2"), model_name(2), "15 of the 16 views", "p030_t045")
    corrupt = write_chair_tree(tmp_path / "corrupt", num_chairs=4)
    broken = os.path.join(corrupt, model_name(3), "renders", "image_004_p020_t180_r096.png")
    with open(broken, "wb") as file:
        file.write(b"\x89PNG\r\n\x1a\n truncated")
    assert_one_line_error(*run_cli(f"--src={corrupt}", f"--data_dir={out}", "--num_test_chairs=2", "--group_size=2",
                                   "--processes=2"), broken, "unreadable image")
    # Too small for the group size: 8 azimuths per chair and elevation; 3 test chairs.
    assert_one_line_error(*run_cli(f"--src={source}", f"--data_dir={out}", "--group_size=9", "--num_test_chairs=1"),
                          "only azimuth varies", "at most 8", "--group_size")
    assert_one_line_error(*run_cli(f"--src={source}", f"--data_dir={out}", "--group_size=4", "--num_test_chairs=3"),
                          "split 'test' has 3 chairs", "fewer than --group_size=4")
    assert_one_line_error(*run_cli(f"--src={source}", f"--data_dir={out}", "--image_size=8"), "--image_size")
    assert not os.path.exists(out)  # Nothing written by a failed conversion.


def test_command_line_converts_and_refuses_another_dataset(source, converted, tmp_path):
    out = str(tmp_path / "cli")
    code, stderr = run_cli(f"--src={source}", f"--data_dir={out}", *FLAGS, "--processes=2")
    assert code == 0, stderr
    assert file_bytes(out) == file_bytes(converted)
    assert_one_line_error(*run_cli(f"--src={source}", f"--data_dir={out}", *FLAGS[:-1], "--seed=9"),
                          "was made with other settings")


def test_configs_chairs_flags_train_on_the_converted_set(converted, tmp_path):
    """configs/chairs.flags as shipped (prebuilt data, azimuth=0,identity=rest), shrunk to the tiny set."""
    result = subprocess.run(
        [sys.executable, "-m", "dcign_tf.train", "--flagfile=configs/chairs.flags", f"--data_dir={converted}",
         f"--workdir={tmp_path / 'run'}", "--image_size=32", "--group_size=3", "--num_latents=8",
         "--encoder_filters=4,4,4", "--decoder_filters=4,4,4", "--steps=3", "--log_every=1", "--eval_every=3",
         "--eval_batches=1", "--image_every=3", "--checkpoint_every=3", "--shuffle_buffer=8", "--progress=log"],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "trained: 3/3 steps" in result.stderr  # the progress line of the last step
