r"""Refits a trained run's decoder with its encoder frozen: where is the identity lost?

    python -m tools.refit_decoder --workdir=RUN --out=RUN_refit [--steps=3000] [--learning_rate=3e-4] \
        [--codes=single|clamped] [--decoder_filters=96,96,96]   # from the repository root
    python -m dcign_tf.evaluate --workdir=RUN_refit --groups_per_factor=0

A diagnostic, not part of the paper's method. DC-IGN's decoder is trained on clamped codes: in a group
that varies one factor, every other factor's latents are the group's mean. Rendering one image
(a reconstruction, or a novel view after a swap) decodes that image's own code instead. If the
decoder were what loses the face, training it further on the codes it is asked to render
(--codes=single: each image's own posterior sample) would lift the identity retention; the control,
--codes=clamped, trains it for as many steps on the training's clamped codes, so that the difference
between the two is the codes alone and not the extra steps. If neither moves the retention, the
identity is missing from the code itself, or the decoder's size cannot render it from that code:
--decoder_filters=A,B,C trains a new decoder of those widths from scratch on the frozen code instead,
which tells the two apart (run the same on a baseline's code for the control).

Only the decoder's weights change: the encoder, and with it every latent score (equivariance, MIG,
KL), stays the run's. The objective is the run's reconstruction term (its --likelihood) on posterior
samples of the training split; the KL does not depend on the decoder. Adam with a cosine decay from
--learning_rate to 0 over --steps, batches of the run's --groups_per_batch groups.

Writes OUT/flags.txt (the run's, with OUT as --workdir and the decoder's widths), OUT/export (as
dcign_tf.train exports, with a "refit" field in model_info.json) and OUT/COMMAND, into a temporary
directory renamed to OUT at the end; RUN is only read, and an OUT that exists is refused.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import sys
import time
from typing import Sequence

from absl import flags

from dcign_tf import cli, io_utils

PROGRAM = "tools.refit_decoder"
CODES = ("single", "clamped")


def define_flags(flag_values: flags.FlagValues) -> None:
    flags.DEFINE_string("workdir", None, "The trained run (its export/ and flags.txt); only read.",
                        flag_values=flag_values)
    flags.DEFINE_string("out", None, "The new run directory to write (must not exist).", flag_values=flag_values)
    flags.DEFINE_integer("steps", 3000, "Decoder training steps.", lower_bound=1, flag_values=flag_values)
    flags.DEFINE_float("learning_rate", 3e-4, "Adam's initial learning rate (cosine decay to 0).", lower_bound=0.0,
                       flag_values=flag_values)
    flags.DEFINE_enum("codes", "single", CODES, "single: each image's own posterior sample (what rendering "
                      "decodes); clamped: the training's codes, inactive factors at their group mean (the control).",
                      flag_values=flag_values)
    flags.DEFINE_string("data_dir", None, "Training data (default: the run's --data_dir).", flag_values=flag_values)
    flags.DEFINE_integer("seed", 0, "Seed of the batch order and the posterior noise.", flag_values=flag_values)
    flags.DEFINE_list("decoder_filters", [], "Train a new decoder of these three widths from scratch (the "
                      "architecture's other parts as the run's); default: refit the run's own decoder.",
                      flag_values=flag_values)
    flags.DEFINE_integer("log_every", 500, "Steps between progress lines.", lower_bound=1, flag_values=flag_values)


def refit(model, batches, steps: int, learning_rate: float, codes: str, seed: int, log_every: int, log=print):
    """Trains `model.decoder` in place on `steps` batches of `batches` (dicts of images [groups, G, S, S, 1]
    in [0, 1] and active_factor [groups]); returns the mean reconstruction loss (nats per image) of the
    last `log_every` steps."""
    import keras
    import numpy as np
    import tensorflow as tf

    from dcign_tf import latents
    from dcign_tf.model import sgvb_terms

    config = model.config
    decoder_variables = model.decoder.trainable_variables
    optimizer = keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(learning_rate, steps))
    optimizer.build(decoder_variables)

    @tf.function
    def train_step(batch, step):
        images = tf.cast(batch["images"], tf.float32)
        groups, group_size = images.shape[0], images.shape[1]
        flat_images = tf.reshape(images, [groups * group_size, *images.shape[2:]])
        mean, log_variance = model.encoder(flat_images, training=False)
        mean = tf.reshape(tf.cast(mean, tf.float32), [groups, group_size, -1])
        log_variance = tf.reshape(tf.cast(log_variance, tf.float32), [groups, group_size, -1])
        if codes == "clamped":
            active = tf.gather(model.active_masks, tf.cast(batch["active_factor"], tf.int32))[:, None, :]
            mean = latents.clamp_to_group_mean(mean, active)
            log_variance = latents.clamp_to_group_mean(log_variance, active)
        noise = tf.random.stateless_normal(tf.shape(mean), seed=tf.stack([tf.constant(seed, tf.int64), step]))
        z = tf.reshape(mean + tf.exp(0.5 * log_variance) * noise, [groups * group_size, -1])
        with tf.GradientTape() as tape:
            logits = tf.cast(model.decoder(z, training=True), tf.float32)
            reconstruction, _ = sgvb_terms(flat_images, logits, tf.reshape(mean, [groups * group_size, -1]),
                                           tf.reshape(log_variance, [groups * group_size, -1]),
                                           config.likelihood, config.pixel_sigma)
            loss = tf.reduce_mean(reconstruction)
        optimizer.apply(tape.gradient(loss, decoder_variables), decoder_variables)
        return loss

    losses, start = [], time.time()
    for step, batch in enumerate(batches.take(steps)):
        losses.append(float(train_step(batch, tf.constant(step, tf.int64))))
        if (step + 1) % log_every == 0 or step + 1 == steps:
            log(f"step {step + 1}/{steps}: reconstruction {np.mean(losses[-log_every:]):.2f} nats per image "
                f"({(step + 1) / (time.time() - start):.1f} steps/s)")
    if len(losses) < steps:
        raise cli.UsageError(f"the training data ran out after {len(losses)} of {steps} steps")
    return float(np.mean(losses[-log_every:]))


def with_new_decoder(model, widths: Sequence[str], seed: int):
    """A copy of `model` with its encoder's weights and a freshly initialised decoder of `widths`."""
    import keras

    try:
        config = dataclasses.replace(model.config, decoder_filters=tuple(int(width) for width in widths))
    except ValueError as error:  # int() of a non-number, or ConfigError (a ValueError) for bad widths
        raise cli.UsageError(f"--decoder_filters={','.join(widths)}: {error}") from None
    keras.utils.set_random_seed(seed)
    new = type(model)(model.factor_names, config)
    new.encoder.set_weights(model.encoder.get_weights())
    return new


def body(flag_values: flags.FlagValues) -> None:
    workdir, out = flag_values.workdir, flag_values.out
    if not workdir or not out:
        raise cli.UsageError("--workdir=RUN and --out=NEW_RUN are both required")
    out = out.rstrip("/")
    flags_path = os.path.join(workdir, "flags.txt")
    for path in (os.path.join(workdir, "export", "model_info.json"), flags_path):
        if not os.path.exists(path):
            raise cli.UsageError(f"{path} is missing: train RUN to the end first (python -m dcign_tf.train ...)")
    if os.path.exists(out):
        raise cli.UsageError(f"{out} exists; choose another --out (nothing is overwritten)")
    from dcign_tf import config as config_lib  # TensorFlow loads from here on, after the checks.
    from dcign_tf import export as export_lib
    from dcign_tf.data import input_pipeline

    run_config = config_lib.from_flagfile(flags_path)
    data_dir = flag_values.data_dir or run_config.data_dir
    model, info = export_lib.load_model(os.path.join(workdir, "export"))
    if flag_values.decoder_filters:
        model = with_new_decoder(model, flag_values.decoder_filters, flag_values.seed)
    batches = input_pipeline.make_dataset(data_dir, "train", run_config.groups_per_batch, seed=flag_values.seed,
                                          expected_image_size=model.config.image_size,
                                          shuffle_buffer=run_config.shuffle_buffer)
    final_loss = refit(model, batches, flag_values.steps, flag_values.learning_rate, flag_values.codes,
                       flag_values.seed, flag_values.log_every)

    info = dict(info, refit={"source": os.path.abspath(workdir), "steps": flag_values.steps,
                             "decoder_filters": list(model.config.decoder_filters),
                             "new_decoder": bool(flag_values.decoder_filters),
                             "learning_rate": flag_values.learning_rate, "codes": flag_values.codes,
                             "seed": flag_values.seed, "final_reconstruction": final_loss})
    info["calibration"] = None  # as a fresh training's export: the evaluation of OUT calibrates its own
    # OUT's flags: the run's, with OUT as its workdir and the decoder it now has.
    out_config = dataclasses.replace(run_config, workdir=out, decoder_filters=model.config.decoder_filters)
    temporary = f"{out}{io_utils.TEMP_INFIX}{os.getpid()}"
    shutil.rmtree(temporary, ignore_errors=True)
    try:
        os.makedirs(temporary)
        io_utils.write_text_atomic(os.path.join(temporary, "flags.txt"), out_config.to_flagfile())
        export_lib.export_model(model, os.path.join(temporary, "export"), info)
        command = " ".join(["python -m tools.refit_decoder", f"--workdir={workdir}", f"--out={out}",
                            f"--steps={flag_values.steps}", f"--learning_rate={flag_values.learning_rate:g}",
                            f"--codes={flag_values.codes}", f"--seed={flag_values.seed}"]
                           + ([f"--decoder_filters={','.join(flag_values.decoder_filters)}"]
                              if flag_values.decoder_filters else [])
                           + ([f"--data_dir={flag_values.data_dir}"] if flag_values.data_dir else []))
        io_utils.write_text_atomic(os.path.join(temporary, "COMMAND"), command + "\n")
        os.rename(temporary, out)  # fails, leaving nothing behind, if OUT appeared meanwhile
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    print(f"wrote {out}: {workdir}'s decoder refit for {flag_values.steps} steps on {flag_values.codes} codes "
          f"(reconstruction {final_loss:.2f} nats per image); evaluate it with python -m dcign_tf.evaluate "
          f"--workdir={out}")


def user_error_types() -> tuple[type, ...]:
    types = [OSError]
    for module, name in (("dcign_tf.export", "ExportError"), ("dcign_tf.config", "ConfigError"),
                         ("dcign_tf.data.records", "DatasetError")):
        if module in sys.modules:
            types.append(getattr(sys.modules[module], name))
    return tuple(types)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the CLI on argv (the program name first; None: sys.argv); returns the exit status."""
    return cli.run(argv, PROGRAM, __doc__, define_flags, body, user_error_types)


if __name__ == "__main__":
    sys.exit(main())
