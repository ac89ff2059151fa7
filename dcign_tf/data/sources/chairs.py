"""Converts Aubry et al.'s rendered 3D chairs into the grouped record format (the paper's §4.2 dataset).

The command line is dcign_tf.data.make_chairs.

Source layout (Aubry et al., CVPR 2014, "rendered_chairs"; 1393 chairs x 62 views, 600x600 PNGs):

    rendered_chairs/<model-hash>/renders/image_NNN_pPPP_tTTT_rRRR.png

p is the camera elevation in degrees (20 or 30), t the azimuth in degrees (31 views around the chair) and
r is constant. Files next to the chair folders (e.g. all_chair_names.mat) are ignored. Every chair must have
the same set of views (p, t); a chair missing one is an error that names it.

Factors (dataset.json order, the factor_values columns):
  azimuth   radians, the file name's t times pi/180; range = the smallest and largest azimuth rendered.
  identity  the chair id: the chair's index among the model folders sorted by name (identities.tsv in the
            data directory lists id, split and folder name); range null.
The elevation is no factor: it is fixed within every group and, as in the paper, left to the
undifferentiated latents (configs/chairs.flags: azimuth -> z0, everything else -> z1..z199; the paper
counts from 1: z1, z2..z200).

Groups (group_size images each, every image at most once per factor):
  azimuth   one chair at one elevation; group_size of its 31 azimuths, drawn at random without replacement
            (floor(31 / group_size) groups per chair and elevation).
  identity  one view (elevation, azimuth); group_size different chairs of the split
            (floor(chairs / group_size) groups per view).

Split: the chairs are shuffled with --seed and the first --num_test_chairs are the test set (the default
193 leaves 1200 of the 1393 chairs for training, as in the paper); no chair is in both splits.

Images: RGB(A) -> 8-bit gray (ITU-R 601 luma; transparency composited over white); the central
--crop_fraction of each side is kept (default 1: the whole render, as the paper describes it); a non-square
image is padded to a square with the white background (the aspect ratio is kept, nothing is stretched);
then it is resized to --image_size with an area-averaging (box) filter, which is exact 4x4 averaging for
600 -> 150. The white background is kept as rendered (1.0 after the reader's /255), as in the paper's
figure; --invert makes it black (0), like the faces set. Values are stored as uint8 PNG, read as [0, 1].

Images are decoded and resized by --processes worker processes (default: one per core); results are
collected in order, so the output is byte-identical whatever the number of processes. Shards and then
dataset.json are written atomically; rerunning a finished conversion with the same flags does nothing.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import re
from typing import Sequence

import numpy as np
from absl import logging
from PIL import Image

from dcign_tf.data import records
from dcign_tf.data.records import DatasetInfo, FactorSpec
from dcign_tf.data.sources import common
from dcign_tf.data.sources.common import ConversionError

# The command line's module, recorded in dataset.json: fixed, or datasets made before would be refused.
GENERATOR_NAME = "dcign_tf.data.make_chairs"
FACTOR_NAMES = ("azimuth", "identity")
FACTOR_IDS = {"azimuth": 0, "identity": 1}  # Enter the seeds; fixed forever.
SPLIT_SEED_STREAM = 7  # Seeds the train/test split of the chairs: default_rng([seed, SPLIT_SEED_STREAM]).
LATENT_LAYOUT = {"azimuth": [0], "identity": "rest"}  # The paper: z1 azimuth, z2..z200 the rest.
RENDERS_DIR = "renders"
RENDER_NAME = re.compile(r"image_(\d+)_p(\d+)_t(\d+)_r(\d+)\.png")
EXPECTED_LAYOUT = "rendered_chairs/<model-hash>/renders/image_NNN_pPPP_tTTT_rRRR.png"
IDENTITIES_FILE = "identities.tsv"
BACKGROUND = 255  # The renders' white background, also used to pad non-square images.
KEY_CHAIR, KEY_ELEVATION, KEY_AZIMUTH = 0, 1, 2  # Columns of an image's grouping key.


@dataclasses.dataclass(frozen=True)
class ChairsConfig(common.SourceConfig):
    """How the chairs are converted; equal configs on the same source give byte-identical datasets."""

    settings_error = ConversionError
    num_test_chairs: int = 193
    crop_fraction: float = 1.0
    invert: bool = False

    def validate(self) -> None:
        """Raises ConversionError naming the first bad setting."""
        super().validate()
        if not 0.0 < self.crop_fraction <= 1.0:
            raise ConversionError(f"--crop_fraction must be in (0, 1], got {self.crop_fraction}")
        if self.num_test_chairs < 1:
            raise ConversionError(f"--num_test_chairs must be at least 1, got {self.num_test_chairs}")


@dataclasses.dataclass(frozen=True)
class ChairRenders:
    """The renders found under --src.

    models: model folder names, sorted; a chair's id is its index here.
    views: (elevation, azimuth) in integer degrees, sorted; every chair has each of them.
    paths: [num_chairs * num_views] the PNG of chair c in view v at index c * num_views + v.
    """

    src: str
    models: tuple[str, ...]
    views: tuple[tuple[int, int], ...]
    paths: tuple[str, ...]

    @property
    def num_chairs(self) -> int:
        return len(self.models)

    @property
    def num_views(self) -> int:
        return len(self.views)


def scan_renders(src: str) -> ChairRenders:
    """Lists the renders of Aubry et al.'s layout under `src`; ConversionError for a wrong layout or missing files."""
    if not os.path.isdir(src):
        raise ConversionError(f"--src={src}: no such directory; expected Aubry et al.'s rendered_chairs folder "
                              f"({EXPECTED_LAYOUT})")
    if os.path.isdir(os.path.join(src, RENDERS_DIR)):
        raise ConversionError(f"--src={src} is one chair's folder (it holds {RENDERS_DIR}/); pass the folder above "
                              f"it, laid out as {EXPECTED_LAYOUT}")
    models = sorted(entry.name for entry in os.scandir(src) if entry.is_dir() and not entry.name.startswith("."))
    if not models:
        raise ConversionError(f"--src={src} holds no chair folders; expected {EXPECTED_LAYOUT}")
    views_of_model = {}
    for model in models:
        renders_dir = os.path.join(src, model, RENDERS_DIR)
        if not os.path.isdir(renders_dir):
            hint = (f"; did you mean --src={os.path.join(src, model)}?"
                    if any(os.path.isdir(os.path.join(src, model, other, RENDERS_DIR))
                           for other in os.listdir(os.path.join(src, model))) else "")
            raise ConversionError(f"{os.path.join(src, model)}: no {RENDERS_DIR}/ folder; expected "
                                  f"{EXPECTED_LAYOUT}{hint}")
        views = {}
        for name in sorted(os.listdir(renders_dir)):
            if not name.lower().endswith(".png"):
                continue
            match = RENDER_NAME.fullmatch(name)
            if not match:
                raise ConversionError(f"{os.path.join(renders_dir, name)}: unexpected file name; expected "
                                      "image_NNN_pPPP_tTTT_rRRR.png (p elevation, t azimuth in degrees)")
            elevation, azimuth = int(match.group(2)), int(match.group(3))
            if not (0 <= azimuth < 360 and -90 <= elevation <= 90):
                raise ConversionError(f"{os.path.join(renders_dir, name)}: azimuth {azimuth} or elevation "
                                      f"{elevation} out of range; expected t in 0..359 and p in 0..90 degrees")
            if (elevation, azimuth) in views:
                raise ConversionError(f"{renders_dir}: {views[(elevation, azimuth)]} and {name} are both the view "
                                      f"p{elevation:03d}_t{azimuth:03d}; expected one render per view")
            views[(elevation, azimuth)] = name
        if not views:
            raise ConversionError(f"{renders_dir}: no renders; expected image_NNN_pPPP_tTTT_rRRR.png files")
        views_of_model[model] = views
    all_views = sorted(set().union(*(views.keys() for views in views_of_model.values())))
    incomplete = [model for model in models if len(views_of_model[model]) < len(all_views)]
    if incomplete:
        model = min(incomplete, key=lambda name: len(views_of_model[name]))
        missing = [view for view in all_views if view not in views_of_model[model]]
        raise ConversionError(
            f"{os.path.join(src, model, RENDERS_DIR)}: {len(views_of_model[model])} of the {len(all_views)} views "
            f"the chairs have, missing e.g. p{missing[0][0]:03d}_t{missing[0][1]:03d} ({len(incomplete)} chairs "
            "incomplete); every chair needs every view: restore the files or delete the incomplete chairs")
    paths = tuple(os.path.join(src, model, RENDERS_DIR, views_of_model[model][view])
                  for model in models for view in all_views)
    return ChairRenders(src=src, models=tuple(models), views=tuple(all_views), paths=paths)


def split_chairs(num_chairs: int, num_test_chairs: int, seed: int) -> dict[str, np.ndarray]:
    """split -> sorted chair ids: a seeded shuffle, the first num_test_chairs are the test set."""
    order = np.random.default_rng([seed, SPLIT_SEED_STREAM]).permutation(num_chairs)
    return {"train": np.sort(order[num_test_chairs:]), "test": np.sort(order[:num_test_chairs])}


def prepare_image(path: str, image_size: int, crop_fraction: float = 1.0, invert: bool = False) -> bytes:
    """One render -> PNG bytes of a uint8 gray [image_size, image_size] image (see the module docstring)."""
    try:
        with Image.open(path) as image:
            image.load()
            gray = np.asarray(common.to_grayscale(image, BACKGROUND))
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ConversionError(f"{path}: unreadable image ({reason}); restore the file or delete its chair "
                              "folder") from None
    resized = common.square_resize(gray, image_size, BACKGROUND, crop_fraction)
    return records.encode_png(255 - resized if invert else resized)


def prepare_images(paths: Sequence[str], config: ChairsConfig, processes: int) -> list[bytes]:
    """PNG bytes of every path, in order, from `processes` forked workers (numpy and PIL only)."""
    prepare = functools.partial(prepare_image, image_size=config.image_size, crop_fraction=config.crop_fraction,
                                invert=config.invert)
    return common.mapped_with_progress(prepare, paths, processes, "prepared", "image", chunks_per_process=8)


def dataset_info(config: ChairsConfig, renders: ChairRenders, group_counts: dict[str, dict[str, int]]) -> DatasetInfo:
    azimuths = [math.radians(azimuth) for _, azimuth in renders.views]
    return DatasetInfo(
        image_size=config.image_size,
        group_size=config.group_size,
        factors=(FactorSpec("azimuth", (min(azimuths), max(azimuths)), "radians"),
                 FactorSpec("identity", None, "chair id")),
        latent_layout=LATENT_LAYOUT,
        splits=group_counts,
        num_shards=config.num_shards,
        generator={
            "name": GENERATOR_NAME, "seed": config.seed, "num_chairs": renders.num_chairs,
            "num_test_chairs": config.num_test_chairs, "views_per_chair": renders.num_views,
            "elevations_degrees": sorted({elevation for elevation, _ in renders.views}),
            "crop_fraction": config.crop_fraction, "invert": config.invert,
        },
    )


def convert(src: str, data_dir: str, config: ChairsConfig = ChairsConfig(), *, processes: int | None = None
            ) -> DatasetInfo:
    """Converts the renders under `src` into the dataset `config` describes in `data_dir`.

    Raises ConversionError for bad settings or input, OutputConflictError when data_dir holds another dataset.
    """
    config.validate()
    processes = common.check_processes(processes, ConversionError)
    renders = scan_renders(src)
    logging.info("%s: %d chairs x %d views", src, renders.num_chairs, renders.num_views)
    if config.num_test_chairs >= renders.num_chairs:
        raise ConversionError(f"--num_test_chairs={config.num_test_chairs} leaves none of the {renders.num_chairs} "
                              "chairs for training; lower it")
    chairs_of_split = split_chairs(renders.num_chairs, config.num_test_chairs, config.seed)

    # Group first (cheap, and catches a source too small for the group size before any image is read).
    view_keys = np.array(renders.views, np.int64)  # [V, 2] (elevation, azimuth)
    groups_of = {}
    for split, chairs in chairs_of_split.items():
        # keys [chairs * V, 3] (chair, elevation, azimuth) and each row's index into renders.paths.
        keys = np.concatenate([np.repeat(chairs, renders.num_views)[:, None],
                               np.tile(view_keys, (len(chairs), 1))], axis=1)
        image_index = (np.repeat(chairs, renders.num_views) * renders.num_views
                       + np.tile(np.arange(renders.num_views), len(chairs)))
        for factor, varying, fixed in (("azimuth", KEY_AZIMUTH, "chair and elevation"),
                                       ("identity", KEY_CHAIR, "elevation and azimuth")):
            rows, largest = common.make_groups(
                keys, varying, config.group_size, [config.seed, common.SPLIT_IDS[split], FACTOR_IDS[factor]])
            if not rows and factor == "identity":
                raise ConversionError(
                    f"split {split!r} has {len(chairs)} chairs (--num_test_chairs={config.num_test_chairs} of "
                    f"{renders.num_chairs}), fewer than --group_size={config.group_size}, and identity groups vary "
                    "the chair; lower --group_size or change --num_test_chairs")
            if not rows:
                raise common.too_small_error(split, factor, config.group_size, largest, fixed)
            groups_of[(split, factor)] = [(image_index[group], keys[group]) for group in rows]
    counts = {split: {factor: len(groups_of[(split, factor)]) for factor in FACTOR_NAMES} for split in records.SPLITS}
    info = dataset_info(config, renders, counts)
    if common.already_converted(data_dir, info):
        return info

    # Only the images some group uses (all of them unless group_size leaves remainders).
    used = sorted({int(index) for factor_groups in groups_of.values() for indices, _ in factor_groups
                   for index in indices})
    pngs = dict(zip(used, prepare_images([renders.paths[index] for index in used], config, processes)))
    groups = {}
    for key, factor_groups in groups_of.items():
        groups[key] = []
        for image_indices, group_keys in factor_groups:
            chair_ids = group_keys[:, KEY_CHAIR]
            factor_values = np.stack([np.radians(group_keys[:, KEY_AZIMUTH].astype(np.float64)), chair_ids], 1)
            groups[key].append(([pngs[index] for index in image_indices], factor_values.astype(np.float32),
                                chair_ids.astype(np.int64)))
    split_of_chair = {int(chair): split for split, chairs in chairs_of_split.items() for chair in chairs}
    identities = "identity\tsplit\tmodel\n" + "".join(
        f"{chair}\t{split_of_chair[chair]}\t{model}\n" for chair, model in enumerate(renders.models))
    common.write_dataset(data_dir, info, groups, extra_files={IDENTITIES_FILE: identities.encode("utf-8")})
    return info
