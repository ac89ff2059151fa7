"""DC-IGN: Deep Convolutional Inverse Graphics Network in Keras 3 / TensorFlow."""

import os

# Fewer of TensorFlow's C++ start-up lines (TF 2.21 prints some regardless);
# set TF_CPP_MIN_LOG_LEVEL=0 to see them.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
