"""Part of the flops section: the network's convolutions alone in NHWC against NCHW, since the Keras model is
NHWC-only (depth_to_space has no NCHW CPU kernel; NCHW here uses a reshape/transpose)."""

from __future__ import annotations

from benchmarks.harness import Bench
from benchmarks.timing import Contender, comparison, timed_calls


def conv_stack_step(config, batch: int, data_format: str):
    """A tf.function: forward + backward of the network's convolutions (encoder convs, pools, ReLUs; decoder
    sub-pixel convs, ReLUs) for `batch` images in `data_format`, with random weights. Returns a scalar."""
    import numpy as np
    import tensorflow as tf

    from dcign_tf.model import UpsampleConv2D, decoder_start_size

    channels_first = data_format == "NCHW"
    rng = np.random.default_rng(0)
    padding = config.resolved_encoder_padding.upper()

    def random_kernel(size, channels_in, channels_out):
        return tf.Variable(rng.normal(0, 0.05, (size, size, channels_in, channels_out)).astype("float32"))

    widths = (1,) + tuple(config.encoder_filters)
    encoder_kernels = [random_kernel(5, widths[index], widths[index + 1]) for index in range(3)]
    phase_taps = UpsampleConv2D(1)._phase_taps
    widths = (config.encoder_filters[-1],) + tuple(config.decoder_filters) + (1,)
    decoder_kernels = [random_kernel(7, widths[index], widths[index + 1]) for index in range(4)]
    start = decoder_start_size(config.image_size)

    def shape(n, h, w, c):
        return [n, c, h, w] if channels_first else [n, h, w, c]

    images = tf.constant(rng.uniform(size=shape(batch, config.image_size, config.image_size, 1)).astype("float32"))
    features = tf.constant(rng.uniform(size=shape(batch, start, start, widths[0])).astype("float32"))

    def depth_to_space(x, filters):
        if not channels_first:
            return tf.nn.depth_to_space(x, 2)
        n, _, h, w = x.shape  # channels are (row phase, column phase, filter)
        x = tf.reshape(x, [n, 2, 2, filters, h, w])
        x = tf.transpose(x, [0, 3, 4, 1, 5, 2])
        return tf.reshape(x, [n, filters, 2 * h, 2 * w])

    @tf.function
    @tf.autograph.experimental.do_not_convert  # plain Python loops over layers, nothing to convert
    def step():
        with tf.GradientTape() as tape:
            x = images
            for kernel in encoder_kernels:
                x = tf.nn.conv2d(x, kernel, 1, padding, data_format=data_format)
                x = tf.nn.relu(tf.nn.max_pool2d(x, 2, 2, "VALID", data_format=data_format))
            y = features
            for index, kernel in enumerate(decoder_kernels):
                filters = kernel.shape[-1]
                phase = tf.einsum("pia,qjb,abcd->ijcpqd", phase_taps, phase_taps, kernel)
                phase = tf.reshape(phase, [4, 4, -1, 4 * filters])
                y = depth_to_space(tf.nn.conv2d(y, phase, 1, "VALID", data_format=data_format), filters)
                if index < 3:
                    y = tf.nn.relu(y)
            loss = tf.reduce_sum(x) + tf.reduce_sum(y)
        gradients = tape.gradient(loss, encoder_kernels + decoder_kernels)
        return loss + tf.add_n([tf.reduce_sum(g) for g in gradients])

    return step


def layout_result(bench: Bench, size: int) -> dict:
    """The flops section's conv_layout row: images/s of `conv_stack_step` in NHWC and NCHW, interleaved."""
    bench.log(f"flops: conv layout {size}x{size}")
    group_size = bench.preset.group_size
    contenders = [Contender(data_format, timed_calls(conv_stack_step(bench.config(size), group_size, data_format)),
                            group_size) for data_format in ("NHWC", "NCHW")]
    measured, errors = bench.measure(contenders)
    result = {"device": "CPU", "image_size": size, "variant": "conv_layout", "measurements": measured,
              "comparisons": []}
    if "NHWC" in measured and "NCHW" in measured:
        result["comparisons"].append(comparison(f"conv_layout_nchw_vs_nhwc_{size}", "NCHW",
                                                measured["NCHW"]["images_per_s"], "NHWC",
                                                measured["NHWC"]["images_per_s"]))
    if errors:
        result["errors"] = errors
    return result
