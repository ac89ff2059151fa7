r"""Re-renders an image with chosen scene factors: the trained decoder as a graphics engine (paper §4.1).

    python -m dcign_tf.render --workdir=RUN --image=face.png --out=turned.png --set azimuth=0.8 --set light=-0.5
    python -m dcign_tf.render --export=RUN/export --image=face.jpg --out=strip.png --sweep azimuth:-1.5:1.5:9

The image is encoded to its posterior mean z, the named latents are set, and z is decoded.
  --set NAME=VALUE   (repeatable) fixes one factor for the output.
  --sweep NAME:LO:HI:N  renders N frames with NAME at N evenly spaced values from LO to HI (the --set
                     values hold in every frame) and writes them side by side.
NAME is a factor of the model (azimuth, elevation, light for faces) or zK for raw latent K. Factor values
are in the dataset's units (radians), turned into latent values by the export's calibration (written by
`python -m dcign_tf.evaluate`): latent = slope * value + intercept. Without a calibration (or with
--raw) the values are raw latent values for the factor's latent, and a line says so.

The output is grayscale at the model's size S: one S x S image, or an S x (N * S) strip for a sweep.

How the input image is read: any format PIL reads (PNG, JPEG, ...), any size, colour or grey. It is
turned by its EXIF orientation; transparent parts are laid over black (the training faces' background);
colour becomes grey by ITU-R 601-2 luma (L = 0.299 R + 0.587 G + 0.114 B); 16-bit images are scaled by
65535; the centred largest square is cut out (the model's images are square, so nothing is stretched)
and resized to S x S with a Lanczos filter; pixel values end in [0, 1].

Exit status: 0 on success; 2 with one line on stderr for bad flags, an unknown factor, a malformed
--set or --sweep, a missing export, an unreadable image, or an --out that exists (pass --overwrite).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
from typing import Mapping, Sequence

import numpy as np
from absl import flags
from PIL import Image, ImageOps

from dcign_tf import calibration as calibration_lib
from dcign_tf import cli

PROGRAM = "dcign_tf.render"
MAX_SWEEP_FRAMES = 64
# Calibrations explaining less of the latent than this are reported as weak.
WEAK_CALIBRATION_R2 = 0.5
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_NAME = r"[A-Za-z_][\w-]*"


class RenderError(ValueError):
    """Bad input to the render CLI; one line saying what to fix."""


# ---------------------------------------------------------------------------------------------------
# Parsing --set and --sweep.


def parse_set(text: str) -> tuple[str, float]:
    """'azimuth=0.8' -> ('azimuth', 0.8); RenderError when malformed."""
    match = re.fullmatch(rf"\s*({_NAME})\s*=\s*({_NUMBER})\s*", text)
    if not match:
        raise RenderError(f"--set {text!r} is not NAME=VALUE with a number VALUE (e.g. --set azimuth=0.8)")
    return match.group(1), float(match.group(2))


def parse_sweep(text: str) -> tuple[str, float, float, int]:
    """'azimuth:-1.5:1.5:9' -> ('azimuth', -1.5, 1.5, 9); RenderError when malformed."""
    match = re.fullmatch(rf"\s*({_NAME})\s*:\s*({_NUMBER})\s*:\s*({_NUMBER})\s*:\s*(\d+)\s*", text)
    if not match:
        raise RenderError(f"--sweep {text!r} is not NAME:LO:HI:N (e.g. --sweep azimuth:-1.5:1.5:9)")
    name, low, high, count = match.group(1), float(match.group(2)), float(match.group(3)), int(match.group(4))
    if not 2 <= count <= MAX_SWEEP_FRAMES:
        raise RenderError(f"--sweep {text!r}: N must be in 2..{MAX_SWEEP_FRAMES}, got {count}")
    return name, low, high, count


# ---------------------------------------------------------------------------------------------------
# Names -> latents.


@dataclasses.dataclass(frozen=True)
class Target:
    """Where a NAME's values go: latent `latent`, value v becoming slope * v + intercept."""

    name: str
    latent: int
    slope: float = 1.0
    intercept: float = 0.0
    calibrated: bool = False
    value_range: tuple[float, float] | None = None
    r2: float | None = None

    def latent_value(self, value: float) -> float:
        return self.slope * value + self.intercept


def resolve_targets(names: Sequence[str], info: Mapping, raw: bool = False) -> tuple[dict[str, Target], list[str]]:
    """Maps NAMEs (factors or zK) to latents using model_info.json.

    Returns:
      ({name: Target}, notes): notes are lines to print (uncalibrated values, weak calibrations).
    """
    num_latents = int(info["num_latents"])
    factors = {factor["name"]: factor for factor in info["factors"]}
    layout = {name: list(indices) for name, indices in info.get("latent_layout", {}).items()}
    stored = info.get("calibration")
    try:
        calibration = calibration_lib.check(stored, num_latents) if stored and not raw else None
    except calibration_lib.CalibrationError as error:
        raise RenderError(f"model_info.json: {error}; rerun python -m dcign_tf.evaluate") from None
    targets, notes = {}, []
    scene = [name for name, factor in factors.items() if factor.get("range") is not None]
    known = ", ".join(scene) + f" (or z0..z{num_latents - 1} for a raw latent)"
    uses_factor = False
    for name in names:
        raw_latent = re.fullmatch(r"z(\d+)", name)
        if raw_latent:
            latent = int(raw_latent.group(1))
            if latent >= num_latents:
                raise RenderError(f"latent {name} does not exist: the model has z0..z{num_latents - 1}")
            targets[name] = Target(name, latent)
            continue
        if name not in factors:
            raise RenderError(f"unknown factor {name!r}; this model's factors are {known}")
        if factors[name].get("range") is None:
            latents = layout.get(name, [])
            raise RenderError(f"{name!r} has no numeric range, so it cannot be set to a value; set its latents "
                              f"directly with zK (K in {_format_latents(latents)})")
        uses_factor = True
        value_range = tuple(factors[name]["range"])
        if calibration is not None:
            if name not in calibration:
                raise RenderError(f"the export's calibration has no {name!r}; rerun python -m dcign_tf.evaluate")
            line = calibration[name]
            targets[name] = Target(name, int(line["latent"]), float(line["slope"]), float(line["intercept"]),
                                   calibrated=True, value_range=value_range, r2=float(line["r2"]))
            if line["r2"] < WEAK_CALIBRATION_R2:
                notes.append(f"note: the calibration of {name} is weak (r2 {line['r2']:.2f}): "
                             f"z{line['latent']} tracks {name} poorly, so the result may not show it")
            continue
        if info.get("mode") == "baseline":
            raise RenderError(f"this baseline run has no calibration, so {name!r} has no latent; run python -m "
                              f"dcign_tf.evaluate --workdir=RUN to find and calibrate it, or set zK directly")
        latents = layout.get(name, [])
        if len(latents) != 1:
            raise RenderError(f"{name!r} has {len(latents)} latents ({_format_latents(latents)}) and no "
                              "calibration picks one; run python -m dcign_tf.evaluate, or set zK directly")
        targets[name] = Target(name, int(latents[0]))
    if uses_factor and calibration is None:
        reason = "--raw was given" if raw else "the export has no calibration (python -m dcign_tf.evaluate makes one)"
        notes.insert(0, f"note: {reason}: values are raw latent values, not {_units(factors)}")
    return targets, notes


def _format_latents(latents: Sequence[int]) -> str:
    return ", ".join(f"z{i}" for i in latents) if len(latents) <= 6 else f"z{latents[0]}..z{latents[-1]}"


def _units(factors: Mapping) -> str:
    units = sorted({factor.get("units") for factor in factors.values() if factor.get("range") is not None} - {None})
    return " / ".join(units) or "dataset units"


# ---------------------------------------------------------------------------------------------------
# The input image.


def load_image(path: str, size: int) -> np.ndarray:
    """Reads an image file as the model's input: float32 [size, size, 1] in [0, 1] (see the module docstring).

    RenderError when the file is missing or not an image PIL can decode.
    """
    try:
        with Image.open(path) as opened:
            opened.load()
            image = ImageOps.exif_transpose(opened)
    except FileNotFoundError:
        raise RenderError(f"--image={path}: no such file") from None
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise RenderError(f"--image={path}: not a readable image ({error})") from None
    try:
        return image_to_input(image, size)
    except (OSError, ValueError) as error:
        raise RenderError(f"--image={path}: cannot turn its {image.mode} pixels into grey ({error})") from None


def image_to_input(image: Image.Image, size: int) -> np.ndarray:
    """A PIL image of any mode and size -> float32 [size, size, 1] in [0, 1]."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        grey = np.asarray(image, np.float32)
        scale = 1.0 if image.mode == "F" and grey.max() <= 1.0 else (65535.0 if grey.max() > 255 else 255.0)
        grey = grey / scale
    else:
        if image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (image.mode == "P" and "transparency" in image.info):
            rgba = image.convert("RGBA")
            image = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba)
        grey = np.asarray(image.convert("L"), np.float32) / 255.0
    height, width = grey.shape
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    square = Image.fromarray(np.ascontiguousarray(grey[top:top + side, left:left + side]), mode="F")
    if side != size:
        square = square.resize((size, size), Image.Resampling.LANCZOS)
    return np.clip(np.asarray(square, np.float32), 0.0, 1.0)[..., None]


# ---------------------------------------------------------------------------------------------------
# Rendering.


def render(model, image: np.ndarray, settings: Mapping[int, float] | None = None,
           sweep: tuple[int, Sequence[float]] | None = None) -> np.ndarray:
    """Encodes `image`, sets latents, decodes.

    Args:
      model: a `DCIGN` (anything with encode / decode).
      image: [S, S, 1] in [0, 1].
      settings: latent index -> latent value, for every output.
      sweep: (latent index, [N] latent values): one frame per value.

    Returns:
      float32 [S, S] (no sweep) or the frames side by side, [S, N * S], in [0, 1].
    """
    mean = np.array(model.encode(np.asarray(image, np.float32)[None])[0], np.float32)  # a writable copy
    for latent, value in (settings or {}).items():
        mean[:, latent] = value
    if sweep is None:
        return np.asarray(model.decode(mean), np.float32)[0, ..., 0]
    latent, values = sweep
    codes = np.repeat(mean, len(values), axis=0)
    codes[:, latent] = np.asarray(values, np.float32)
    frames = np.asarray(model.decode(codes), np.float32)[..., 0]
    return np.concatenate(list(frames), axis=1)


def resolve_export(export: str | None, workdir: str | None) -> str:
    if bool(export) == bool(workdir):
        raise RenderError("give exactly one of --export=RUN/export and --workdir=RUN")
    export_dir = export or os.path.join(workdir, "export")
    if workdir and not os.path.isdir(workdir):
        raise RenderError(f"--workdir={workdir}: no such run directory")
    for name in ("dcign.keras", "model_info.json"):
        if not os.path.exists(os.path.join(export_dir, name)):
            raise RenderError(f"{os.path.join(export_dir, name)} is missing: no exported model there; train the "
                              "run to completion (python -m dcign_tf.train), which exports it")
    return export_dir


def read_info(export_dir: str) -> dict:
    path = os.path.join(export_dir, "model_info.json")
    try:
        with open(path, encoding="utf-8") as file:
            info = json.load(file)
        int(info["num_latents"]), int(info["image_size"]), list(info["factors"])  # noqa: B018 - must exist
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise RenderError(f"{path} is unreadable or incomplete ({error!r}); re-export the run") from None
    return info


def check_out(out: str, image: str, overwrite: bool) -> None:
    if not out.lower().endswith(".png"):
        raise RenderError(f"--out={out} must be a .png file")
    parent = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(parent):
        raise RenderError(f"--out={out}: directory {parent} does not exist")
    if os.path.exists(image) and os.path.exists(out) and os.path.samefile(out, image):
        raise RenderError(f"--out={out} is the input image; choose another file")
    if os.path.exists(out) and not overwrite:
        raise RenderError(f"--out={out} exists; pass --overwrite to replace it")


def run(export: str | None, workdir: str | None, image_path: str, out: str, sets: Sequence[str],
        sweep_text: str | None, raw: bool = False, overwrite: bool = False, log=print) -> np.ndarray:
    """The CLI without flags: checks everything it can before loading TensorFlow, renders, writes `out`.

    Returns the written image, float32 [S, S] or [S, N * S].
    """
    assignments = [parse_set(text) for text in sets]
    sweep = parse_sweep(sweep_text) if sweep_text else None
    names = [name for name, _ in assignments]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise RenderError(f"--set gives {duplicates[0]!r} more than once")
    if sweep and sweep[0] in names:
        raise RenderError(f"{sweep[0]!r} is both --set and --sweep; give it one of them")
    if not image_path:
        raise RenderError("--image is required")
    if not out:
        raise RenderError("--out is required")
    export_dir = resolve_export(export, workdir)
    info = read_info(export_dir)
    check_out(out, image_path, overwrite)
    targets, notes = resolve_targets(names + ([sweep[0]] if sweep else []), info, raw)
    size = int(info["image_size"])
    image = load_image(image_path, size)

    settings = {}
    for name, value in assignments:
        target = targets[name]
        settings[target.latent] = target.latent_value(value)
        notes.append(_describe(target, value))
    sweep_latents = None
    if sweep:
        name, low, high, count = sweep
        target = targets[name]
        values = np.linspace(low, high, count)
        sweep_latents = (target.latent, [target.latent_value(value) for value in values])
        notes.append(f"sweep {name} from {low:g} to {high:g} in {count} frames -> z{target.latent} from "
                     f"{sweep_latents[1][0]:.4g} to {sweep_latents[1][-1]:.4g}")
        notes.extend(_range_note(target, value) for value in (low, high) if _range_note(target, value))
    if len(set(settings) | ({sweep_latents[0]} if sweep_latents else set())) < len(settings) + bool(sweep_latents):
        raise RenderError("two names map to the same latent; set it once")
    for line in dict.fromkeys(notes):  # In order, without repeats.
        log(line)

    from dcign_tf import export as export_lib  # TensorFlow loads here, after the input checks.

    try:
        model, _ = export_lib.load_model(export_dir)
    except export_lib.ExportError as error:
        raise RenderError(str(error)) from None
    if model.config.image_size != size:
        raise RenderError(f"{export_dir}: the model takes {model.config.image_size}x{model.config.image_size} "
                          f"images but model_info.json says {size}; re-export the run")
    rendered = render(model, image, settings, sweep_latents)
    from dcign_tf import figures

    figures.save_png(out, rendered)
    log(f"wrote {out} ({rendered.shape[1]}x{rendered.shape[0]})")
    return rendered


def _describe(target: Target, value: float) -> str:
    if target.calibrated:
        return (f"{target.name}={value:g} -> z{target.latent}={target.latent_value(value):.4g}"
                + (f"; {_range_note(target, value)}" if _range_note(target, value) else ""))
    if target.name == f"z{target.latent}":
        return f"z{target.latent}={value:g}"
    return f"{target.name}={value:g} (raw) -> z{target.latent}={value:g}"


def _range_note(target: Target, value: float) -> str:
    if target.value_range and not target.value_range[0] <= value <= target.value_range[1]:
        low, high = target.value_range
        return f"note: {target.name}={value:g} is outside the training range [{low:.3g}, {high:.3g}]: extrapolating"
    return ""


# ---------------------------------------------------------------------------------------------------
# Command line.


def define_flags(flag_values: flags.FlagValues) -> None:
    """The CLI's flags, defined in the FlagValues that cli.run gives it."""
    flags.DEFINE_string("export", None, "An export directory (RUN/export).", flag_values=flag_values)
    flags.DEFINE_string("workdir", None, "A run directory; its export/ is used.", flag_values=flag_values)
    flags.DEFINE_string("image", None, "Input image (PNG, JPEG, ...; any size, colour or grey).",
                        flag_values=flag_values)
    flags.DEFINE_string("out", None, "Output PNG.", flag_values=flag_values)
    flags.DEFINE_multi_string("set", [], "NAME=VALUE: a factor (dataset units, e.g. radians) or zK (raw latent); "
                              "repeatable.", flag_values=flag_values)
    flags.DEFINE_string("sweep", None, "NAME:LO:HI:N: N frames with NAME from LO to HI, side by side.",
                        flag_values=flag_values)
    flags.DEFINE_bool("raw", False, "Treat factor values as raw latent values even when the export is calibrated.",
                      flag_values=flag_values)
    flags.DEFINE_bool("overwrite", False, "Replace --out if it exists.", flag_values=flag_values)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the CLI on argv (argv[0] is the program name); returns the exit status."""
    def body(flag_values):
        run(flag_values.export, flag_values.workdir, flag_values.image, flag_values.out, flag_values["set"].value,
            flag_values.sweep, raw=flag_values.raw, overwrite=flag_values.overwrite)
    return cli.run(argv, PROGRAM, __doc__, define_flags, body,
                   lambda: (RenderError, calibration_lib.CalibrationError))


if __name__ == "__main__":
    sys.exit(main())
