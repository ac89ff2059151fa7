"""DC-IGN: Deep Convolutional Inverse Graphics Network in Keras 3 / TensorFlow."""

import os

# TensorFlow's C++ start-up INFO/WARNING lines (oneDNN, CUDA probing) bury the job's own log;
# set TF_CPP_MIN_LOG_LEVEL=0 to see them.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
