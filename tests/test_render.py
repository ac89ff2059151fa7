"""dcign_tf.render: reading images, --set / --sweep, the calibration mapping, the CLI and its bad input."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from dcign_tf import render

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CALIBRATION = {"azimuth": {"slope": 2.0, "intercept": 0.5, "latent": 0, "r2": 0.9},
               "elevation": {"slope": -1.0, "intercept": 0.0, "latent": 1, "r2": 0.8},
               "light": {"slope": 0.5, "intercept": -0.1, "latent": 2, "r2": 0.2}}


@pytest.fixture(scope="module")
def exports(tmp_path_factory, faces_dataset):
    """An uncalibrated run (configs/test.flags' model, untrained) and a copy of it with a calibration."""
    import keras

    from dcign_tf import config as config_lib
    from dcign_tf import export as export_lib
    from dcign_tf import train
    from dcign_tf.data import records
    from dcign_tf.model import DCIGN

    root = tmp_path_factory.mktemp("render")
    config = config_lib.from_flagfile(os.path.join(REPO, "configs", "test.flags"))
    config.workdir, config.data_dir = str(root / "run"), faces_dataset
    info = records.DatasetInfo.load(faces_dataset)
    os.makedirs(config.workdir, exist_ok=True)
    train.write_flags(config)
    keras.utils.set_random_seed(0)
    model = DCIGN(info.factor_names, config.model_config())
    export_lib.export_model(model, os.path.join(config.workdir, "export"), train.export_info(config, info, model, 20))
    calibrated = str(root / "calibrated")
    shutil.copytree(os.path.join(config.workdir, "export"), calibrated)
    export_lib.update_info(calibrated, calibration=CALIBRATION)
    face = root / "face.jpg"
    colour = np.zeros((48, 60, 3), np.uint8)
    colour[10:40, 20:45] = (200, 150, 90)
    Image.fromarray(colour).save(face)
    return {"run": config.workdir, "calibrated": calibrated, "image": str(face), "root": root}


# ---------------------------------------------------------------------------------------------------
# Pieces.


def test_parse_set_and_sweep():
    assert render.parse_set("azimuth=0.8") == ("azimuth", 0.8)
    assert render.parse_set(" light = -5e-1 ") == ("light", -0.5)
    assert render.parse_set("z12=3") == ("z12", 3.0)
    assert render.parse_sweep("azimuth:-1.5:1.5:9") == ("azimuth", -1.5, 1.5, 9)
    for bad in ["azimuth", "azimuth=", "=1", "azimuth=abc", "azimuth=1=2", "azimuth=nan"]:
        with pytest.raises(render.RenderError, match="NAME=VALUE"):
            render.parse_set(bad)
    for bad in ["azimuth:1:2", "azimuth:a:1:3", "azimuth:-1:1:2.5", ":1:2:3"]:
        with pytest.raises(render.RenderError, match="NAME:LO:HI:N"):
            render.parse_sweep(bad)
    with pytest.raises(render.RenderError, match="N must be"):
        render.parse_sweep("azimuth:-1:1:1")


def test_images_become_square_grey_model_inputs():
    size = 16
    red = Image.new("RGB", (40, 20), (255, 0, 0))
    converted = render.image_to_input(red, size)
    assert converted.shape == (size, size, 1) and converted.dtype == np.float32
    np.testing.assert_allclose(converted, 76 / 255, atol=2e-3)  # luma of pure red: 0.299 * 255 = 76
    # Transparent parts are laid over black.
    clear = Image.new("RGBA", (size, size), (255, 255, 255, 0))
    np.testing.assert_allclose(render.image_to_input(clear, size), 0.0)
    # 16-bit grey is scaled by 65535.
    deep = Image.fromarray(np.full((size, size), 65535, np.uint16))
    np.testing.assert_allclose(render.image_to_input(deep, size), 1.0, atol=1e-6)
    # A wide image is cropped to its centred square, not squeezed: the bright centre fills the output.
    wide = np.zeros((size, 3 * size), np.uint8)
    wide[:, size:2 * size] = 255
    np.testing.assert_allclose(render.image_to_input(Image.fromarray(wide), size), 1.0, atol=1e-6)


def test_names_map_through_the_calibration_or_raw():
    info = {"num_latents": 8, "mode": "dcign", "image_size": 32,
            "factors": [{"name": "azimuth", "range": [-1.5, 1.5], "units": "radians"},
                        {"name": "light", "range": [-1.0, 1.0], "units": "radians"},
                        {"name": "identity", "range": None, "units": "identity id"}],
            "latent_layout": {"azimuth": [0], "light": [2], "identity": [1, 3, 4, 5, 6, 7]},
            "calibration": None}
    targets, notes = render.resolve_targets(["azimuth", "z5"], info)
    assert (targets["azimuth"].latent, targets["azimuth"].latent_value(0.7)) == (0, 0.7)
    assert targets["z5"].latent == 5
    assert any("raw latent values" in note for note in notes)

    calibrated = dict(info, calibration={"azimuth": {"slope": 2.0, "intercept": 0.5, "latent": 3, "r2": 0.95},
                                         "light": {"slope": 1.0, "intercept": 0.0, "latent": 2, "r2": 0.1}})
    targets, notes = render.resolve_targets(["azimuth", "light"], calibrated)
    assert (targets["azimuth"].latent, targets["azimuth"].latent_value(0.25)) == (3, 1.0)
    assert not any("raw latent values" in note for note in notes)
    assert any("light is weak" in note for note in notes)
    assert render.resolve_targets(["azimuth"], calibrated, raw=True)[0]["azimuth"].latent_value(0.25) == 0.25

    for names, message in [(["pose"], "unknown factor 'pose'"), (["identity"], "no numeric range"),
                           (["z8"], "z0..z7")]:
        with pytest.raises(render.RenderError, match=message):
            render.resolve_targets(names, info)
    with pytest.raises(render.RenderError, match="baseline run has no calibration"):
        render.resolve_targets(["azimuth"], dict(info, mode="baseline"))


def test_render_sets_and_sweeps_latents():
    class Identity:
        """encode = flatten 2x2 pixels into 4 latents, decode = the reverse: rendering shows the latents."""

        def encode(self, images):
            return np.asarray(images).reshape(len(images), 4), None

        def decode(self, codes):
            return np.asarray(codes).reshape(-1, 2, 2, 1)

    image = np.zeros((2, 2, 1), np.float32)
    np.testing.assert_allclose(render.render(Identity(), image, {0: 0.5}), [[0.5, 0.0], [0.0, 0.0]])
    strip = render.render(Identity(), image, {3: 1.0}, sweep=(1, [0.1, 0.2, 0.3]))
    assert strip.shape == (2, 6)
    np.testing.assert_allclose(strip[0, 1::2], [0.1, 0.2, 0.3])
    np.testing.assert_allclose(strip[1, 1::2], 1.0)


# ---------------------------------------------------------------------------------------------------
# The CLI.


def cli(*args):
    return subprocess.Popen([sys.executable, "-m", "dcign_tf.render", *args], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_cli_set_and_sweep_write_pngs_of_the_model_size(exports):
    root = exports["root"]
    single, strip = str(root / "single.png"), str(root / "strip.png")
    # Both processes at once: each spends most of its time loading TensorFlow.
    calibrated = cli(f"--export={exports['calibrated']}", f"--image={exports['image']}", f"--out={single}",
                     "--set", "azimuth=0.8", "--set=light=-0.5")
    uncalibrated = cli(f"--workdir={exports['run']}", f"--image={exports['image']}", f"--out={strip}",
                       "--sweep=azimuth:-1.5:1.5:5", "--set=z4=0.25")
    out_calibrated, err_calibrated = calibrated.communicate(timeout=300)
    out_uncalibrated, err_uncalibrated = uncalibrated.communicate(timeout=300)
    assert calibrated.returncode == 0, err_calibrated[-2000:]
    assert uncalibrated.returncode == 0, err_uncalibrated[-2000:]
    assert "Traceback" not in err_calibrated + err_uncalibrated
    with Image.open(single) as image:
        assert (image.size, image.mode) == ((32, 32), "L")
    with Image.open(strip) as image:
        assert (image.size, image.mode) == ((5 * 32, 32), "L")
    assert "azimuth=0.8 -> z0=2.1" in out_calibrated  # 2.0 * 0.8 + 0.5
    assert "raw latent values" not in out_calibrated
    assert "values are raw latent values" in out_uncalibrated


def test_cli_bad_input_is_one_line_and_exit_2(exports, tmp_path):
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("not a picture")
    existing = tmp_path / "existing.png"
    existing.write_bytes(b"keep me")
    run, image, out = exports["run"], exports["image"], str(tmp_path / "out.png")
    cases = {
        "no such run directory": [f"--workdir={tmp_path / 'missing'}", f"--image={image}", f"--out={out}"],
        "no exported model": [f"--export={tmp_path}", f"--image={image}", f"--out={out}"],
        "not a readable image": [f"--workdir={run}", f"--image={not_an_image}", f"--out={out}"],
        "no such file": [f"--workdir={run}", f"--image={tmp_path / 'absent.png'}", f"--out={out}"],
        "is not NAME=VALUE": [f"--workdir={run}", f"--image={image}", f"--out={out}", "--set=azimuth:0.8"],
        "is not NAME:LO:HI:N": [f"--workdir={run}", f"--image={image}", f"--out={out}", "--sweep=azimuth:0:1"],
        "unknown factor 'yaw'": [f"--workdir={run}", f"--image={image}", f"--out={out}", "--set=yaw=0.3"],
        "exists; pass --overwrite": [f"--workdir={run}", f"--image={image}", f"--out={existing}"],
        "both --set and --sweep": [f"--workdir={run}", f"--image={image}", f"--out={out}", "--set=azimuth=1",
                                   "--sweep=azimuth:0:1:3"],
        "exactly one of": [f"--workdir={run}", f"--export={run}/export", f"--image={image}", f"--out={out}"],
    }
    processes = {expected: cli(*args) for expected, args in cases.items()}
    for expected, process in processes.items():
        stdout, stderr = process.communicate(timeout=120)
        lines = [line for line in stderr.splitlines() if line.strip()]
        assert process.returncode == 2, (expected, stderr)
        assert len(lines) == 1 and expected in lines[0] and lines[0].startswith("dcign_tf.render: error:"), lines
        assert "Traceback" not in stdout + stderr
    assert existing.read_bytes() == b"keep me"
    assert not os.path.exists(out)
    assert json.load(open(os.path.join(run, "export", "model_info.json")))["calibration"] is None
