"""The quickstart model committed with the repository (`pretrained/faces_small/`), and the small face
set that shows it on a clone that has no `data/`.

`pretrained/faces_small/` holds an export (dcign.keras, saved_model/, model_info.json) with the run's
flags.txt, its metrics.json and COMMAND (how it was made). Every group of the faces generator is drawn
from (seed, split, factor, group index) alone, so the first N test groups generated with the run's own
settings and a single training group per factor are exactly the first N test groups of the set it was
trained and evaluated on: identities it never saw, in seconds instead of the full set's minutes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os

PRETRAINED_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "pretrained",
                              "faces_small")
FLAGS_FILE = "flags.txt"


def default_test_faces_dir(settings) -> str:
    """Where `ensure_test_faces` keeps a set by default: the user's cache (never the repository), one
    directory per generator setting, so that a replaced model never meets a set made for another."""
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    digest = hashlib.sha1(repr(settings).encode()).hexdigest()[:12]
    return os.path.join(cache, "dcign_tf", f"test_faces-{digest}")


def faces_settings(pretrained_dir: str = PRETRAINED_DIR, test_groups_per_factor: int = 4):
    """The faces generator's settings of the model's own dataset, cut to one training group and
    `test_groups_per_factor` test groups per factor (a `FacesConfig`)."""
    from dcign_tf import config as config_lib
    from dcign_tf.data.sources import faces

    run = config_lib.from_flagfile(os.path.join(pretrained_dir, FLAGS_FILE))
    if run.dataset != "faces":
        raise ValueError(f"{pretrained_dir} was trained on {run.dataset!r}, not the faces generator")
    full = faces.FacesConfig(image_size=run.image_size, group_size=run.group_size,
                             groups_per_factor=run.dataset_groups_per_factor,
                             test_groups_per_factor=run.dataset_test_groups_per_factor,
                             num_shards=run.dataset_num_shards, seed=run.dataset_seed, face_model=run.face_model,
                             group_spread=run.dataset_group_spread)
    return dataclasses.replace(full, groups_per_factor=1, num_shards=1,
                               test_groups_per_factor=min(test_groups_per_factor, full.test_groups_per_factor))


def ensure_test_faces(data_dir: str | None = None, pretrained_dir: str = PRETRAINED_DIR,
                      test_groups_per_factor: int = 4, log=print) -> str:
    """Generates (once; later calls reuse it) the model's first test groups into `data_dir`; returns it."""
    from dcign_tf.data.sources import faces

    settings = faces_settings(pretrained_dir, test_groups_per_factor)
    data_dir = data_dir or default_test_faces_dir(settings)
    faces.ensure_dataset(data_dir, settings, log=log)
    return data_dir
