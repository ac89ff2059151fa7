"""The network's shapes and the paper's gradient rewrite, checked numerically."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from dcign_tf import model as model_lib
from dcign_tf.model import DCIGN, ModelConfig
from dcign_tf.optimizer import DCIGNRMSprop

FACTORS = ["azimuth", "light", "identity"]
LAYOUT = "azimuth=0,light=1,identity=rest"


def tiny_model(mode="dcign", image_size=32, **kwargs):
    return DCIGN(FACTORS, ModelConfig(latent_layout=LAYOUT, image_size=image_size, num_latents=6,
                                      encoder_filters=(4, 4, 4), decoder_filters=(4, 4, 4), mode=mode, **kwargs))


def fixed_batch(groups=2, group_size=3, size=32, active=(0, 2)):
    rng = np.random.default_rng(1)
    images = rng.uniform(size=(groups, group_size, size, size, 1)).astype(np.float32)
    return {"images": images, "active_factor": np.array(active, np.int32)}


@pytest.mark.parametrize("image_size", [32, 64, 128, 150])
def test_decoder_mirrors_the_encoder_at_every_size(image_size):
    network = tiny_model(image_size=image_size)
    images = np.random.default_rng(0).uniform(size=(2, image_size, image_size, 1)).astype(np.float32)
    reconstruction = network(images).numpy()
    assert reconstruction.shape == images.shape
    assert 0.0 <= reconstruction.min() and reconstruction.max() <= 1.0


def test_paper_architecture_at_150():
    config = ModelConfig()
    encoder = model_lib.build_encoder(config)
    decoder = model_lib.build_decoder(config)
    assert encoder.get_layer("pool3").output.shape[1:] == (15, 15, 24)   # 24 x 15 x 15 = 5400
    assert [encoder.get_layer(f"conv{i}").output.shape[1] for i in (1, 2, 3)] == [146, 69, 30]
    assert decoder.get_layer("reshape").output.shape[1:] == (15, 15, 24)
    assert [decoder.get_layer(f"deconv{i}").output.shape[1] for i in (1, 2, 3, 4)] == [24, 42, 78, 150]
    assert [decoder.get_layer(f"deconv{i}").filters for i in (1, 2, 3, 4)] == [48, 96, 96, 1]
    assert encoder.output[0].shape[-1] == 200
    with pytest.raises(ValueError):
        decoder.get_layer("crop")  # 150 fits exactly, no cropping


def test_small_images_fall_back_to_same_padding():
    assert ModelConfig(image_size=32).resolved_encoder_padding == "same"
    assert ModelConfig(image_size=64).resolved_encoder_padding == "valid"
    with pytest.raises(ValueError, match="too small"):
        ModelConfig(image_size=32, encoder_padding="valid")


def _reference_sgvb_gradients(network, batch, noise, mode):
    """d(mean per-image SGVB loss)/d(latent parameters), by plain autodiff on a hand-built clamp."""
    images = batch["images"]
    groups, group_size = images.shape[:2]
    flat = images.reshape(groups * group_size, *images.shape[2:])
    mean, log_variance = [t.numpy().reshape(groups, group_size, -1) for t in network.encoder(flat)]
    if mode == "dcign":
        active = network.layout.active_mask(FACTORS)[batch["active_factor"]][:, None, :].astype(bool)
        mean = np.where(active, mean, mean.mean(axis=1, keepdims=True))
        log_variance = np.where(active, log_variance, log_variance.mean(axis=1, keepdims=True))
    mean = tf.Variable(mean)
    log_variance = tf.Variable(log_variance)
    with tf.GradientTape() as tape:
        z = mean + tf.exp(0.5 * log_variance) * noise
        logits = network.decoder(tf.reshape(z, [groups * group_size, -1]))
        reconstruction, kl = model_lib.sgvb_terms(flat, logits, tf.reshape(mean, [groups * group_size, -1]),
                                                  tf.reshape(log_variance, [groups * group_size, -1]))
        loss = tf.reduce_mean(reconstruction + kl)
    return [g.numpy() for g in tape.gradient(loss, [mean, log_variance])]


def test_gradient_rewrite_matches_the_paper():
    network = tiny_model(invariance_weight=0.01)
    batch = fixed_batch()
    noise = tf.random.stateless_normal([2, 3, 6], seed=[3, 4])
    terms, _ = network.compute_gradients(batch, noise=noise)
    h = [terms["mean"].numpy(), terms["log_variance"].numpy()]
    rewritten = [g.numpy() for g in terms["latent_gradients"]]
    active = terms["active"].numpy().astype(bool)
    assert active[0, 0].tolist() == [True, False, False, False, False, False]    # azimuth group
    assert active[1, 0].tolist() == [False, False, True, True, True, True]       # identity group
    inactive = np.broadcast_to(~active, h[0].shape)
    global_batch = 6
    reference = _reference_sgvb_gradients(network, batch, noise, "dcign")
    for values, gradient, sgvb_gradient in zip(h, rewritten, reference):
        # Clamped latents: exactly invariance_weight * (h - group mean), per image of the summed objective.
        expected = 0.01 * (values - values.mean(axis=1, keepdims=True))
        np.testing.assert_allclose(gradient[inactive] * global_batch, expected[inactive], rtol=1e-4, atol=1e-7)
        assert np.abs(expected[inactive]).max() > 1e-4    # not trivially zero
        # Active latents: the ordinary SGVB gradient, unchanged.
        np.testing.assert_allclose(gradient[~inactive], sgvb_gradient[~inactive], rtol=1e-4, atol=1e-6)
        assert np.abs(sgvb_gradient[~inactive]).max() > 1e-4


def test_rewritten_gradient_reaches_the_encoder_weights():
    """The encoder's gradients are the backprop of the rewritten latent gradients, checked against
    an equivalent surrogate loss: SGVB on the stop-gradient clamp + (w/2)(h - mean)^2 on clamped latents."""
    network = tiny_model(invariance_weight=0.5)
    batch = fixed_batch()
    noise = tf.random.stateless_normal([2, 3, 6], seed=[5, 6])
    _, gradients = network.compute_gradients(batch, noise=noise)
    flat = batch["images"].reshape(6, 32, 32, 1)
    active = tf.constant(network.layout.active_mask(FACTORS)[batch["active_factor"]][:, None, :])
    with tf.GradientTape() as tape:
        mean, log_variance = [tf.reshape(t, [2, 3, -1]) for t in network.encoder(flat)]
        pinned = [active * v + (1 - active) * tf.stop_gradient(tf.reduce_mean(v, 1, keepdims=True))
                  for v in (mean, log_variance)]
        z = pinned[0] + tf.exp(0.5 * pinned[1]) * noise
        logits = network.decoder(tf.reshape(z, [6, -1]))
        reconstruction, kl = model_lib.sgvb_terms(flat, logits, tf.reshape(pinned[0], [6, -1]),
                                                  tf.reshape(pinned[1], [6, -1]))
        penalty = sum(tf.reduce_sum((1 - active) * tf.square(v - tf.stop_gradient(tf.reduce_mean(v, 1, keepdims=True))))
                      for v in (mean, log_variance))
        surrogate = (tf.reduce_sum(reconstruction + kl) + 0.5 * 0.5 * penalty) / 6
    expected = tape.gradient(surrogate, network.trainable_variables)
    for got, want in zip(gradients, expected):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=2e-4, atol=1e-6)


def test_invariance_gradient_pulls_toward_the_mean():
    """A gradient-descent step on the rewritten gradient moves clamped latents toward their mean
    (the released Torch code pushes them away)."""
    values = tf.constant([[[0.0], [1.0], [5.0]]])
    active = tf.zeros([1, 1, 1])
    gradient = model_lib.latents.invariance_gradient(values, active, 1.0)
    moved = values - 0.1 * gradient
    spread = lambda v: float(tf.math.reduce_std(v))  # noqa: E731
    assert spread(moved) < spread(values)
    assert np.allclose(moved.numpy(), values.numpy() - 0.1 * (values.numpy() - 2.0))


def test_baseline_gets_plain_sgvb_gradients():
    network = tiny_model(mode="baseline")
    batch = fixed_batch()
    noise = tf.random.stateless_normal([2, 3, 6], seed=[7, 8])
    terms, _ = network.compute_gradients(batch, noise=noise)
    reference = _reference_sgvb_gradients(network, batch, noise, "baseline")
    for got, want in zip(terms["latent_gradients"], reference):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-4, atol=1e-6)


def test_several_groups_each_use_their_own_statistics():
    network = tiny_model()
    batch = fixed_batch(groups=3, active=(1, 1, 0))
    terms, _ = network.compute_gradients(batch, noise=tf.zeros([3, 3, 6]))
    h = terms["mean"].numpy()
    gradient = terms["latent_gradients"][0].numpy() * 9
    # Group 2 (azimuth active): latent 1 is clamped to group 2's own mean.
    np.testing.assert_allclose(gradient[2, :, 1], 0.01 * (h[2, :, 1] - h[2, :, 1].mean()), rtol=1e-4, atol=1e-8)
    np.testing.assert_allclose(gradient[0, :, 0], 0.01 * (h[0, :, 0] - h[0, :, 0].mean()), rtol=1e-4, atol=1e-8)


def test_fit_and_evaluate_run_and_report_the_metrics():
    network = tiny_model()
    network.compile(optimizer="adam", jit_compile=False)
    batch = fixed_batch()
    dataset = tf.data.Dataset.from_tensors(batch).repeat(4)
    history = network.fit(dataset, epochs=1, verbose=0)
    assert set(history.history) >= {"loss", "reconstruction", "kl", "invariance", "reconstruction_azimuth",
                                     "reconstruction_identity", "reconstruction_light"}
    assert history.history["reconstruction_light"][0] == 0.0  # no light groups were seen
    results = network.evaluate(dataset, verbose=0, return_dict=True)
    assert set(results) == {"loss", "reconstruction", "kl", "mse"}
    assert 0.0 < results["mse"] < 1.0


@pytest.mark.parametrize("mirror_factors", [(), ("azimuth",)])
def test_train_step_reports_each_metric_under_its_name(mirror_factors):
    """Each factor's reconstruction is the mean over that factor's groups only (by name, not position)."""
    network = tiny_model(mirror_factors=mirror_factors)
    network.compile(optimizer=DCIGNRMSprop(), jit_compile=False)
    batch = fixed_batch(groups=2, group_size=3, active=(2, 0))  # an identity group, then an azimuth group
    terms, _ = network.compute_gradients(batch)  # the noise of step 0, as train_step draws it
    results = {name: float(value) for name, value in network.train_step(batch).items()}
    assert list(results) == ["loss", "reconstruction", "kl", "invariance", "reconstruction_azimuth",
                             "reconstruction_light", "reconstruction_identity", *(["mirror"] if mirror_factors else [])]
    per_group = terms["reconstruction"].numpy().reshape(2, 3).mean(axis=1)
    np.testing.assert_allclose([results["reconstruction_identity"], results["reconstruction_azimuth"]], per_group,
                               rtol=1e-5)
    assert results["reconstruction_light"] == 0.0


@pytest.mark.parametrize("size, channels", [(5, 3), (12, 2)])
def test_subpixel_decoder_block_equals_upsample_then_convolve(size, channels):
    inputs = np.random.default_rng(2).normal(size=(2, size, size, channels)).astype(np.float32)
    subpixel = model_lib.UpsampleConv2D(4, 7, implementation="subpixel")
    naive = model_lib.UpsampleConv2D(4, 7, implementation="naive")
    subpixel.build(inputs.shape)
    naive.build(inputs.shape)
    kernel = np.random.default_rng(3).normal(size=(7, 7, channels, 4)).astype(np.float32)
    for layer in (subpixel, naive):
        layer.kernel.assign(kernel)
        layer.bias.assign(np.arange(4, dtype=np.float32))
    reference = keras.layers.Conv2D(4, 7, padding="valid")
    reference.build((None, 2 * size, 2 * size, channels))
    reference.set_weights([kernel, np.arange(4, dtype=np.float32)])
    expected = reference(keras.layers.UpSampling2D(2, interpolation="nearest")(inputs)).numpy()
    assert expected.shape == (2, 2 * size - 6, 2 * size - 6, 4)
    np.testing.assert_allclose(naive(inputs).numpy(), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(subpixel(inputs).numpy(), expected, rtol=1e-4, atol=1e-4)
    # Gradients with respect to the shared 7x7 kernel agree too.
    gradients = []
    for layer in (subpixel, naive):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.sin(layer(inputs)))
        gradients.append(tape.gradient(loss, layer.kernel).numpy())
    np.testing.assert_allclose(gradients[0], gradients[1], rtol=1e-3, atol=1e-3)


def test_unclamped_steps_train_plain_sgvb_first_then_clamp():
    network = tiny_model(unclamped_steps=2)
    network.compile(optimizer=DCIGNRMSprop(), jit_compile=False)
    batch = fixed_batch()
    noise = tf.random.stateless_normal([2, 3, 6], seed=[3, 4])
    reference = _reference_sgvb_gradients(network, batch, noise, "baseline")
    terms, _ = network.compute_gradients(batch, noise=noise)        # step 0: not clamped yet
    for got, want in zip(terms["latent_gradients"], reference):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-4, atol=1e-6)
    network.optimizer.iterations.assign(2)                          # from step 2 on: clamped
    terms, _ = network.compute_gradients(batch, noise=noise)
    h = terms["mean"].numpy()
    inactive = ~np.broadcast_to(terms["active"].numpy().astype(bool), h.shape)
    expected = 0.01 * (h - h.mean(axis=1, keepdims=True)) / 6
    np.testing.assert_allclose(terms["latent_gradients"][0].numpy()[inactive], expected[inactive], rtol=1e-4, atol=1e-9)


@pytest.mark.parametrize("mode", ["dcign", "baseline"])
def test_mirror_prior_adds_the_gradient_of_its_penalty_to_the_encoder_only(mode):
    """--mirror_factors adds w * (mu(x) + mu(flip x))^2 on the mirror-odd latents, per image, in
    both modes: baseline + mirror is the control for DC-IGN + mirror."""
    plain, mirrored = tiny_model(mode), tiny_model(mode, mirror_factors=["azimuth"], mirror_weight=0.7)
    mirrored.set_weights(plain.get_weights())
    batch = fixed_batch()
    noise = tf.random.stateless_normal([2, 3, 6], seed=[9, 10])
    _, plain_gradients = plain.compute_gradients(batch, noise=noise)
    terms, mirrored_gradients = mirrored.compute_gradients(batch, noise=noise)
    flat = batch["images"].reshape(6, 32, 32, 1)
    with tf.GradientTape() as tape:
        odd = mirrored.encoder(flat)[0][:, 0] + mirrored.encoder(flat[:, :, ::-1])[0][:, 0]
        penalty = 0.7 * tf.reduce_sum(tf.square(odd)) / 6
    penalty_gradients = tape.gradient(penalty, mirrored.trainable_variables)
    np.testing.assert_allclose(terms["mirror"].numpy(), 0.7 * np.square(odd.numpy()), rtol=1e-5)
    in_encoder = {id(variable) for variable in mirrored.encoder.trainable_variables}
    for variable, got, base, extra in zip(mirrored.trainable_variables, mirrored_gradients, plain_gradients,
                                          penalty_gradients):
        assert extra is None or id(variable) in in_encoder
        expected = base.numpy() + (extra.numpy() if extra is not None else 0.0)
        np.testing.assert_allclose(got.numpy(), expected, rtol=2e-4, atol=1e-6)
    assert any(extra is not None and np.abs(extra.numpy()).max() > 0 for extra in penalty_gradients)
    for got, base in zip(terms["latent_gradients"], plain.compute_gradients(batch, noise=noise)[0]["latent_gradients"]):
        np.testing.assert_allclose(got.numpy(), base.numpy(), rtol=2e-4, atol=1e-7)  # the SGVB part, unchanged
    with pytest.raises(ValueError, match="--latent_layout does not have"):
        tiny_model(mirror_factors=["pose"])


def test_mirror_images_penalises_the_first_images_of_each_group():
    """--mirror_images=K: the penalty on the first K images of every group, averaged over them."""
    network = tiny_model(mirror_factors=["azimuth"], mirror_images=2)
    batch = fixed_batch(groups=2, group_size=3)
    noise = tf.random.stateless_normal([2, 3, 6], seed=[9, 10])
    terms, gradients = network.compute_gradients(batch, noise=noise)
    subset = batch["images"][:, :2].reshape(4, 32, 32, 1)
    with tf.GradientTape() as tape:
        odd = network.encoder(subset)[0][:, 0] + network.encoder(subset[:, :, ::-1])[0][:, 0]
        penalty = tf.reduce_sum(tf.square(odd)) / 4
    np.testing.assert_allclose(terms["mirror"].numpy(), np.square(odd.numpy()), rtol=1e-5)
    penalty_gradients = tape.gradient(penalty, network.encoder.trainable_variables)
    without = tiny_model(mirror_factors=["azimuth"], mirror_weight=0.0)
    without.set_weights(network.get_weights())
    _, plain_gradients = without.compute_gradients(batch, noise=noise)
    by_id = {id(v): (g, p) for v, g, p in zip(network.trainable_variables, gradients, plain_gradients)}
    for variable, extra in zip(network.encoder.trainable_variables, penalty_gradients):
        got, plain = by_id[id(variable)]
        np.testing.assert_allclose(got.numpy(), plain.numpy() + (0.0 if extra is None else extra.numpy()),
                                   rtol=2e-4, atol=1e-6)
    with pytest.raises(ValueError, match="mirror_images"):
        tiny_model(mirror_factors=["azimuth"], mirror_images=-1)


@pytest.mark.parametrize("gpus, features, expected", [
    ([], {"avx2", "avx512f", "avx512_bf16"}, "mixed_bfloat16"),
    ([], {"avx2", "amx_bf16"}, "mixed_bfloat16"),
    ([], {"avx2", "avx512f"}, "float32"),
    ([(8, 0), (9, 0)], set(), "mixed_bfloat16"),
    ([(7, 5)], {"avx512_bf16"}, "float32"),
])
def test_auto_precision_picks_bfloat16_only_where_the_hardware_runs_it(gpus, features, expected):
    from dcign_tf import precision

    assert precision.auto_policy(gpus, features) == expected
    assert precision.resolve("float32") == "float32"
    assert precision.resolve("auto") in precision.POLICIES


def test_cosine_schedule_warms_up_then_decays_to_zero():
    from dcign_tf.optimizer import learning_rate

    assert learning_rate(1e-3) == 1e-3
    schedule = learning_rate(1e-3, "cosine", steps=100, warmup_steps=10)
    values = [float(schedule(step)) for step in (0, 5, 10, 55, 100)]
    np.testing.assert_allclose(values, [0.0, 5e-4, 1e-3, 5e-4, 0.0], atol=1e-9)
    np.testing.assert_allclose(float(learning_rate(1e-3, "cosine", steps=100)(0)), 1e-3)


@pytest.mark.parametrize("policy", ["mixed_bfloat16"])
def test_mixed_precision_trains_and_keeps_the_latents_in_float32(policy):
    keras.mixed_precision.set_global_policy(policy)
    try:
        network = tiny_model()
        network.compile(optimizer=DCIGNRMSprop(), jit_compile=False)
        before = [w.numpy().copy() for w in network.trainable_weights]
        network.fit(tf.data.Dataset.from_tensors(fixed_batch()).repeat(2), epochs=1, verbose=0)
        assert network.encoder.get_layer("conv1").compute_dtype == "bfloat16"
        assert network.encode(fixed_batch()["images"][0])[0].dtype == tf.float32
        results = network.evaluate(tf.data.Dataset.from_tensors(fixed_batch()), verbose=0, return_dict=True)
        assert np.isfinite(results["loss"]) and np.isfinite(results["mse"])
        assert any(np.abs(a - b.numpy()).max() > 0 for a, b in zip(before, network.trainable_weights))
    finally:
        keras.mixed_precision.set_global_policy("float32")


@pytest.mark.parametrize("pixel_sigma", [0.1, 0.0])
def test_gaussian_likelihood_is_the_pixel_normal_log_density(pixel_sigma):
    """--likelihood=gaussian: -log N(x; sigmoid(logits), sigma^2) summed over pixels; sigma 0 calibrates
    sigma^2 to the batch's mean squared error, held constant for the gradient."""
    rng = np.random.default_rng(3)
    images = rng.uniform(size=(2, 4, 4, 1)).astype(np.float32)
    logits = tf.constant(rng.normal(size=(2, 4, 4, 1)).astype(np.float32))
    zeros = np.zeros((2, 3), np.float32)
    with tf.GradientTape() as tape:
        tape.watch(logits)
        reconstruction, _ = model_lib.sgvb_terms(images, logits, zeros, zeros, "gaussian", pixel_sigma)
        total = tf.reduce_sum(reconstruction)
    means = 1 / (1 + np.exp(-logits.numpy()))
    variance = pixel_sigma ** 2 or np.mean(np.square(means - images))
    expected = (0.5 * np.square(means - images) / variance + 0.5 * np.log(2 * np.pi * variance)).sum(axis=(1, 2, 3))
    np.testing.assert_allclose(reconstruction.numpy(), expected, rtol=1e-5)
    gradient = tape.gradient(total, logits).numpy()
    np.testing.assert_allclose(gradient, (means - images) / variance * means * (1 - means), rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="likelihood"):
        model_lib.sgvb_terms(images, logits, zeros, zeros, "laplace")
