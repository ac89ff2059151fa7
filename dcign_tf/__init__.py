"""DC-IGN: Deep Convolutional Inverse Graphics Network in Keras 3 / TensorFlow."""
