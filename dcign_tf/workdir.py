"""The run directory (--workdir): one training at a time, what counts as a run, and what kills leave behind.

A training process holds `{workdir}/train.lock` for its whole life with `flock`, which the kernel
releases when the process dies, however it dies (SIGKILL, OOM, a lost node's NFS lease). The file
names its owner (pid, host, start time) so that a refused second training can say who holds it.
A lock file that is present but not held was left by a killed run: the next run takes it over, says
so, and removes that run's leftovers (checkpoint and export temporaries), which only a training
process writes and which no live process owns once the lock is ours.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import glob
import json
import os
import shutil
import socket
import time

from dcign_tf import config as config_lib

LOCK_FILE = "train.lock"
FLAGS_FILE = "flags.txt"
# Error numbers of a full disk or an exceeded quota.
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# How TensorFlow's file ops word the same (they raise tf.errors.OpError with the OS message).
DISK_FULL_MESSAGES = ("No space left on device", "Disk quota exceeded")


class WorkdirError(config_lib.ConfigError):
    """A workdir that cannot be used as asked (in use, not a directory, unwritable, full); one line, exit 2."""


class WorkdirLock:
    """The exclusive right of one process to train in `workdir`; see the module docstring."""

    def __init__(self, workdir: str):
        self.path = os.path.join(workdir, LOCK_FILE)
        self._fd = None

    def acquire(self) -> dict | None:
        """Takes the lock. Returns the previous owner's record when it took over a dead run's lock, else None.

        Raises WorkdirError when a live process holds it.
        """
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = _read_owner(fd)
                os.close(fd)
                raise WorkdirError(
                    f"{os.path.dirname(self.path)} is in use by another training ({describe(owner)}); wait for "
                    "it to finish or stop it, or choose another --workdir") from None
            except OSError as error:
                if error.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                    os.close(fd)
                    raise
                # A filesystem without locks: fall back to asking whether the recorded owner still runs here.
                owner = _read_owner(fd)
                if owner and owner.get("host") == socket.gethostname() and pid_alive(owner.get("pid", -1)):
                    os.close(fd)
                    raise WorkdirError(f"{os.path.dirname(self.path)} is in use by another training "
                                       f"({describe(owner)}); wait for it or stop it, or choose another --workdir"
                                       ) from None
            # A releasing owner unlinks the file before unlocking: a lock on an unlinked file guards nothing.
            try:
                current = os.stat(self.path).st_ino
            except FileNotFoundError:
                current = None
            if current != os.fstat(fd).st_ino:
                os.close(fd)
                continue
            previous = _read_owner(fd)
            record = {"pid": os.getpid(), "host": socket.gethostname(),
                      "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            try:
                os.ftruncate(fd, 0)
                os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
                os.fsync(fd)
            except OSError:  # e.g. a full disk: give the lock back, as `release` does
                with contextlib.suppress(OSError):
                    os.unlink(self.path)
                os.close(fd)
                raise
            self._fd = fd
            return previous

    def move_to(self, workdir: str) -> None:
        """Records that the locked directory was renamed to `workdir` (the lock goes with the inode)."""
        self.path = os.path.join(workdir, LOCK_FILE)

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        os.close(self._fd)
        self._fd = None


def _read_owner(fd: int) -> dict | None:
    try:
        return json.loads(os.pread(fd, 4096, 0).decode() or "null")
    except (ValueError, UnicodeDecodeError):
        return None


def describe(owner: dict | None) -> str:
    if not owner:
        return "owner unknown"
    return f"pid {owner.get('pid')} on host {owner.get('host')}, started {owner.get('started')}"


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs on this host."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def leftovers(workdir: str) -> list[str]:
    """What killed trainings leave in `workdir`: checkpoint temporaries (`checkpoints/ckpt-N_temp/`, and
    `checkpoints/checkpoint.tmp<hex>` from an index write that failed) and export temporaries
    (`export.tmp-PID/`, `export.old-PID/`, `flags.txt.tmp-PID`). Only a training process writes these,
    so they are safe to remove once its lock is held."""
    patterns = [os.path.join(workdir, "checkpoints", "*_temp"), os.path.join(workdir, "checkpoints", "checkpoint.tmp*"),
                os.path.join(workdir, "export.tmp-*"), os.path.join(workdir, "export.old-*"),
                os.path.join(workdir, f"{FLAGS_FILE}.tmp-*")]
    return sorted(path for pattern in patterns for path in glob.glob(pattern))


def remove(paths: list[str]) -> None:
    for path in paths:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            try:
                os.remove(path)
            except FileNotFoundError:
                pass


def is_run(workdir: str) -> bool:
    """Whether `workdir` holds a dcign_tf run: our flags.txt and a checkpoint index or an export written by us."""
    try:
        config_lib.from_flagfile(os.path.join(workdir, FLAGS_FILE))
    except (config_lib.ConfigError, OSError, UnicodeDecodeError):
        return False
    return (os.path.isfile(os.path.join(workdir, "checkpoints", "checkpoint"))
            or os.path.isfile(os.path.join(workdir, "export", "model_info.json")))


def is_disk_full(error: BaseException) -> bool:
    """Whether an OSError or a TensorFlow op error says the disk (or the quota) is full."""
    if isinstance(error, OSError) and error.errno in DISK_FULL_ERRNOS:
        return True
    return any(message in str(error) for message in DISK_FULL_MESSAGES)
