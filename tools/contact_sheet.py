r"""Writes a contact sheet of the procedural faces: identities and one sweep per factor.

    python -m tools.contact_sheet --out=docs/faces_contact_sheet.png \
        [--image_size=96] [--seed=0]                 # from the repository root

Row 1-2: 16 random identities, nearly frontal, under a mild side light.  Then one row per
factor, everything else held fixed: azimuth -1.5..1.5 rad, elevation -0.4..0.4 rad, light
azimuth -80..80 degrees, and an identity sweep (from identity c through the mean to -c).
"""
from __future__ import annotations

import os
import sys
from typing import Sequence

import numpy as np
from absl import flags
from PIL import Image, ImageDraw

from dcign_tf import cli, io_utils
from dcign_tf.config import MAX_IMAGE_SIZE, MIN_IMAGE_SIZE
from dcign_tf.data.sources import face_model, rasterizer

PROGRAM = "tools.contact_sheet"

# Columns of each sweep row, and the identity grid's layout.
SWEEP_COLUMNS = 9
IDENTITY_ROWS, IDENTITY_COLUMNS = 2, 8
LABEL_HEIGHT = 14
# A nearly frontal view under a mild side light, the pose shown unless a row sweeps it.
DEFAULT_AZIMUTH, DEFAULT_ELEVATION, DEFAULT_LIGHT = 0.25, 0.05, -0.6


def render_contact_sheet(image_size: int = 96, seed: int = 0):
    """Renders the sheet without its text labels.

    Returns:
      (sheet [H, W] uint8, row_labels: list of (top pixel row, text)).
    """
    model = face_model.procedural_face_model()
    rng = np.random.default_rng(seed)
    triangles, radius = model.triangles, model.frame_radius

    def draw(vertices, albedo, azimuth, elevation, light):
        return rasterizer.render_batch(vertices, triangles, albedo, azimuth, elevation, light,
                                     image_size, frame_radius=radius)

    num_identities = IDENTITY_ROWS * IDENTITY_COLUMNS
    shape, albedo_coeffs = model.sample_identities(rng, num_identities)
    vertices, albedo = model.instances(shape, albedo_coeffs)
    identities = draw(vertices, albedo, DEFAULT_AZIMUTH, DEFAULT_ELEVATION, DEFAULT_LIGHT)
    rows = [(f"{num_identities} identities" if k == 0 else "",
             identities[k * IDENTITY_COLUMNS:(k + 1) * IDENTITY_COLUMNS]) for k in range(IDENTITY_ROWS)]

    sweep = np.linspace(-1.0, 1.0, SWEEP_COLUMNS)
    face, face_albedo = model.instance(shape[0], albedo_coeffs[0])
    rows.append(("azimuth -1.5..1.5 rad",
                 draw(face, face_albedo, 1.5 * sweep, DEFAULT_ELEVATION, DEFAULT_LIGHT)))
    rows.append(("elevation -0.4..0.4 rad",
                 draw(face, face_albedo, DEFAULT_AZIMUTH, 0.4 * sweep, DEFAULT_LIGHT)))
    rows.append(("light azimuth -80..80 deg",
                 draw(face, face_albedo, DEFAULT_AZIMUTH, DEFAULT_ELEVATION,
                      np.deg2rad(80.0) * sweep)))
    # Identity sweep: a straight walk from one identity through the mean face to its
    # opposite (coefficients c -> -c), which shows the model's full range of variation.
    blend = sweep[:, None]
    walk_vertices, walk_albedo = model.instances(blend * shape[0], blend * albedo_coeffs[0])
    rows.append(("identity walk c -> -c", draw(walk_vertices, walk_albedo, DEFAULT_AZIMUTH,
                                               DEFAULT_ELEVATION, DEFAULT_LIGHT)))

    width = max(len(images) for _, images in rows) * image_size
    pieces, labels, top = [], [], 0
    for text, images in rows:
        strip = np.zeros((LABEL_HEIGHT + image_size, width), np.float32)
        strip[LABEL_HEIGHT:, : len(images) * image_size] = np.concatenate(list(images), axis=1)
        labels.append((top, text))
        pieces.append(strip)
        top += strip.shape[0]
    sheet = np.round(np.concatenate(pieces) * 255).astype(np.uint8)
    return sheet, labels


def save_contact_sheet(path: str, image_size: int = 96, seed: int = 0) -> None:
    """Renders the contact sheet and writes it to ``path`` as a labelled PNG."""
    sheet, labels = render_contact_sheet(image_size, seed)
    picture = Image.fromarray(sheet, mode="L")
    pen = ImageDraw.Draw(picture)
    for top, text in labels:
        pen.text((3, top + 1), text, fill=200)
    directory = os.path.dirname(path)
    if directory:
        os.makedirs(directory, exist_ok=True)
    with io_utils.atomic_path(path) as temporary:  # a reader never sees half a picture
        picture.save(temporary, format="PNG", optimize=True)


def define_flags(flag_values: flags.FlagValues) -> None:
    flags.DEFINE_string("out", "docs/faces_contact_sheet.png", "PNG to write.", flag_values=flag_values)
    flags.DEFINE_integer("image_size", 96, f"Pixels per face, {MIN_IMAGE_SIZE}..{MAX_IMAGE_SIZE}.", flag_values=flag_values)
    flags.DEFINE_integer("seed", 0, "Seed of the identities shown.", flag_values=flag_values)


def body(flag_values: flags.FlagValues) -> None:
    out, image_size = flag_values.out, flag_values.image_size
    if not MIN_IMAGE_SIZE <= image_size <= MAX_IMAGE_SIZE:
        raise cli.UsageError(f"--image_size must be in {MIN_IMAGE_SIZE}..{MAX_IMAGE_SIZE}, got {image_size}")
    if not out.lower().endswith(".png"):
        raise cli.UsageError(f"--out must name a .png file, got {out!r}")
    try:
        save_contact_sheet(out, image_size, flag_values.seed)
    except OSError as error:
        raise cli.UsageError(f"cannot write {out}: {error.strerror or error}") from None
    print(f"wrote {out}")


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the CLI on argv (the program name first; None: sys.argv); returns the exit status."""
    return cli.run(argv, PROGRAM, __doc__, define_flags, body, lambda: ())


if __name__ == "__main__":
    sys.exit(main())
