"""What happens around the train step: summaries, evaluation, checkpoints, stopping, progress."""

from __future__ import annotations

import glob
import math
import os
import re
import signal
import time

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from dcign_tf import progress as progress_lib
from dcign_tf import visualize
from dcign_tf.analysis.training import training_summary


class SummaryBuffer:
    """TensorBoard summaries held in memory until `commit`, which writes them to an event file of their own.

    The training job commits right before each checkpoint, into a file named for that checkpoint's
    step (`events.out.tfevents.*.ckpt-N.v2`). A run killed between the two leaves a file ahead of its
    last checkpoint, which `remove_events_after` deletes when the run resumes: those steps are
    trained and logged again. So TensorBoard shows every step once, and a checkpoint's own step is
    never lost.
    """

    def __init__(self, logdir: str | None):
        self._logdir = logdir
        self._pending: list[tuple[str, str, object, int]] = []

    def scalar(self, tag: str, value: float, step: int) -> None:
        if self._logdir is not None:
            self._pending.append(("scalar", tag, float(value), int(step)))

    def image(self, tag: str, image: np.ndarray, step: int) -> None:
        """image [H, W] in [0, 1]."""
        if self._logdir is not None:
            self._pending.append(("image", tag, np.asarray(image, np.float32), int(step)))

    def commit(self, checkpoint_step: int) -> None:
        """Writes what is pending into a new event file for the checkpoint at `checkpoint_step`."""
        if self._logdir is None or not self._pending:
            self._pending.clear()
            return
        writer = tf.summary.create_file_writer(self._logdir, filename_suffix=f".ckpt-{checkpoint_step}.v2")
        with writer.as_default():
            for kind, tag, value, step in self._pending:
                if kind == "scalar":
                    tf.summary.scalar(tag, value, step=step)
                else:
                    tf.summary.image(tag, value[None, :, :, None], step=step, max_outputs=1)
        writer.flush()
        writer.close()
        self._pending.clear()

    def discard(self) -> None:
        self._pending.clear()


def remove_events_after(logdir: str, checkpoint_step: int) -> list[str]:
    """Deletes the event files that `SummaryBuffer.commit` wrote for checkpoints after `checkpoint_step`
    (ones the run was killed before saving); returns their paths."""
    removed = []
    for path in glob.glob(os.path.join(glob.escape(logdir), "events.out.tfevents.*.ckpt-*.v2")):
        match = re.search(r"\.ckpt-(\d+)\.v2$", path)
        if match and int(match.group(1)) > checkpoint_step:
            os.remove(path)
            removed.append(path)
    return removed


def crossed(interval: int, previous_step: int, step: int) -> bool:
    """Whether a multiple of `interval` lies in (previous_step, step]."""
    return interval > 0 and step // interval > previous_step // interval


class StopRequest:
    """SIGINT (Ctrl-C) and SIGTERM (a preempted pod) ask the run to stop after the step in flight.

    The run then saves a checkpoint and exits with 128 + the signal's number: 130 for Ctrl-C, 143 for
    SIGTERM. The first signal restores the default actions, so a second one ends the process at once,
    even inside a long TensorFlow op, losing only the steps since the last checkpoint.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum = None
        self._previous = {}
        # Across workers (distributed.fit_loop) the decision is taken together, one step after a signal.
        self.coordinated = False
        self._agreed = False

    @property
    def requested(self) -> bool:
        """Whether this process was signalled."""
        return self.signum is not None

    @property
    def stop_now(self) -> bool:
        """Whether the run stops after this step: when signalled, or across workers when any was."""
        return self._agreed if self.coordinated else self.requested

    def agree(self, any_worker: bool) -> None:
        """The workers' shared answer for this step (`distributed.fit_loop`)."""
        self._agreed = any_worker
        if any_worker and self.signum is None:
            self.signum = signal.SIGTERM  # Stopped with a preempted peer: resumable, like the peer.
            logging.warning("another worker was asked to stop: stopping with it after this step")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    def install(self) -> None:
        """Takes over SIGINT and SIGTERM (main thread only; elsewhere the defaults stay)."""
        try:
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self.handle)
        except ValueError:
            logging.warning("not in the main thread: SIGINT and SIGTERM keep their default actions")

    def uninstall(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def handle(self, signum, frame=None) -> None:
        del frame
        if self.signum is None:
            self.signum = signum
        for other in self.SIGNALS:
            signal.signal(other, signal.SIG_DFL)
        logging.warning("received %s: stopping after this step with a checkpoint; send it again to stop at once "
                        "(losing the steps since the last checkpoint)", signal.Signals(signum).name)


class RunLoop(keras.callbacks.Callback):
    """Drives a run's schedule from the global step (the optimizer's iteration count), after every batch.

    At each multiple of `log_every` (and at the last step) it logs the mean training metrics since the
    previous log and resets them, and at the first such step past each multiple of `eval_every` /
    `image_every` it evaluates on the test set / draws image panels. Every `checkpoint_every` steps, and
    at the last step, it commits the summaries logged so far, that step's own included, and saves a
    checkpoint. The intervals are multiples of the global step, so a resumed run keeps them. A
    step that a mixed_float16 loss scale skips does not advance the global step; the run ends when it
    reaches `total_steps`. It stops on a NaN loss (keeping the last good checkpoint and naming the
    step) and on a `StopRequest` (after saving a checkpoint).

    Args:
      manager: a `tf.train.CheckpointManager` (a scratch one on non-chief workers).
      summaries: the run's `SummaryBuffer`.
      total_steps: the step to stop at.
      evaluate: a callable returning test metrics {name: value} (or None when it gave up on a signal), or None.
      panel_images: [N, S, S, 1] test images for the reconstruction panel, or None (no images).
      summary_batches: test batches for `analysis.training.training_summary`: equivariance, invariance and
        latent sweeps every `image_every` steps.
      global_batch_images: images per step, for the throughput scalar.
      stop: the process's `StopRequest`, or None.
      data_position: an int64 variable in the checkpoint: batches of the training stream consumed,
        which the skipped steps count too. It starts at its restored value.
    """

    def __init__(self, manager, summaries: SummaryBuffer, total_steps: int, *, checkpoint_every: int,
                 log_every: int = 1, eval_every: int = 0, image_every: int = 0, evaluate=None, panel_images=None,
                 summary_batches=None, global_batch_images: int = 1, stop: StopRequest | None = None,
                 data_position=None):
        super().__init__()
        self.manager = manager
        self.summaries = summaries
        self.total_steps = total_steps
        self.checkpoint_every = checkpoint_every
        self.log_every = log_every
        self.eval_every = eval_every
        self.image_every = image_every
        self.evaluate = evaluate
        self.panel_images = panel_images
        self.summary_batches = summary_batches
        self.global_batch_images = global_batch_images
        self.stop = stop or StopRequest()
        self.data_position = data_position
        self.nan_step = None
        self.terminated_at = None
        self._last = {}
        self._clock = None
        self._position = 0

    # Outcome.
    @property
    def last_checkpoint_step(self) -> int | None:
        latest = self.manager.latest_checkpoint
        return int(latest.rsplit("-", 1)[-1]) if latest else None

    @property
    def finished(self) -> bool:
        return self.step() >= self.total_steps

    # Keras hooks.
    def step(self) -> int:
        return int(self.model.optimizer.iterations.numpy())

    def on_train_begin(self, logs=None):
        step = self.step()
        self._last = {"checkpoint": step, "eval": step, "image": step, "log": step}
        self._clock = (time.perf_counter(), step)
        self._position = int(self.data_position.numpy()) if self.data_position is not None else step
        if self.stop.stop_now:  # Signalled while the run was being set up: nothing new to save.
            self.terminated_at = step
            self.model.stop_training = True

    def on_train_batch_end(self, batch, logs=None):
        self._position += 1
        step = self.step()
        logs = logs or {}
        loss = float(logs["loss"]) if "loss" in logs else 0.0
        if not math.isfinite(loss):
            self.nan_step = step
            self.model.stop_training = True
            return
        last = step >= self.total_steps
        if step > self._last["log"] and (crossed(self.log_every, self._last["log"], step) or last):
            self.log_scalars(step, logs)
            self.model.reset_metrics()  # The next log is the mean of the next interval.
            if not self.stop.stop_now:  # A signal is answered now, not after an evaluation.
                self.log_evaluations(step, last)
        if self.stop.stop_now:
            self.save(step)
            self.terminated_at = step
            self.model.stop_training = True
        elif last or crossed(self.checkpoint_every, self._last["checkpoint"], step):
            self.save(step)
        if last:
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        if self.nan_step is not None:
            # The weights are NaN now; what was logged since the last checkpoint goes with them.
            self.summaries.discard()
        elif self.step() != self._last["checkpoint"]:
            self.save(self.step())  # Ended early (by the batch budget): keep what was trained.

    # Work.
    def save(self, step: int) -> None:
        """Commits the summaries for this checkpoint, then saves it (see `SummaryBuffer`)."""
        if self.data_position is not None:
            self.data_position.assign(self._position)
        self.summaries.commit(step)
        self.manager.save(checkpoint_number=step)
        self._last["checkpoint"] = step

    def log_evaluations(self, step: int, last: bool) -> None:
        if self.evaluate is not None and self.eval_every and (crossed(self.eval_every, self._last["eval"], step)
                                                              or last):
            results = self.evaluate()
            for name, value in (results or {}).items():  # None: abandoned for a signal
                self.summaries.scalar(f"test/{name}", value, step)
            self._last["eval"] = step
        if self.panel_images is not None and (crossed(self.image_every, self._last["image"], step) or last):
            self.log_images(step)
            self._last["image"] = step

    def log_scalars(self, step: int, logs: dict) -> None:
        for name, value in logs.items():
            if name.startswith("reconstruction_") and float(value) == 0.0:
                continue  # No group of that factor in this interval.
            self.summaries.scalar(f"train/{name}", float(value), step)
        learning_rate = self.model.optimizer.learning_rate
        self.summaries.scalar("train/learning_rate", float(np.asarray(learning_rate)), step)
        now, then_step = time.perf_counter(), self._clock[1]
        if step > then_step:
            images_per_second = (step - then_step) * self.global_batch_images / (now - self._clock[0])
            self.summaries.scalar("train/images_per_second", images_per_second, step)
        self._clock = (now, step)
        self._last["log"] = step

    def log_images(self, step: int) -> None:
        """Reconstructions, and the periodic evaluation: equivariance numbers and one sweep per factor."""
        self.summaries.image("images/reconstructions",
                             visualize.reconstruction_panel(self.model, self.panel_images), step)
        if self.summary_batches:
            scalars, images = training_summary(self.model, self.summary_batches)
            for tag, value in scalars.items():
                self.summaries.scalar(f"eval/{tag}", value, step)
            for tag, image in images.items():
                self.summaries.image(tag.replace("sweep/", "sweeps/"), image, step)


class Progress(keras.callbacks.Callback):
    """The run's `progress.Progress` fed the global step after every batch: a bar with the loss and KL on a
    terminal; otherwise a log line every `log_every` steps with the losses, the rate and the ETA."""

    LOGGED = ("loss", "reconstruction", "kl", "invariance")  # the training metrics shown in a log line

    def __init__(self, total_steps: int, log_every: int, mode: str = "auto"):
        super().__init__()
        self.total_steps = total_steps
        self.log_every = log_every
        self.mode = mode
        self._progress = None

    def on_train_begin(self, logs=None):
        self._progress = progress_lib.Progress(self.total_steps, "trained", "step", mode=self.mode,
                                               initial=int(self.model.optimizer.iterations.numpy()),
                                               log_every=self.log_every)

    def on_train_batch_end(self, batch, logs=None):
        step = int(self.model.optimizer.iterations.numpy())
        logs = logs or {}
        if self._progress.bar is not None:
            postfix = ({"loss": f"{float(logs['loss']):.1f}", "kl": f"{float(logs.get('kl', 0)):.1f}"}
                       if step % 5 == 0 and "loss" in logs else {})
        elif self.log_every and (step % self.log_every == 0 or step >= self.total_steps):  # a line is due
            postfix = {name: f"{float(logs.get(name, math.nan)):.4g}" for name in self.LOGGED}
        else:
            postfix = {}
        self._progress.update(step - self._progress.done, **postfix)

    def on_train_end(self, logs=None):
        if self._progress is not None:
            self._progress.close()
