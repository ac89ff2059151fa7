r"""Trains a DC-IGN: `python -m dcign_tf.train --flagfile=configs/faces_small.flags`.

Every flag is a field of `dcign_tf.config.TrainConfig`. The run directory (--workdir) gets:
  flags.txt            the resolved flags, reusable as a --flagfile
  checkpoints/         resumed automatically by the same command
  train/               TensorBoard events: scalars, image panels, latent sweeps
  export/              dcign.keras, saved_model/ (encode, decode signatures), model_info.json
  train.lock           while a training runs: its pid and host (a second training is refused)

SIGINT (Ctrl-C) and SIGTERM stop the run after the step in flight, with a checkpoint, and exit with
128 + the signal (130, 143); a second signal stops it at once. See dcign_tf.workdir for the lock.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging as pylogging
import os
import re
import signal
import sys
import time
from typing import Sequence

import keras
import numpy as np
import tensorflow as tf
from absl import flags, logging

from dcign_tf import callbacks as callbacks_lib
from dcign_tf import cli
from dcign_tf import config as config_lib
from dcign_tf import distributed
from dcign_tf import export as export_lib
from dcign_tf import io_utils
from dcign_tf import optimizer as optimizer_lib
from dcign_tf import precision as precision_lib
from dcign_tf import workdir as workdir_lib
from dcign_tf.data import input_pipeline, records
from dcign_tf.data.sources import faces as faces_source
from dcign_tf.latents import LayoutError
from dcign_tf.model import DCIGN
from dcign_tf.workdir import WorkdirError

# Errors a user can fix: reported as one line, exit code 2.
USER_ERRORS = (config_lib.ConfigError, records.DatasetError, LayoutError, export_lib.ExportError)
EXIT_NAN = 1
EXIT_SKIPPED_STEPS = 1
EXIT_INTERRUPTED = 128 + signal.SIGINT  # Ctrl-C before training started: nothing to save.
ARCHITECTURE_FIELDS = ("image_size", "num_latents", "encoder_filters", "decoder_filters", "encoder_padding")


def prepare_workdir(config: config_lib.TrainConfig, chief: bool) -> workdir_lib.WorkdirLock | None:
    """Checks --workdir and, on the chief, locks it for this process (see dcign_tf.workdir).

    Refused with one line: a path that is a file or cannot be written, a workdir that another live
    training holds, and one that holds a run with another config, unless --overwrite, which moves
    a dcign_tf run aside (never a directory that is not one, nor the current directory).
    A workdir holds a run once it has a checkpoint or an export; flags.txt alone (a run that
    stopped before its first checkpoint) holds nothing to lose.
    """
    workdir = config.workdir
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise WorkdirError(f"--workdir={workdir} is a file, not a directory; choose another --workdir")
    conflict = workdir_conflict(config)
    if conflict and not config.overwrite:
        raise WorkdirError(f"{conflict}; choose another --workdir, or pass --overwrite to move it aside")
    if conflict and not workdir_lib.is_run(workdir):
        raise WorkdirError(f"{conflict}; --overwrite moves aside only a dcign_tf run, so move it yourself "
                           "or choose another --workdir")
    here, target = os.path.realpath(os.getcwd()), os.path.realpath(workdir)
    if conflict and (here == target or here.startswith(target + os.sep)):
        raise WorkdirError(f"{conflict}; --overwrite cannot move aside the directory it runs in; run from "
                           "another directory or choose another --workdir")
    if not chief:
        return None  # The chief alone writes the workdir, and moves it aside.
    lock = lock_workdir(workdir)
    if conflict:
        moved = unused_path(f"{target}.replaced-{time.strftime('%Y%m%d-%H%M%S')}")
        try:
            os.rename(target, moved)
        except OSError as error:
            lock.release()
            raise WorkdirError(f"{conflict}; cannot move it aside to {moved} ({error.strerror}); move it "
                               "yourself or choose another --workdir") from None
        lock.move_to(moved)
        lock.release()
        logging.warning("%s; moved it to %s", conflict, moved)
        lock = lock_workdir(workdir)
    return lock


def workdir_conflict(config: config_lib.TrainConfig) -> str | None:
    """Why --workdir cannot simply be (re)used for this config, or None when it can."""
    workdir = config.workdir
    flags_path = os.path.join(workdir, workdir_lib.FLAGS_FILE)
    try:
        if os.path.exists(flags_path):
            has_run = bool(tf.train.latest_checkpoint(os.path.join(workdir, "checkpoints"))) or os.path.exists(
                os.path.join(workdir, "export"))
            differences = config.differences(config_lib.from_flagfile(flags_path))
            if differences and has_run:
                return f"{workdir} holds a run with another config ({'; '.join(differences[:4])})"
            return None
        entries = os.listdir(workdir) if os.path.isdir(workdir) else []
    except OSError as error:
        raise WorkdirError(f"cannot read --workdir={workdir} ({error.strerror}); choose another --workdir") from None
    # A lock and a flags.txt temporary are all that a run killed before writing flags.txt leaves.
    if [name for name in entries if name != workdir_lib.LOCK_FILE and not name.startswith("flags.txt.tmp-")]:
        return f"{workdir} is not empty and has no flags.txt, so it is not a dcign_tf run"
    return None


def lock_workdir(workdir: str) -> workdir_lib.WorkdirLock:
    """Creates `workdir` if needed and locks it; removes what killed runs left there, saying so."""
    try:
        os.makedirs(workdir, exist_ok=True)
        lock = workdir_lib.WorkdirLock(workdir)
        previous = lock.acquire()
    except OSError as error:
        if workdir_lib.is_disk_full(error):
            raise  # run() says so
        raise WorkdirError(f"cannot write in --workdir={workdir} ({error.strerror}); choose a writable "
                           "--workdir") from None
    leftovers = workdir_lib.leftovers(workdir)
    if previous:
        logging.warning("took over %s from a training that is no longer running (%s)", lock.path,
                        workdir_lib.describe(previous))
    if leftovers:
        logging.warning("removing what killed runs left in %s: %s", workdir,
                        ", ".join(os.path.relpath(path, workdir) for path in leftovers))
        workdir_lib.remove(leftovers)
    return lock


def unused_path(path: str) -> str:
    """`path`, or `path-2`, `path-3`, ... : the first that does not exist."""
    candidate, number = path, 1
    while os.path.exists(candidate):
        number += 1
        candidate = f"{path}-{number}"
    return candidate


def write_flags(config: config_lib.TrainConfig) -> None:
    """{workdir}/flags.txt: the resolved flags, written atomically."""
    io_utils.write_text_atomic(os.path.join(config.workdir, workdir_lib.FLAGS_FILE), config.to_flagfile())


def faces_config(config: config_lib.TrainConfig) -> faces_source.FacesConfig:
    return faces_source.FacesConfig(image_size=config.image_size, group_size=config.group_size,
                                  groups_per_factor=config.dataset_groups_per_factor,
                                  test_groups_per_factor=config.dataset_test_groups_per_factor,
                                  num_shards=config.dataset_num_shards, seed=config.dataset_seed,
                                  face_model=config.face_model, group_spread=config.dataset_group_spread)


def prepare_dataset(config: config_lib.TrainConfig) -> records.DatasetInfo:
    """Builds the faces set when missing (and says so), then checks it against the flags."""
    if config.dataset == "faces":
        info = faces_source.ensure_dataset(config.data_dir, faces_config(config), log=logging.info)
    else:
        info = input_pipeline.load_info(config.data_dir)
    for name in ("image_size", "group_size"):
        if getattr(info, name) != getattr(config, name):
            raise config_lib.ConfigError(
                f"--{name}={getattr(config, name)} disagrees with the dataset in {config.data_dir} "
                f"({name} {getattr(info, name)}); set --{name}={getattr(info, name)} or use another --data_dir")
    for split in records.SPLITS:
        input_pipeline.check_shards(config.data_dir, split)
    return info


def initialise_from(run_dir: str, model: DCIGN, config: config_lib.TrainConfig) -> None:
    """Loads another run's latest weights (not its optimizer state or step)."""
    other = config_lib.from_flagfile(os.path.join(run_dir, "flags.txt"))
    mismatched = [f"{name}: {getattr(other, name)} != {getattr(config, name)}" for name in ARCHITECTURE_FIELDS
                  if getattr(other, name) != getattr(config, name)]
    if mismatched:
        raise config_lib.ConfigError(f"--init_from={run_dir} has another architecture ({'; '.join(mismatched)})")
    latest = tf.train.latest_checkpoint(os.path.join(run_dir, "checkpoints"))
    if latest is None:
        raise config_lib.ConfigError(f"--init_from={run_dir} has no checkpoint in {run_dir}/checkpoints")
    tf.train.Checkpoint(model=model_weights(model)).read(latest).assert_existing_objects_matched().expect_partial()
    logging.info("initialised the weights from %s", latest)


def panel_images(data_dir: str, info: records.DatasetInfo, per_factor: int = 2) -> np.ndarray:
    """A fixed set of test images for TensorBoard panels: the first images of each factor's first group."""
    images = []
    for factor in info.factor_names:
        dataset = input_pipeline.make_dataset(data_dir, "test", 1, factors=[factor], shuffle=False, repeat=False,
                                              deterministic=True)
        group = next(iter(dataset))["images"].numpy()[0]
        images.append(group[:: max(1, len(group) // per_factor)][:per_factor])
    return np.concatenate(images)


def summary_batches(data_dir: str, group_size: int, images: int = 320) -> list:
    """Enough test batches (of 4 groups, factors mixed) for the periodic evaluation's `images` images."""
    dataset = input_pipeline.make_dataset(data_dir, "test", 4, shuffle=False, repeat=False, deterministic=True)
    return list(dataset.take(-(-images // (4 * group_size))).as_numpy_iterator())


def export_info(config: config_lib.TrainConfig, info: records.DatasetInfo, model: DCIGN, step: int) -> dict:
    return {"factors": [factor.to_json() for factor in info.factors],
            "latent_layout": {name: list(indices) for name, indices in model.layout.factor_latents.items()},
            "image_size": config.image_size, "num_latents": config.num_latents, "mode": config.mode,
            "step": step, "data_dir": os.path.abspath(config.data_dir), "calibration": None}


def run(config: config_lib.TrainConfig, strategy: tf.distribute.Strategy | None = None) -> int:
    """Trains (or resumes) the run `config` describes, then exports it. Returns the process exit code.

    Raises one of USER_ERRORS (one line, exit 2) for what the user can fix, a full disk included; a
    full disk leaves no temporary file behind, and the same command resumes once there is space.
    """
    try:
        strategy = strategy or distributed.make_strategy(config.strategy)
    except ValueError as error:
        raise config_lib.ConfigError(str(error)) from None
    chief = distributed.is_chief(strategy)
    lock = None
    try:
        lock = prepare_workdir(config, chief)
        return train_and_export(config, strategy, chief)
    except KeyboardInterrupt:
        logging.warning("interrupted before training started; nothing to save")
        return EXIT_INTERRUPTED
    except (OSError, tf.errors.OpError) as error:
        if not workdir_lib.is_disk_full(error):
            raise
        if lock is not None:
            workdir_lib.remove(workdir_lib.leftovers(config.workdir))
        reason = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", str(error).strip().splitlines()[0])[:300]
        raise WorkdirError(f"the disk is full ({reason}); free space for --workdir={config.workdir}, then the "
                           "same command resumes from the last checkpoint") from None
    finally:
        if lock is not None:
            lock.release()
        if not chief:
            distributed.remove_scratch(strategy)


def train_and_export(config: config_lib.TrainConfig, strategy: tf.distribute.Strategy, chief: bool) -> int:
    info = prepare_dataset(config)
    if chief:
        write_flags(config)
    replicas = strategy.num_replicas_in_sync
    if config.groups_per_batch % replicas:
        raise config_lib.ConfigError(f"--groups_per_batch={config.groups_per_batch} must be a multiple of the "
                                     f"{replicas} replicas, so that no group is split between them")
    logging.info("strategy %s with %d replica(s); dataset %s: %s", type(strategy).__name__, replicas,
                 config.data_dir, dict(info.splits["train"]))

    policy = precision_lib.resolve(config.precision)
    if policy != config.precision:
        logging.info("--precision=%s: using %s on this machine", config.precision, policy)
    if policy == "mixed_float16" and not tf.config.list_physical_devices("GPU"):
        logging.warning("--precision=mixed_float16 on a CPU: float16 is emulated there and slower than float32; "
                        "use --precision=mixed_bfloat16 (fast on CPUs with AVX-512 BF16 or AMX) or auto")
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    keras.mixed_precision.set_global_policy(policy)
    keras.utils.set_random_seed(config.seed)
    with strategy.scope():
        model = DCIGN(info.factor_names, config.model_config())
        step_size = optimizer_lib.learning_rate(config.learning_rate, config.learning_rate_schedule, config.steps,
                                                config.warmup_steps)
        optimizer = optimizer_lib.DCIGNRMSprop(learning_rate=step_size, momentum_decay=config.momentum_decay,
                                               update_decay=config.update_decay, epsilon=config.epsilon)
        training_optimizer = (keras.optimizers.LossScaleOptimizer(optimizer) if policy == "mixed_float16"
                              else optimizer)
        model.compile(optimizer=training_optimizer, jit_compile=config.jit_compile)
        training_optimizer.build(model.trainable_variables)
    # Batches of the training stream consumed: the steps, and the steps a loss scale skipped.
    data_position = tf.Variable(0, dtype=tf.int64, trainable=False, name="data_position")
    # The same layout at every --precision (the loss-scale wrapper is not saved; its scale starts
    # afresh on a resume), so that a resume may change --precision.
    checkpoint = tf.train.Checkpoint(model=model_weights(model), optimizer=optimizer, data_position=data_position)
    checkpoint_dir = os.path.join(config.workdir, "checkpoints")
    latest = tf.train.latest_checkpoint(checkpoint_dir)
    if not chief:
        # Every worker saves (the variables are shared state), but only the chief's copy is kept.
        checkpoint_dir = distributed.scratch_dir(strategy, "checkpoints")
    manager = tf.train.CheckpointManager(checkpoint, checkpoint_dir, max_to_keep=config.keep_checkpoints)
    if latest:
        restore(latest, model, optimizer, data_position)
        logging.info("resumed from %s", latest)
    elif config.init_from:
        initialise_from(config.init_from, model, config)
    start_step = int(optimizer.iterations.numpy())

    stop = callbacks_lib.StopRequest()
    stop.install()
    try:
        if start_step < config.steps:
            outcome = train_loop(config, model, manager, info, strategy, chief, start_step, data_position, stop)
            if outcome != 0:
                return outcome
        else:
            logging.info("the run is already at step %d of %d; nothing to train", start_step, config.steps)
        step = int(optimizer.iterations.numpy())
        logging.info("final weights at step %d: fingerprint %s", step, weights_fingerprint(model))
        export_dir = os.path.join(config.workdir, "export") if chief else distributed.scratch_dir(strategy, "export")
        export_lib.export_model(model, export_dir, export_info(config, info, model, step))
        if chief:
            logging.info("exported step %d to %s", step, export_dir)
        return stop.exit_code if stop.requested else 0  # A signal during the export: it finished first.
    finally:
        stop.uninstall()


def restore(path: str, model: DCIGN, optimizer, data_position: tf.Variable) -> None:
    """Reads a checkpoint into the model, the (unwrapped) optimizer and the data position.

    Older checkpoints load too: without a data position (it is then the step), and with the optimizer
    inside mixed_float16's loss-scale wrapper.
    """
    names = [name for name, _ in tf.train.list_variables(path)]
    parts = {"model": model_weights(model), "optimizer": optimizer}
    if any(name.startswith("optimizer/inner_optimizer/") for name in names):
        parts["optimizer"] = tf.train.Checkpoint(inner_optimizer=optimizer)
    has_position = any(name.startswith("data_position/") for name in names)
    if has_position:
        parts["data_position"] = data_position
    tf.train.Checkpoint(**parts).read(path).assert_existing_objects_matched().expect_partial()
    if not has_position:
        data_position.assign(optimizer.iterations)


def model_weights(model: DCIGN) -> tf.train.Checkpoint:
    """The model's weights for a checkpoint, by layer. Not the model itself: it holds the compiled
    optimizer, which is a loss-scale wrapper under mixed_float16 only."""
    return tf.train.Checkpoint(encoder=model.encoder, decoder=model.decoder)


def weights_fingerprint(model) -> str:
    """SHA-256 of all weights' bytes: equal on workers that hold identical models."""
    digest = hashlib.sha256()
    for variable in model.weights:
        digest.update(np.ascontiguousarray(variable.numpy()).tobytes())
    return digest.hexdigest()[:16]


def train_loop(config, model, manager, info, strategy, chief, start_step, data_position, stop) -> int:
    """Trains from `start_step` to `config.steps` with the run's callbacks: `model.fit`, or
    `distributed.fit_loop` across workers. Returns the exit code."""
    multi_worker = distributed.is_multi_worker(strategy)
    start_batch = int(data_position.numpy())

    def train_data(input_context=None):
        # The stream continues where the checkpoint left it: the order is a function of (seed, batch).
        # A pipeline feeding several replicas gives each its own batch per step.
        per_step = input_context.num_replicas_in_sync // input_context.num_input_pipelines if input_context else 1
        return input_pipeline.make_dataset(
            config.data_dir, "train", config.groups_per_batch, factor_weights=dict(config.factor_weights),
            seed=config.seed, start_batch=start_batch * per_step, expected_image_size=config.image_size,
            shuffle_buffer=config.shuffle_buffer, input_context=input_context)

    test_groups = sum(info.splits["test"].values())
    eval_batches = min(config.eval_batches, -(-test_groups // config.groups_per_batch))
    # Whole batches of an endless test stream, on every strategy: no replica gets an uneven part, and
    # every worker runs the same number of steps.
    evaluate = distributed.evaluate_fn(model, strategy, lambda context: input_pipeline.make_dataset(
        config.data_dir, "test", config.groups_per_batch, shuffle=False, deterministic=True,
        input_context=context), eval_batches, interrupted=None if multi_worker else lambda: stop.requested)

    logdir = os.path.join(config.workdir, "train")
    if chief and callbacks_lib.remove_events_after(logdir, start_step):
        logging.warning("removed TensorBoard events written after step %d: the run was killed before their "
                        "checkpoint, and logs those steps again", start_step)
    summaries = callbacks_lib.SummaryBuffer(logdir if chief else None)
    run_loop = callbacks_lib.RunLoop(
        manager, summaries, config.steps, checkpoint_every=config.checkpoint_every, log_every=config.log_every,
        eval_every=config.eval_every, image_every=config.image_every,
        evaluate=evaluate if config.eval_every else None,
        panel_images=panel_images(config.data_dir, info) if chief else None,
        summary_batches=summary_batches(config.data_dir, info.group_size) if chief else None,
        global_batch_images=config.groups_per_batch * config.group_size, stop=stop, data_position=data_position)
    progress = callbacks_lib.Progress(config.steps, config.log_every, config.progress if chief else "none")
    logging.info("training from step %d to %d", start_step, config.steps)
    remaining = config.steps - start_step
    # One Keras epoch for the whole run: RunLoop ends it at the step count. Steps that a mixed_float16
    # loss scale skips take a batch but no step, hence the allowance.
    schedule = dict(epochs=1, initial_epoch=0, steps_per_epoch=remaining + max(100, remaining // 10),
                    callbacks=[run_loop, progress])
    if multi_worker:
        distributed.fit_loop(model, strategy, train_data, stop=stop, **schedule)
    else:
        model.fit(train_data(), verbose=0, shuffle=False, **schedule)

    if run_loop.nan_step is not None:
        kept = run_loop.last_checkpoint_step
        logging.error("the loss became NaN at step %d; training stopped. %s", run_loop.nan_step,
                      f"The last good checkpoint (step {kept}) is kept in {manager.directory}."
                      if kept is not None else "There is no checkpoint yet.")
        return EXIT_NAN
    if run_loop.terminated_at is not None:
        logging.warning("stopped at step %d on %s; checkpoint saved, the same command resumes",
                        run_loop.terminated_at, signal.Signals(stop.signum).name)
        return stop.exit_code
    if not run_loop.finished:
        logging.error("reached only step %d of %d: the mixed_float16 loss scale skipped too many steps (float16 "
                      "gradients overflow); the checkpoint is kept; resume with --precision=mixed_bfloat16 or "
                      "float32", run_loop.step(), config.steps)
        return EXIT_SKIPPED_STEPS
    return 0


class _QuietLibraries(pylogging.Filter):
    """Drops TensorFlow's and Keras' INFO lines (checkpoint sharding, SavedModel renames): they drown the job's own."""

    def filter(self, record):
        return record.levelno >= pylogging.WARNING or not any(
            part in record.pathname for part in ("/tensorflow/", "/keras/", "/tf_keras/"))


PROGRAM = "dcign_tf.train"


def define_flags(flag_values: flags.FlagValues) -> None:
    """One absl flag per TrainConfig field, with its default and help; tuples are flag text ("96,48,24")."""
    for field in dataclasses.fields(config_lib.TrainConfig):
        name, default, help_text, choices = field.name, field.default, field.metadata["help"], field.metadata["choices"]
        if choices:
            flags.DEFINE_enum(name, default, list(choices), help_text, flag_values=flag_values)
        elif field.type == "bool":
            flags.DEFINE_bool(name, default, help_text, flag_values=flag_values)
        elif field.type == "int":
            flags.DEFINE_integer(name, default, help_text, flag_values=flag_values)
        elif field.type == "float":
            flags.DEFINE_float(name, default, help_text, flag_values=flag_values)
        else:
            flags.DEFINE_string(name, config_lib.format_value(default), help_text, flag_values=flag_values)


def config_from_flags(flag_values: flags.FlagValues) -> config_lib.TrainConfig:
    """The parsed flags as a TrainConfig: flag text becomes typed values here, once."""
    values = {}
    for field in dataclasses.fields(config_lib.TrainConfig):
        value = flag_values[field.name].value
        values[field.name] = config_lib.parse_value(field.name, value) if field.name in config_lib.TUPLE_FIELDS \
            else value
    return config_lib.TrainConfig(**values)


def train_from_flags(flag_values: flags.FlagValues) -> int:
    """The command's body: trains the run the flags describe; returns the exit code."""
    cli.log_to_stderr()
    logging.get_absl_handler().addFilter(_QuietLibraries())
    config = config_from_flags(flag_values)
    try:
        return run(config)
    except input_pipeline.PIPELINE_DATA_ERRORS:
        # The data broke after the start-up check (whose errors are DatasetErrors): name the record.
        bad_record = input_pipeline.locate_bad_record(config.data_dir)
        if bad_record is None:
            raise
        raise records.DatasetError(f"{bad_record} (found after training failed on it)") from None


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line `argv` (argv[0] is the program name; None: sys.argv); returns the exit code.
    A usage error or one of USER_ERRORS is one line on stderr and exit code 2."""
    return cli.run(argv, PROGRAM, __doc__, define_flags, train_from_flags, lambda: USER_ERRORS)


if __name__ == "__main__":
    sys.exit(main())
