"""Every shipped config parses, validates and builds its model: a typo in a flagfile fails here, not in a user's run."""

import dataclasses
import glob
import os

import pytest

from dcign_tf import config as config_lib
from dcign_tf import latents
from dcign_tf.model import DCIGN

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Training configs; configs/study_*.flags describe studies (dcign_tf.study), checked in tests/test_study.py.
CONFIGS = sorted(path for path in glob.glob(os.path.join(REPO, "configs", "*.flags"))
                 if not os.path.basename(path).startswith("study_"))


def test_the_documented_configs_ship():
    names = {os.path.basename(path) for path in CONFIGS}
    assert {"test.flags", "faces_small.flags", "faces.flags", "chairs.flags", "smallnorb.flags"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_config_parses_validates_and_builds_its_model(path):
    config = config_lib.from_flagfile(path)
    config.validate()
    factors = latents.LatentLayout.parse(config.latent_layout, config.num_latents).factors
    model = DCIGN(factors, config.model_config())
    assert model.config.image_size == config.image_size


def test_faces_small_keeps_its_promises():
    """The quickstart is sized for the README's CPU budget and uses the switch-node fix."""
    config = config_lib.from_flagfile(os.path.join(REPO, "configs", "faces_small.flags"))
    assert (config.image_size, config.workdir, config.data_dir) == (64, "runs/faces_small", "data/faces_small")
    assert config.mirror_factors == ("azimuth", "light") and config.mode == "dcign"
    paper = config_lib.from_flagfile(os.path.join(REPO, "configs", "faces.flags"))
    assert (paper.image_size, paper.num_latents, paper.invariance_weight, paper.mirror_factors) == (150, 200, 0.01, ())


def test_lists_are_tuples_converted_once_from_flag_text_and_written_back():
    config = config_lib.from_flagfile(os.path.join(REPO, "configs", "faces_small.flags"))
    assert config.encoder_filters == (64, 32, 24) and config.decoder_filters == (32, 48, 48)
    assert config_lib.parse_value("factor_weights", "identity=2, light=0.5") == (("identity", 2.0), ("light", 0.5))
    weighted = config_lib.TrainConfig(factor_weights=(("identity", 2.0),), mirror_factors=["azimuth"])
    assert weighted.mirror_factors == ("azimuth",)  # a list given from Python is stored as a tuple
    lines = weighted.to_flagfile().splitlines()
    assert "--factor_weights=identity=2" in lines and "--mirror_factors=azimuth" in lines
    assert "--encoder_filters=96,48,24" in lines and "--mirror_weight=1.0" in lines
    path = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"test_configs_{os.getpid()}.flags")
    try:
        with open(path, "w") as file:
            file.write(weighted.to_flagfile())
        assert config_lib.from_flagfile(path) == weighted
    finally:
        os.remove(path)
    with pytest.raises(config_lib.ConfigError, match="takes a tuple"):
        config_lib.TrainConfig(encoder_filters="96,48,24")
    with pytest.raises(config_lib.ConfigError, match="comma-separated integers"):
        config_lib.parse_value("encoder_filters", "96,x,24")
    with pytest.raises(config_lib.ConfigError, match="is not FACTOR=WEIGHT"):
        config_lib.parse_value("factor_weights", "identity")


@pytest.mark.parametrize("size, accepted", [(31, False), (32, True), (150, True), (256, True), (257, False)])
def test_one_set_of_image_size_bounds_for_the_model_and_the_training_job(size, accepted):
    message = f"--image_size must be in {config_lib.MIN_IMAGE_SIZE}..{config_lib.MAX_IMAGE_SIZE}"
    for make in (lambda: config_lib.ModelConfig(image_size=size),
                 lambda: config_lib.TrainConfig(image_size=size, encoder_padding="same")):
        if accepted:
            make()
        else:
            with pytest.raises(config_lib.ConfigError, match=message):
                make()


def test_the_training_config_makes_the_model_config_it_states():
    config = config_lib.TrainConfig(mirror_factors=("azimuth",), mode="baseline", seed=4)
    model_config = config.model_config()
    assert isinstance(model_config, config_lib.ModelConfig)
    assert (model_config.image_size, model_config.mode, model_config.mirror_factors, model_config.seed) == (
        64, "baseline", ("azimuth",), 4)
    assert set(config_lib.MODEL_FIELDS) == {f.name for f in dataclasses.fields(config_lib.ModelConfig)} - {
        "decoder_implementation"}
