"""The committed quickstart model (pretrained/faces_small): present, small, and still meeting the
quickstart's targets on test faces generated afresh. A regression test of the faces generator, the
evaluation and the export format together."""

import json
import os

import numpy as np
import pytest

from dcign_tf import export as export_lib
from dcign_tf import pretrained
from dcign_tf.analysis import scores, selection
from dcign_tf.data import records
from dcign_tf.data.sources import faces
from tests.data_checks import read_groups

SCENE_FACTORS = ("azimuth", "elevation", "light")
TEST_GROUPS_PER_FACTOR = 8  # 640 images: seconds to make and to score


def test_the_pretrained_model_is_complete_and_under_10_mb():
    names = set(os.listdir(pretrained.PRETRAINED_DIR))
    assert {export_lib.KERAS_FILE, export_lib.SAVED_MODEL_DIR, export_lib.INFO_FILE, "flags.txt", "metrics.json",
            "COMMAND"} <= names
    size = sum(os.path.getsize(os.path.join(root, name))
               for root, _, files in os.walk(pretrained.PRETRAINED_DIR) for name in files)
    assert size <= 10e6, f"{size / 1e6:.1f} MB"
    command = open(os.path.join(pretrained.PRETRAINED_DIR, "COMMAND"), encoding="utf-8").read()
    assert "dcign_tf.train" in command and "configs/faces_small.flags" in command


def test_the_pretrained_model_meets_the_quickstart_targets_on_fresh_test_faces(tmp_path):
    data_dir = pretrained.ensure_test_faces(str(tmp_path / "faces"), test_groups_per_factor=TEST_GROUPS_PER_FACTOR,
                                            log=lambda line: None)
    dataset = records.DatasetInfo.load(data_dir)
    model, info = export_lib.load_model(pretrained.PRETRAINED_DIR)
    sample = selection.load_test_sample(data_dir, dataset, 0)
    selection.check_model(model, sample, pretrained.PRETRAINED_DIR)
    assert sample.num_images == TEST_GROUPS_PER_FACTOR * len(dataset.factor_names) * dataset.group_size

    references = scores.stranger_references(sample.images, selection.same_view_groups(sample))
    analysis = scores.analyse(model, sample, selection.novel_view_pairs_by_factor(sample, 2, seed=0),
                              selection.mse_rows(sample.num_images, 0, seed=0), selection.sweep_rows(sample, 2),
                              sweep_steps=3, stranger_mse=references["stranger_mse"], calibrate=False)
    spearman = {factor: analysis.metrics["equivariance"][factor]["spearman"] for factor in SCENE_FACTORS}
    assert all(abs(value) >= 0.9 for value in spearman.values()), spearman

    # The same model on its whole test split (metrics.json, committed beside it): the fresh subset agrees.
    committed = json.load(open(os.path.join(pretrained.PRETRAINED_DIR, "metrics.json"), encoding="utf-8"))
    for factor in SCENE_FACTORS:
        assert abs(spearman[factor] - committed["equivariance"][factor]["spearman"]) < 0.05, (factor, spearman)
    retention = analysis.metrics["identity_retention"]["reconstruction"]
    committed_retention = committed["identity_retention"]["reconstruction"]  # {dcign, baseline} when paired
    committed_retention = committed_retention.get("dcign", committed_retention) if isinstance(
        committed_retention, dict) else committed_retention
    assert abs(retention - committed_retention) < 0.1, retention
    assert info["step"] == committed["step"]


def test_the_cut_set_holds_exactly_the_first_test_groups_of_the_full_one(tmp_path):
    """What ensure_test_faces relies on: a group depends on (seed, split, factor, index) only."""
    full = faces.FacesConfig(image_size=32, group_size=3, groups_per_factor=3, test_groups_per_factor=3,
                             num_shards=2, seed=5)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "flags.txt").write_text(
        "--dataset=faces\n--image_size=32\n--group_size=3\n--dataset_groups_per_factor=3\n"
        "--dataset_test_groups_per_factor=3\n--dataset_num_shards=2\n--dataset_seed=5\n")
    assert pretrained.faces_settings(str(tmp_path / "run"), test_groups_per_factor=2) == faces.FacesConfig(
        image_size=32, group_size=3, groups_per_factor=1, test_groups_per_factor=2, num_shards=1, seed=5)
    faces.generate(str(tmp_path / "full"), full, processes=1)
    cut = pretrained.ensure_test_faces(str(tmp_path / "cut"), str(tmp_path / "run"), test_groups_per_factor=2,
                                       log=lambda line: None)
    assert pretrained.ensure_test_faces(cut, str(tmp_path / "run"), test_groups_per_factor=2,
                                        log=lambda line: None) == cut  # the second call reuses it
    for factor in faces.FACTOR_NAMES:
        expected, got = read_groups(str(tmp_path / "full"), "test", factor)[:2], read_groups(cut, "test", factor)
        assert len(got) == 2
        for (images, values, _, active), (cut_images, cut_values, _, cut_active) in zip(expected, got):
            np.testing.assert_array_equal(images, cut_images)
            np.testing.assert_array_equal(values[:, :3], cut_values[:, :3])  # the angles; identity ids are renumbered
            assert active == cut_active


def test_a_run_not_trained_on_faces_is_refused(tmp_path):
    (tmp_path / "flags.txt").write_text("--dataset=prebuilt\n--image_size=64\n")
    with pytest.raises(ValueError, match="not the faces generator"):
        pretrained.faces_settings(str(tmp_path))
