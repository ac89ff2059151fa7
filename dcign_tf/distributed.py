"""Distribution: choosing the strategy, who writes what, and the multi-worker training loop.

Keras 3.15's `model.fit` fails under MultiWorkerMirroredStrategy (a `PerReplica` conversion
error in its data adapter, keras-team/keras#20585), so multi-worker runs use `fit_loop`: the
same `model.train_step`, run with `strategy.run`, driving the same callbacks as `fit` does.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import tempfile

import keras
import tensorflow as tf

from dcign_tf import workdir as workdir_lib


def make_strategy(name: str) -> tf.distribute.Strategy:
    """auto: MirroredStrategy over all GPUs when there are several, else the default strategy.

    multi_worker reads the cluster from the TF_CONFIG environment variable.
    """
    if name == "multi_worker":
        if not os.environ.get("TF_CONFIG"):
            raise ValueError("--strategy=multi_worker needs the TF_CONFIG environment variable "
                             "(jobs/entrypoint.py builds it on Kubernetes)")
        parse_tf_config(os.environ["TF_CONFIG"])  # TensorFlow's own errors do not say it is TF_CONFIG.
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "mirrored" or (name == "auto" and len(tf.config.list_logical_devices("GPU")) > 1):
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def parse_tf_config(text: str) -> dict:
    """The TF_CONFIG environment variable's JSON, checked as MultiWorkerMirroredStrategy reads it:
    {"cluster": {job: ["host:port", ...]}, "task": {"type": job, "index": i}}. ValueError naming TF_CONFIG."""
    def bad(problem: str) -> ValueError:
        return ValueError(f"TF_CONFIG {problem}; it must be JSON like "
                          '{"cluster": {"worker": ["host0:2222", "host1:2222"]}, "task": {"type": "worker", '
                          '"index": 0}} (jobs/entrypoint.py builds it on Kubernetes)')
    try:
        tf_config = json.loads(text)
    except json.JSONDecodeError as error:
        raise bad(f"is not valid JSON ({error})") from None
    if not isinstance(tf_config, dict) or not isinstance(tf_config.get("cluster"), dict) or not tf_config["cluster"]:
        raise bad('has no "cluster" object of jobs')
    for job, addresses in tf_config["cluster"].items():
        if (not isinstance(addresses, list) or not addresses
                or not all(isinstance(address, str) and address.rpartition(":")[2].isdigit() for address in addresses)):
            raise bad(f'cluster job {job!r} is not a list of "host:port" strings: {addresses!r}')
    task = tf_config.get("task")
    if not isinstance(task, dict) or task.get("type") not in tf_config["cluster"]:
        raise bad(f'task {task!r} is not {{"type": one of {sorted(tf_config["cluster"])}, "index": i}}')
    index = task.get("index")
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(tf_config["cluster"][task["type"]]):
        raise bad(f"task index {index!r} is not 0..{len(tf_config['cluster'][task['type']]) - 1}, one of the "
                  f"{task['type']!r} job's addresses")
    return tf_config


def is_multi_worker(strategy: tf.distribute.Strategy) -> bool:
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and worker_count(strategy) > 1


def worker_count(strategy: tf.distribute.Strategy) -> int:
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None:
        return 1
    cluster = resolver.cluster_spec().as_dict()
    return sum(len(cluster.get(kind, [])) for kind in ("chief", "worker")) or 1


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """The one worker that writes checkpoints, TensorBoard and exports: the chief, or worker 0."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return True
    if resolver.task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return resolver.task_type == "worker" and resolver.task_id == 0 and not has_chief


def scratch_dir(strategy: tf.distribute.Strategy, purpose: str) -> str:
    """A local directory for a non-chief worker's copy of what the chief writes.

    Removed by `remove_scratch` when the worker ends; those of killed workers of the same task on this
    host are removed when the next one starts.
    """
    root = _scratch_root(strategy)
    if not os.path.isdir(root):
        prefix = root.rsplit("-", 1)[0] + "-"
        for stale in glob.glob(f"{glob.escape(prefix)}*"):
            pid = stale[len(prefix):]
            if pid.isdigit() and not workdir_lib.pid_alive(int(pid)):
                shutil.rmtree(stale, ignore_errors=True)
    path = os.path.join(root, purpose)
    os.makedirs(path, exist_ok=True)
    return path


def remove_scratch(strategy: tf.distribute.Strategy) -> None:
    """Removes this worker's scratch directory (a no-op on the chief, which has none)."""
    if getattr(strategy, "cluster_resolver", None) is not None and not is_chief(strategy):
        shutil.rmtree(_scratch_root(strategy), ignore_errors=True)


def _scratch_root(strategy: tf.distribute.Strategy) -> str:
    resolver = strategy.cluster_resolver
    return os.path.join(tempfile.gettempdir(), f"dcign-{resolver.task_type}-{resolver.task_id}-{os.getpid()}")


def fit_loop(model: keras.Model, strategy: tf.distribute.Strategy, dataset_fn, *, steps_per_epoch: int,
             epochs: int, initial_epoch: int, callbacks, stop=None) -> None:
    """`model.fit` for strategies it cannot run: epochs of `model.train_step` under `strategy.run`.

    Args:
      dataset_fn: `tf.distribute.InputContext -> tf.data.Dataset` of per-replica batches.
      callbacks: Keras callbacks; they see the same hooks and logs as under `fit`.
      stop: the process's `callbacks.StopRequest`, or None. Each step all-reduces whether any worker
        was signalled, so that all stop after the same step: a preempted worker does not leave the
        others waiting in a collective.
    """
    iterator = iter(strategy.distribute_datasets_from_function(dataset_fn))

    @tf.function
    def train_function(iterator, signalled):
        outputs = strategy.run(model.train_step, args=(next(iterator),))
        logs = {name: strategy.reduce("MEAN", value, axis=None) for name, value in outputs.items()}
        return logs, strategy.reduce("SUM", strategy.run(tf.identity, args=(signalled,)), axis=None)

    if stop is not None:
        stop.coordinated = True
    callback_list = keras.callbacks.CallbackList(callbacks, model=model)
    model.stop_training = False
    callback_list.on_train_begin()
    logs = {}
    for epoch in range(initial_epoch, epochs):
        model.reset_metrics()
        callback_list.on_epoch_begin(epoch)
        for batch in range(steps_per_epoch):
            callback_list.on_train_batch_begin(batch)
            logs, any_signalled = train_function(
                iterator, tf.constant(float(stop is not None and stop.requested)))
            if stop is not None:
                stop.agree(float(any_signalled) > 0)
            callback_list.on_train_batch_end(batch, logs)
            if model.stop_training:
                break
        callback_list.on_epoch_end(epoch, {name: float(value) for name, value in logs.items()})
        if model.stop_training:
            break
    callback_list.on_train_end(logs)


def evaluate_fn(model: keras.Model, strategy: tf.distribute.Strategy, dataset_fn, steps: int, interrupted=None):
    """A callable that runs `model.test_step` on `steps` batches under `strategy.run` and returns the means.

    interrupted: a callable checked before each batch; when it returns True the evaluation is
    abandoned and the callable returns None (so that a signal is answered within a batch). Only for
    a single worker: across workers every one must run the same collectives.
    """

    @tf.function
    def test_function(batch):
        outputs = strategy.run(model.test_step, args=(batch,))
        return {name: strategy.reduce("MEAN", value, axis=None) for name, value in outputs.items()}

    def evaluate():
        model.reset_metrics()
        iterator = iter(strategy.distribute_datasets_from_function(dataset_fn))
        results = {}
        for _ in range(steps):
            if interrupted is not None and interrupted():
                return None
            results = test_function(next(iterator))
        return {name: float(value) for name, value in results.items()}

    return evaluate
