"""The tf.data input pipeline: batches of whole groups from a grouped image dataset (see records.py).

Each batch is a dict:

    images          float32 [B, G, S, S, 1] in [0, 1]
    active_factor   int32   [B]         index of the group's varying factor in dataset.json's factor list
    factor_values   float32 [B, G, F]   every factor's value for every image (radians; identity id)
    identity        int64   [B, G]      each image's identity id

B (groups per batch) leads, so tf.distribute splits a batch into whole groups and never splits a group.
The data path, top to bottom:

    for each factor, epoch after epoch: its shard files (per input pipeline), permuted -> interleave
        the files' records -> (shard records per input pipeline) -> permute windows of serialized groups
    mix the factors, each group's factor drawn by weight -> parse and decode PNGs -> batch -> prefetch

Groups are shuffled and mixed while still serialized (a few KB of PNG each), so the shuffle windows are
small and only groups that are drawn get decoded, in a single parallel decode stage. Every random choice
of the endless training stream comes from a stateless seed of (seed, factor, epoch) or (seed, position),
so its order is a pure function of the seed, and `start_batch` resumes it where a run stopped.
Everything that can be checked before training (dataset.json, split, factors, shard files, image size)
raises DatasetError when the dataset is built; `check_shards` reads every shard once and decodes every
image to find a truncated or corrupt file, record or image. A reader never writes into the data directory.
"""

from __future__ import annotations

import math
import os
from typing import Mapping, Sequence

import numpy as np
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


def check_shards(data_dir: str, split: str, factors: Sequence[str] | None = None, *,
                 decode: bool | None = None) -> DatasetInfo:
    """Reads every shard of `split` once; DatasetError naming the first bad file, record and image.

    Finds, at the file level, a truncated or damaged shard (TFRecord CRCs) and a wrong group count; at
    the record level, a record that is not a group of this dataset (parsing, feature lengths, image_size,
    active factor); at the image level, bytes that are not a PNG and a PNG of the wrong size (from each
    image's header), and with `decode` a PNG whose pixel data does not decode.
    decode: decode every image; None (default) does when the split holds at most FULL_DECODE_PIXELS
      pixels. Stored bytes are covered by the CRCs anyway: a PNG that does not decode behind a valid
      header and CRC can only come from a broken writer, and training still names it (locate_bad_record).
    Cost, measured on the quickstart set (52,000 64x64 images, both splits, on a loaded 2-core machine):
    5.0 CPU-seconds decoding, 0.6 reading only the headers.
    """
    info = load_info(data_dir)
    shards = [(factor, path, len(records.shard_group_range(info.num_groups(split, factor), info.num_shards, index)))
              for factor, paths in shard_files(data_dir, info, split, factors).items()
              for index, path in enumerate(paths)]
    if decode is None:
        images = sum(expected for _, _, expected in shards) * info.group_size
        decode = images * info.image_size ** 2 <= FULL_DECODE_PIXELS
    spec = records.feature_spec(info)
    size = info.image_size
    shard_factors = tf.constant([factor.encode() for factor, _, _ in shards])
    shard_paths = tf.constant([path for _, path, _ in shards])

    def record_ok(shard, serialized):
        example = tf.io.parse_single_example(serialized, spec)
        pngs = example[records.IMAGES_KEY]
        ok = (tf.equal(example[records.IMAGE_SIZE_KEY], size) & tf.reduce_all(_png_headers_ok(pngs, size))
              & tf.equal(example[records.ACTIVE_FACTOR_KEY], tf.gather(shard_factors, shard)))
        if decode:  # Raises for pixel data that does not decode.
            shapes = tf.stack([tf.shape(tf.io.decode_png(pngs[index], channels=1))[:2]
                               for index in range(info.group_size)])
            ok &= tf.reduce_all(tf.equal(shapes, size))
        return shard, ok

    # One pipeline for the whole split (one trace); records stay in file order, so indices can be counted.
    summaries = tf.data.Dataset.range(len(shards)).flat_map(
        lambda shard: tf.data.TFRecordDataset(tf.gather(shard_paths, shard)).map(lambda record: (shard, record))
    ).map(record_ok, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).batch(1024)
    counts = np.zeros(len(shards), np.int64)
    reached = 0  # The shard of the last record that checked out.
    try:
        for shard_ids, oks in summaries.as_numpy_iterator():
            if not oks.all():
                _raise_for_shard(*shards[shard_ids[np.argmin(oks)]][:2], info)
            counts += np.bincount(shard_ids, minlength=len(shards))
            reached = int(shard_ids[-1])
    except _READ_ERRORS as error:
        for factor, path, _ in shards[reached:]:  # The failing record is in the shard reached, or a later one.
            _raise_for_shard(factor, path, info)
        raise DatasetError(f"{shards[reached][1]} or a later shard of {split!r}: {_first_line(str(error))}; "
                           f"{_REMEDY}") from None
    for (_, path, expected), count in zip(shards, counts):
        if count != expected:
            raise DatasetError(f"{path}: {count} groups but dataset.json implies {expected} "
                               f"(truncated or from another run); {_REMEDY}")
    return info


def locate_bad_record(data_dir: str, splits: Sequence[str] = records.SPLITS) -> DatasetError | None:
    """After a data error in a running pipeline (whose message names no record): the DatasetError that
    `check_shards` (decoding every image) raises for the first bad shard of `splits`, or None when every
    shard reads cleanly."""
    try:
        for split in splits:
            check_shards(data_dir, split, decode=True)
    except DatasetError as error:
        return error
    return None


# check_shards decodes every image of a split up to this many pixels (about 9 CPU-seconds; the quickstart's
# train split has 197 M), and beyond only reads every image's header (the paper-size faces: 5,400 M).
FULL_DECODE_PIXELS = 400_000_000
# What iterating a dataset raises for bad data: a CRC mismatch, a record or image that does not parse,
# decode or pass an assertion, a vanished file, or a UnicodeDecodeError when TF's message quotes the
# binary record it could not parse. (Not, say, out of memory: that is no reason to scan the data.)
PIPELINE_DATA_ERRORS = (tf.errors.DataLossError, tf.errors.InvalidArgumentError, tf.errors.NotFoundError,
                        UnicodeDecodeError)
_READ_ERRORS = (tf.errors.OpError, UnicodeDecodeError)  # Anything that stops check_shards' reading.
_REMEDY = "delete it and rerun the dataset's generator with the same flags to remake it"


def _raise_for_shard(factor: str, path: str, info: DatasetInfo) -> None:
    """DatasetError for the first bad record of the shard, if it has one."""
    bad = _first_bad_record(path, factor, info)
    if bad is not None:
        raise DatasetError(f"{path}: record {bad[0]}: {bad[1]}; {_REMEDY}")


def _first_bad_record(path: str, factor: str, info: DatasetInfo) -> tuple[int, str] | None:
    """(index, what is wrong) of the first bad record of a shard, read record by record; None if none is."""
    from google.protobuf.message import DecodeError

    record = 0  # Records read so far: the index of the one being read.
    try:
        for serialized in tf.data.TFRecordDataset(path).as_numpy_iterator():
            try:
                example = tf.train.Example.FromString(serialized)
            except DecodeError:
                return record, "not a tf.train.Example (damaged bytes with valid CRCs)"
            problem = _group_problem(example.features.feature, factor, info)
            if problem:
                return record, problem
            record += 1
    except tf.errors.OpError as error:  # A CRC mismatch or a cut-off record: nothing after it can be read.
        return record, f"corrupt or truncated, nothing from here on can be read ({_first_line(error.message)})"
    return None


def _group_problem(features, factor: str, info: DatasetInfo) -> str | None:
    """What makes one parsed tf.train.Example not a group of this dataset (see records.py), or None."""
    group_size, size = info.group_size, info.image_size
    expected = {records.IMAGES_KEY: ("bytes_list", group_size),
                records.FACTOR_VALUES_KEY: ("float_list", group_size * len(info.factors)),
                records.ACTIVE_FACTOR_KEY: ("bytes_list", 1), records.IDENTITY_KEY: ("int64_list", group_size),
                records.IMAGE_SIZE_KEY: ("int64_list", 1)}
    for key, (kind, length) in expected.items():
        if key not in features or features[key].WhichOneof("kind") != kind or len(
                getattr(features[key], kind).value) != length:
            return f"feature {key!r} is missing or not {length} {kind.split('_')[0]} values"
    values = {key: getattr(features[key], kind).value for key, (kind, _) in expected.items()}
    if values[records.IMAGE_SIZE_KEY][0] != size:
        return f"image_size {values[records.IMAGE_SIZE_KEY][0]}, dataset.json says {size}"
    if values[records.ACTIVE_FACTOR_KEY][0] != factor.encode():
        active = values[records.ACTIVE_FACTOR_KEY][0].decode(errors="replace")
        return f"a group whose active factor is {active!r}, not {factor!r}"
    for image, png in enumerate(values[records.IMAGES_KEY]):
        if not png.startswith(records.PNG_SIGNATURE):
            return f"image {image} is not a PNG (it starts with {png[:8]!r})"
        try:
            height, width = tf.io.decode_png(png, channels=1).shape[:2]
        except tf.errors.OpError as error:
            return f"image {image} is a damaged PNG ({_first_line(error.message)})"
        if (height, width) != (size, size):
            return f"image {image} is {width}x{height}, dataset.json says {size}x{size}"
    return None


def _png_headers_ok(pngs: tf.Tensor, size: int) -> tf.Tensor:
    """bool [N]: each of the N strings starts with the PNG signature and an IHDR of size x size pixels.

    Reads only the first 24 bytes (signature, IHDR length and type, width, height: big-endian uint32s).
    """
    padded = pngs + b"\0" * 24  # substr below must not run past a short string's end.
    header = tf.io.decode_raw(tf.strings.substr(padded, 0, 24), tf.uint8)
    header = tf.cast(tf.reshape(header, [-1, 24]), tf.int64)
    big_endian = tf.constant([1 << 24, 1 << 16, 1 << 8, 1], tf.int64)
    width = tf.reduce_sum(header[:, 16:20] * big_endian, axis=1)
    height = tf.reduce_sum(header[:, 20:24] * big_endian, axis=1)
    signature = tf.reduce_all(tf.equal(header[:, :8], tf.constant(list(records.PNG_SIGNATURE), tf.int64)), axis=1)
    return signature & tf.equal(width, size) & tf.equal(height, size)


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
                    key=_epoch_key(seed, number, epoch), **layout)).skip(skipped))
        mixed = tf.data.Dataset.choose_from_datasets(streams, choices)
    else:
        factor_records = [_factor_records(files[factor], info.factor_index(factor), deterministic=deterministic,
                                          key=_epoch_key(seed, number, 0), **layout)
                          for number, factor in enumerate(drawn_factors)]
        mixed = tf.data.Dataset.sample_from_datasets(
            factor_records, weights=[weights[factor] for factor in drawn_factors], seed=seed)
    groups = mixed.map(lambda serialized, factor_index, path: _decode_group(serialized, factor_index, path, info),
                       num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
    batches = groups.batch(batch_size, drop_remainder=repeat)
    if repeat:
        # Endless, which flat_map hides: with a known infinite length, tf.distribute keeps the static
        # batch shape (it need not expect a worker to run out first).
        batches = batches.apply(tf.data.experimental.assert_cardinality(tf.data.INFINITE_CARDINALITY))

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


def _epoch_key(seed: int, factor_number: int, epoch) -> tf.Tensor:
    """The stateless seed, int64 [2], of one factor's epoch: a new order every epoch, the same on every run."""
    return tf.stack([tf.constant(seed, tf.int64), factor_number * (1 << 32) + tf.cast(epoch, tf.int64)])


def _pipeline_groups(info: DatasetInfo, split: str, factor: str, num_pipelines: int, pipeline_id: int) -> int:
    """Groups of `factor` one input pipeline reads per epoch (see `_factor_records` for how they are split)."""
    total = info.num_groups(split, factor)
    if num_pipelines > 1 and info.num_shards >= num_pipelines:
        return sum(len(records.shard_group_range(total, info.num_shards, index))
                   for index in range(pipeline_id, info.num_shards, num_pipelines))
    return len(range(pipeline_id, total, num_pipelines))


def _factor_records(paths: list[str], factor_index: int, *, num_pipelines: int, pipeline_id: int, shuffle: bool,
                    shuffle_buffer: int, deterministic: bool, key: tf.Tensor) -> tf.data.Dataset:
    """One epoch of one factor's serialized groups as (serialized, factor_index, shard path) elements.

    key: the epoch's stateless seed (`_epoch_key`). Shuffling depends on it alone, not on TensorFlow's
    global seed: the shard files are permuted, then the records in consecutive windows of `shuffle_buffer`.
    """
    shard_by_file = len(paths) >= num_pipelines
    if num_pipelines > 1 and shard_by_file:
        paths = paths[pipeline_id::num_pipelines]
    files = tf.constant(paths)
    if shuffle:
        files = _permuted(files, tf.random.experimental.stateless_fold_in(key, 0))
    read_in_parallel = min(len(paths), MAX_FILES_READ_IN_PARALLEL)
    groups = tf.data.Dataset.from_tensor_slices(files).interleave(
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
        groups = groups.batch(shuffle_buffer).enumerate().flat_map(
            lambda index, window: tf.data.Dataset.from_tensor_slices(tuple(
                _permuted(part, tf.random.experimental.stateless_fold_in(key, index + 1)) for part in window)))
    return groups


def _permuted(values: tf.Tensor, key: tf.Tensor) -> tf.Tensor:
    """`values` in a random order along the first axis, a function of the stateless seed `key`."""
    return tf.gather(values, tf.argsort(tf.random.stateless_uniform(tf.shape(values)[:1], seed=key)))


def _decode_group(serialized: tf.Tensor, factor_index: tf.Tensor, path: tf.Tensor, info: DatasetInfo
                  ) -> dict[str, tf.Tensor]:
    """One serialized group -> images [G, S, S, 1] float32 in [0, 1], active_factor [], values [G, F], identity [G]."""
    group_size, image_size, num_factors = info.group_size, info.image_size, len(info.factors)
    example = tf.io.parse_single_example(serialized, records.feature_spec(info))
    pngs = example[records.IMAGES_KEY]
    # Checked before decoding: bytes that are not a PNG, or a PNG of another size, would fail in decode_png
    # or tf.stack with a message that names no file.
    image_check = tf.debugging.Assert(
        tf.reduce_all(_png_headers_ok(pngs, image_size)) & tf.equal(example[records.IMAGE_SIZE_KEY], image_size),
        ["Bad image in shard", path, f": a group holds bytes that are not a {image_size}x{image_size} PNG; "
         "find the record with dcign_tf.data.input_pipeline.check_shards and regenerate the dataset"])
    factor_names = tf.constant([name.encode() for name in info.factor_names])
    factor_check = tf.debugging.Assert(
        tf.equal(example[records.ACTIVE_FACTOR_KEY], tf.gather(factor_names, factor_index)),
        ["Active factor mismatch: shard", path, "holds a group whose active factor is",
         example[records.ACTIVE_FACTOR_KEY], "- regenerate the dataset"])
    with tf.control_dependencies([image_check, factor_check]):
        images = tf.stack([tf.io.decode_png(pngs[index], channels=1) for index in range(group_size)])
    images = tf.ensure_shape(images, [group_size, image_size, image_size, 1])
    return {
        "images": tf.cast(images, tf.float32) * (1.0 / 255.0),
        "active_factor": tf.cast(factor_index, tf.int32),
        "factor_values": tf.reshape(example[records.FACTOR_VALUES_KEY], [group_size, num_factors]),
        "identity": example[records.IDENTITY_KEY],
    }
