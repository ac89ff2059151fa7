"""What the dataset sources (faces, chairs, smallNORB) share: split ids, settings checks, the process pool,
progress, temp-file cleanup, the check of an existing dataset.json; and, for the two converters, grouping,
image preparation and writing.

A converter turns a labelled image collection into the grouped record format of `records.py`. Every image
has an integer key, one column per label (for chairs: chair id, elevation, azimuth), and a group is
`group_size` images whose keys agree on every column but one, the group's varying column, and differ in
that one (`make_groups`). Groups are drawn without replacement, so an image appears at most once among
the groups of one factor.

Determinism: the random choices are numpy generators seeded from (seed, split, factor, the fixed labels),
never from the iteration order, so the same input and flags give byte-identical files.

Writing (`write_dataset`): the shards first, each atomically, then dataset.json, also atomically: a data
directory that has a dataset.json is complete, and a killed conversion is redone by running the same
command again. A data_dir whose dataset.json describes another dataset is never overwritten.

Numpy, PIL and the records module only: worker processes import this module and must stay TensorFlow-free.
"""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing
import os
import time
from typing import Callable, ClassVar, Iterable, Iterator, Mapping, Sequence

import numpy as np
from absl import flags, logging
from PIL import Image

from dcign_tf import progress as progress_lib
from dcign_tf.config import MAX_IMAGE_SIZE, MIN_IMAGE_SIZE  # the bounds of the whole system
from dcign_tf.data import records
from dcign_tf.data.records import DatasetError, DatasetInfo

# One group as the converters hold it: (G PNG images [S, S], factor_values float32 [G, F], identity int64 [G]).
Group = tuple[Sequence[bytes], np.ndarray, np.ndarray]

SPLIT_IDS = {"train": 0, "test": 1}  # Stream ids that enter the seeds; fixed forever for reproducibility.
# define_source_flags defines flags for the commands: absl is to attribute them to the caller (its --help).
flags.disclaim_key_flags()


class ConversionError(DatasetError):
    """Input that cannot be converted as asked: a wrong layout, missing files, an unreadable image or too
    little data for the group size. The message is one line naming what was expected."""


class OutputConflictError(DatasetError):
    """The data directory already holds a different dataset; nothing was written."""


# ---------------------------------------------------------------------------------------------------
# Settings.


@dataclasses.dataclass(frozen=True)
class SourceConfig:
    """The settings every source has; each source's config adds its own (and may change the defaults,
    which are the paper's: 150x150 images in groups of 20).

    image_size: S, images are [S, S].   group_size: G, images per group.   num_shards: shard files per
    (split, factor).   seed: seeds every random choice (equal configs give byte-identical datasets).
    """

    settings_error: ClassVar[type[Exception]] = ValueError  # What `validate` raises.
    image_size: int = 150
    group_size: int = 20
    num_shards: int = 16
    seed: int = 0

    def validate(self) -> None:
        """Raises `settings_error` with a one-line message naming the first bad setting."""
        if not MIN_IMAGE_SIZE <= self.image_size <= MAX_IMAGE_SIZE:
            raise self.settings_error(
                f"--image_size must be in {MIN_IMAGE_SIZE}..{MAX_IMAGE_SIZE}, got {self.image_size}")
        if self.group_size < 2:
            raise self.settings_error(f"--group_size must be at least 2 (a factor must vary in a group), "
                                      f"got {self.group_size}")
        if self.num_shards < 1:
            raise self.settings_error(f"--num_shards must be at least 1, got {self.num_shards}")
        if self.seed < 0:
            raise self.settings_error(f"--seed must be non-negative, got {self.seed}")


def check_processes(processes: int | None, error: type[Exception] = ValueError) -> int:
    """`processes`, or one per core when None; raises `error` when it is below 1."""
    processes = default_processes() if processes is None else processes
    if processes < 1:
        raise error(f"--processes must be at least 1, got {processes}")
    return processes


# ---------------------------------------------------------------------------------------------------
# Command lines (make_faces, make_chairs, make_smallnorb).


def define_source_flags(flag_values: flags.FlagValues, defaults: SourceConfig, *, data_dir_help: str,
                        image_size_help: str, group_size_help: str, seed_help: str,
                        processes_help: str | None = None) -> None:
    """Defines the flags every source's command has (--processes only where `processes_help` is given),
    with `defaults`' values and the command's own help texts."""
    flags.DEFINE_string("data_dir", None, data_dir_help, flag_values=flag_values)
    flags.DEFINE_integer("image_size", defaults.image_size, image_size_help, flag_values=flag_values)
    flags.DEFINE_integer("group_size", defaults.group_size, group_size_help, flag_values=flag_values)
    flags.DEFINE_integer("num_shards", defaults.num_shards, "Shard files per (split, factor).",
                         flag_values=flag_values)
    flags.DEFINE_integer("seed", defaults.seed, seed_help, flag_values=flag_values)
    if processes_help is not None:
        flags.DEFINE_integer("processes", None, processes_help, flag_values=flag_values)


def user_error_types() -> tuple[type, ...]:
    """What a source's command reports in one line (exit 2): bad settings or input (ConversionError), a
    --data_dir that holds another dataset or cannot be written; all DatasetErrors."""
    return (DatasetError,)


# ---------------------------------------------------------------------------------------------------
# Grouping.


def make_groups(keys: np.ndarray, varying_column: int, group_size: int, seed_parts: Sequence[int]
                ) -> tuple[list[np.ndarray], int]:
    """Groups of `group_size` rows of `keys` that agree on every column except `varying_column`.

    keys: [N, K] non-negative int, one row per image, rows unique. Rows that agree on the other columns form
    a context; each context's rows are shuffled and cut into floor(n / group_size) groups (the remainder is
    left out), each group sorted by its varying value. The list of all groups is then shuffled, so that
    shards mix contexts. Seeded by (seed_parts, context), hence deterministic and independent of N's order.

    Returns (groups: list of [group_size] int row indices into keys, the largest context size), the latter
    for error messages when no context is large enough.
    """
    keys = np.asarray(keys, np.int64)
    if keys.ndim != 2 or len(keys) == 0:
        return [], 0
    context_columns = [column for column in range(keys.shape[1]) if column != varying_column]
    # Sort by context, then by varying value: each context is a contiguous run.
    order = np.lexsort([keys[:, varying_column]] + [keys[:, column] for column in reversed(context_columns)])
    contexts = keys[order][:, context_columns]
    starts = np.flatnonzero(np.r_[True, np.any(contexts[1:] != contexts[:-1], axis=1)])
    ends = np.r_[starts[1:], len(order)]
    groups = []
    for start, end in zip(starts, ends):
        members = order[start:end]
        if len(members) < group_size:
            continue
        context = [int(value) for value in contexts[start]]
        rng = np.random.default_rng([*seed_parts, 1, *context])
        shuffled = members[rng.permutation(len(members))]
        for index in range(len(members) // group_size):
            group = shuffled[index * group_size:(index + 1) * group_size]
            groups.append(group[np.argsort(keys[group, varying_column], kind="stable")])
    largest = int((ends - starts).max())
    group_order = np.random.default_rng([*seed_parts, 0]).permutation(len(groups))
    return [groups[index] for index in group_order], largest


def too_small_error(split: str, factor: str, group_size: int, largest: int, fixed: str) -> ConversionError:
    """The error for a (split, factor) that yields no group: names the largest group size that would work."""
    hint = (f"lower --group_size to {largest} or fewer" if largest >= 2
            else "the source has too few images (is it complete?)")
    return ConversionError(
        f"split {split!r} has no group of {group_size} images in which only {factor} varies ({fixed} fixed): "
        f"at most {largest} such images; {hint}")


# ---------------------------------------------------------------------------------------------------
# Images.


def to_grayscale(image: Image.Image, background: int = 255) -> Image.Image:
    """A mode "L" copy of `image`; transparent pixels are first composited over a `background` gray level."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (background, background, background, 255))
        image = Image.alpha_composite(canvas, rgba)
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit gray: keep the top 8 bits (PIL's convert("L") would clip instead of scaling).
        image = Image.fromarray((np.asarray(image, np.uint32) >> 8).astype(np.uint8))
    return image.convert("L")  # RGB -> ITU-R 601 luma: 0.299 R + 0.587 G + 0.114 B.


def square_resize(gray: np.ndarray, size: int, background: int, crop_fraction: float = 1.0) -> np.ndarray:
    """uint8 [H, W] -> uint8 [size, size], keeping the aspect ratio.

    Crops the central `crop_fraction` of each side, pads the shorter side symmetrically with `background`
    to a square (no stretching), then resizes with a box (area-averaging) filter: every output pixel is the
    mean of the input pixels it covers, which anti-aliases a large reduction (600 -> 150) without ringing.
    """
    gray = np.asarray(gray, np.uint8)
    height, width = gray.shape
    if crop_fraction < 1.0:
        crop_height, crop_width = max(1, round(height * crop_fraction)), max(1, round(width * crop_fraction))
        top, left = (height - crop_height) // 2, (width - crop_width) // 2
        gray = gray[top:top + crop_height, left:left + crop_width]
        height, width = gray.shape
    side = max(height, width)
    if height != width:
        canvas = np.full((side, side), background, np.uint8)
        top, left = (side - height) // 2, (side - width) // 2
        canvas[top:top + height, left:left + width] = gray
        gray = canvas
    if side == size:
        return np.ascontiguousarray(gray)
    return np.asarray(Image.fromarray(gray).resize((size, size), Image.Resampling.BOX), np.uint8)


# ---------------------------------------------------------------------------------------------------
# Writing.


def write_dataset(data_dir: str, info: DatasetInfo, groups: Mapping[tuple[str, str], Sequence[Group]],
                  *, extra_files: Mapping[str, bytes] | None = None) -> bool:
    """Writes a converted dataset: every (split, factor)'s shards, `extra_files`, then dataset.json.

    groups: (split, factor) -> its groups in order; their numbers must match `info.splits`.
    extra_files: file name (relative to data_dir) -> contents, e.g. an id table; written atomically.
    Returns False when data_dir already holds exactly this dataset (nothing is rewritten), True after
    writing. Raises OutputConflictError when data_dir's dataset.json describes another dataset.
    """
    remove_leftovers(data_dir)
    if already_converted(data_dir, info):
        return False
    total_shards = len(info.splits) * len(info.factors) * info.num_shards
    written, start = 0, time.monotonic()
    for split in info.splits:
        for factor in info.factor_names:
            factor_groups = groups[(split, factor)]
            if len(factor_groups) != info.num_groups(split, factor):
                raise ValueError(f"{len(factor_groups)} groups for {split}/{factor}, "
                                 f"dataset.json says {info.num_groups(split, factor)}")
            for index, path in enumerate(info.shard_paths(data_dir, split, factor)):
                shard_records = [
                    records.serialize_group(pngs, factor_values, factor, identity, info.image_size)
                    for pngs, factor_values, identity in (
                        factor_groups[group_index]
                        for group_index in records.shard_group_range(len(factor_groups), info.num_shards, index))
                ]
                records.write_shard(path, shard_records)
                written += 1
                if written == total_shards or written % max(1, total_shards // 10) == 0:
                    logging.info("wrote %d/%d shards (%s/%s, %.0f s)", written, total_shards, split, factor,
                                 time.monotonic() - start)
    for name, contents in (extra_files or {}).items():
        records.write_file_atomically(os.path.join(data_dir, name), contents)
    info.save(data_dir)  # Last: a dataset.json means every shard is there.
    logging.info("%s: %s", data_dir, describe(info))
    return True


def already_converted(data_dir: str, info: DatasetInfo) -> bool:
    """True when data_dir holds exactly `info`'s dataset, complete; False when it holds none (or an incomplete
    copy of it, to be rewritten). Raises OutputConflictError when its dataset.json describes another dataset.
    Cheap: converters call it before their slow image pass."""
    if existing_dataset(data_dir, info) is None:
        return False
    missing = [path for split in info.splits for factor in info.factor_names
               for path in info.shard_paths(data_dir, split, factor) if not os.path.exists(path)]
    if missing:
        logging.info("%s: %d shards missing; writing the dataset again", data_dir, len(missing))
        return False
    logging.info("%s already holds this dataset; nothing to do", data_dir)
    return True


def existing_dataset(data_dir: str, info: DatasetInfo) -> DatasetInfo | None:
    """data_dir's dataset.json when it describes `info`'s dataset, None when there is none. Raises
    OutputConflictError (one line listing the differences) when it describes another dataset."""
    json_path = records.dataset_json_path(data_dir)
    if not os.path.exists(json_path):
        return None
    existing = DatasetInfo.load(data_dir)
    differences = existing.differences(info)
    if differences:
        raise OutputConflictError(
            f"{json_path} was made with other settings ({'; '.join(differences)} [existing vs asked]); pass the "
            "same flags to resume it, or use another --data_dir (or delete this one) for a new dataset")
    return existing


def remove_leftovers(data_dir: str, log: Callable[[str], None] = logging.info) -> None:
    """Deletes the temp files that killed runs left in data_dir (records.remove_stale_temp_files), saying so."""
    for leftover in records.remove_stale_temp_files(data_dir):
        log(f"removed {leftover}, left by a killed run")


def describe(info: DatasetInfo) -> str:
    """One line: image size, group size and the groups per split and factor."""
    counts = "; ".join(f"{split}: " + ", ".join(f"{factor} {count}" for factor, count in factors.items())
                       for split, factors in info.splits.items())
    return f"{info.image_size}x{info.image_size} images, groups of {info.group_size}; groups per factor: {counts}"


# ---------------------------------------------------------------------------------------------------
# Running.


def default_processes() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


@contextlib.contextmanager
def ordered_map(function: Callable, items: Sequence, processes: int, *, initializer: Callable | None = None,
                initargs: tuple = (), chunks_per_process: int = 4) -> Iterator[Iterable]:
    """Yields an iterator of `function(item)` for every item, in order, computed by `processes` workers.

    Workers are forked: they start at once and inherit what the parent built (a face model, a config).
    They only run numpy, scipy and PIL, never TensorFlow, which is why forking is safe even after the caller
    imported TF. forkserver and spawn would re-import the caller's __main__ in every worker (a training
    script: TensorFlow per worker; a stdin script: workers that die and are restarted forever). Each
    worker gets one BLAS thread, since there is already one worker per core. With one process (or one
    item) everything runs here. `initializer(*initargs)` runs once in every worker (or here).
    """
    processes = max(1, min(processes, len(items)))
    if processes == 1:
        if initializer is not None:
            initializer(*initargs)
        yield map(function, items)
        return
    context = multiprocessing.get_context("fork")
    with context.Pool(processes, initializer=_init_worker, initargs=(initializer, initargs)) as pool:
        # Large chunks keep the parent's per-result overhead small; several chunks per worker balance the load.
        chunksize = max(1, min(64, len(items) // (chunks_per_process * processes)))
        yield pool.imap(function, items, chunksize=chunksize)


def _init_worker(initializer: Callable | None, initargs: tuple) -> None:
    try:
        import threadpoolctl
        threadpoolctl.threadpool_limits(1)
    except ImportError:
        pass
    if initializer is not None:
        initializer(*initargs)


def mapped_with_progress(function: Callable, items: Sequence, processes: int, what: str, unit: str, *,
                         chunks_per_process: int = 4) -> list:
    """`[function(item) for item in items]` from `ordered_map`, with a progress report."""
    progress = progress_lib.Progress(len(items), what, unit)
    results = []
    with ordered_map(function, items, processes, chunks_per_process=chunks_per_process) as mapped:
        for result in mapped:
            results.append(result)
            progress.update()
    progress.close()
    return results
