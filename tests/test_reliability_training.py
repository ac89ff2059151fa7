"""Faults around training, as classes: kills at any moment, signals, concurrent runs, bad and full disks,
precision changes on resume, and the data stream across resumes.

Every training here is configs/test.flags-sized (32x32, a few steps). Kills that must land inside a
checkpoint, right after one, or inside an export are made by a wrapper that runs `dcign_tf.train` with
the TensorFlow/Keras call at that moment patched to SIGKILL the process: the state on disk is then
exactly what a kill there leaves.
"""

import dataclasses
import glob
import json
import logging
import os
import random
import re
import signal
import subprocess
import sys
import time

import keras
import pytest
import tensorflow as tf
import yaml
from test_train import REPO, latest_step, tensor_steps, train, train_command, wait_for

from dcign_tf import callbacks as callbacks_lib
from dcign_tf import config as config_lib
from dcign_tf import export as export_lib
from dcign_tf import train as train_lib
from dcign_tf import workdir as workdir_lib
from dcign_tf.data import input_pipeline

# Runs dcign_tf.train with one call patched to SIGKILL the process; DCIGN_FAULT=<where>:<n-th call>.
FAULT_RUNNER = r"""
import os, runpy, signal, sys
where, count = os.environ["DCIGN_FAULT"].split(":")
calls = [0]
def kill_on_call(function, after):
    def patched(*args, **kwargs):
        calls[0] += 1
        if calls[0] == int(count) and not after:
            os.kill(os.getpid(), signal.SIGKILL)
        result = function(*args, **kwargs)
        if calls[0] == int(count):
            os.kill(os.getpid(), signal.SIGKILL)
        return result
    return patched
if where == "checkpoint":   # inside a save: ckpt-N_temp/ is written, not yet merged into ckpt-N
    from tensorflow.python.ops import gen_io_ops
    gen_io_ops.merge_v2_checkpoints = kill_on_call(gen_io_ops.merge_v2_checkpoints, after=False)
elif where == "commit":     # between the commit of a checkpoint's summaries and the checkpoint
    from dcign_tf import callbacks
    callbacks.SummaryBuffer.commit = kill_on_call(callbacks.SummaryBuffer.commit, after=True)
elif where == "save":       # right after a checkpoint
    import tensorflow as tf
    tf.train.CheckpointManager.save = kill_on_call(tf.train.CheckpointManager.save, after=True)
elif where == "export":     # inside the export: export.tmp-PID/ holds dcign.keras, not yet the SavedModel
    from tensorflow.python.saved_model import save   # what tf.saved_model.save resolves to
    save.save = kill_on_call(save.save, after=False)
sys.argv = ["dcign_tf.train"] + sys.argv[1:]
runpy.run_module("dcign_tf.train", run_name="__main__", alter_sys=True)
"""

LEFTOVER_PATTERNS = ("checkpoints/*_temp", "checkpoints/*.tmp*", "export.tmp-*", "export.old-*", "flags.txt.tmp-*",
                     "*.tmp-*")


def leftovers(workdir):
    return sorted({path for pattern in LEFTOVER_PATTERNS for path in glob.glob(os.path.join(workdir, pattern))})


def config_for(workdir, data_dir, **overrides):
    base = config_lib.from_flagfile(os.path.join(REPO, "configs", "test.flags"))
    return dataclasses.replace(base, workdir=str(workdir), data_dir=data_dir, **overrides)


def run_logged(command, log_path, env=None):
    """Starts `command` with stdout and stderr to `log_path`; returns the Popen."""
    log = open(log_path, "w")
    return subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env)


@pytest.fixture
def background():
    """`run_logged` for a test: the processes it started and that still run at the end are killed."""
    processes = []

    def start(command, log_path, env=None):
        processes.append(run_logged(command, log_path, env))
        return processes[-1]

    yield start
    for process in processes:
        process.kill()
        process.wait()


def fingerprint(output):
    return re.findall(r"final weights at step (\d+): fingerprint (\w+)", output)[-1]


# The workdir: paths, --overwrite, the lock and leftovers (in-process: they fail or pass before training).

def hold_lock(workdir):
    """A live process that holds `workdir`'s lock, as a training would."""
    code = ("import fcntl, json, os, socket, sys, time\n"
            f"fd = os.open({os.path.join(workdir, workdir_lib.LOCK_FILE)!r}, os.O_RDWR | os.O_CREAT)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\n"
            "os.write(fd, json.dumps({'pid': os.getpid(), 'host': socket.gethostname(), 'started': 'now'}).encode())\n"
            "print('locked', flush=True)\n"
            "time.sleep(120)\n")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_lock_refuses_a_second_training_and_a_dead_ones_lock_is_taken_over(tmp_path, faces_dataset, caplog):
    workdir = tmp_path / "run"
    workdir.mkdir()
    config = config_for(workdir, faces_dataset)
    holder = hold_lock(workdir)
    try:
        with pytest.raises(workdir_lib.WorkdirError, match=rf"in use by another training \(pid {holder.pid} on host"):
            train_lib.prepare_workdir(config, chief=True)
    finally:
        holder.kill()
        holder.wait()
    # What a killed run leaves: its lock file, a half-written checkpoint and export, and a good checkpoint.
    (workdir / "flags.txt").write_text(config.to_flagfile())
    (workdir / "checkpoints" / "ckpt-3_temp").mkdir(parents=True)
    (workdir / "checkpoints" / "ckpt-3_temp" / "part-00000-of-00001.index").write_bytes(b"half")
    (workdir / "checkpoints" / "ckpt-2.index").write_bytes(b"kept")
    (workdir / f"export.tmp-{holder.pid}").mkdir()
    (workdir / "flags.txt.tmp-1234").write_text("--steps=")
    with caplog.at_level(logging.WARNING):
        lock = train_lib.prepare_workdir(config, chief=True)
    try:
        assert f"from a training that is no longer running (pid {holder.pid} on host" in caplog.text
        assert leftovers(str(workdir)) == [] and (workdir / "checkpoints" / "ckpt-2.index").exists()
        assert json.loads((workdir / workdir_lib.LOCK_FILE).read_text())["pid"] == os.getpid()
    finally:
        lock.release()
    assert not (workdir / workdir_lib.LOCK_FILE).exists()      # a clean exit leaves no lock file


def fake_run(workdir, **overrides):
    """A directory that holds a dcign_tf run (flags.txt and a checkpoint index) of another config."""
    os.makedirs(os.path.join(workdir, "checkpoints"))
    config = dataclasses.replace(config_lib.from_flagfile(os.path.join(REPO, "configs", "test.flags")), **overrides)
    with open(os.path.join(workdir, "flags.txt"), "w") as file:
        file.write(config.to_flagfile())
    with open(os.path.join(workdir, "checkpoints", "checkpoint"), "w") as file:
        file.write('model_checkpoint_path: "ckpt-5"\nall_model_checkpoint_paths: "ckpt-5"\n')
    open(os.path.join(workdir, "checkpoints", "ckpt-5.index"), "w").close()


def test_bad_workdirs_and_overwrite_of_what_is_not_a_run_are_refused(tmp_path, faces_dataset, monkeypatch):
    def refused(workdir, message, **overrides):
        with pytest.raises(workdir_lib.WorkdirError, match=message):
            train_lib.prepare_workdir(config_for(workdir, faces_dataset, **overrides), chief=True)

    a_file = tmp_path / "a_file"
    a_file.write_text("not a directory")
    refused(a_file, "is a file, not a directory")
    refused(a_file / "run", r"cannot write in --workdir=.*a_file/run \(Not a directory\)")

    # A directory that is not a run (a home directory, say) is never moved, --overwrite or not.
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / "notes.txt").write_text("mine")
    refused(home, "is not empty and has no flags.txt, so it is not a dcign_tf run; choose another")
    refused(home, "--overwrite moves aside only a dcign_tf run", overwrite=True)
    assert sorted(os.listdir(home)) == [".ssh", "notes.txt"]
    # Nor is a flags.txt that parses but holds no checkpoint or export of ours.
    (home / "flags.txt").write_text("--num_latents=12\n")
    (home / "export").mkdir()
    refused(home, "--overwrite moves aside only a dcign_tf run", overwrite=True)

    # --workdir=. --overwrite: the directory it runs in cannot be moved aside.
    run = tmp_path / "run"
    fake_run(str(run), num_latents=12)
    monkeypatch.chdir(run)
    refused(".", "cannot move aside the directory it runs in", overwrite=True)
    monkeypatch.chdir(tmp_path)
    lock = train_lib.prepare_workdir(config_for("run", faces_dataset, overwrite=True), chief=True)
    lock.release()
    moved = glob.glob(str(tmp_path / "run.replaced-*"))
    assert len(moved) == 1 and os.path.exists(os.path.join(moved[0], "checkpoints", "ckpt-5.index"))
    assert os.listdir(run) == []

    # Unwritable: a read-only filesystem.
    mount = tmp_path / "readonly"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(mount)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a read-only tmpfs here (needs root and CAP_SYS_ADMIN)")
    try:
        refused(mount / "run", r"cannot write in --workdir=.*readonly/run \(Read-only file system\)")
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_a_second_signal_restores_the_default_action():
    stop = callbacks_lib.StopRequest()
    previous = signal.getsignal(signal.SIGINT)
    stop.install()
    try:
        os.kill(os.getpid(), signal.SIGINT)         # handled in Python before the next bytecode
        assert stop.requested and stop.exit_code == 130
        # A second Ctrl-C or SIGTERM takes the default action: the process ends at once.
        assert signal.getsignal(signal.SIGINT) is signal.SIG_DFL
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    finally:
        stop.uninstall()
    assert signal.getsignal(signal.SIGINT) is previous


# Processes: concurrent runs, Ctrl-C, kills at every kind of moment.

def test_a_concurrent_training_is_refused_and_ctrl_c_saves_and_exits_130(tmp_path, faces_dataset, background):
    workdir = str(tmp_path / "run")
    extra = ("--steps=100000", "--checkpoint_every=5", "--log_every=1000", "--eval_every=0", "--image_every=100000")
    first = background(train_command(workdir, faces_dataset, *extra), tmp_path / "first.log")
    wait_for(lambda: latest_step(workdir) is not None, first)
    # A second training of the same workdir (the CLI prints this as one line and exits 2).
    with pytest.raises(workdir_lib.WorkdirError, match=rf"is in use by another training \(pid {first.pid} on"):
        train_lib.run(config_for(workdir, faces_dataset, steps=100000))
    assert first.poll() is None                      # the first one trains on
    first.send_signal(signal.SIGINT)
    assert first.wait(timeout=120) == 130
    output = (tmp_path / "first.log").read_text()
    assert "Traceback" not in output and "KeyboardInterrupt" not in output
    stopped = int(re.search(r"stopped at step (\d+) on SIGINT; checkpoint saved", output).group(1))
    assert latest_step(workdir) == stopped
    assert not os.path.exists(os.path.join(workdir, workdir_lib.LOCK_FILE)) and leftovers(workdir) == []


KILL_FLAGS = ("--steps=24", "--checkpoint_every=4", "--log_every=4", "--eval_every=8", "--image_every=1000",
              "--deterministic")


def test_kill_battery_a_run_killed_anywhere_resumes_to_the_uninterrupted_weights(tmp_path, faces_dataset, background):
    """SIGKILL at random moments, inside a checkpoint, right after one and inside the export; each
    resume continues the data stream and the step intervals, so with --deterministic the final
    weights are bit-identical to an uninterrupted run's."""
    # The uninterrupted run goes alongside (its own workdir; determinism does not depend on the load).
    uninterrupted = background(train_command(str(tmp_path / "reference"), faces_dataset, *KILL_FLAGS),
                               tmp_path / "reference.log")
    workdir = str(tmp_path / "killed")
    rng = random.Random(13)
    logs = []
    # (fault, n-th call), in an order that leaves each one steps to do; "random" is a SIGKILL from
    # outside at a random moment after the next checkpoint.
    for attempt, fault in enumerate([("checkpoint", 2), ("commit", 2), ("save", 1), ("random", 0), ("export", 1)]):
        log_path = tmp_path / f"attempt{attempt}.log"
        if fault[0] == "random":
            before = latest_step(workdir) or 0
            process = background(train_command(workdir, faces_dataset, *KILL_FLAGS), log_path)
            wait_for(lambda: (latest_step(workdir) or 0) > before, process)
            time.sleep(rng.uniform(0.0, 1.0))
            process.send_signal(signal.SIGKILL)
        else:
            env = dict(os.environ, DCIGN_FAULT=f"{fault[0]}:{fault[1]}")
            process = background([sys.executable, "-c", FAULT_RUNNER, *train_command(workdir, faces_dataset,
                                                                                    *KILL_FLAGS)[3:]], log_path, env)
        assert process.wait(timeout=300) in (-signal.SIGKILL, 0), log_path.read_text()[-3000:]
        logs.append(log_path.read_text())
        if fault == ("checkpoint", 2):
            assert glob.glob(os.path.join(workdir, "checkpoints", "*_temp")), "the kill missed the checkpoint"
        if fault == ("commit", 2):   # events of a step whose checkpoint was never written: removed on resume
            assert max(tensor_steps(workdir)["train/loss"]) > latest_step(workdir)
        if fault == ("save", 1):     # the scalars of a checkpoint's own step are kept with it
            assert max(tensor_steps(workdir)["train/loss"]) == latest_step(workdir)
        if fault == ("export", 1):
            assert glob.glob(os.path.join(workdir, "export.tmp-*")), "the kill missed the export"
            assert not os.path.exists(os.path.join(workdir, "export"))

    code, output = train(workdir, faces_dataset, *KILL_FLAGS)
    assert code == 0, output[-3000:]
    assert uninterrupted.wait(timeout=300) == 0
    reference = (tmp_path / "reference.log").read_text()
    reference_steps = tensor_steps(str(tmp_path / "reference"))
    everything = "\n".join(logs + [output])
    assert "Traceback" not in everything
    assert "from a training that is no longer running" in everything   # the dead runs' locks were taken over
    assert "removing what killed runs left" in everything
    assert "removed TensorBoard events written after step" in everything
    assert fingerprint(output) == fingerprint(reference)
    assert leftovers(workdir) == [] and not os.path.exists(os.path.join(workdir, workdir_lib.LOCK_FILE))
    # TensorBoard: every step once, on the same intervals as the uninterrupted run.
    steps = tensor_steps(workdir)
    for tag in ("train/loss", "train/reconstruction", "test/loss"):
        assert steps[tag] == reference_steps[tag], tag
    assert reference_steps["train/loss"] == list(range(4, 25, 4)) and reference_steps["test/loss"] == [8, 16, 24]


# Disks: full and unwritable.

@pytest.fixture
def small_disk(tmp_path):
    """A 16 MiB tmpfs, unmounted afterwards; skipped where mounting is not allowed."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root and CAP_SYS_ADMIN)")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=True)


def fill(directory):
    """Writes {directory}/filler until the disk is full (a training may have filled it first)."""
    try:
        with open(os.path.join(directory, "filler"), "ab") as file:
            while True:
                file.write(b"\0" * (1 << 16))
                file.flush()
    except OSError:
        pass  # Full: even opening the file or closing it may fail.


def test_a_full_disk_gets_one_line_leaves_no_temporaries_and_the_run_resumes(small_disk, faces_dataset, tmp_path,
                                                                               caplog, background):
    workdir = str(small_disk / "run")
    extra = ("--steps=100000", "--checkpoint_every=2", "--log_every=2", "--eval_every=0", "--image_every=100000")

    def one_error_line(output):
        assert "Traceback" not in output, output[-3000:]
        errors = [line for line in output.splitlines() if line.startswith("dcign_tf.train: error:")]
        assert len(errors) == 1, output[-3000:]
        return errors[0]

    # Full before it starts.
    fill(small_disk)
    with pytest.raises(workdir_lib.WorkdirError, match=r"the disk is full \(.*No space left on device"):
        train_lib.run(config_for(workdir, faces_dataset))
    assert leftovers(workdir) == [] and not os.path.exists(os.path.join(workdir, workdir_lib.LOCK_FILE))
    (small_disk / "filler").unlink(missing_ok=True)
    # Full while it trains: the next checkpoint, summary or export cannot be written.
    process = background(train_command(workdir, faces_dataset, *extra), tmp_path / "train.log")
    wait_for(lambda: (latest_step(workdir) or 0) >= 4, process)
    fill(small_disk)
    assert process.wait(timeout=300) == 2
    line = one_error_line((tmp_path / "train.log").read_text())
    assert "the disk is full" in line and "the same command resumes" in line
    assert leftovers(workdir) == [] and not os.path.exists(os.path.join(workdir, workdir_lib.LOCK_FILE))
    saved = latest_step(workdir)
    # Space again: the same run resumes from the last checkpoint and finishes.
    (small_disk / "filler").unlink(missing_ok=True)
    with caplog.at_level(logging.INFO, logger="absl"):
        assert train_lib.run(config_for(workdir, faces_dataset, steps=saved + 2, checkpoint_every=2, log_every=2,
                                         eval_every=0, image_every=100000, progress="none")) == 0
    assert f"resumed from {workdir}/checkpoints/ckpt-{saved}" in caplog.text
    assert leftovers(workdir) == [] and export_lib.read_info(os.path.join(workdir, "export"))["step"] == saved + 2


# Precision and the data stream.

def test_precision_changes_on_resume_and_loss_scale_skips_do_not_end_the_run_early(tmp_path, faces_dataset, caplog):
    """float32 -> mixed_float16 -> mixed_bfloat16 in one workdir. mixed_float16's loss scale skips its
    first steps (float16 overflows at the initial scale); the run still ends at its step count."""
    workdir = tmp_path / "run"
    common = dict(eval_every=0, image_every=1000, checkpoint_every=4, log_every=4, progress="none")
    try:
        for precision, steps in [("float32", 4), ("mixed_float16", 8), ("mixed_bfloat16", 12)]:
            caplog.clear()
            with caplog.at_level(logging.INFO, logger="absl"):
                assert train_lib.run(config_for(workdir, faces_dataset, precision=precision, steps=steps,
                                                 **common)) == 0
            assert export_lib.read_info(str(workdir / "export"))["step"] == steps
            assert latest_step(str(workdir)) == steps
            position = dict(tf.train.list_variables(tf.train.latest_checkpoint(str(workdir / "checkpoints"))))
            assert "data_position/.ATTRIBUTES/VARIABLE_VALUE" in position
            data_position = int(tf.train.load_variable(tf.train.latest_checkpoint(str(workdir / "checkpoints")),
                                                       "data_position/.ATTRIBUTES/VARIABLE_VALUE"))
            if precision == "mixed_float16":
                assert ("--precision=mixed_float16 on a CPU" in caplog.text) != bool(
                    tf.config.list_physical_devices("GPU"))
                assert data_position > steps          # skipped steps consumed batches, not steps
                skipped = data_position - steps
            else:
                assert "--precision=mixed_float16 on a CPU" not in caplog.text
        assert data_position == 12 + skipped          # bfloat16 skips nothing
    finally:
        keras.mixed_precision.set_global_policy("float32")


def group_ids(dataset, batches):
    """(factor, a key of the group: its factor values' bytes) of every group in the first `batches` batches."""
    return [(int(factor), values.tobytes()) for batch in dataset.take(batches)
            for factor, values in zip(batch["active_factor"].numpy(), batch["factor_values"].numpy())]


def test_a_resumed_stream_continues_the_uninterrupted_one(faces_dataset):
    """A run killed at batches 3, 7, 8 and 19 resumes with start_batch=<its data position>: together the
    pieces draw the groups an uninterrupted run draws, and across epochs every group is drawn equally
    (not only the first records of each shard)."""
    def stream(start_batch=0, seed=5):
        return input_pipeline.make_dataset(faces_dataset, "train", 2, seed=seed, shuffle_buffer=12,
                                           start_batch=start_batch)

    total = 24  # 48 groups: two epochs of the 24 training groups, on average
    uninterrupted = group_ids(stream(), total)
    kills = [0, 3, 7, 8, 19, total]
    resumed = [group for start, end in zip(kills, kills[1:]) for group in group_ids(stream(start), end - start)]
    assert resumed == uninterrupted
    assert group_ids(stream(seed=6), total) != uninterrupted
    # Each factor's 6 groups come round once per epoch of that factor, in a new order each time.
    for factor in range(4):
        drawn = [key for f, key in uninterrupted if f == factor]
        epochs = [drawn[start:start + 6] for start in range(0, len(drawn) - 5, 6)]
        assert len(epochs) >= 1 and all(set(epoch) == set(epochs[0]) and len(set(epoch)) == 6 for epoch in epochs)


# Kubernetes: the grace period covers a step and a checkpoint.

TRAINING_WORKLOADS = ["k8s/workloads/train-mirrored/job.yaml", "k8s/workloads/train-multiworker/job.yaml",
                      "k8s/workloads/train-tfjob/tfjob.yaml"]


def pod_specs(document):
    if document.get("kind") == "TFJob":
        return [replica["template"]["spec"] for replica in document["spec"]["tfReplicaSpecs"].values()]
    return [document["spec"]["template"]["spec"]]


@pytest.mark.parametrize("path", TRAINING_WORKLOADS)
def test_training_pods_get_the_time_to_stop_cleanly(path):
    """SIGTERM is answered after the step in flight, with one checkpoint: 2.4 s at the paper's size on
    2 CPU cores (a 1.4 s step, a 50 MB checkpoint). STOP_SECONDS adds an image summary in flight; the
    grace period covers it 4 times over, for slow network storage."""
    with open(os.path.join(REPO, path)) as file:
        documents = [doc for doc in yaml.safe_load_all(file) if doc]
    specs = [spec for doc in documents for spec in pod_specs(doc)]
    assert specs
    for spec in specs:
        assert spec["terminationGracePeriodSeconds"] >= 4 * STOP_SECONDS, path


STOP_SECONDS = 30
