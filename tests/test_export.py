"""The export: the trained weights without the optimizer's state, readable by Keras and by TF Serving."""

import os
import zipfile

import h5py
import numpy as np
import tensorflow as tf

from dcign_tf import export as export_lib
from dcign_tf.model import DCIGN, ModelConfig
from dcign_tf.optimizer import DCIGNRMSprop

FACTORS = ["azimuth", "light", "identity"]


def trained_tiny_model():
    model = DCIGN(FACTORS, ModelConfig(latent_layout="azimuth=0,light=1,identity=rest", image_size=32, num_latents=6,
                                       encoder_filters=(4, 4, 4), decoder_filters=(4, 4, 4)))
    model.compile(optimizer=DCIGNRMSprop(learning_rate=1e-2))
    images = np.random.default_rng(0).uniform(size=(2, 3, 32, 32, 1)).astype(np.float32)
    batch = {"images": images, "active_factor": np.array([0, 2], np.int32)}
    model.fit(tf.data.Dataset.from_tensors(batch).repeat(2), epochs=1, verbose=0)
    assert any(np.any(v.numpy() != 0) for v in model.optimizer.variables[1:])  # it has state to leave out
    return model


def test_the_export_holds_the_weights_and_not_the_optimizer_state(tmp_path):
    model = trained_tiny_model()
    export_dir = str(tmp_path / "export")
    export_lib.export_model(model, export_dir, {"step": 1})

    with zipfile.ZipFile(os.path.join(export_dir, export_lib.KERAS_FILE)) as archive:
        archive.extract("model.weights.h5", tmp_path)
    with h5py.File(tmp_path / "model.weights.h5") as weights:
        assert "optimizer" not in weights and {"encoder", "decoder"} <= set(weights)

    loaded, info = export_lib.load_model(export_dir)
    assert info == {"step": 1}
    for saved, trained in zip(loaded.get_weights(), model.get_weights(), strict=True):
        np.testing.assert_array_equal(saved, trained)
    images = np.random.default_rng(1).uniform(size=(2, 32, 32, 1)).astype(np.float32)
    serving = tf.saved_model.load(os.path.join(export_dir, export_lib.SAVED_MODEL_DIR))
    np.testing.assert_allclose(serving.signatures["encode"](images=tf.constant(images))["mean"].numpy(),
                               model.encode(images)[0].numpy(), rtol=1e-5, atol=1e-6)
    # Each weight is stored once (keras-team/keras#23553 stores them twice when the model is tracked).
    reader = tf.train.load_checkpoint(os.path.join(export_dir, export_lib.SAVED_MODEL_DIR, "variables", "variables"))
    stored = sum(int(np.prod(shape)) for name, shape in reader.get_variable_to_shape_map().items()
                 if "OBJECT_GRAPH" not in name)
    assert stored == sum(int(np.prod(v.shape)) for v in model.encoder.weights + model.decoder.weights)
    np.testing.assert_allclose(serving.signatures["decode"](latents=tf.zeros([1, 6]))["images"].numpy(),
                               model.decode(tf.zeros([1, 6])).numpy(), rtol=1e-5, atol=1e-6)
    assert not [name for name in os.listdir(tmp_path) if ".tmp-" in name]
