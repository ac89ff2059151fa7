"""The bottom of the dependency graph: writing a file whole or not at all, and float images as uint8.

Every module that writes a file others read (dataset shards and dataset.json, exports, run summaries,
figures) goes through `atomic_path` or the `write_*_atomic` helpers on top of it: the data go to a temp
file `{path}.tmp-{host}-{pid}` beside the target, which is fsynced and renamed onto `path`, and then the
directory is fsynced so that the rename itself survives a crash. A reader sees the old file or the new
one, never a part; a failed write leaves no temp file. The temp name is unique to one process even when
pods on several hosts share the directory, and names its writer so that a sweeper can tell whether the
writer still runs (dcign_tf.data.records.remove_stale_temp_files).

Standard library and numpy only: dataset worker processes import this module and must stay TF-free.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from typing import Any, Iterator

import numpy as np

TEMP_INFIX = ".tmp-"  # A file being written is `{final path}.tmp-{host}-{pid}`.


def temp_path_for(path: str) -> str:
    """`path.tmp-<host>-<pid>`: unique to this process even when pods on several hosts share the directory."""
    return f"{path}{TEMP_INFIX}{socket.gethostname()}-{os.getpid()}"


def fsync_file(path: str) -> None:
    """Flushes a closed file's data to disk (for files written by a library that does not, e.g. TFRecordWriter)."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def fsync_directory(path: str) -> None:
    """Makes a rename into the directory `path` durable. A filesystem that cannot fsync a directory (some
    network mounts answer EINVAL) is left as it is: the rename has happened and is visible."""
    with contextlib.suppress(OSError):
        descriptor = os.open(path or ".", os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """Yields a temp path to write `path`'s contents to; on a normal exit, fsyncs it, renames it onto `path`
    and fsyncs the directory. On any exception the temp file is removed and the exception propagates.

    The caller closes what it wrote before the block ends (the rename needs the complete file).
    """
    temp_path = temp_path_for(path)
    try:
        yield temp_path
        fsync_file(temp_path)
        os.replace(temp_path, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(temp_path)
        raise
    fsync_directory(os.path.dirname(path))


def write_bytes_atomic(path: str, data: bytes) -> None:
    """Writes `data` to `path` whole or not at all (see the module docstring); OSError if it cannot."""
    with atomic_path(path) as temp_path:
        with open(temp_path, "wb") as file:
            file.write(data)


def write_text_atomic(path: str, text: str) -> None:
    """`write_bytes_atomic` of `text` in UTF-8."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str, value: Any) -> None:
    """`value` as JSON (indented by 2, keys sorted, a final newline), written atomically."""
    write_text_atomic(path, json.dumps(value, indent=2, sort_keys=True) + "\n")


def to_uint8(image) -> np.ndarray:
    """Float images in [0, 1] -> uint8 in 0..255, rounded to nearest and clipped; uint8 passes through.

    Any shape; the arithmetic is float32, as the images are (renders, decoder outputs).
    """
    image = np.asarray(image)
    if image.dtype == np.uint8:
        return image
    return np.clip(np.rint(image.astype(np.float32) * 255.0), 0, 255).astype(np.uint8)
