r"""The studio: a local web page for driving the trained decoder like a graphics engine (issue 15).

    python -m dcign_tf.studio --workdir=RUN [--baseline_workdir=RUN2] [--data_dir=DIR] [--port=8080]
    python -m dcign_tf.studio --pretrained          # the quickstart model in pretrained/faces_small

then open the printed address (http://127.0.0.1:8080/). On the page:
  * the input: a gallery of test faces from the run's dataset, or an uploaded image (PNG, JPEG, anything
    PIL reads; any size, colour or grey), converted as `python -m dcign_tf.render` converts it
    (render.image_to_input: EXIF turn, alpha over black, ITU-R 601 luma, centred square, Lanczos);
  * one slider per factor with a numeric range, in degrees through the export's calibration
    (model_info.json, written by `python -m dcign_tf.evaluate`); without a calibration the sliders move
    the raw latents and the page says so. The render follows the slider as it moves, next to the input
    and its reconstruction;
  * "face B": the identity latents are taken from face B, pose and light from face A (the swap);
  * with --baseline_workdir, the baseline's render of the same edit beside it: the baseline's latent for a
    factor is the one `evaluate` chooses (its calibration's latent, else analysis.selection.choose_latents on the
    gallery's test groups, and then a calibration fitted on them so that the same angle is asked of it);
  * downloads: the current render, and a sweep strip of any factor over its slider's range, as PNG.

Bad input is a message on the page and the server keeps running: a file that is not an image, an
upload over --max_upload_mb or --max_upload_megapixels, an export that is missing (the page's "Load
again" button retries, e.g. once training has exported) or does not match its data.

Security: the server binds to 127.0.0.1 unless --host says otherwise, and on loopback it answers only
requests addressed to localhost (no DNS rebinding). It serves no files by path: the page is one
fixed file, gallery images are rows of the test sample held in memory, asked for by index.

Endpoints (JSON unless said; face sources are "gallery:N" or the id an upload returned):
  GET  /                    the page
  GET  /api/state           ready, messages, factors and their sliders, gallery size, baseline
  GET  /api/gallery/N.png   test image N of the gallery (PNG)
  POST /api/upload          body: the image file -> {"source": "upload:ID", "input": PNG data URL}
  POST /api/face            {"a", "b"?} -> input(s), reconstruction(s), face A's slider values
  POST /api/render          {"a", "b"?, "values": {factor: slider value}} -> render (and baseline render)
  POST /api/sweep           {"a", "b"?, "values", "factor", "frames"} -> PNG strip (baseline below it)
  POST /api/reload          loads the export and the data again
Slider values are in the units /api/state gives each factor ("degrees", the dataset's units, or "raw
latent"); factors absent from "values" keep face A's own latent.

Exit status: 0 after Ctrl-C; 2 with one line on stderr for bad flags, a missing --workdir or
pretrained model, or a port that cannot be opened.
"""

from __future__ import annotations

import base64
import collections
import dataclasses
import http.server
import io
import ipaddress
import json
import math
import os
import re
import secrets
import socket
import sys
import threading
import time
from typing import Mapping, Sequence

import numpy as np
from absl import flags
from PIL import Image, ImageOps

from dcign_tf import calibration as calibration_lib
from dcign_tf import cli
from dcign_tf import io_utils
from dcign_tf import pretrained as pretrained_lib
from dcign_tf import render as render_lib
from dcign_tf.analysis import scores, selection

PROGRAM = "dcign_tf.studio"
PAGE_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "studio_page.html")
# The quickstart model committed with the repository (an export directory, with its flags.txt).
PRETRAINED_DIR = pretrained_lib.PRETRAINED_DIR
MAX_UPLOAD_MB = 20.0
MAX_UPLOAD_MEGAPIXELS = 40.0
MAX_UPLOADS_KEPT = 64  # oldest uploads are forgotten beyond this (each is one S x S image and its codes)
GALLERY_SIZE = 24
DEFAULT_SWEEP_FRAMES = 9
# Without a calibration, a raw slider spans the prior's +-3 sigma and the gallery's values of its latent
# widened by RAW_WIDEN of their spread on each side.
RAW_WIDEN = 0.5
RAW_PRIOR_SPAN = 3.0
MAIN, BASELINE = "main", "baseline"
_SOURCE = re.compile(r"(gallery):(\d{1,6})|(upload):([0-9a-f]{16})")


class StudioError(ValueError):
    """Bad input to the studio (a request, an upload, a run); one line saying what to do."""


class RequestTooLarge(StudioError):
    """An upload over the size limit (HTTP 413)."""


# ---------------------------------------------------------------------------------------------------
# A loaded model and how its sliders map to its latents.


@dataclasses.dataclass
class Slider:
    """One factor's slider: `units` on screen, value -> latent through `target` (render.Target)."""

    name: str
    units: str  # "degrees", the dataset's units (calibrated, not radians) or "raw latent"
    low: float
    high: float
    target: render_lib.Target

    @property
    def to_dataset_units(self) -> float:
        return math.pi / 180.0 if self.units == "degrees" else 1.0

    def latent_value(self, value: float) -> float:
        return self.target.latent_value(value * self.to_dataset_units) if self.target.calibrated else value

    def value_of(self, latent_value: float) -> float | None:
        """The slider value that gives `latent_value`; None for a flat calibration."""
        if not self.target.calibrated:
            return float(latent_value)
        line = {"slope": self.target.slope, "intercept": self.target.intercept}
        try:
            return float(calibration_lib.latent_to_value(line, latent_value)) / self.to_dataset_units
        except calibration_lib.CalibrationError:
            return None

    def to_json(self) -> dict:
        span = self.high - self.low
        return {"name": self.name, "units": self.units, "min": self.low, "max": self.high,
                "step": 1.0 if self.units == "degrees" else span / 200.0,
                "latent": self.target.latent, "calibrated": self.target.calibrated,
                "r2": self.target.r2}


@dataclasses.dataclass
class Engine:
    """One run's model: its latents for face B's identity, and the latent each slider drives."""

    label: str
    export_dir: str
    info: dict
    model: object
    identity_latents: tuple[int, ...]  # taken from face B in a swap
    targets: dict[str, render_lib.Target]  # scene factor -> latent and calibration
    gallery_codes: np.ndarray | None = None  # [N, L] posterior means of the test sample

    def encode(self, images: np.ndarray) -> np.ndarray:
        """images [N, S, S, 1] -> posterior means [N, L] float32."""
        return scores.encode_means(self.model, images)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """codes [N, L] -> images [N, S, S] float32 in [0, 1]."""
        return np.asarray(self.model.decode(np.asarray(codes, np.float32)), np.float32)[..., 0]


def scene_factors(info: Mapping) -> list[dict]:
    """The factors with a numeric range (those a slider can set), from model_info.json."""
    return [factor for factor in info["factors"] if factor.get("range") is not None]


def make_targets(info: Mapping, layout: Mapping[str, Sequence[int]], sample, codes: np.ndarray | None,
                 fit_calibration: bool) -> tuple[dict[str, render_lib.Target], list[str]]:
    """Scene factor -> Target for one run, and notes for the page.

    The export's calibration when it has one (render.resolve_targets). Otherwise the latent evaluate
    would choose (selection.choose_latents on the test sample's groups; a one-latent DC-IGN layout needs
    no data), as raw latent values, or -- with `fit_calibration` -- with a line fitted on the sample
    (calibration.fit_calibration), which is what evaluate would store.
    """
    names = [factor["name"] for factor in scene_factors(info)]
    if info.get("calibration"):
        return render_lib.resolve_targets(names, info)
    mode = str(info.get("mode", "dcign"))
    if sample is not None and codes is not None:
        chosen = selection.choose_latents(codes, sample.groups, layout, mode)
    else:
        chosen = {name: int(indices[0]) for name, indices in layout.items() if mode == "dcign" and len(indices) == 1}
    missing = [name for name in names if name not in chosen]
    if missing:
        raise StudioError(f"no latent for {', '.join(missing)}: the export has no calibration and the test data "
                          "that would pick one is not loaded; run python -m dcign_tf.evaluate --workdir=RUN, "
                          "or pass --data_dir")
    if fit_calibration and sample is not None:
        try:
            fitted = calibration_lib.fit_calibration({name: sample.values(name) for name in names}, codes, chosen)
        except calibration_lib.CalibrationError as error:
            raise StudioError(f"cannot fit a calibration on the gallery's test images: {error}") from None
        targets = {name: render_lib.Target(name, int(line["latent"]), line["slope"], line["intercept"], calibrated=True,
                                           r2=line["r2"]) for name, line in fitted.items()}
        return targets, [f"the baseline has no stored calibration: fitted on {sample.num_images} test images "
                         "(python -m dcign_tf.evaluate --workdir=BASELINE stores one)"]
    return {name: render_lib.Target(name, int(chosen[name])) for name in names}, []


def make_sliders(info: Mapping, targets: Mapping[str, render_lib.Target], codes: np.ndarray | None) -> list[Slider]:
    """One slider per scene factor: its training range (degrees for radians) when calibrated, else raw
    latent values over the prior's +-3 and the gallery's range (see RAW_WIDEN)."""
    sliders = []
    for factor in scene_factors(info):
        target = targets[factor["name"]]
        if target.calibrated:
            low, high = (float(value) for value in factor["range"])
            units = factor.get("units") or "dataset units"
            if units == "radians":
                units, low, high = "degrees", math.degrees(low), math.degrees(high)
        else:
            units, low, high = "raw latent", -RAW_PRIOR_SPAN, RAW_PRIOR_SPAN
            if codes is not None and len(codes):
                seen_low, seen_high = float(codes[:, target.latent].min()), float(codes[:, target.latent].max())
                spread = seen_high - seen_low
                low, high = min(low, seen_low - RAW_WIDEN * spread), max(high, seen_high + RAW_WIDEN * spread)
        sliders.append(Slider(factor["name"], units, low, high, target))
    return sliders


# ---------------------------------------------------------------------------------------------------
# Images in and out.


def read_upload(data: bytes, size: int, max_megapixels: float = MAX_UPLOAD_MEGAPIXELS) -> np.ndarray:
    """An uploaded file's bytes -> the model's input, float32 [size, size, 1] in [0, 1].

    The pixel count is checked from the header, before the pixels are decoded; the conversion is
    render.image_to_input's. StudioError for an empty file, a non-image, or too many pixels.
    """
    if not data:
        raise StudioError("the upload is empty; choose a PNG or JPEG image")
    try:
        with Image.open(io.BytesIO(data)) as opened:
            width, height = opened.size
            if width * height > max_megapixels * 1e6:
                raise StudioError(f"the image is {width}x{height} ({width * height / 1e6:.0f} megapixels); the studio "
                                  f"takes at most {max_megapixels:g} megapixels: shrink it first")
            opened.load()
            image = ImageOps.exif_transpose(opened)
    except Image.DecompressionBombError:
        raise StudioError(f"the image has too many pixels; the studio takes at most {max_megapixels:g} megapixels: "
                          "shrink it first") from None
    except (OSError, ValueError, SyntaxError) as error:  # SyntaxError: PIL's word for some malformed headers
        if isinstance(error, StudioError):
            raise
        raise StudioError(f"the uploaded file is not an image this studio can read ({cli.one_line(error)}); "
                          "choose a PNG or JPEG image") from None
    try:
        return render_lib.image_to_input(image, size)
    except (OSError, ValueError) as error:
        raise StudioError(f"cannot turn the image's {image.mode} pixels into grey ({error})") from None


def png_bytes(image: np.ndarray) -> bytes:
    """A float [0, 1] or uint8 grey image [H, W] -> PNG bytes."""
    from dcign_tf.data import records

    return records.encode_png(io_utils.to_uint8(np.asarray(image)))


def data_url(image: np.ndarray) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(image)).decode("ascii")


# ---------------------------------------------------------------------------------------------------
# The studio's state: the runs, the gallery, the uploads.


@dataclasses.dataclass
class Upload:
    image: np.ndarray  # [S, S, 1]
    codes: dict[str, np.ndarray]  # engine label -> [L]


class Studio:
    """Everything the server needs; every public method is safe to call from several threads.

    Loading never raises for a bad run or dataset: `messages` says what is wrong, and `ready` is False
    until a model is loaded (`load` tries again).
    """

    def __init__(self, workdir: str | None = None, export_dir: str | None = None,
                 baseline_workdir: str | None = None, data_dir: str | None = None,
                 gallery_groups: int = 2, max_upload_mb: float = MAX_UPLOAD_MB,
                 max_upload_megapixels: float = MAX_UPLOAD_MEGAPIXELS, log=print):
        self.workdir, self.export_arg = workdir, export_dir
        self.baseline_workdir, self.data_dir_arg = baseline_workdir, data_dir
        self.gallery_groups = gallery_groups
        self.max_upload_bytes = int(max_upload_mb * 1e6)
        self.max_upload_megapixels = max_upload_megapixels
        self.log = log
        self.lock = threading.RLock()  # one model call at a time; Keras models are not re-entrant
        self.uploads: collections.OrderedDict[str, Upload] = collections.OrderedDict()
        self.load()

    # Loading.

    def load(self) -> None:
        with self.lock:
            self.engines: dict[str, Engine] = {}
            self.sliders: list[Slider] = []
            self.baseline_sliders: dict[str, Slider] = {}
            self.sample = None
            self.gallery_rows = np.zeros(0, np.int64)
            self.messages: list[dict] = []
            self.uploads.clear()
            try:
                self._load()
            except Exception as error:  # noqa: BLE001 - shown on the page; the server keeps running
                self.engines.clear()
                self._message("error", self._user_message(error))
            for message in self.messages:
                self.log(f"{message['level']}: {message['text']}")

    @property
    def ready(self) -> bool:
        return MAIN in self.engines

    def _message(self, level: str, text: str) -> None:
        self.messages.append({"level": level, "text": cli.one_line(text)})

    @staticmethod
    def _user_message(error: Exception) -> str:
        from dcign_tf import export as export_lib
        from dcign_tf.data import records

        known = (StudioError, render_lib.RenderError, selection.EvaluationError, export_lib.ExportError,
                 records.DatasetError, calibration_lib.CalibrationError)
        return str(error) if isinstance(error, known) else f"{type(error).__name__}: {error}"

    def _load(self) -> None:
        export_dir = render_lib.resolve_export(self.export_arg, self.workdir)
        info = render_lib.read_info(export_dir)
        from dcign_tf import export as export_lib  # TensorFlow loads here.

        run = selection.RunSpec(workdir=self.workdir or export_dir, export_dir=export_dir, info=info)
        model, _ = export_lib.load_model(export_dir)
        if model.config.image_size != int(info["image_size"]):
            raise StudioError(f"{export_dir}: the model takes {model.config.image_size}x{model.config.image_size} "
                              f"images but model_info.json says {info['image_size']}; re-export the run")
        self.image_size = int(info["image_size"])
        self.sample = self._load_sample(run, model)
        codes = None
        if self.sample is not None:
            codes = scores.encode_means(model, self.sample.images)
        main = self._engine(MAIN, export_dir, info, model, codes, fit_calibration=False)
        self.sliders = make_sliders(info, main.targets, codes)
        if not any(slider.target.calibrated for slider in self.sliders):
            self._message("note", "this export has no calibration, so the sliders move raw latent values, not "
                                  "angles; python -m dcign_tf.evaluate --workdir=RUN calibrates it")
        self.engines[MAIN] = main
        if self.baseline_workdir:
            try:
                self._load_baseline(export_lib, run)
            except Exception as error:  # noqa: BLE001 - the main run still works
                self.engines.pop(BASELINE, None)
                self._message("error", f"baseline not shown: {self._user_message(error)}")

    def _load_sample(self, run, model):
        """The test sample for the gallery, or None (with a message) when there is no readable dataset."""
        from dcign_tf.data import records

        try:
            data_dir = selection.resolve_data_dir(run, self.data_dir_arg)
            dataset = records.DatasetInfo.load(data_dir)
        except (selection.EvaluationError, records.DatasetError) as error:
            self._message("note", f"no gallery of test faces ({error}); uploads work without one")
            return None
        try:
            selection.check_compatible(run, dataset, data_dir)
            sample = selection.load_test_sample(data_dir, dataset, self.gallery_groups)
            selection.check_model(model, sample, run.export_dir)
        except (selection.EvaluationError, records.DatasetError) as error:
            self._message("error", f"the export does not match its data: {error}; the gallery is off, uploads "
                                   "still work")
            return None
        self.data_dir = data_dir
        self.gallery_rows = gallery_rows(sample, GALLERY_SIZE)
        return sample

    def _engine(self, label, export_dir, info, model, codes, fit_calibration) -> Engine:
        layout = {name: tuple(indices) for name, indices in model.layout.factor_latents.items()}
        targets, notes = make_targets(info, layout, self.sample, codes, fit_calibration)
        for note in notes:
            self._message("note", ("" if label == MAIN else f"{label}: ") + note.removeprefix("note: "))
        scene = [factor["name"] for factor in scene_factors(info)]
        chosen = {name: target.latent for name, target in targets.items()}
        own = selection.own_latents(layout, str(info.get("mode", "dcign")), chosen, scene, int(info["num_latents"]))
        identity = tuple(sorted({latent for name, latents in own.items() if name not in scene for latent in latents}))
        if not identity:
            raise StudioError(f"{export_dir}: the latent layout gives no latent to identity, so nothing can be swapped")
        return Engine(label, export_dir, info, model, identity, targets, codes)

    def _load_baseline(self, export_lib, run) -> None:
        baseline_run = selection.resolve_run(self.baseline_workdir, "baseline_workdir")
        if os.path.realpath(baseline_run.workdir) == os.path.realpath(run.workdir):
            raise StudioError("--baseline_workdir is the same run as --workdir")
        selection.check_baseline(run, baseline_run)
        model, _ = export_lib.load_model(baseline_run.export_dir)
        if model.config.image_size != self.image_size:
            raise StudioError(f"the baseline takes {model.config.image_size}x{model.config.image_size} images, the "
                              f"run {self.image_size}x{self.image_size}")
        codes = scores.encode_means(model, self.sample.images) if self.sample is not None else None
        main_calibrated = any(slider.target.calibrated for slider in self.sliders)
        engine = self._engine(BASELINE, baseline_run.export_dir, dict(baseline_run.info), model, codes,
                              fit_calibration=main_calibrated)
        self.engines[BASELINE] = engine
        for slider in self.sliders:
            target = engine.targets[slider.name]
            if slider.target.calibrated != target.calibrated:
                raise StudioError(f"the run's {slider.name} is {'' if slider.target.calibrated else 'un'}calibrated "
                                  "and the baseline's is not alike; run python -m dcign_tf.evaluate on both")
            self.baseline_sliders[slider.name] = dataclasses.replace(slider, target=target)
        shared = collections.defaultdict(list)
        for name, target in engine.targets.items():
            shared[target.latent].append(name)
        for latent, names in shared.items():
            if len(names) > 1:
                self._message("note", f"baseline: {' and '.join(names)} both map to z{latent} (evaluate's choice: "
                                      "the latent varying most in each one's groups), so their sliders move it alike")
        if not main_calibrated:
            self._message("note", "baseline: the same raw value is set on the latent evaluate chooses for each "
                                  "factor (" + ", ".join(f"{name} z{target.latent}" for name, target in
                                                         engine.targets.items()) + ")")

    # Requests.

    def state(self) -> dict:
        with self.lock:
            return {"ready": self.ready, "messages": list(self.messages),
                    "image_size": getattr(self, "image_size", None), "gallery": int(len(self.gallery_rows)),
                    "factors": [slider.to_json() for slider in self.sliders],
                    "baseline": BASELINE in self.engines,
                    "max_upload_bytes": self.max_upload_bytes, "max_upload_megapixels": self.max_upload_megapixels,
                    "run": os.path.abspath(self.workdir or self.export_arg or "")}

    def gallery_png(self, index: int) -> bytes:
        with self.lock:
            if not 0 <= index < len(self.gallery_rows):
                raise StudioError(f"gallery image {index} does not exist (the gallery has {len(self.gallery_rows)})")
            return png_bytes(self.sample.images[self.gallery_rows[index], ..., 0])

    def upload(self, data: bytes) -> dict:
        if len(data) > self.max_upload_bytes:
            raise RequestTooLarge(too_large_message(len(data), self.max_upload_bytes))
        with self.lock:
            self._require_ready()
            image = read_upload(data, self.image_size, self.max_upload_megapixels)
            codes = {label: engine.encode(image[None])[0] for label, engine in self.engines.items()}
            key = secrets.token_hex(8)
            self.uploads[key] = Upload(image, codes)
            while len(self.uploads) > MAX_UPLOADS_KEPT:
                self.uploads.popitem(last=False)
            return {"source": f"upload:{key}", "input": data_url(image[..., 0])}

    def face(self, request: Mapping) -> dict:
        """The inputs and reconstructions of a face choice, and face A's slider values."""
        with self.lock:
            self._require_ready()
            a, b = self._sources(request)
            result = {"input": data_url(self._image(a)), "input_b": data_url(self._image(b)) if b else None}
            for label, engine in self.engines.items():
                code = self._code(engine, a, b, {})
                result[f"{label}_reconstruction"] = data_url(engine.decode(code[None])[0])
            main = self.engines[MAIN]
            code = self._code(main, a, b, {})
            result["values"] = {slider.name: slider.value_of(float(code[slider.target.latent]))
                                for slider in self.sliders}
            return result

    def render(self, request: Mapping) -> dict:
        """The edit `request` asks for, rendered by every run: {"main": data URL, "baseline": data URL or None}."""
        with self.lock:
            self._require_ready()
            a, b = self._sources(request)
            values = self._values(request)
            return {label: data_url(engine.decode(self._code(engine, a, b, values)[None])[0]) if engine else None
                    for label, engine in ((MAIN, self.engines[MAIN]), (BASELINE, self.engines.get(BASELINE)))}

    def sweep(self, request: Mapping) -> bytes:
        """A PNG strip of `frames` renders with `factor` over its slider's range (the baseline's row below)."""
        with self.lock:
            self._require_ready()
            a, b = self._sources(request)
            values = self._values(request)
            sliders = {slider.name: slider for slider in self.sliders}
            factor = request.get("factor")
            if factor not in sliders:
                raise StudioError(f"unknown factor {factor!r}; the sliders are {', '.join(sliders)}")
            frames = request.get("frames", DEFAULT_SWEEP_FRAMES)
            if not isinstance(frames, int) or not 2 <= frames <= render_lib.MAX_SWEEP_FRAMES:
                raise StudioError(f"frames must be a whole number in 2..{render_lib.MAX_SWEEP_FRAMES}, got {frames!r}")
            steps = np.linspace(sliders[factor].low, sliders[factor].high, frames)
            rows = []
            for label, engine in self.engines.items():
                slider = sliders[factor] if label == MAIN else self.baseline_sliders[factor]
                code = self._code(engine, a, b, values)
                codes = np.repeat(code[None], frames, axis=0)
                codes[:, slider.target.latent] = [slider.latent_value(value) for value in steps]
                rows.append(np.concatenate(list(engine.decode(codes)), axis=1))
            return png_bytes(np.concatenate(rows, axis=0))

    # Pieces of requests.

    def _require_ready(self) -> None:
        if not self.ready:
            errors = [message["text"] for message in self.messages if message["level"] == "error"]
            raise StudioError(errors[0] if errors else "no model is loaded")

    def _sources(self, request: Mapping) -> tuple[tuple, tuple | None]:
        if not isinstance(request, Mapping):
            raise StudioError("the request must be a JSON object")
        a = self._source(request.get("a"), "a")
        b = self._source(request.get("b"), "b") if request.get("b") else None
        return a, b

    def _source(self, text, name: str) -> tuple:
        """'gallery:N' or 'upload:ID' -> ("gallery", row) or ("upload", ID); StudioError otherwise."""
        match = _SOURCE.fullmatch(text) if isinstance(text, str) else None
        if not match:
            raise StudioError(f"face {name} must be 'gallery:N' or an uploaded image's id, got {str(text)[:40]!r}")
        if match.group(1):
            index = int(match.group(2))
            if index >= len(self.gallery_rows):
                raise StudioError(f"gallery image {index} does not exist (the gallery has {len(self.gallery_rows)})")
            return ("gallery", int(self.gallery_rows[index]))
        if match.group(4) not in self.uploads:
            raise StudioError("that uploaded image is no longer held (the studio keeps the last "
                              f"{MAX_UPLOADS_KEPT}, and forgets them on reload); upload it again")
        return ("upload", match.group(4))

    def _image(self, source: tuple) -> np.ndarray:
        kind, key = source
        return self.sample.images[key, ..., 0] if kind == "gallery" else self.uploads[key].image[..., 0]

    def _face_code(self, engine: Engine, source: tuple) -> np.ndarray:
        kind, key = source
        return engine.gallery_codes[key] if kind == "gallery" else self.uploads[key].codes[engine.label]

    def _values(self, request: Mapping) -> dict[str, float]:
        values = request.get("values") or {}
        known = {slider.name for slider in self.sliders}
        if not isinstance(values, Mapping) or not all(name in known for name in values):
            raise StudioError(f"values must map factors ({', '.join(sorted(known))}) to numbers")
        try:
            values = {name: float(value) for name, value in values.items()}
        except (TypeError, ValueError):
            raise StudioError("every slider value must be a number") from None
        if not all(math.isfinite(value) for value in values.values()):
            raise StudioError("every slider value must be a finite number")
        return values

    def _code(self, engine: Engine, a: tuple, b: tuple | None, values: Mapping[str, float]) -> np.ndarray:
        """Face A's code [L], with face B's identity latents, and the slider values set."""
        code = np.array(self._face_code(engine, a), np.float32)
        if b is not None:
            identity = list(engine.identity_latents)
            code[identity] = self._face_code(engine, b)[identity]
        sliders = {slider.name: slider for slider in self.sliders} if engine.label == MAIN else self.baseline_sliders
        for name, value in values.items():
            code[sliders[name].target.latent] = sliders[name].latent_value(value)
        return code


def gallery_rows(sample, count: int) -> np.ndarray:
    """Up to `count` rows of the sample: the first image of every group, then the second, ... (varied faces)."""
    groups = [rows for factor_rows in sample.groups.values() for rows in factor_rows]
    order = [int(rows[position]) for position in range(max(len(rows) for rows in groups)) for rows in groups
             if position < len(rows)]
    return np.array(list(dict.fromkeys(order))[:count], np.int64)


def too_large_message(size: int, limit: int) -> str:
    return (f"the upload is {size / 1e6:.1f} MB; the studio takes files up to {limit / 1e6:g} MB "
            "(--max_upload_mb): shrink the image first")


def render_latency(studio: Studio, renders: int = 50, factor: str | None = None) -> float:
    """Milliseconds per slider move, the median over `renders` moves of `factor` (default: the first
    slider) on gallery face 0 (or the newest upload): what /api/render computes, PNG encoding included,
    HTTP excluded."""
    if not studio.ready:
        raise StudioError("the studio has no model loaded: " + "; ".join(m["text"] for m in studio.messages))
    source = "gallery:0" if len(studio.gallery_rows) else f"upload:{next(reversed(studio.uploads))}"
    slider = next(s for s in studio.sliders if factor in (None, s.name))
    times = []
    for value in np.linspace(slider.low, slider.high, renders + 1):
        started = time.perf_counter()
        studio.render({"a": source, "values": {slider.name: float(value)}})
        times.append(time.perf_counter() - started)
    return float(np.median(times[1:]) * 1000.0)  # the first move pays for tracing


# ---------------------------------------------------------------------------------------------------
# The HTTP server.


class Handler(http.server.BaseHTTPRequestHandler):
    """Fixed routes only; anything else is 404. `server.studio` is the Studio."""

    server_version = "dcign_tf-studio"
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        pass  # quiet: one line per slider move would flood the terminal

    def do_GET(self):
        self._serve("GET")

    def do_POST(self):
        self._serve("POST")

    def _serve(self, method: str) -> None:
        studio: Studio = self.server.studio
        path = self.path.split("?", 1)[0]
        try:
            if not self._host_allowed():
                return self._json(403, {"error": "this studio answers only requests to localhost"})
            gallery = re.fullmatch(r"/api/gallery/(\d{1,6})\.png", path)
            if method == "GET" and path in ("/", "/index.html"):
                with open(PAGE_FILE, "rb") as file:
                    return self._send(200, "text/html; charset=utf-8", file.read())
            if method == "GET" and path == "/api/state":
                return self._json(200, studio.state())
            if method == "GET" and gallery:
                return self._send(200, "image/png", studio.gallery_png(int(gallery.group(1))))
            routes = {"/api/upload": None, "/api/face": studio.face, "/api/render": studio.render,
                      "/api/sweep": studio.sweep, "/api/reload": None}
            if path not in routes:
                return self._json(404, {"error": f"no such page: {path[:80]}"})
            if method != "POST":
                return self._json(405, {"error": f"{path} takes POST"})
            body = self._body(studio.max_upload_bytes if path == "/api/upload" else 1_000_000)
            if path == "/api/upload":
                return self._json(200, studio.upload(body))
            if path == "/api/reload":
                studio.load()
                return self._json(200, studio.state())
            try:
                request = json.loads(body or b"{}")
            except ValueError:
                raise StudioError("the request body is not JSON") from None
            if path == "/api/sweep":
                return self._send(200, "image/png", studio.sweep(request),
                                  {"Content-Disposition": 'attachment; filename="sweep.png"'})
            return self._json(200, routes[path](request))
        except RequestTooLarge as error:
            self.close_connection = True
            return self._json(413, {"error": str(error)})
        except StudioError as error:
            return self._json(400, {"error": cli.one_line(error)})
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as error:  # noqa: BLE001 - a bug must not stop the server; say it on the page
            return self._json(500, {"error": f"internal error: {type(error).__name__}: {cli.one_line(error)}"})

    def _host_allowed(self) -> bool:
        if not self.server.loopback_only:
            return True
        host = (self.headers.get("Host") or "").strip().lower()
        host = re.sub(r":\d+$", "", host).strip("[]")
        return host in ("localhost", "127.0.0.1", "::1")

    def _body(self, limit: int) -> bytes:
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            raise StudioError("the request has no Content-Length")
        if int(length) > limit:
            raise RequestTooLarge(too_large_message(int(length), limit))
        return self.rfile.read(int(length))

    def _json(self, status: int, value) -> None:
        self._send(status, "application/json", json.dumps(value).encode("utf-8"))

    def _send(self, status: int, content_type: str, body: bytes, headers: Mapping[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, studio: Studio, host: str, port: int):
        self.studio = studio
        self.loopback_only = is_loopback(host)
        if ":" in host:
            self.address_family = socket.AF_INET6
        super().__init__((host, port), Handler)

    def handle_error(self, request, client_address):
        if isinstance(sys.exc_info()[1], ConnectionError):
            return  # a browser dropping a kept-alive connection: nothing went wrong
        super().handle_error(request, client_address)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{'[' + host + ']' if ':' in host else host}:{port}/"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(studio: Studio, host: str = "127.0.0.1", port: int = 0) -> tuple[Server, threading.Thread]:
    """Starts the server in a daemon thread (port 0: a free one); returns (server, thread). For tests and tools."""
    server = Server(studio, host, port)
    thread = threading.Thread(target=server.serve_forever, name="studio", daemon=True)
    thread.start()
    return server, thread


# ---------------------------------------------------------------------------------------------------
# Command line.


def define_flags(flag_values: flags.FlagValues) -> None:
    flags.DEFINE_string("workdir", None, "A trained run (its export/ is loaded).", flag_values=flag_values)
    flags.DEFINE_bool("pretrained", False, f"Load the quickstart model committed in {PRETRAINED_DIR}.",
                      flag_values=flag_values)
    flags.DEFINE_string("baseline_workdir", None, "A --mode=baseline run on the same data, rendered beside it.",
                        flag_values=flag_values)
    flags.DEFINE_string("data_dir", None, "The dataset for the gallery (default: the one the run records).",
                        flag_values=flag_values)
    flags.DEFINE_string("host", "127.0.0.1", "Address to listen on. Anything but loopback opens the studio to "
                        "the network, on purpose.", flag_values=flag_values)
    flags.DEFINE_integer("port", 8080, "Port (0: any free one).", lower_bound=0, upper_bound=65535,
                         flag_values=flag_values)
    flags.DEFINE_integer("gallery_groups", 2, "Test groups per factor read for the gallery.", lower_bound=1,
                         upper_bound=64, flag_values=flag_values)
    flags.DEFINE_float("max_upload_mb", MAX_UPLOAD_MB, "Largest upload, in MB.", lower_bound=0.01,
                       flag_values=flag_values)
    flags.DEFINE_float("max_upload_megapixels", MAX_UPLOAD_MEGAPIXELS, "Most pixels of an upload, in millions.",
                       lower_bound=0.001, flag_values=flag_values)


def check_flags(workdir, pretrained, baseline_workdir, data_dir) -> tuple[str | None, str | None]:
    """(workdir, export_dir) to load; StudioError for what cannot work at all (before TensorFlow loads)."""
    if bool(workdir) == bool(pretrained):
        raise StudioError("give exactly one of --workdir=RUN and --pretrained")
    if pretrained:
        if not os.path.exists(os.path.join(PRETRAINED_DIR, "model_info.json")):
            raise StudioError(f"the pretrained model is missing ({PRETRAINED_DIR} has no export); use a clone of the "
                              "repository that has pretrained/, or train one and pass --workdir=RUN")
        return None, PRETRAINED_DIR
    if not os.path.isdir(workdir):
        raise StudioError(f"--workdir={workdir}: no such run directory")
    if baseline_workdir and not os.path.isdir(baseline_workdir):
        raise StudioError(f"--baseline_workdir={baseline_workdir}: no such run directory")
    if data_dir and not os.path.isdir(data_dir):
        raise StudioError(f"--data_dir={data_dir}: no such directory")
    return workdir, None


def main(argv: Sequence[str] | None = None) -> int:
    def body(flag_values):
        workdir, export_dir = check_flags(flag_values.workdir, flag_values.pretrained, flag_values.baseline_workdir,
                                          flag_values.data_dir)
        try:
            server = Server(None, flag_values.host, flag_values.port)  # bound before TensorFlow loads: a taken port fails at once
        except OSError as error:
            raise StudioError(f"cannot listen on {flag_values.host}:{flag_values.port} ({error.strerror or error}); "
                              "pass another --port (0 picks a free one)") from None
        if not server.loopback_only:
            print(f"note: --host={flag_values.host} opens the studio to the network", file=sys.stderr)
        data_dir = flag_values.data_dir
        if flag_values.pretrained and not data_dir:
            # A fresh clone has no data/: the model's first test groups, generated once into the cache.
            try:
                data_dir = pretrained_lib.ensure_test_faces(pretrained_dir=PRETRAINED_DIR,
                                                            test_groups_per_factor=flag_values.gallery_groups,
                                                            log=lambda line: print(f"studio: {line}", flush=True))
            except (ValueError, OSError) as error:  # DatasetError is a ValueError
                raise StudioError(f"cannot make the pretrained model's test faces ({error}); pass "
                                  "--data_dir=DIR") from None
        server.studio = Studio(workdir, export_dir, flag_values.baseline_workdir, data_dir,
                               flag_values.gallery_groups, flag_values.max_upload_mb,
                               flag_values.max_upload_megapixels)
        print(f"studio: open {server.url} (Ctrl-C stops it)", flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.server_close()
        return 0

    return cli.run(argv, PROGRAM, __doc__, define_flags, body, lambda: (StudioError,))


if __name__ == "__main__":
    sys.exit(main())
