"""The DC-IGN network and its training step (Kulkarni et al. 2015, §3).

Encoder: three 5x5 convolutions (96, 48, 24 maps), each followed by 2x2 max-pooling and a
ReLU, then two dense heads giving the posterior mean and log-variance of the graphics code z.
Decoder: dense -> 24 x s x s, then four blocks of nearest-neighbour 2x upsampling and a 7x7
valid convolution (48, 96, 96, 1 maps), ReLU between blocks and a sigmoid at the end.

The training step implements the paper's procedure for a batch of groups in which one factor
changes: the latents of the other factors are clamped to their group mean before sampling, and
their gradient is replaced by `invariance_weight * (h - group mean of h)`.
"""

from __future__ import annotations

import dataclasses
import math

import keras
import numpy as np
import tensorflow as tf

from dcign_tf import latents
from dcign_tf.config import ENCODER_KERNEL, LIKELIHOODS, ModelConfig

# Each decoder block doubles the map and a 7x7 valid convolution takes 6 off it, so four blocks
# turn an s x s map into 16 s - 90 pixels (15 -> 150 for the paper's size).
_DECODER_BLOCKS = 4
_DECODER_KERNEL = 7


def decoder_start_size(image_size: int) -> int:
    """Side s of the decoder's first map: the smallest with 16 s - 90 >= image_size."""
    return math.ceil((image_size + 90) / 16)


def build_encoder(config: ModelConfig) -> keras.Model:
    """images [B, S, S, 1] in [0, 1] -> (posterior mean [B, L], log-variance [B, L])."""
    images = keras.Input((config.image_size, config.image_size, 1), name="images")
    features = images
    for index, filters in enumerate(config.encoder_filters):
        features = keras.layers.Conv2D(filters, ENCODER_KERNEL, padding=config.resolved_encoder_padding,
                                       name=f"conv{index + 1}")(features)
        features = keras.layers.MaxPooling2D(2, name=f"pool{index + 1}")(features)
        features = keras.layers.ReLU(name=f"relu{index + 1}")(features)
    features = keras.layers.Flatten(name="flatten")(features)
    # The heads stay float32 under mixed precision: the KL and the clamp need the precision.
    mean = keras.layers.Dense(config.num_latents, name="mean", dtype="float32")(features)
    log_variance = keras.layers.Dense(config.num_latents, name="log_variance", dtype="float32")(features)
    return keras.Model(images, [mean, log_variance], name="encoder")


@keras.saving.register_keras_serializable(package="dcign_tf")
class UpsampleConv2D(keras.layers.Layer):
    """Nearest-neighbour 2x upsampling followed by a k x k valid convolution (k odd).

    The paper's decoder block. The "subpixel" implementation computes the same function
    without materialising the upsampled map: each of the four output phases (even/odd row,
    even/odd column) is a ((k+1)/2)^2 convolution of the input whose taps sum the k x k
    kernel's taps that read the same input pixel; `depth_to_space` interleaves the phases.
    For k = 7 that is 16 instead of 49 multiply-adds per output, with the same weights.
    "naive" upsamples and convolves, for reference.

    Input [B, n, n, C] -> output [B, 2n - k + 1, 2n - k + 1, filters].
    """

    def __init__(self, filters, kernel_size=_DECODER_KERNEL, activation=None, implementation="subpixel", **kwargs):
        super().__init__(**kwargs)
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        if implementation not in ("subpixel", "naive"):
            raise ValueError(f"implementation must be subpixel or naive, got {implementation!r}")
        self.filters = filters
        self.kernel_size = (kernel_size, kernel_size)
        self.activation = keras.activations.get(activation)
        self.implementation = implementation
        taps = (kernel_size + 1) // 2
        # phase_taps[phase, tap, k] = 1 when kernel row k reads input row `tap` for output rows of `phase`.
        phase_taps = np.zeros((2, taps, kernel_size), np.float32)
        for phase in range(2):
            for k in range(kernel_size):
                phase_taps[phase, (phase + k) // 2, k] = 1.0
        self._phase_taps = phase_taps

    def build(self, input_shape):
        size = self.kernel_size[0]
        self.kernel = self.add_weight(name="kernel", shape=(size, size, input_shape[-1], self.filters),
                                      initializer="glorot_uniform")
        self.bias = self.add_weight(name="bias", shape=(self.filters,), initializer="zeros")

    def call(self, inputs):
        kernel = tf.cast(self.kernel, inputs.dtype)
        if self.implementation == "naive":
            upsampled = tf.repeat(tf.repeat(inputs, 2, axis=1), 2, axis=2)
            outputs = tf.nn.conv2d(upsampled, kernel, strides=1, padding="VALID")
        else:
            phase_taps = tf.constant(self._phase_taps, inputs.dtype)
            # [taps, taps, C_in, row phase, column phase, filters]; depth_to_space reads channels as (row, col, filter).
            phase_kernels = tf.einsum("pia,qjb,abcd->ijcpqd", phase_taps, phase_taps, kernel)
            taps = self._phase_taps.shape[1]
            phase_kernels = tf.reshape(phase_kernels, [taps, taps, -1, 4 * self.filters])
            outputs = tf.nn.depth_to_space(tf.nn.conv2d(inputs, phase_kernels, strides=1, padding="VALID"), 2)
        return self.activation(outputs + tf.cast(self.bias, inputs.dtype))

    def compute_output_shape(self, input_shape):
        def side(n):
            return None if n is None else 2 * n - self.kernel_size[0] + 1
        return (input_shape[0], side(input_shape[1]), side(input_shape[2]), self.filters)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "kernel_size": self.kernel_size[0],
                "activation": keras.activations.serialize(self.activation), "implementation": self.implementation}


def build_decoder(config: ModelConfig) -> keras.Model:
    """latents z [B, L] -> pixel logits [B, S, S, 1] (the Bernoulli means are their sigmoid)."""
    start = decoder_start_size(config.image_size)
    channels = config.encoder_filters[-1]
    z = keras.Input((config.num_latents,), name="z")
    features = keras.layers.Dense(start * start * channels, activation="relu", name="dense")(z)
    features = keras.layers.Reshape((start, start, channels), name="reshape")(features)
    widths = list(config.decoder_filters) + [1]
    for index, filters in enumerate(widths):
        last = index == len(widths) - 1
        features = UpsampleConv2D(filters, _DECODER_KERNEL, activation=None if last else "relu",
                                  implementation=config.decoder_implementation,
                                  dtype="float32" if last else None, name=f"deconv{index + 1}")(features)
    excess = 16 * start - 90 - config.image_size
    if excess:
        # The paper's sizes fit exactly (150); other sizes are cut to the centre.
        features = keras.layers.Cropping2D(((excess // 2, excess - excess // 2),) * 2, name="crop")(features)
    return keras.Model(z, features, name="decoder")


def sgvb_terms(images, logits, mean, log_variance, likelihood="bernoulli", pixel_sigma=0.0):
    """Per-image SGVB terms.

    Args:
      images: [B, S, S, 1] in [0, 1] (the targets).
      logits: decoder outputs [B, S, S, 1]; the pixel means are their sigmoid.
      mean, log_variance: posterior parameters [B, L].
      likelihood: "bernoulli" (the paper: binary cross-entropy), or "gaussian": N(x; sigmoid(logits),
        pixel_sigma^2) per pixel, which weighs an error equally at every grey level, where the
        Bernoulli's curvature 1/(x(1-x)) spends most of the loss on the black background.
      pixel_sigma: the Gaussian's standard deviation on [0, 1]; 0 calibrates it to the batch: sigma^2 =
        the batch's mean squared error, held constant for the gradient (Rybkin et al. 2021, sigma-VAE).

    Returns:
      (reconstruction [B]: the negative log-likelihood summed over pixels, in nats;
       kl [B]: KL(q(z|x) || N(0, I)), in nats).
    """
    if likelihood == "bernoulli":
        cross_entropy = tf.nn.sigmoid_cross_entropy_with_logits(labels=images, logits=logits)
        reconstruction = tf.reduce_sum(cross_entropy, axis=[1, 2, 3])
    elif likelihood == "gaussian":
        squared_error = tf.square(tf.sigmoid(logits) - images)
        variance = (tf.constant(pixel_sigma ** 2, squared_error.dtype) if pixel_sigma > 0
                    else tf.stop_gradient(tf.maximum(tf.reduce_mean(squared_error), 1e-6)))
        reconstruction = tf.reduce_sum(0.5 * squared_error / variance + 0.5 * tf.math.log(2 * math.pi * variance),
                                       axis=[1, 2, 3])
    else:
        raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {likelihood!r}")
    kl = -0.5 * tf.reduce_sum(1.0 + log_variance - tf.square(mean) - tf.exp(log_variance), axis=1)
    return reconstruction, kl


def global_results(trackers) -> dict:
    """{tracker.name: its mean over all replicas} for `keras.metrics.Mean` trackers, in a replica context.

    Each replica holds its own total and count. The ratio of their sums is what one device
    reports; the mean of per-replica ratios is not (a replica without a group of some factor
    would count as 0). Outside a strategy this is each tracker's `result()`.
    """
    # tf.identity, not convert_to_tensor: a bare variable read has no device, which the multi-worker
    # all-reduce needs ("destinations can not be empty").
    sums = [tf.identity(value) for tracker in trackers for value in (tracker.total, tracker.count)]
    context = tf.distribute.get_replica_context()
    if context is not None and context.num_replicas_in_sync > 1:
        sums = context.all_reduce(tf.distribute.ReduceOp.SUM, sums)
    return {tracker.name: tf.math.divide_no_nan(sums[2 * index], sums[2 * index + 1])
            for index, tracker in enumerate(trackers)}


@keras.saving.register_keras_serializable(package="dcign_tf")
class DCIGN(keras.Model):
    """DC-IGN: a convolutional VAE whose train_step clamps inactive latents to the group mean.

    Batches are dicts (see dcign_tf.data.input_pipeline):
      images: [groups, group_size, S, S, 1] in [0, 1]
      active_factor: [groups] int, index into `factor_names` of the factor each group varies.

    Args:
      factor_names: the data's factors, in the data's order (active_factor indexes it).
      config: the network and its objective (`dcign_tf.config.ModelConfig`, whose docstring describes
        each field); its latent layout must name exactly `factor_names`.
    """

    def __init__(self, factor_names, config: ModelConfig, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(config, ModelConfig):
            raise TypeError(f"config must be a dcign_tf.config.ModelConfig, got {type(config).__name__}")
        self.config = config
        self.factor_names = list(factor_names)
        self.layout = config.layout
        # Row f: 1 on the latents of factor f, the ones that stay free in f's groups.
        self.active_masks = tf.constant(self.layout.active_mask(self.factor_names))
        # 1 on the latents that must change sign under a left-right mirror.
        mirror_mask = np.zeros(config.num_latents, np.float32)
        for name in config.mirror_factors:
            mirror_mask[list(self.layout.factor_latents[name])] = 1.0
        self.mirror_mask = tf.constant(mirror_mask)
        self.use_mirror = bool(config.mirror_factors) and config.mirror_weight > 0
        self.encoder = build_encoder(self.config)
        self.decoder = build_decoder(self.config)

        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.reconstruction_tracker = keras.metrics.Mean(name="reconstruction")
        self.kl_tracker = keras.metrics.Mean(name="kl")
        self.invariance_tracker = keras.metrics.Mean(name="invariance")
        self.factor_reconstruction_trackers = [keras.metrics.Mean(name=f"reconstruction_{name}")
                                               for name in self.factor_names]
        self.mirror_tracker = keras.metrics.Mean(name="mirror")
        self.mse_tracker = keras.metrics.Mean(name="mse")
        self.built = True

    @property
    def metrics(self):
        return [self.loss_tracker, self.reconstruction_tracker, self.kl_tracker, self.invariance_tracker,
                *self.factor_reconstruction_trackers, self.mirror_tracker, self.mse_tracker]

    def update_metrics(self, updates) -> dict:
        """Updates the trackers named in `updates` ({metric name: (values, sample weight or None)}); returns
        {name: its mean over all replicas}, in the order of `updates`."""
        trackers = {tracker.name: tracker for tracker in self.metrics}
        for name, (values, sample_weight) in updates.items():
            trackers[name].update_state(values, sample_weight=sample_weight)
        return global_results([trackers[name] for name in updates])

    # The learned rendering engine: encode, change latents, decode.
    def encode(self, images, training=False):
        """images [B, S, S, 1] in [0, 1] -> (posterior mean [B, L], log-variance [B, L])."""
        return self.encoder(images, training=training)

    def decode(self, z, training=False):
        """latents [B, L] -> images [B, S, S, 1] in [0, 1] (the Bernoulli means)."""
        return tf.sigmoid(self.decoder(z, training=training))

    def call(self, images, training=False):
        """Reconstructs images [B, S, S, 1] from their posterior means."""
        mean, _ = self.encode(images, training=training)
        return self.decode(mean, training=training)

    def reparameterisation_noise(self, groups, group_size, step):
        """Standard normal noise [groups, group_size, L] for this replica's groups.

        Drawn for the whole global batch from (seed, step) and sliced by replica, so that N
        replicas see exactly the noise one device would, and no two replicas share noise.
        """
        context = tf.distribute.get_replica_context()
        replicas = context.num_replicas_in_sync if context is not None else 1
        replica = context.replica_id_in_sync_group if context is not None else 0
        seed = tf.stack([tf.constant(self.config.seed, tf.int64), tf.cast(step, tf.int64)])
        noise = tf.random.stateless_normal([groups * replicas, group_size, self.config.num_latents], seed=seed)
        return noise[replica * groups:(replica + 1) * groups]

    def compute_gradients(self, batch, noise=None):
        """The paper's training signal for one batch of groups.

        Returns:
          (terms, gradients): `terms` holds per-image `reconstruction` and `kl` [B], the
          pre-clamp encoder outputs `mean`/`log_variance` [groups, G, L], the `active` mask
          [groups, 1, L], and `latent_gradients` (d SGVB objective / d mean, d objective /
          d log-variance) [groups, G, L] after the rewrite, the mirror penalty's part left out;
          `gradients` (the mirror penalty's included) are aligned with
          `self.trainable_variables`. The objective is the per-image loss averaged over the
          global batch, so every gradient carries the same 1/global_batch factor; in the
          paper's batch-summed convention a clamped latent's gradient is exactly
          invariance_weight * (h - group mean).
        """
        images = tf.cast(batch["images"], tf.float32)  # Layers cast to their compute dtype; the targets stay float32.
        groups, group_size = images.shape[0], images.shape[1]
        if groups is None or group_size is None:
            raise ValueError("batches need a static [groups, group_size] shape (batch with drop_remainder=True)")
        flat_images = tf.reshape(images, [groups * group_size, *images.shape[2:]])
        context = tf.distribute.get_replica_context()
        global_batch = groups * group_size * (context.num_replicas_in_sync if context is not None else 1)
        active = tf.gather(self.active_masks, tf.cast(batch["active_factor"], tf.int32))[:, None, :]
        if noise is None:
            noise = self.reparameterisation_noise(groups, group_size, self.optimizer.iterations)
        clamp = self.config.mode == "dcign"
        clamp_mask = active
        if clamp and self.config.unclamped_steps:
            # Before `unclamped_steps`, every latent counts as active: the clamp and the rewrite are identities.
            clamp_mask = tf.where(self.optimizer.iterations < self.config.unclamped_steps, tf.ones_like(active), active)

        # Two passes over one tape in both modes: the decoder and the latents first, then the encoder
        # from the latents' (rewritten, in dcign mode) gradients and the mirror penalty.
        with tf.GradientTape(persistent=True) as tape:
            flat_mean, flat_log_variance = self.encoder(flat_images, training=True)
            mean = tf.reshape(flat_mean, [groups, group_size, -1])
            log_variance = tf.reshape(flat_log_variance, [groups, group_size, -1])
            if clamp:
                # Forward: the inactive factors' latents become their group mean.
                clamped_mean = latents.clamp_to_group_mean(mean, clamp_mask)
                clamped_log_variance = latents.clamp_to_group_mean(log_variance, clamp_mask)
            else:
                clamped_mean, clamped_log_variance = mean, log_variance
            z = clamped_mean + tf.exp(0.5 * clamped_log_variance) * noise
            logits = self.decoder(tf.reshape(z, [groups * group_size, -1]), training=True)
            reconstruction, kl = sgvb_terms(flat_images, tf.cast(logits, tf.float32),
                                            tf.reshape(clamped_mean, [groups * group_size, -1]),
                                            tf.reshape(clamped_log_variance, [groups * group_size, -1]),
                                            self.config.likelihood, self.config.pixel_sigma)
            # Summed over this replica's images and divided by the global batch: the SUM
            # all-reduce of gradients then gives the global mean.
            loss = tf.reduce_sum(reconstruction + self.config.kl_weight * kl) / global_batch
            scaled_loss = loss * self._loss_scale()
            if self.use_mirror:
                # The first `mirror_images` of each group (in random order) stand for the group.
                mirrored = min(self.config.mirror_images or group_size, group_size)
                mirror_images = tf.reshape(images[:, :mirrored], [groups * mirrored, *images.shape[2:]])
                mirrored_mean, _ = self.encoder(tf.reverse(mirror_images, axis=[2]), training=True)
                original_mean = tf.reshape(mean[:, :mirrored], [groups * mirrored, -1])
                mirror = self.config.mirror_weight * tf.reduce_sum(
                    self.mirror_mask * tf.square(tf.cast(original_mean, tf.float32)
                                                 + tf.cast(mirrored_mean, tf.float32)), axis=-1)
                # Normalised per penalised image, so the weight means the same whatever the subset.
                scaled_mirror_loss = tf.reduce_sum(mirror) / (global_batch * mirrored / group_size) * self._loss_scale()

        encoder_variables = self.encoder.trainable_variables
        decoder_variables = self.decoder.trainable_variables
        decoder_gradients, sgvb_latent_gradients = tape.gradient(
            scaled_loss, [decoder_variables, [clamped_mean, clamped_log_variance]])
        if clamp:
            # Backward: the active latents keep their SGVB gradient; the clamped ones get only
            # the pull toward their group mean, scaled like the objective.
            invariance_scale = self.config.invariance_weight * self._loss_scale() / global_batch
            latent_gradients = [
                clamp_mask * gradient + latents.invariance_gradient(values, clamp_mask, invariance_scale)
                for gradient, values in zip(sgvb_latent_gradients, [mean, log_variance])]
        else:
            latent_gradients = sgvb_latent_gradients
        targets, target_gradients = [mean, log_variance], list(latent_gradients)
        if self.use_mirror:
            # The mirror penalty acts on the pre-clamp means directly, next to the latents' gradient;
            # it depends on the encoder alone, so the decoder's gradient stays plain SGVB.
            targets.append(scaled_mirror_loss)
            target_gradients.append(tf.ones_like(scaled_mirror_loss))
        encoder_gradients = tape.gradient(targets, encoder_variables, output_gradients=target_gradients)
        del tape
        by_variable = {id(variable): gradient for variable, gradient in
                       zip(encoder_variables + decoder_variables, encoder_gradients + decoder_gradients)}
        gradients = [by_variable[id(variable)] for variable in self.trainable_variables]
        terms = dict(reconstruction=reconstruction, kl=kl, mean=mean, log_variance=log_variance, active=active,
                     latent_gradients=latent_gradients, loss=loss)
        if self.use_mirror:
            terms["mirror"] = mirror
        return terms, gradients

    def _loss_scale(self):
        """The mixed-precision loss scale (1 without one): the rewritten gradients need it too."""
        optimizer = getattr(self, "optimizer", None)
        return optimizer.scale_loss(tf.constant(1.0)) if optimizer is not None else 1.0

    def train_step(self, batch):
        terms, gradients = self.compute_gradients(batch)
        self.optimizer.apply(gradients, self.trainable_variables)

        # Diagnostic in both modes: how far the would-be-clamped latents stray from their group mean.
        deviation = 0.5 * (latents.clamped_deviation(terms["mean"], terms["active"])
                           + latents.clamped_deviation(terms["log_variance"], terms["active"]))
        groups, group_size = terms["mean"].shape[0], terms["mean"].shape[1]
        group_reconstruction = tf.reduce_mean(tf.reshape(terms["reconstruction"], [groups, -1]), axis=1)
        active_factor = tf.cast(batch["active_factor"], tf.int32)
        updates = {
            "loss": (terms["reconstruction"] + self.config.kl_weight * terms["kl"], None),
            "reconstruction": (terms["reconstruction"], None),
            "kl": (terms["kl"], None),
            # Weighted by the clamped entries it averages, so that replicas combine into the global mean.
            "invariance": (deviation, tf.reduce_sum(1.0 - terms["active"]) * group_size),
        }
        for index, factor in enumerate(self.factor_names):  # active_factor indexes factor_names
            updates[f"reconstruction_{factor}"] = (group_reconstruction,
                                                   tf.cast(tf.equal(active_factor, index), tf.float32))
        if self.use_mirror:
            updates["mirror"] = (terms["mirror"], None)
        return self.update_metrics(updates)

    def test_step(self, batch):
        """The lower bound with clamping off, and the per-pixel MSE of mean reconstructions.

        The noise is drawn for the whole global batch and sliced by replica, like the training
        noise. An uneven last batch can leave a replica without a group: it then evaluates one
        zero-weight blank image, because empty batches break the convolutions.
        """
        images = tf.cast(batch["images"], tf.float32)  # Layers cast to their compute dtype; the targets stay float32.
        image_shape = images.shape[2:]
        flat_images = tf.reshape(images, [-1, *image_shape])
        count = tf.shape(flat_images)[0]
        padding = tf.maximum(1 - count, 0)
        flat_images = tf.concat([flat_images, tf.zeros([padding, *image_shape], flat_images.dtype)], axis=0)
        weights = tf.concat([tf.ones([count]), tf.zeros([padding])], axis=0)
        mean, log_variance = self.encoder(flat_images, training=False)
        noise = tf.concat([self._test_noise(count), tf.zeros([padding, self.config.num_latents])], axis=0)
        logits = self.decoder(mean + tf.exp(0.5 * log_variance) * noise, training=False)
        reconstruction, kl = sgvb_terms(flat_images, tf.cast(logits, tf.float32), mean, log_variance,
                                        self.config.likelihood, self.config.pixel_sigma)
        reconstructed = self.decode(mean)
        per_image_mse = tf.reduce_mean(tf.square(tf.cast(reconstructed, tf.float32) - flat_images), axis=[1, 2, 3])
        return self.update_metrics({"loss": (reconstruction + kl, weights), "reconstruction": (reconstruction, weights),
                                    "kl": (kl, weights), "mse": (per_image_mse, weights)})

    def _test_noise(self, count):
        """Noise [count, L] for this replica's `count` test images: its rows of one draw for the global batch."""
        context = tf.distribute.get_replica_context()
        replicas = context.num_replicas_in_sync if context is not None else 1
        replica = context.replica_id_in_sync_group if context is not None else 0
        counts = tf.one_hot(replica, replicas, dtype=tf.int32) * count
        if replicas > 1:
            counts = context.all_reduce(tf.distribute.ReduceOp.SUM, counts)  # every replica's image count
        noise = tf.random.stateless_normal([tf.reduce_sum(counts), self.config.num_latents],
                                           seed=tf.constant([self.config.seed, -1], tf.int64))
        start = tf.reduce_sum(counts[:replica])
        return noise[start:start + count]

    def get_config(self):
        """Flat: the factor names and the ModelConfig's fields (the layout normalised), as exports have always held."""
        fields = {field.name: getattr(self.config, field.name) for field in dataclasses.fields(ModelConfig)}
        fields.update(latent_layout=self.layout.to_spec(), encoder_filters=list(self.config.encoder_filters),
                      decoder_filters=list(self.config.decoder_filters), mirror_factors=list(self.config.mirror_factors))
        return dict(factor_names=self.factor_names, **fields, name=self.name)

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        names = {field.name for field in dataclasses.fields(ModelConfig)}
        model_config = ModelConfig(**{name: config.pop(name) for name in names if name in config})
        return cls(config.pop("factor_names"), model_config, **config)


def flops_per_image(config: ModelConfig) -> dict:
    """Multiply-adds x 2 of one image's forward pass, from the layer shapes, as computed
    (the sub-pixel decoder does fewer than the naive one).

    Returns {"forward": FLOPs, "train": FLOPs}; training counts the backward pass as twice the
    forward (gradients for inputs and for weights), the usual estimate.
    """
    encoder = build_encoder(config)
    decoder = build_decoder(config)
    total = 0
    for layer in encoder.layers + decoder.layers:
        if isinstance(layer, (keras.layers.Conv2D, UpsampleConv2D)):
            out_h, out_w, out_c = layer.output.shape[1:]
            in_c = layer.input.shape[-1]
            taps = np.prod(layer.kernel_size)
            if isinstance(layer, UpsampleConv2D) and layer.implementation == "subpixel":
                taps = ((layer.kernel_size[0] + 1) // 2) ** 2
            total += 2 * out_h * out_w * out_c * in_c * taps
        elif isinstance(layer, keras.layers.Dense):
            total += 2 * layer.input.shape[-1] * layer.units
    return {"forward": int(total), "train": int(3 * total)}
