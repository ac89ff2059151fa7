"""Datasets: the procedural face model, the renderer, the record format and the input pipeline."""
