"""The tf.data input pipeline: batches of whole groups from a grouped image dataset (see records.py).

Each batch is a dict:

    images          float32 [B, G, S, S, 1] in [0, 1]
    active_factor   int32   [B]         index of the group's varying factor in dataset.json's factor list
    factor_values   float32 [B, G, F]   every factor's value for every image (radians; identity id)
    identity        int64   [B, G]      each image's identity id

B (groups per batch) leads, so tf.distribute splits a batch into whole groups and never splits a group.
The data path, top to bottom:

    for each factor: its shard files -> (shard files per input pipeline) -> interleave the files' records
        -> (shard records per input pipeline) -> shuffle serialized groups -> repeat
    mix the factors with sample_from_datasets(factor weights) -> parse and decode PNGs -> batch -> prefetch

Groups are shuffled and mixed while still serialized (a few KB of PNG each), so the shuffle buffers are
small and only groups that are drawn get decoded, in a single parallel decode stage.
Everything that can be checked before training (dataset.json, split, factors, shard files, image size)
raises DatasetError when the dataset is built; `check_shards` reads every shard once to find truncated
or corrupt files. A reader never writes into the data directory.
"""

from __future__ import annotations

import math
import os
from typing import Mapping, Sequence

import tensorflow as tf

from dcign_tf.data import records
from dcign_tf.data.records import DatasetError, DatasetInfo

# Serialized groups held for shuffling, over all factors (each factor gets an equal part).
DEFAULT_SHUFFLE_BUFFER = 1024
# Shard files of one factor read at the same time.
MAX_FILES_READ_IN_PARALLEL = 8


def load_info(data_dir: str) -> DatasetInfo:
    """`{data_dir}/dataset.json`; DatasetError if missing, unreadable or of another format version."""
    return DatasetInfo.load(data_dir)


def shard_files(data_dir: str, info: DatasetInfo, split: str, factors: Sequence[str] | None = None
                ) -> dict[str, list[str]]:
    """factor name -> its shard files of `split`, in group order; DatasetError if any is missing."""
    json_path = records.dataset_json_path(data_dir)
    if split not in info.splits:
        raise DatasetError(f"{json_path}: no split {split!r} (it has {sorted(info.splits)}); pick one of those")
    factors = info.factor_names if factors is None else tuple(factors)
    unknown = [name for name in factors if name not in info.factor_names]
    if unknown or not factors:
        raise DatasetError(f"{json_path}: unknown factors {unknown or '(none given)'}; "
                           f"this dataset's factors are {list(info.factor_names)}")
    files = {factor: info.shard_paths(data_dir, split, factor) for factor in factors}
    missing = [path for paths in files.values() for path in paths if not os.path.exists(path)]
    if missing:
        total = sum(len(paths) for paths in files.values())
        raise DatasetError(
            f"{missing[0]}: shard missing ({len(missing)} of {total} shards of split {split!r} for factors "
            f"{list(factors)} are missing); finish the dataset by rerunning its generator with the same flags"
        )
    return files


def validate(data_dir: str, split: str, factors: Sequence[str] | None = None) -> DatasetInfo:
    """Checks that dataset.json is readable and every expected shard file of `split` exists."""
    info = load_info(data_dir)
    shard_files(data_dir, info, split, factors)
    return info


def check_shards(data_dir: str, split: str, factors: Sequence[str] | None = None) -> DatasetInfo:
    """Reads every shard of `split` once (CRCs, parsing, group counts); DatasetError naming a bad file.

    Decodes no PNG, so it costs about one sequential read of the split.
    """
    info = load_info(data_dir)
    spec = records.feature_spec(info)
    for factor, paths in shard_files(data_dir, info, split, factors).items():
        for index, path in enumerate(paths):
            expected = len(records.shard_group_range(info.num_groups(split, factor), info.num_shards, index))
            _check_shard(path, factor, expected, info, spec)
    return info


def _check_shard(path: str, factor: str, expected_groups: int, info: DatasetInfo, spec) -> None:
    remedy = "delete it and rerun the dataset's generator with the same flags to remake it"
    groups = 0
    try:
        for batch in tf.data.TFRecordDataset(path).batch(256).map(lambda serialized: tf.io.parse_example(
                serialized, spec)):
            groups += int(batch[records.IMAGE_SIZE_KEY].shape[0])
            sizes = set(batch[records.IMAGE_SIZE_KEY].numpy().tolist())
            if sizes != {info.image_size}:
                raise DatasetError(f"{path}: images of size {sorted(sizes)}, dataset.json says "
                                   f"{info.image_size}; {remedy}")
            active = set(batch[records.ACTIVE_FACTOR_KEY].numpy().tolist())
            if active != {factor.encode()}:
                raise DatasetError(f"{path}: groups whose active factor is {sorted(active)}, "
                                   f"expected only {factor!r}; {remedy}")
    except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as error:
        raise DatasetError(f"{path}: corrupt or truncated shard ({_first_line(error.message)}); {remedy}") from None
    if groups != expected_groups:
        raise DatasetError(f"{path}: {groups} groups but dataset.json implies {expected_groups} "
                           f"(truncated or from another run); {remedy}")


def _first_line(message: str) -> str:
    return message.strip().splitlines()[0] if message.strip() else "no message"


def make_dataset(
    data_dir: str,
    split: str,
    groups_per_batch: int,
    *,
    factors: Sequence[str] | None = None,
    factor_weights: Mapping[str, float] | None = None,
    shuffle: bool = True,
    repeat: bool = True,
    deterministic: bool = False,
    seed: int = 0,
    input_context: tf.distribute.InputContext | None = None,
    expected_image_size: int | None = None,
    shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER,
    start_batch: int = 0,
) -> tf.data.Dataset:
    """Batches of `groups_per_batch` whole groups of `split` (see the module docstring for the dict).

    factors: read only these factors (default: all), e.g. to hold one out.
    factor_weights: factor name -> relative sampling weight (unlisted factors: 1; 0: never drawn), e.g. the
      released code's "shape bias" {"identity": 2}.
    repeat: endless, with static batch shapes (drop_remainder). Its order is a pure function of (seed,
      start_batch) for a given dataset and input pipeline, whatever `deterministic` says: a resumed run
      continues the stream instead of replaying its start. False reads every group once and keeps the
      last, smaller batch (evaluation).
    deterministic: with repeat=False, the same seed gives the same batches; otherwise their order may
      vary for speed.
    start_batch: with repeat, the stream from this batch on: the batches that skipping that many would
      give, at the cost of reading (not decoding) at most one epoch of each factor's records.
    input_context: from `strategy.distribute_datasets_from_function`; each input pipeline reads a disjoint
      part (whole shard files when there are enough, else every n-th record) and batches
      `input_context.get_per_replica_batch_size(groups_per_batch)` groups.
    expected_image_size: the model's S; DatasetError if dataset.json's differs.
    shuffle_buffer: serialized groups held for shuffling, over all factors.
    """
    if groups_per_batch < 1:
        raise ValueError(f"groups_per_batch must be at least 1, got {groups_per_batch}")
    info = load_info(data_dir)
    json_path = records.dataset_json_path(data_dir)
    if expected_image_size is not None and expected_image_size != info.image_size:
        raise DatasetError(
            f"{json_path}: images are {info.image_size}x{info.image_size} but {expected_image_size}x"
            f"{expected_image_size} are expected; use a dataset made with --image_size={expected_image_size} "
            f"or set the model's image size to {info.image_size}"
        )
    files = shard_files(data_dir, info, split, factors)
    weights = _sampling_weights(json_path, info.factor_names, list(files), factor_weights)
    drawn_factors = [factor for factor in files if weights[factor] > 0]

    num_pipelines, pipeline_id = 1, 0
    batch_size = groups_per_batch
    if input_context is not None:
        num_pipelines, pipeline_id = input_context.num_input_pipelines, input_context.input_pipeline_id
        batch_size = input_context.get_per_replica_batch_size(groups_per_batch)
    per_factor_buffer = max(1, shuffle_buffer // len(drawn_factors))
    layout = dict(num_pipelines=num_pipelines, pipeline_id=pipeline_id, shuffle=shuffle,
                  shuffle_buffer=per_factor_buffer)

    if repeat:
        deterministic = True  # The stream's order must be reproducible for `start_batch` to find its place.
        choices, drawn_before = _factor_choices([weights[factor] for factor in drawn_factors], seed, pipeline_id,
                                                start_batch * batch_size)
        streams = []
        for number, factor in enumerate(drawn_factors):
            epoch_groups = _pipeline_groups(info, split, factor, num_pipelines, pipeline_id)
            if epoch_groups == 0:
                raise DatasetError(f"{json_path}: factor {factor!r} has {info.num_groups(split, factor)} {split} "
                                   f"groups, too few for {num_pipelines} input pipelines; use fewer workers")
            first_epoch, skipped = divmod(int(drawn_before[number]), epoch_groups)
            streams.append(tf.data.Dataset.counter(first_epoch).flat_map(
                lambda epoch, factor=factor, number=number: _factor_records(
                    files[factor], info.factor_index(factor), deterministic=True,
                    seed=_epoch_seed(seed, number, epoch), **layout)).skip(skipped))
        mixed = tf.data.Dataset.choose_from_datasets(streams, choices)
    else:
        factor_records = [_factor_records(files[factor], info.factor_index(factor), deterministic=deterministic,
                                          seed=seed, **layout) for factor in drawn_factors]
        mixed = tf.data.Dataset.sample_from_datasets(
            factor_records, weights=[weights[factor] for factor in drawn_factors], seed=seed)
    groups = mixed.map(lambda serialized, factor_index, path: _decode_group(serialized, factor_index, path, info),
                       num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
    batches = groups.batch(batch_size, drop_remainder=repeat)

    options = tf.data.Options()
    options.deterministic = deterministic
    # Without an input context, MultiWorkerMirroredStrategy auto-shards; DATA works for any worker count.
    # With one, this function already gave the pipeline its own part.
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.OFF if input_context is not None
        else tf.data.experimental.AutoShardPolicy.DATA)
    return batches.with_options(options).prefetch(tf.data.AUTOTUNE)


def _sampling_weights(json_path: str, dataset_factors: Sequence[str], factors: list[str],
                      factor_weights: Mapping[str, float] | None) -> dict[str, float]:
    """Read factor -> weight (default 1; weights of factors not read are ignored).

    DatasetError for names the dataset lacks, negative weights, or all zero.
    """
    factor_weights = dict(factor_weights or {})
    unknown = [name for name in factor_weights if name not in dataset_factors]
    if unknown:
        raise DatasetError(f"{json_path}: factor_weights names {unknown}, which this dataset does not have; "
                           f"its factors are {list(dataset_factors)}")
    weights = {factor: float(factor_weights.get(factor, 1.0)) for factor in factors}
    if any(not math.isfinite(weight) or weight < 0 for weight in weights.values()) or not any(weights.values()):
        raise DatasetError(f"{json_path}: factor weights must be finite, >= 0 and not all 0, got {weights}")
    return weights


# Factor choices are drawn in blocks of this many, each from its own stateless seed.
_CHOICE_BLOCK = 4096


def _factor_choices(weights: list[float], seed: int, pipeline_id: int, start: int) -> tuple[tf.data.Dataset, list]:
    """Which factor each group of an endless stream comes from, from its `start`-th group on.

    Group i's factor is drawn with probability proportional to `weights`, from a stateless seed of
    (seed, pipeline_id, i // _CHOICE_BLOCK), so any position is reached without replaying the draws.

    Returns (int64 dataset of factor numbers, the number of groups each factor gave before `start`).
    """
    cumulative = tf.constant(_normalised_cumulative(weights)[:-1], tf.float32)

    def block(index):
        key = tf.stack([tf.constant(seed, tf.int64), pipeline_id * (1 << 40) + tf.cast(index, tf.int64)])
        uniform = tf.random.stateless_uniform([_CHOICE_BLOCK], seed=key)
        return tf.cast(tf.searchsorted(cumulative, uniform, side="right"), tf.int64)

    full_blocks, within = divmod(start, _CHOICE_BLOCK)
    drawn_before = tf.zeros([len(weights)], tf.int64)
    for index in range(full_blocks + (within > 0)):
        choices = block(index)[: within if index == full_blocks else _CHOICE_BLOCK]
        drawn_before += tf.math.bincount(choices, minlength=len(weights), maxlength=len(weights), dtype=tf.int64)
    stream = tf.data.Dataset.counter(full_blocks).flat_map(
        lambda index: tf.data.Dataset.from_tensor_slices(block(index))).skip(within)
    return stream, drawn_before.numpy().tolist()


def _normalised_cumulative(weights: list[float]) -> list[float]:
    """Cumulative sums of `weights`, normalised to end at 1."""
    total = float(sum(weights))
    sums, running = [], 0.0
    for weight in weights:
        running += weight
        sums.append(running / total)
    return sums


def _epoch_seed(seed: int, factor_number: int, epoch: tf.Tensor) -> tf.Tensor:
    """The shuffle seed of one factor's epoch: a different order every epoch, the same on every run."""
    return (tf.constant(seed, tf.int64) * 1_000_003 + factor_number) * 1_000_003 + tf.cast(epoch, tf.int64)


def _pipeline_groups(info: DatasetInfo, split: str, factor: str, num_pipelines: int, pipeline_id: int) -> int:
    """Groups of `factor` one input pipeline reads per epoch (see `_factor_records` for how they are split)."""
    total = info.num_groups(split, factor)
    if num_pipelines > 1 and info.num_shards >= num_pipelines:
        return sum(len(records.shard_group_range(total, info.num_shards, index))
                   for index in range(pipeline_id, info.num_shards, num_pipelines))
    return len(range(pipeline_id, total, num_pipelines))


def _factor_records(paths: list[str], factor_index: int, *, num_pipelines: int, pipeline_id: int, shuffle: bool,
                    shuffle_buffer: int, deterministic: bool, seed) -> tf.data.Dataset:
    """One epoch of one factor's serialized groups as (serialized, factor_index, shard path) elements.

    seed: an int, or an int64 scalar tensor (one per epoch of an endless stream).
    """
    files = tf.data.Dataset.from_tensor_slices(paths)
    shard_by_file = len(paths) >= num_pipelines
    if num_pipelines > 1 and shard_by_file:
        files = files.shard(num_pipelines, pipeline_id)
    if shuffle:
        files = files.shuffle(len(paths), seed=seed)
    read_in_parallel = min(len(paths), MAX_FILES_READ_IN_PARALLEL)
    groups = files.interleave(
        lambda path: tf.data.TFRecordDataset(path).map(lambda serialized: (serialized, factor_index, path)),
        cycle_length=read_in_parallel,
        block_length=1,
        num_parallel_calls=tf.data.AUTOTUNE,
        # Sharding records needs the same record order in every pipeline.
        deterministic=deterministic or (num_pipelines > 1 and not shard_by_file),
    )
    if num_pipelines > 1 and not shard_by_file:
        groups = groups.shard(num_pipelines, pipeline_id)
    if shuffle:
        groups = groups.shuffle(shuffle_buffer, seed=seed)
    return groups


def _decode_group(serialized: tf.Tensor, factor_index: tf.Tensor, path: tf.Tensor, info: DatasetInfo
                  ) -> dict[str, tf.Tensor]:
    """One serialized group -> images [G, S, S, 1] float32 in [0, 1], active_factor [], values [G, F], identity [G]."""
    group_size, image_size, num_factors = info.group_size, info.image_size, len(info.factors)
    example = tf.io.parse_single_example(serialized, records.feature_spec(info))
    images = tf.stack([tf.io.decode_png(example[records.IMAGES_KEY][index], channels=1)
                       for index in range(group_size)])
    decoded_size = tf.shape(images)[1:3]
    size_check = tf.debugging.Assert(
        tf.reduce_all(tf.equal(decoded_size, image_size)) & tf.equal(example[records.IMAGE_SIZE_KEY], image_size),
        ["Image size mismatch: shard", path, "holds images of size", decoded_size, "but dataset.json says",
         image_size, "- regenerate the dataset"])
    factor_names = tf.constant([name.encode() for name in info.factor_names])
    factor_check = tf.debugging.Assert(
        tf.equal(example[records.ACTIVE_FACTOR_KEY], tf.gather(factor_names, factor_index)),
        ["Active factor mismatch: shard", path, "holds a group whose active factor is",
         example[records.ACTIVE_FACTOR_KEY], "- regenerate the dataset"])
    with tf.control_dependencies([size_check, factor_check]):
        images = tf.ensure_shape(tf.identity(images), [group_size, image_size, image_size, 1])
    return {
        "images": tf.cast(images, tf.float32) * (1.0 / 255.0),
        "active_factor": tf.cast(factor_index, tf.int32),
        "factor_values": tf.reshape(example[records.FACTOR_VALUES_KEY], [group_size, num_factors]),
        "identity": example[records.IDENTITY_KEY],
    }
