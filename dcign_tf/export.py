"""The exported model: `export/dcign.keras`, a SavedModel with `encode` and `decode` signatures
(for TF Serving), and `export/model_info.json` (factors, layout, dataset units, calibration)."""

from __future__ import annotations

import json
import os
import shutil

import keras
import tensorflow as tf

from dcign_tf import io_utils
from dcign_tf import model as model_lib  # noqa: F401 - registers DCIGN for keras.models.load_model
from dcign_tf.optimizer import DCIGNRMSprop  # noqa: F401 - registers the optimizer likewise

KERAS_FILE = "dcign.keras"
SAVED_MODEL_DIR = "saved_model"
INFO_FILE = "model_info.json"


class ExportError(ValueError):
    """A missing or unreadable export; the message names the path."""


def export_model(model, export_dir: str, info: dict) -> None:
    """Writes the export atomically: into a temporary directory, then renamed over `export_dir`.

    Args:
      model: a trained `DCIGN`.
      export_dir: e.g. `{workdir}/export`.
      info: JSON-serialisable facts for users of the export (factor names, ranges and units,
        the latent layout, the training step, and later the calibration).
    """
    temporary = f"{export_dir}.tmp-{os.getpid()}"
    shutil.rmtree(temporary, ignore_errors=True)
    os.makedirs(temporary)
    try:
        _write_export(model, temporary, info)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)  # e.g. a full disk: leave nothing half-written behind
        raise
    replace_directory(temporary, export_dir)


def inference_copy(model):
    """The model's architecture and weights without its optimizer state (two thirds of the bytes): an
    export serves inference, and the checkpoints keep what training needs to resume."""
    copy = type(model).from_config(model.get_config())
    copy.set_weights(model.get_weights())
    return copy


def _write_export(model, temporary: str, info: dict) -> None:
    model = inference_copy(model)
    model.save(os.path.join(temporary, KERAS_FILE))
    size = model.config.image_size
    archive = keras.export.ExportArchive()
    # No archive.track(model): the endpoints track the variables they use, and track() would store every
    # weight a second time (keras-team/keras#23553: Keras wrappers and tf.Variables are not deduplicated).
    archive.add_endpoint(
        "encode", lambda images: dict(zip(["mean", "log_variance"], model.encode(images))),
        input_signature=[tf.TensorSpec([None, size, size, 1], tf.float32, name="images")])
    archive.add_endpoint(
        "decode", lambda latents: {"images": model.decode(latents)},
        input_signature=[tf.TensorSpec([None, model.config.num_latents], tf.float32, name="latents")])
    archive.write_out(os.path.join(temporary, SAVED_MODEL_DIR), verbose=False)
    io_utils.write_json_atomic(os.path.join(temporary, INFO_FILE), info)


def load_model(export_dir: str):
    """Loads an export: returns (DCIGN model, info dict)."""
    keras_path = os.path.join(export_dir, KERAS_FILE)
    if not os.path.exists(keras_path):
        raise ExportError(f"no exported model at {keras_path}; train the run to completion first "
                          "(python -m dcign_tf.train ...) or pass the run's export directory")
    try:
        model = keras.models.load_model(keras_path, compile=False)
    except Exception as error:  # noqa: BLE001 - any failure to read is reported as one line
        raise ExportError(f"cannot load {keras_path}: {type(error).__name__}: {error}") from None
    return model, read_info(export_dir)


def read_info(export_dir: str) -> dict:
    path = os.path.join(export_dir, INFO_FILE)
    if not os.path.exists(path):
        raise ExportError(f"{path} is missing; re-export the run")
    with open(path, encoding="utf-8") as file:
        return json.load(file)


def update_info(export_dir: str, **fields) -> dict:
    """Adds fields (e.g. a calibration) to an export's model_info.json, atomically."""
    info = read_info(export_dir)
    info.update(fields)
    io_utils.write_json_atomic(os.path.join(export_dir, INFO_FILE), info)
    return info


def replace_directory(source: str, target: str) -> None:
    """Renames `source` to `target`, replacing an existing `target` with only a brief window."""
    previous = f"{target}.old-{os.getpid()}"
    if os.path.exists(target):
        os.rename(target, previous)
    os.rename(source, target)
    shutil.rmtree(previous, ignore_errors=True)
