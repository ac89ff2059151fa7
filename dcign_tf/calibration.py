"""Calibration: a linear map from a scene factor's value (dataset units, radians) to its latent.

`python -m dcign_tf.evaluate` fits one line per factor with a numeric range on the test set,

    latent value (posterior mean) = slope * factor value + intercept,

and saves it into the export's model_info.json as

    "calibration": {"azimuth": {"slope": s, "intercept": b, "latent": index, "r2": R^2}, ...}

so that `python -m dcign_tf.render --set azimuth=0.8` can turn 0.8 rad into a latent value.
`r2` is the fit's coefficient of determination: how much of the latent's variance the factor's
value explains linearly (near 1 for a latent that tracks its factor, near 0 for one that does not).

Pure numpy; nothing here imports TensorFlow (the render CLI checks its input before loading TF).
"""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np

KEYS = ("slope", "intercept", "latent", "r2")


class CalibrationError(ValueError):
    """A calibration that cannot be fitted or used; the message says which factor and why."""


def fit_line(values, latent_values) -> dict:
    """Least-squares line latent = slope * value + intercept.

    Args:
      values: [N] the factor's true values (dataset units, e.g. radians).
      latent_values: [N] the chosen latent's posterior means for the same images.

    Returns:
      {"slope", "intercept", "r2"} as floats. r2 is 0 when the latent is constant (the best line is
      flat). CalibrationError when there are fewer than 2 points, a non-finite value, or the
      factor's value is constant (no line through one x).
    """
    values = np.asarray(values, np.float64).reshape(-1)
    latent_values = np.asarray(latent_values, np.float64).reshape(-1)
    if values.shape != latent_values.shape:
        raise CalibrationError(f"values and latent values differ in length: {values.size} vs {latent_values.size}")
    if values.size < 2:
        raise CalibrationError(f"need at least 2 points to fit a line, got {values.size}")
    if not (np.all(np.isfinite(values)) and np.all(np.isfinite(latent_values))):
        raise CalibrationError("values or latent values are not finite")
    centred_values = values - values.mean()
    spread = float(centred_values @ centred_values)
    if spread == 0.0:
        raise CalibrationError("the factor's value is the same for every image; no line can be fitted")
    centred_latents = latent_values - latent_values.mean()
    slope = float(centred_values @ centred_latents) / spread
    intercept = float(latent_values.mean() - slope * values.mean())
    latent_spread = float(centred_latents @ centred_latents)
    residual = centred_latents - slope * centred_values
    r2 = 0.0 if latent_spread == 0.0 else max(0.0, 1.0 - float(residual @ residual) / latent_spread)
    return {"slope": slope, "intercept": intercept, "r2": r2}


def fit_calibration(factor_values: Mapping[str, np.ndarray], codes: np.ndarray,
                    factor_latents: Mapping[str, int]) -> dict:
    """One line per factor.

    Args:
      factor_values: factor name -> [N] true values (only factors with a numeric range).
      codes: [N, L] posterior means of the same N images.
      factor_latents: factor name -> the latent index chosen for it (see analysis.selection.choose_latents).

    Returns:
      {factor: {"slope", "intercept", "latent", "r2"}}, the model_info.json "calibration" field.
    """
    codes = np.asarray(codes)
    calibration = {}
    for factor, values in factor_values.items():
        latent = int(factor_latents[factor])
        try:
            line = fit_line(values, codes[:, latent])
        except CalibrationError as error:
            raise CalibrationError(f"{factor}: {error}") from None
        calibration[factor] = {**line, "latent": latent}
    return calibration


def check(calibration: Mapping, num_latents: int | None = None) -> dict:
    """Validates a calibration read from model_info.json; returns it as {factor: dict}."""
    if not isinstance(calibration, Mapping):
        raise CalibrationError(f"calibration must be a mapping of factor -> line, got {type(calibration).__name__}")
    for factor, line in calibration.items():
        if not isinstance(line, Mapping) or any(key not in line for key in KEYS):
            raise CalibrationError(f"calibration of {factor!r} must have {list(KEYS)}, got {line!r}")
        if not all(isinstance(line[key], (int, float)) and math.isfinite(line[key]) for key in KEYS):
            raise CalibrationError(f"calibration of {factor!r} has a non-numeric or non-finite entry: {dict(line)}")
        if num_latents is not None and not 0 <= int(line["latent"]) < num_latents:
            raise CalibrationError(f"calibration of {factor!r} names latent {line['latent']}, "
                                   f"outside 0..{num_latents - 1}")
    return {factor: dict(line) for factor, line in calibration.items()}


def value_to_latent(line: Mapping, value):
    """Factor value(s) in dataset units -> latent value(s): slope * value + intercept."""
    return line["slope"] * np.asarray(value, np.float64) + line["intercept"]


def latent_to_value(line: Mapping, latent_value):
    """The inverse of `value_to_latent`; CalibrationError for a flat line (slope 0)."""
    if line["slope"] == 0:
        raise CalibrationError("the calibration's slope is 0: the latent does not track the factor")
    return (np.asarray(latent_value, np.float64) - line["intercept"]) / line["slope"]


def save(export_dir: str, calibration: Mapping) -> dict:
    """Writes `calibration` into {export_dir}/model_info.json (atomically); returns the new info."""
    from dcign_tf import export as export_lib  # Lazy: it loads TensorFlow.

    return export_lib.update_info(export_dir, calibration=check(calibration))
