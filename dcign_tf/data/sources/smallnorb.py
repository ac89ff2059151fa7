"""Converts smallNORB (LeCun et al. 2004), loaded through tensorflow-datasets, into the grouped record format.

The command line is dcign_tf.data.make_smallnorb.

The source is `tfds.load('smallnorb')` (builder tensorflow_datasets/datasets/smallnorb): 50 toys, 5 categories
x 10 instances, each photographed at 9 elevations x 18 azimuths x 6 lightings by two cameras, 96x96 gray.
Its features: image and image2 (the two cameras, uint8 [96, 96, 1]), label_category (0..4), instance (0..9,
within the category), label_elevation (0..8: 30, 35, ..., 70 degrees), label_azimuth (0..17: 0, 20, ...,
340 degrees; tfds already halved the raw 0, 2, ..., 34) and label_lighting (0..5). tfds's train split
(instances 4, 6, 7, 8, 9 of each category) becomes the train split here and its test split (instances 0, 1,
2, 3, 5) the test split, so no object is in both. Only `image` (the first camera) is used: the second
camera sees the object from another angle, which would be a second factor varying at once.

Factors (dataset.json order, the factor_values columns):
  azimuth    radians, label_azimuth * 20 degrees; range [0, 340] degrees in radians.
  elevation  radians, 30 + 5 * label_elevation degrees; range [30, 70] degrees in radians.
  lighting   the lighting label as it is (an index, not an angle: the 6 conditions are not ordered); [0, 5].
  identity   the object id 10 * label_category + instance (unique over the 50 toys); range null.

Groups (group_size images each, every image at most once per factor):
  azimuth, elevation, lighting   one object, that factor varies, the two other view factors fixed;
  identity                       one view (elevation, azimuth, lighting), group_size different objects (of
                                 any category: a category holds only 5 objects per split).
Within each set of images that may form groups (e.g. the 18 azimuths of one object at one elevation and
lighting), the images are shuffled with --seed and cut into floor(n / group_size) groups. lighting has only
6 values, so --group_size is at most 6 (the default: then every lighting group is a full sweep).

Images are kept as photographed (gray objects on a lighter background, no inversion) and resized from
96x96 to --image_size with an area-averaging (box) filter; stored as uint8 PNG, read as [0, 1].
"""

from __future__ import annotations

import dataclasses

import numpy as np
from absl import logging

from dcign_tf import progress as progress_lib
from dcign_tf.data import records
from dcign_tf.data.records import DatasetInfo, FactorSpec
from dcign_tf.data.sources import common
from dcign_tf.data.sources.common import ConversionError

# The command line's module, recorded in dataset.json: fixed, or datasets made before would be refused.
GENERATOR_NAME = "dcign_tf.data.make_smallnorb"
TFDS_NAME = "smallnorb"
TFDS_SPLITS = {"train": "train", "test": "test"}  # Our split -> tfds's split.
SOURCE_IMAGE_SHAPE = (96, 96, 1)
# tfds feature -> number of label values.
LABEL_SIZES = {"label_category": 5, "instance": 10, "label_elevation": 9, "label_azimuth": 18, "label_lighting": 6}
FACTOR_NAMES = ("azimuth", "elevation", "lighting", "identity")
FACTOR_IDS = {name: index for index, name in enumerate(FACTOR_NAMES)}  # Enter the seeds; fixed forever.
LATENT_LAYOUT = {"azimuth": [0], "elevation": [1], "lighting": [2], "identity": "rest"}
AZIMUTH_STEP_DEGREES = 20.0
ELEVATION_FIRST_DEGREES, ELEVATION_STEP_DEGREES = 30.0, 5.0
# Columns of an image's grouping key: (object id, elevation label, azimuth label, lighting label).
KEY_OBJECT, KEY_ELEVATION, KEY_AZIMUTH, KEY_LIGHTING = 0, 1, 2, 3
VARYING_COLUMN = {"azimuth": KEY_AZIMUTH, "elevation": KEY_ELEVATION, "lighting": KEY_LIGHTING,
                  "identity": KEY_OBJECT}
FIXED_DESCRIPTION = {"azimuth": "object, elevation and lighting", "elevation": "object, azimuth and lighting",
                     "lighting": "object, elevation and azimuth", "identity": "elevation, azimuth and lighting"}
READ_BATCH = 256  # Examples taken from tfds at a time.


def azimuth_radians(label) -> np.ndarray:
    """label_azimuth 0..17 -> radians (0, 20, ..., 340 degrees)."""
    return np.radians(np.asarray(label, np.float64) * AZIMUTH_STEP_DEGREES)


def elevation_radians(label) -> np.ndarray:
    """label_elevation 0..8 -> radians (30, 35, ..., 70 degrees)."""
    return np.radians(ELEVATION_FIRST_DEGREES + np.asarray(label, np.float64) * ELEVATION_STEP_DEGREES)


@dataclasses.dataclass(frozen=True)
class SmallNorbConfig(common.SourceConfig):
    """How smallNORB is converted; equal configs on the same tfds data give byte-identical datasets."""

    settings_error = ConversionError
    image_size: int = 64
    group_size: int = 6
    num_shards: int = 4

    def validate(self) -> None:
        """Raises ConversionError naming the first bad setting."""
        super().validate()
        if self.group_size > LABEL_SIZES["label_lighting"]:
            raise ConversionError(
                f"--group_size={self.group_size} is more than smallNORB's {LABEL_SIZES['label_lighting']} lighting "
                f"conditions, and a lighting group needs group_size different ones; use "
                f"--group_size={LABEL_SIZES['label_lighting']} or less")


@dataclasses.dataclass(frozen=True)
class SmallNorbSplit:
    """One split's distinct images: keys [N, 4] int64 (object id, elevation, azimuth, lighting labels) and
    pngs [N] (uint8 gray [S, S] PNG). `duplicates` counts images whose key an earlier image had (dropped)."""

    keys: np.ndarray
    pngs: list[bytes]
    duplicates: int


def _load_tfds_split(split: str, tfds_data_dir: str | None, download: bool):
    """(tf.data.Dataset of smallnorb's examples with image2 left encoded, tfds DatasetInfo)."""
    import tensorflow_datasets as tfds  # Lazy: only this converter needs it, and it is slow to import.

    where = tfds_data_dir or "tfds's default data_dir (~/tensorflow_datasets)"
    try:
        return tfds.load(TFDS_NAME, split=TFDS_SPLITS[split], data_dir=tfds_data_dir, download=download,
                         shuffle_files=False, with_info=True, decoders={"image2": tfds.decode.SkipDecoding()})
    except Exception as error:  # noqa: BLE001 - tfds raises assorted types (AssertionError, DownloadError, OSError)
        reason = (str(error).strip().splitlines() or [""])[0][:300]
        raise ConversionError(
            f"cannot load tfds {TFDS_NAME!r} split {TFDS_SPLITS[split]!r} from {where} ({type(error).__name__}: "
            f"{reason}); prepare it on a machine with network access (`tfds build smallnorb --data_dir=D` or run "
            "this with --download) and pass --tfds_data_dir=D") from None


def load_split(split: str, image_size: int, *, tfds_data_dir: str | None = None, download: bool = True
               ) -> tuple[SmallNorbSplit, str]:
    """Reads one split through tfds and resizes its images; returns (the split, tfds's dataset version).

    Raises ConversionError when tfds cannot provide it or its features or labels are not smallNORB's.
    """
    import tensorflow as tf  # Lazy, as in records.py.
    import tensorflow_datasets as tfds

    dataset, tfds_info = _load_tfds_split(split, tfds_data_dir, download)
    missing = [name for name in ("image", *LABEL_SIZES) if name not in dataset.element_spec]
    if missing:
        raise ConversionError(f"tfds {TFDS_NAME!r} has no features {missing} (it has {sorted(dataset.element_spec)}); "
                              "expected image, label_category, instance, label_elevation, label_azimuth, "
                              "label_lighting")
    dataset = dataset.map(lambda example: {name: example[name] for name in ("image", *LABEL_SIZES)})
    cardinality = int(dataset.cardinality())
    progress = progress_lib.Progress(max(cardinality, 0), f"read {split}", "image")
    keys, pngs, seen, duplicates = [], [], set(), 0
    try:
        for batch in tfds.as_numpy(dataset.batch(READ_BATCH)):
            images = batch["image"]
            if tuple(images.shape[1:]) != SOURCE_IMAGE_SHAPE:
                raise ConversionError(f"tfds {TFDS_NAME!r} {split}: images of shape {tuple(images.shape[1:])}; "
                                      f"expected {SOURCE_IMAGE_SHAPE} (96x96 gray)")
            labels = {name: np.asarray(batch[name], np.int64) for name in LABEL_SIZES}
            for name, values in labels.items():
                if values.size and not 0 <= values.min() <= values.max() < LABEL_SIZES[name]:
                    raise ConversionError(
                        f"tfds {TFDS_NAME!r} {split}: {name} takes values {values.min()}..{values.max()}; expected "
                        + ", ".join(f"{label} in 0..{size - 1}" for label, size in LABEL_SIZES.items()))
            batch_keys = np.stack([10 * labels["label_category"] + labels["instance"], labels["label_elevation"],
                                   labels["label_azimuth"], labels["label_lighting"]], axis=1)
            for image, key in zip(images, batch_keys.tolist()):
                key = tuple(key)
                if key in seen:
                    duplicates += 1
                    continue
                seen.add(key)
                keys.append(key)
                resized = common.square_resize(image[..., 0], image_size, background=0)
                pngs.append(records.encode_png(resized))
            progress.update(len(images))
    except tf.errors.OpError as error:
        reason = (error.message.strip().splitlines() or [""])[0][:300]
        raise ConversionError(f"tfds {TFDS_NAME!r} {split}: unreadable data ({reason}); delete its folder in "
                              "the tfds data_dir and prepare it again") from None
    progress.close()
    if duplicates:
        logging.warning("%s: %d images repeat the (object, elevation, azimuth, lighting) of an earlier one; "
                        "kept the first of each", split, duplicates)
    return SmallNorbSplit(np.array(keys, np.int64).reshape(-1, 4), pngs, duplicates), str(tfds_info.version)


def dataset_info(config: SmallNorbConfig, group_counts: dict[str, dict[str, int]], tfds_version: str) -> DatasetInfo:
    return DatasetInfo(
        image_size=config.image_size,
        group_size=config.group_size,
        factors=(
            FactorSpec("azimuth", (0.0, float(azimuth_radians(LABEL_SIZES["label_azimuth"] - 1))), "radians"),
            FactorSpec("elevation", (float(elevation_radians(0)),
                                     float(elevation_radians(LABEL_SIZES["label_elevation"] - 1))), "radians"),
            FactorSpec("lighting", (0.0, float(LABEL_SIZES["label_lighting"] - 1)), "index"),
            FactorSpec("identity", None, "object id (10 x category + instance)"),
        ),
        latent_layout=LATENT_LAYOUT,
        splits=group_counts,
        num_shards=config.num_shards,
        generator={"name": GENERATOR_NAME, "seed": config.seed, "tfds": f"{TFDS_NAME}:{tfds_version}",
                   "camera": "image"},
    )


def split_groups(norb_split: SmallNorbSplit, split: str, factor: str, config: SmallNorbConfig
                 ) -> list[common.Group]:
    """The groups of one (split, factor); ConversionError if the split has none."""
    rows, largest = common.make_groups(norb_split.keys, VARYING_COLUMN[factor], config.group_size,
                                           [config.seed, common.SPLIT_IDS[split], FACTOR_IDS[factor]])
    if not rows:
        raise common.too_small_error(split, factor, config.group_size, largest, FIXED_DESCRIPTION[factor])
    groups = []
    for group in rows:
        keys = norb_split.keys[group]
        factor_values = np.stack([azimuth_radians(keys[:, KEY_AZIMUTH]), elevation_radians(keys[:, KEY_ELEVATION]),
                                  keys[:, KEY_LIGHTING], keys[:, KEY_OBJECT]], axis=1)
        groups.append(([norb_split.pngs[index] for index in group], factor_values.astype(np.float32),
                       keys[:, KEY_OBJECT].astype(np.int64)))
    return groups


def convert(data_dir: str, config: SmallNorbConfig = SmallNorbConfig(), *, tfds_data_dir: str | None = None,
            download: bool = True) -> DatasetInfo:
    """Converts tfds's smallnorb into the dataset `config` describes in `data_dir`.

    Raises ConversionError for bad settings or input, OutputConflictError when data_dir holds another dataset.
    """
    config.validate()
    groups, versions = {}, set()
    for split in records.SPLITS:
        norb_split, tfds_version = load_split(split, config.image_size, tfds_data_dir=tfds_data_dir,
                                              download=download)
        versions.add(tfds_version)
        logging.info("%s: %d distinct images, %d objects", split, len(norb_split.keys),
                     len(np.unique(norb_split.keys[:, KEY_OBJECT])))
        for factor in FACTOR_NAMES:
            groups[(split, factor)] = split_groups(norb_split, split, factor, config)
    counts = {split: {factor: len(groups[(split, factor)]) for factor in FACTOR_NAMES} for split in records.SPLITS}
    info = dataset_info(config, counts, "/".join(sorted(versions)))
    common.write_dataset(data_dir, info, groups)
    return info
