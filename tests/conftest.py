"""Shared test set-up: quiet TensorFlow, and split the CPU into 4 logical devices before TF
initialises them, so that distribution tests can run MirroredStrategy on one machine."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

_cpus = tf.config.list_physical_devices("CPU")
try:
    tf.config.set_logical_device_configuration(_cpus[0], [tf.config.LogicalDeviceConfiguration()] * 4)
except RuntimeError:
    pass  # Devices were initialised already (e.g. a plugin imported TF first); tests needing 4 devices skip.


import pytest  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def faces_dataset(tmp_path_factory):
    """The faces set configs/test.flags asks for, built once per session (32x32, groups of 4)."""
    from dcign_tf import config as config_lib
    from dcign_tf.data.sources import faces
    from dcign_tf.train import faces_config

    data_dir = str(tmp_path_factory.mktemp("faces_test"))
    config = config_lib.from_flagfile(os.path.join(REPO, "configs", "test.flags"))
    faces.generate(data_dir, faces_config(config), progress=False)
    return data_dir
