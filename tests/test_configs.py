"""Every shipped config parses, validates and builds its model: a typo in a flagfile fails here, not in a user's run."""

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
    model = DCIGN(**config.model_kwargs(factors))
    assert model.config.image_size == config.image_size


def test_faces_small_keeps_its_promises():
    """The quickstart is sized for the README's CPU budget and uses the switch-node fix."""
    config = config_lib.from_flagfile(os.path.join(REPO, "configs", "faces_small.flags"))
    assert (config.image_size, config.workdir, config.data_dir) == (64, "runs/faces_small", "data/faces_small")
    assert config.mirror_factor_list == ["azimuth", "light"] and config.mode == "dcign"
    paper = config_lib.from_flagfile(os.path.join(REPO, "configs", "faces.flags"))
    assert (paper.image_size, paper.num_latents, paper.invariance_weight, paper.mirror_factors) == (150, 200, 0.01, "")
