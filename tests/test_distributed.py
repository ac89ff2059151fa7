"""MirroredStrategy gives the one-device update; multi-worker training agrees and resumes.

conftest.py splits the CPU into 4 logical devices before TensorFlow starts.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from dcign_tf.config import ModelConfig
from dcign_tf.model import DCIGN
from dcign_tf.optimizer import DCIGNRMSprop

FACTORS = ["azimuth", "light", "identity"]
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cpu_devices(count):
    devices = tf.config.list_logical_devices("CPU")
    if len(devices) < count:
        pytest.skip(f"needs {count} logical CPU devices, TensorFlow started with {len(devices)}")
    return [device.name for device in devices[:count]]


def mirrored(count):
    # Collective all-reduce keeps group keys per process, so a second strategy with another device
    # count would clash with the first; reduction to one device is the same SUM without that state.
    return tf.distribute.MirroredStrategy(cpu_devices(count), cross_device_ops=tf.distribute.ReductionToOneDevice())


def tiny_model():
    return DCIGN(FACTORS, ModelConfig(latent_layout="azimuth=0,light=1,identity=rest", image_size=32, num_latents=6,
                                      encoder_filters=(4, 4, 4), decoder_filters=(4, 4, 4)))


def train_steps(strategy, steps=3, groups_per_batch=4):
    """Trains `steps` single-step epochs from a fixed seed; returns (losses, weights)."""
    rng = np.random.default_rng(0)
    groups = steps * groups_per_batch
    data = {"images": rng.uniform(size=(groups, 3, 32, 32, 1)).astype(np.float32),
            "active_factor": (np.arange(groups) % 3).astype(np.int32)}
    dataset = tf.data.Dataset.from_tensor_slices(data).batch(groups_per_batch, drop_remainder=True)
    keras.utils.set_random_seed(0)
    with strategy.scope():
        model = tiny_model()
        model.compile(optimizer=DCIGNRMSprop(learning_rate=1e-3), jit_compile=False)
    history = model.fit(dataset, epochs=steps, steps_per_epoch=1, verbose=0, shuffle=False)
    return np.array(history.history["loss"]), [w.numpy() for w in model.weights]


@pytest.mark.parametrize("replicas", [2, 4])
def test_mirrored_strategy_matches_one_device(replicas):
    """Same global batch and seed: the same losses and weights. This holds only if the loss is
    scaled for the global batch, the noise is the one-device noise, and groups stay whole."""
    single_losses, single_weights = train_steps(tf.distribute.get_strategy())
    strategy = mirrored(replicas)
    assert strategy.num_replicas_in_sync == replicas
    losses, weights = train_steps(strategy)
    np.testing.assert_allclose(losses, single_losses, rtol=1e-5)
    assert len(weights) == len(single_weights)
    for got, want in zip(weights, single_weights):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    # The weights moved: the comparison is not between two untouched initialisations.
    keras.utils.set_random_seed(0)
    initial = [w.numpy() for w in tiny_model().weights]
    assert max(np.abs(a - b).max() for a, b in zip(initial, weights)) > 1e-4


def test_reparameterisation_noise_differs_between_replicas():
    strategy = mirrored(2)
    with strategy.scope():
        model = tiny_model()
    per_replica = strategy.run(lambda: model.reparameterisation_noise(2, 3, tf.constant(7, tf.int64)))
    first, second = [t.numpy() for t in strategy.experimental_local_results(per_replica)]
    assert first.shape == second.shape == (2, 3, 6)
    assert np.abs(first - second).max() > 0.1       # not identical copies
    # Together they are exactly the noise one device draws for the global batch.
    one_device = tiny_model().reparameterisation_noise(4, 3, tf.constant(7, tf.int64)).numpy()
    np.testing.assert_array_equal(np.concatenate([first, second]), one_device)


def one_epoch_metrics(strategy, active_factor):
    """Training metrics of one step, and test metrics over 3 groups in batches of 2 (the last uneven)."""
    rng = np.random.default_rng(1)
    groups = len(active_factor)
    train = {"images": rng.uniform(size=(groups, 3, 32, 32, 1)).astype(np.float32),
             "active_factor": np.array(active_factor, np.int32)}
    test = {"images": rng.uniform(size=(3, 3, 32, 32, 1)).astype(np.float32),
            "active_factor": np.arange(3, dtype=np.int32)}
    keras.utils.set_random_seed(0)
    with strategy.scope():
        model = tiny_model()
        model.compile(optimizer=DCIGNRMSprop(learning_rate=1e-3), jit_compile=False)
    history = model.fit(tf.data.Dataset.from_tensor_slices(train).batch(groups, drop_remainder=True), epochs=1,
                        verbose=0)
    test_metrics = model.evaluate(tf.data.Dataset.from_tensor_slices(test).batch(2), verbose=0, return_dict=True)
    return {name: values[0] for name, values in history.history.items()}, test_metrics


def test_metrics_under_mirrored_strategy_are_the_one_device_metrics():
    """Per-factor reconstructions and invariance are global ratios, not means of per-replica ratios:
    replica 1 sees no azimuth group here, and used to halve reconstruction_azimuth."""
    active_factor = [0, 0, 1, 2]
    single_train, single_test = one_epoch_metrics(tf.distribute.get_strategy(), active_factor)
    train, test = one_epoch_metrics(mirrored(2), active_factor)
    assert set(train) == set(single_train) >= {"reconstruction_azimuth", "invariance", "loss"}
    for name, value in single_train.items():
        np.testing.assert_allclose(train[name], value, rtol=1e-5, err_msg=name)
    # The last test batch holds one group, so replica 1 gets none; the metrics still cover all 3 groups.
    assert set(test) == set(single_test) == {"loss", "reconstruction", "kl", "mse"}
    for name, value in single_test.items():
        np.testing.assert_allclose(test[name], value, rtol=1e-5, err_msg=name)


def test_test_noise_differs_between_replicas_and_is_the_one_device_noise():
    strategy = mirrored(2)
    with strategy.scope():
        model = tiny_model()
    per_replica = strategy.run(lambda: model._test_noise(tf.constant(3)))
    first, second = [t.numpy() for t in strategy.experimental_local_results(per_replica)]
    assert first.shape == second.shape == (3, 6) and np.abs(first - second).max() > 0.1
    np.testing.assert_array_equal(np.concatenate([first, second]), tiny_model()._test_noise(tf.constant(6)).numpy())


# Two worker processes on 127.0.0.1 with TF_CONFIG.

def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def start_workers(workdir, data_dir, steps, ports, log_dir, attempt):
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    processes = []
    for index in range(len(ports)):
        env = dict(os.environ, TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}))
        log = open(os.path.join(log_dir, f"worker{index}-{attempt}.log"), "w")
        processes.append(subprocess.Popen(
            [sys.executable, "-m", "dcign_tf.train", f"--flagfile={REPO}/configs/test.flags",
             f"--workdir={workdir}", f"--data_dir={data_dir}", "--strategy=multi_worker", f"--steps={steps}",
             "--checkpoint_every=5", "--log_every=5", "--eval_every=0", "--image_every=1000", "--progress=log"],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT))
    return processes


def read(path):
    with open(path) as file:
        return file.read()


def test_two_workers_stop_together_when_one_is_preempted_and_resume(tmp_path, faces_dataset):
    workdir, logs = str(tmp_path / "run"), str(tmp_path)
    ports = free_ports(2)
    workers = start_workers(workdir, faces_dataset, 400, ports, logs, "first")
    checkpoint_index = os.path.join(workdir, "checkpoints", "checkpoint")
    deadline = time.time() + 240
    while time.time() < deadline and not (os.path.exists(checkpoint_index)
                                          and "ckpt-10" in read(checkpoint_index)):
        assert all(w.poll() is None for w in workers), read(os.path.join(logs, "worker1-first.log"))[-3000:]
        time.sleep(0.5)
    assert os.path.exists(checkpoint_index), "no checkpoint within the deadline"
    # One worker is preempted (SIGTERM): both stop after the same step, the chief saves it, both exit 143.
    workers[1].send_signal(signal.SIGTERM)
    assert [worker.wait(timeout=120) for worker in workers] == [143, 143]
    chief_log = read(os.path.join(logs, "worker0-first.log"))
    assert "another worker was asked to stop" in chief_log
    stopped = int(re.search(r"stopped at step (\d+) on SIGTERM", chief_log).group(1))
    saved = int(re.search(r'model_checkpoint_path: "ckpt-(\d+)"', read(checkpoint_index)).group(1))
    assert saved == stopped >= 10

    workers = start_workers(workdir, faces_dataset, saved + 10, free_ports(2), logs, "second")
    for worker in workers:
        assert worker.wait(timeout=300) == 0
    chief_log, other_log = (read(os.path.join(logs, f"worker{i}-second.log")) for i in range(2))
    assert f"resumed from {workdir}/checkpoints/ckpt-{saved}" in chief_log
    assert f"training from step {saved} to {saved + 10}" in other_log
    fingerprints = [re.search(rf"final weights at step {saved + 10}: fingerprint (\w+)", log).group(1)
                    for log in (chief_log, other_log)]
    assert fingerprints[0] == fingerprints[1]          # identical weights on both workers
    # Only the chief wrote into the workdir.
    assert os.path.exists(os.path.join(workdir, "export", "dcign.keras"))
    assert sorted(os.listdir(workdir)) == ["checkpoints", "export", "flags.txt", "train"]
