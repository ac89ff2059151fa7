"""Disentanglement and reconstruction metrics."""
from dcign_tf.metrics.disentanglement import (dci, dci_many, disentanglement_scores, disentanglement_scores_many,
                                            mig, sap)
from dcign_tf.metrics.equivariance import equivariance, invariance

__all__ = ["mig", "sap", "dci", "dci_many", "disentanglement_scores", "disentanglement_scores_many", "equivariance",
           "invariance"]
