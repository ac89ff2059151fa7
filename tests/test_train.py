"""`python -m dcign_tf.train` as a user runs it: outputs, resuming, interruptions, bad input."""

import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import tensorflow as tf
from tensorboard.backend.event_processing import event_accumulator

from dcign_tf import config as config_lib
from dcign_tf import export as export_lib
from dcign_tf import train as train_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FACTORS = ["azimuth", "elevation", "light", "identity"]


def train_command(workdir, data_dir, *extra):
    return [sys.executable, "-m", "dcign_tf.train", f"--flagfile={REPO}/configs/test.flags",
            f"--workdir={workdir}", f"--data_dir={data_dir}", "--progress=log", *extra]


def train(workdir, data_dir, *extra, timeout=300):
    result = subprocess.run(train_command(workdir, data_dir, *extra), cwd=REPO, capture_output=True, text=True,
                            timeout=timeout)
    return result.returncode, result.stdout + result.stderr


def refused(capsys, workdir, data_dir, *extra):
    """Runs a command the trainer refuses in this process (no TensorFlow start-up): (status, stderr)."""
    status = train_lib.main(train_command(workdir, data_dir, *extra)[2:])
    return status, capsys.readouterr().err


def tensor_steps(workdir):
    """TensorBoard tag -> list of steps, read back from the run's event files."""
    accumulator = event_accumulator.EventAccumulator(os.path.join(workdir, "train"),
                                                     size_guidance={event_accumulator.TENSORS: 0})
    accumulator.Reload()
    return {tag: [event.step for event in accumulator.Tensors(tag)] for tag in accumulator.Tags()["tensors"]}


def latest_step(workdir):
    latest = tf.train.latest_checkpoint(os.path.join(workdir, "checkpoints"))
    return int(latest.rsplit("-", 1)[1]) if latest else None


def test_test_config_writes_everything_and_resumes(tmp_path, faces_dataset):
    workdir = str(tmp_path / "run")
    code, output = train(workdir, faces_dataset)
    assert code == 0, output[-3000:]
    assert "Traceback" not in output

    # flags.txt: the resolved flags, reusable as a flagfile.
    config = config_lib.from_flagfile(os.path.join(workdir, "flags.txt"))
    assert (config.workdir, config.image_size, config.steps) == (workdir, 32, 20)

    # TensorBoard: every scalar and image tag, each step once.
    steps = tensor_steps(workdir)
    for tag in ["loss", "reconstruction", "kl", "invariance", "learning_rate", "images_per_second"]:
        assert steps[f"train/{tag}"] == [5, 10, 15, 20], tag
    assert any(f"train/reconstruction_{factor}" in steps for factor in FACTORS)
    for tag in ["test/loss", "test/reconstruction", "test/kl", "test/mse", "images/reconstructions"]:
        assert steps[tag] == [10, 20], tag
    for factor in FACTORS:
        assert steps[f"sweeps/{factor}"] == [10, 20]
        assert steps[f"eval/invariance/{factor}"] == [10, 20]
    for factor in FACTORS[:3]:   # the periodic evaluation's equivariance numbers
        assert steps[f"eval/equivariance/{factor}/spearman"] == [10, 20]

    # The export: a Keras model and a SavedModel with encode and decode signatures.
    model, info = export_lib.load_model(os.path.join(workdir, "export"))
    assert info["step"] == 20 and [f["name"] for f in info["factors"]] == FACTORS
    images = np.random.default_rng(0).uniform(size=(2, 32, 32, 1)).astype(np.float32)
    mean, _ = model.encode(images)
    saved = tf.saved_model.load(os.path.join(workdir, "export", "saved_model"))
    assert {"encode", "decode"} <= set(saved.signatures)
    encoded = saved.signatures["encode"](images=tf.constant(images))
    np.testing.assert_allclose(encoded["mean"].numpy(), mean.numpy(), rtol=1e-4, atol=1e-5)
    decoded = saved.signatures["decode"](latents=encoded["mean"])["images"].numpy()
    assert decoded.shape == (2, 32, 32, 1) and 0 <= decoded.min() and decoded.max() <= 1

    # The same command again: nothing to do, nothing rewritten.
    before = sorted(os.listdir(os.path.join(workdir, "checkpoints")))
    code, output = train(workdir, faces_dataset)
    assert code == 0 and "already at step 20" in output
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == before

    # More steps: resumes from the checkpoint, and TensorBoard continues without repeats.
    code, output = train(workdir, faces_dataset, "--steps=30")
    assert code == 0 and "resumed from" in output and "training from step 20 to 30" in output
    assert tensor_steps(workdir)["train/loss"] == [5, 10, 15, 20, 25, 30]


def wait_for(predicate, process, timeout=180):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        assert process.poll() is None, "the run ended early"
        time.sleep(0.2)
    raise AssertionError("timed out")


def test_sigterm_is_answered_at_the_next_step_and_the_intervals_survive_the_resume(tmp_path, faces_dataset):
    workdir = str(tmp_path / "run")
    log_path = tmp_path / "log.txt"
    # A checkpoint every step shows where the run is. The log interval is 1000 steps: one Keras
    # "epoch", at whose end SIGTERM used to be answered.
    extra = ("--steps=100000", "--checkpoint_every=1", "--log_every=1000", "--eval_every=0", "--image_every=100000")
    with open(log_path, "w") as log:
        process = subprocess.Popen(train_command(workdir, faces_dataset, *extra), cwd=REPO, stdout=log,
                                   stderr=subprocess.STDOUT)
        wait_for(lambda: (latest_step(workdir) or 0) >= 3, process)
        signalled_at = latest_step(workdir)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=120) == 143     # 128 + SIGTERM: Kubernetes restarts the pod, which resumes
    output = log_path.read_text()
    stopped = int(re.search(r"stopped at step (\d+) on SIGTERM; checkpoint saved", output).group(1))
    assert latest_step(workdir) == stopped and stopped - signalled_at < 20, (signalled_at, stopped)

    # Resumed off its log interval, the run still logs at the interval's multiples (and at the last step).
    log_every = 5 if stopped % 5 else 6
    end = stopped + 2 * log_every + 1
    code, output = train(workdir, faces_dataset, f"--steps={end}", f"--log_every={log_every}",
                         "--checkpoint_every=1", "--eval_every=0", "--image_every=100000")
    assert code == 0 and f"resumed from {workdir}/checkpoints/ckpt-{stopped}" in output, output[-2000:]
    logged = tensor_steps(workdir)["train/loss"]
    assert logged == [step for step in range(stopped + 1, end + 1) if step % log_every == 0 or step == end]


def test_nan_loss_stops_names_the_step_and_keeps_the_last_good_checkpoint(tmp_path, faces_dataset):
    workdir = str(tmp_path / "run")
    code, output = train(workdir, faces_dataset, "--learning_rate=1e30", "--checkpoint_every=1")
    assert code == 1, output[-2000:]
    match = re.search(r"the loss became NaN at step (\d+); training stopped\. The last good checkpoint "
                      r"\(step (\d+)\) is kept", output)
    assert match, output[-2000:]
    nan_step, kept = map(int, match.groups())
    assert kept < nan_step and latest_step(workdir) == kept
    assert not os.path.exists(os.path.join(workdir, "export"))


def error_line(output):
    lines = [line for line in output.splitlines() if "error" in line.lower()]
    return lines[-1] if lines else ""


def test_bad_input_gets_one_clear_line(tmp_path, faces_dataset, capsys):
    # In-process: tests/test_cli_errors.py shows that `python -m dcign_tf.train` takes the same path.
    workdir = str(tmp_path / "run")
    cases = [
        (["--bogus_flag=1"], "Unknown command line flag 'bogus_flag'"),
        (["--latent_layout=azimuth=0,identity=rest"], "the data has factors ['elevation', 'light']"),
        (["--latent_layout=azimuth=0,elevation=0,light=2,identity=rest"], "more than one factor"),
        (["--dataset=prebuilt", "--image_size=64"], "--image_size=64 disagrees with the dataset"),
        (["--groups_per_batch=0"], "--groups_per_batch must be positive"),
        (["--mirror_factors=azimuth,pose"], "--mirror_factors names ['pose']"),
    ]
    for extra, message in cases:
        code, output = refused(capsys, workdir, faces_dataset, *extra)
        assert code == 2 and "Traceback" not in output, output[-2000:]
        assert message in error_line(output), (extra, output[-1500:])
    assert not os.path.exists(os.path.join(workdir, "checkpoints"))


def test_a_workdir_with_another_run_is_refused_unless_overwrite(tmp_path, faces_dataset, capsys):
    workdir = str(tmp_path / "run")
    assert train(workdir, faces_dataset, "--steps=5")[0] == 0
    code, output = refused(capsys, workdir, faces_dataset, "--steps=5", "--num_latents=12")
    assert code == 2 and "holds a run with another config (num_latents=8, not 12)" in error_line(output)
    assert latest_step(workdir) == 5                # untouched

    # --overwrite moves the old run aside; nothing is deleted.
    code, output = train(workdir, faces_dataset, "--steps=5", "--num_latents=12", "--overwrite")
    assert code == 0, output[-2000:]
    moved = [name for name in os.listdir(tmp_path) if name.startswith("run.replaced-")]
    assert len(moved) == 1 and latest_step(str(tmp_path / moved[0])) == 5
    assert config_lib.from_flagfile(os.path.join(workdir, "flags.txt")).num_latents == 12


def test_baseline_mode_and_init_from(tmp_path, faces_dataset, capsys):
    baseline = str(tmp_path / "baseline")
    code, output = train(baseline, faces_dataset, "--mode=baseline", "--steps=5")
    assert code == 0, output[-2000:]
    code, output = train(str(tmp_path / "clamped"), faces_dataset, f"--init_from={baseline}", "--steps=5")
    assert code == 0 and "initialised the weights from" in output
    code, output = refused(capsys, str(tmp_path / "other"), faces_dataset, f"--init_from={baseline}", "--num_latents=12")
    assert code == 2 and "has another architecture (num_latents: 8 != 12)" in output
