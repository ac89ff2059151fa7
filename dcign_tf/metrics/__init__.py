"""Disentanglement and reconstruction metrics."""
from dcign_tf.metrics.disentanglement import dci, disentanglement_scores, mig, sap
from dcign_tf.metrics.equivariance import equivariance, invariance

__all__ = ["mig", "sap", "dci", "disentanglement_scores", "equivariance", "invariance"]
