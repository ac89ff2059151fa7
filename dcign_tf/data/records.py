"""The on-disk format of a grouped image dataset: shards of `tf.train.Example` records plus `dataset.json`.

Layout of a data directory:

    {data_dir}/dataset.json
    {data_dir}/{split}/{factor}-{i:05d}-of-{n:05d}.tfrecord     split in ("train", "test")

One record is one group of `group_size` images in which only the record's active factor varies:

    images          bytes [G]      PNG-encoded uint8 grayscale images, each [S, S]
    factor_values   float [G * F]  row-major [G, F]: every factor's value for every image, in
                                   dataset.json's factor order (angles in radians, identity as its id)
    active_factor   bytes []       the name of the factor that varies over the group
    identity        int64 [G]      each image's identity id (constant unless the identity factor is active)
    image_size      int64 []       S, so a reader can check it without decoding

Each factor's groups live in their own shards so that a factor can be read, weighted or held out alone.
Shard i of n holds the groups `shard_group_range(num_groups, n, i)`, a contiguous slice.

TensorFlow is imported inside the few functions that need it: the generator's worker processes import
this module and must stay TF-free (importing TF costs seconds and hundreds of MB per process).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import socket
import time
from typing import Any, Mapping, Sequence

import numpy as np
from PIL import Image

from dcign_tf import io_utils

FORMAT_VERSION = 1
DATASET_JSON = "dataset.json"
SPLITS = ("train", "test")
SHARD_SUFFIX = ".tfrecord"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"  # The first 8 bytes of every PNG file.
STALE_TEMP_SECONDS = 3600  # A temp file older than this was left by a killed writer (a shard takes seconds).

# Feature keys of one group record.
IMAGES_KEY = "images"
FACTOR_VALUES_KEY = "factor_values"
ACTIVE_FACTOR_KEY = "active_factor"
IDENTITY_KEY = "identity"
IMAGE_SIZE_KEY = "image_size"


class DatasetError(ValueError):
    """A data directory that cannot be used as asked; the message is one line naming the file and the fix."""


@dataclasses.dataclass(frozen=True)
class FactorSpec:
    """One generative factor: its name, its value range [lo, hi] (None for identity) and the range's units."""

    name: str
    range: tuple[float, float] | None
    units: str

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "range": None if self.range is None else list(self.range), "units": self.units}

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> "FactorSpec":
        value_range = obj["range"]
        return cls(
            name=str(obj["name"]),
            range=None if value_range is None else (float(value_range[0]), float(value_range[1])),
            units=str(obj["units"]),
        )


def _freeze_json(value: Any) -> Any:
    """JSON lists become tuples so that a loaded DatasetInfo compares equal to a freshly built one."""
    if isinstance(value, Mapping):
        return {key: _freeze_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return tuple(_freeze_json(item) for item in value)
    return value


def _thaw_json(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {key: _thaw_json(item) for key, item in value.items()}
    if isinstance(value, tuple):
        return [_thaw_json(item) for item in value]
    return value


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """The contents of `dataset.json`.

    image_size: S, images are [S, S] grayscale.   group_size: G, images per group (per record).
    factors: the factors in record column order.   latent_layout: factor name -> latent indices or "rest".
    splits: split -> factor name -> number of groups.   num_shards: shards per (split, factor).
    generator: the generator's name and settings (seed, face model...) that are not stored elsewhere.
    """

    image_size: int
    group_size: int
    factors: tuple[FactorSpec, ...]
    latent_layout: Mapping[str, Any]
    splits: Mapping[str, Mapping[str, int]]
    num_shards: int
    generator: Mapping[str, Any]
    format_version: int = FORMAT_VERSION

    def __post_init__(self):
        object.__setattr__(self, "factors", tuple(self.factors))
        object.__setattr__(self, "latent_layout", _freeze_json(self.latent_layout))
        object.__setattr__(self, "splits", _freeze_json(self.splits))
        object.__setattr__(self, "generator", _freeze_json(self.generator))

    @property
    def factor_names(self) -> tuple[str, ...]:
        return tuple(factor.name for factor in self.factors)

    def factor_index(self, name: str) -> int:
        return self.factor_names.index(name)

    def num_groups(self, split: str, factor: str) -> int:
        return int(self.splits[split][factor])

    def shard_paths(self, data_dir: str, split: str, factor: str) -> list[str]:
        """Every shard file of one (split, factor), in group order."""
        return [shard_path(data_dir, split, factor, index, self.num_shards) for index in range(self.num_shards)]

    def to_json(self) -> str:
        obj = {
            "format_version": self.format_version,
            "image_size": self.image_size,
            "group_size": self.group_size,
            "factors": [factor.to_json() for factor in self.factors],
            "latent_layout": _thaw_json(self.latent_layout),
            "splits": _thaw_json(self.splits),
            "num_shards": self.num_shards,
            "generator": _thaw_json(self.generator),
        }
        return json.dumps(obj, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str, path: str = DATASET_JSON) -> "DatasetInfo":
        """Parses dataset.json's text; `path` only names the file in errors."""
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as error:
            raise DatasetError(f"{path}: not valid JSON ({error}); regenerate the dataset") from None
        version = obj.get("format_version") if isinstance(obj, dict) else None
        if version != FORMAT_VERSION:
            raise DatasetError(
                f"{path}: format_version {version!r}, but this dcign_tf reads format_version {FORMAT_VERSION}; "
                "regenerate the dataset with this version's generator (or use the dcign_tf that wrote it)"
            )
        try:
            return cls(
                image_size=int(obj["image_size"]),
                group_size=int(obj["group_size"]),
                factors=tuple(FactorSpec.from_json(factor) for factor in obj["factors"]),
                latent_layout=obj["latent_layout"],
                splits={split: {name: int(count) for name, count in counts.items()}
                        for split, counts in obj["splits"].items()},
                num_shards=int(obj["num_shards"]),
                generator=obj["generator"],
                format_version=version,
            )
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise DatasetError(f"{path}: missing or malformed field ({error!r}); regenerate the dataset") from None

    @classmethod
    def load(cls, data_dir: str) -> "DatasetInfo":
        """Reads `{data_dir}/dataset.json`; DatasetError if the directory or file is missing or unreadable."""
        if not os.path.isdir(data_dir):
            raise DatasetError(
                f"{data_dir}: no such data directory; generate one with "
                f"`python -m dcign_tf.data.make_faces --data_dir={data_dir}` or pass the right --data_dir"
            )
        path = dataset_json_path(data_dir)
        try:
            with open(path, encoding="utf-8") as file:
                text = file.read()
        except FileNotFoundError:
            raise DatasetError(
                f"{path}: not found, so {data_dir} holds no dataset; generate one with "
                f"`python -m dcign_tf.data.make_faces --data_dir={data_dir}`"
            ) from None
        return cls.from_json(text, path)

    def save(self, data_dir: str) -> None:
        """Writes `{data_dir}/dataset.json` atomically (temp file, fsync, rename); DatasetError if it cannot."""
        make_dirs(data_dir)
        write_file_atomically(dataset_json_path(data_dir), self.to_json().encode("utf-8"))

    def differences(self, other: "DatasetInfo") -> list[str]:
        """Human-readable `field: self vs other` for every top-level field that differs."""
        differing = []
        for field in dataclasses.fields(self):
            mine, theirs = getattr(self, field.name), getattr(other, field.name)
            if mine != theirs:
                if field.name == "factors":
                    mine = [factor.to_json() for factor in mine]
                    theirs = [factor.to_json() for factor in theirs]
                differing.append(f"{field.name}: {_thaw_json(mine)} vs {_thaw_json(theirs)}")
        return differing


def dataset_json_path(data_dir: str) -> str:
    return os.path.join(data_dir, DATASET_JSON)


def shard_path(data_dir: str, split: str, factor: str, index: int, num_shards: int) -> str:
    return os.path.join(data_dir, split, f"{factor}-{index:05d}-of-{num_shards:05d}{SHARD_SUFFIX}")


def shard_group_range(num_groups: int, num_shards: int, index: int) -> range:
    """The contiguous group indices that shard `index` of `num_shards` holds (possibly empty)."""
    return range(index * num_groups // num_shards, (index + 1) * num_groups // num_shards)


def remove_stale_temp_files(data_dir: str) -> list[str]:
    """Deletes the temp files that killed writers left in data_dir and its split folders; returns their paths.

    A temp file is stale when its writer (the host and pid in its name) was on this host and is no longer
    running, or is this very process (callers sweep before they write, so such a file is a previous run's
    with a recycled pid, e.g. a restarted container), or when it is older than STALE_TEMP_SECONDS (a writer
    on another host: a shard takes seconds to write). Files that cannot be deleted (a read-only mount) are
    left alone.
    """
    removed = []
    for directory in (data_dir, *(os.path.join(data_dir, split) for split in SPLITS)):
        try:
            entries = os.listdir(directory)
        except OSError:
            continue
        for entry in entries:
            if io_utils.TEMP_INFIX in entry:
                path = os.path.join(directory, entry)
                with contextlib.suppress(OSError):  # Gone already (another sweeper), or read-only.
                    if _is_stale(entry.rsplit(io_utils.TEMP_INFIX, 1)[1], os.path.getmtime(path)):
                        os.remove(path)
                        removed.append(path)
    return removed


def _is_stale(writer: str, mtime: float) -> bool:
    """writer: the `<host>-<pid>` part of a temp file's name."""
    if time.time() - mtime > STALE_TEMP_SECONDS:
        return True
    host, _, pid = writer.rpartition("-")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    if int(pid) == os.getpid():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # Alive, another user's.
        return False
    return False


def make_dirs(path: str) -> None:
    """os.makedirs(path, exist_ok=True), with DatasetError (one line) when it cannot be made."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as error:
        raise DatasetError(_write_error_message(path, error.strerror or str(error))) from None


@contextlib.contextmanager
def _write_errors(path: str):
    """Turns a failure while writing `path` (an OSError, or TensorFlow's error from a TFRecordWriter) into
    a one-line DatasetError; io_utils.atomic_path has removed the temp file, so nothing is left behind."""
    try:
        yield
    except Exception as error:  # noqa: BLE001 - only write failures are translated, below.
        reason = (error.strerror or str(error)) if isinstance(error, OSError) else getattr(error, "message", None)
        if reason is None:
            raise
        raise DatasetError(_write_error_message(path, reason)) from None


def _write_error_message(path: str, reason: str) -> str:
    # TensorFlow's messages read "<temp path>; <strerror>": the path is named already.
    reason = (reason or "unknown error").strip().splitlines()[0].rsplit("; ", 1)[-1]
    if "No space left" in reason or "Disk quota" in reason:
        return (f"{path}: cannot write, {reason.lower()}; free some space (or choose another --data_dir) and "
                "rerun the same command: what is complete is kept and the rest is made")
    return f"{path}: cannot write ({reason}); choose a --data_dir you can write to"


def write_file_atomically(path: str, data: bytes) -> None:
    """io_utils.write_bytes_atomic (temp file, fsync, rename): readers see all or nothing.

    DatasetError (one line, no temp file left) when it cannot be written.
    """
    with _write_errors(path):
        io_utils.write_bytes_atomic(path, data)


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of one uint8 grayscale image [S, S]; no metadata and a fixed zlib level, so deterministic."""
    buffer = io.BytesIO()
    # A 2-D uint8 array is mode "L" (8-bit grayscale).
    Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)).save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


def serialize_group(
    pngs: Sequence[bytes],
    factor_values: np.ndarray,
    active_factor: str,
    identity: Sequence[int],
    image_size: int,
) -> bytes:
    """One group as a serialized `tf.train.Example`.

    pngs: G PNG images [S, S]; factor_values: [G, F] float; identity: [G] ids; image_size: S.
    """
    import tensorflow as tf  # Lazy: see the module docstring.

    factor_values = np.asarray(factor_values, dtype=np.float32)
    if factor_values.shape[0] != len(pngs) or len(identity) != len(pngs):
        raise ValueError(f"group of {len(pngs)} images with factor_values {factor_values.shape} "
                         f"and {len(identity)} identities")
    feature = {
        IMAGES_KEY: tf.train.Feature(bytes_list=tf.train.BytesList(value=list(pngs))),
        FACTOR_VALUES_KEY: tf.train.Feature(float_list=tf.train.FloatList(value=factor_values.reshape(-1).tolist())),
        ACTIVE_FACTOR_KEY: tf.train.Feature(bytes_list=tf.train.BytesList(value=[active_factor.encode("utf-8")])),
        IDENTITY_KEY: tf.train.Feature(int64_list=tf.train.Int64List(value=[int(i) for i in identity])),
        IMAGE_SIZE_KEY: tf.train.Feature(int64_list=tf.train.Int64List(value=[int(image_size)])),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString(deterministic=True)


def write_shard(path: str, records: Sequence[bytes]) -> None:
    """Writes serialized records as one TFRecord file, atomically (temp file, fsync, rename).

    DatasetError (one line, no temp file left) when it cannot be written, e.g. on a full disk.
    """
    import tensorflow as tf  # Lazy: see the module docstring.

    make_dirs(os.path.dirname(path))
    with _write_errors(path), io_utils.atomic_path(path) as temp_path:
        with tf.io.TFRecordWriter(temp_path) as writer:
            for record in records:
                writer.write(record)


def write_factor_groups(data_dir: str, info: DatasetInfo, split: str, factor: str,
                        groups: Sequence[tuple[np.ndarray, np.ndarray, Sequence[int]]]) -> list[str]:
    """Writes all groups of one (split, factor) in memory as `info.num_shards` shards; returns their paths.

    groups: (images uint8 [G, S, S], factor_values [G, F], identity [G]) per group; their number must be
    `info.num_groups(split, factor)`. For small or converted datasets; the faces generator streams instead.
    """
    num_groups = info.num_groups(split, factor)
    if len(groups) != num_groups:
        raise ValueError(f"{len(groups)} groups for {split}/{factor}, dataset.json says {num_groups}")
    paths = info.shard_paths(data_dir, split, factor)
    for index, path in enumerate(paths):
        shard_records = []
        for group_index in shard_group_range(num_groups, info.num_shards, index):
            images, factor_values, identity = groups[group_index]
            pngs = [encode_png(image) for image in images]
            shard_records.append(serialize_group(pngs, factor_values, factor, identity, info.image_size))
        write_shard(path, shard_records)
    return paths


def feature_spec(info: DatasetInfo) -> dict[str, Any]:
    """The `tf.io.parse_example` spec of one group record of this dataset."""
    import tensorflow as tf  # Lazy: see the module docstring.

    group_size, num_factors = info.group_size, len(info.factors)
    return {
        IMAGES_KEY: tf.io.FixedLenFeature([group_size], tf.string),
        FACTOR_VALUES_KEY: tf.io.FixedLenFeature([group_size * num_factors], tf.float32),
        ACTIVE_FACTOR_KEY: tf.io.FixedLenFeature([], tf.string),
        IDENTITY_KEY: tf.io.FixedLenFeature([group_size], tf.int64),
        IMAGE_SIZE_KEY: tf.io.FixedLenFeature([], tf.int64),
    }
