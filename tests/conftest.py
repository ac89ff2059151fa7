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
