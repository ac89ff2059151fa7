"""Benchmark references (not installed with the package): see dcign_tf.bench."""
