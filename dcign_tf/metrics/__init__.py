"""Disentanglement and reconstruction metrics."""
