"""The Basel Face Model loader on tiny synthetic files with BFM's structure, written by the test.

The "face" is an icosphere (42 vertices) stretched into a head-sized ellipsoid away from the origin, with 3
shape and 2 colour components, saved as BFM 2009 .mat (MATLAB v5 and v7.3) and as BFM 2017 .h5.
"""

import os
import subprocess
import sys

import h5py
import numpy as np
import pytest
import scipy.io

from dcign_tf.data import input_pipeline
from dcign_tf.data.sources import bfm, faces
from dcign_tf.data.records import DatasetInfo
from dcign_tf.data.sources.rasterizer import render

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LUMA = np.array([0.299, 0.587, 0.114])
SEMI_AXES_MM = np.array([75.0, 110.0, 90.0])
OFFSET_MM = np.array([5.0, -20.0, 30.0])
SHAPE_STD_MM = np.array([6.0, 3.0, 1.5])
COLOR_STD = np.array([0.06, 0.03])  # in 0..1


def icosphere(subdivisions=1):
    """Unit-sphere vertices [V, 3] and triangles [T, 3], counter-clockwise seen from outside."""
    t = (1 + 5 ** 0.5) / 2
    vertices = [(-1, t, 0), (1, t, 0), (-1, -t, 0), (1, -t, 0), (0, -1, t), (0, 1, t), (0, -1, -t), (0, 1, -t),
                (t, 0, -1), (t, 0, 1), (-t, 0, -1), (-t, 0, 1)]
    triangles = [(0, 11, 5), (0, 5, 1), (0, 1, 7), (0, 7, 10), (0, 10, 11), (1, 5, 9), (5, 11, 4), (11, 10, 2),
             (10, 7, 6), (7, 1, 8), (3, 9, 4), (3, 4, 2), (3, 2, 6), (3, 6, 8), (3, 8, 9), (4, 9, 5), (2, 4, 11),
             (6, 2, 10), (8, 6, 7), (9, 8, 1)]
    vertices = [np.array(v, float) / np.linalg.norm(v) for v in vertices]
    for _ in range(subdivisions):
        midpoints, new_triangles = {}, []

        def midpoint(a, b):
            key = (min(a, b), max(a, b))
            if key not in midpoints:
                middle = vertices[a] + vertices[b]
                vertices.append(middle / np.linalg.norm(middle))
                midpoints[key] = len(vertices) - 1
            return midpoints[key]
        for a, b, c in triangles:
            ab, bc, ca = midpoint(a, b), midpoint(b, c), midpoint(c, a)
            new_triangles += [(a, ab, ca), (b, bc, ab), (c, ca, bc), (ab, bc, ca)]
        triangles = new_triangles
    return np.array(vertices), np.array(triangles)


def orthonormal_columns(rows, columns, seed):
    return np.linalg.qr(np.random.default_rng(seed).standard_normal((rows, columns)))[0]


@pytest.fixture(scope="module")
def truth():
    """The synthetic model in millimetres and 0..1 colour."""
    unit, triangles = icosphere()
    num_vertices = len(unit)
    mean_mm = unit * SEMI_AXES_MM + OFFSET_MM
    shading = 0.5 + 0.3 * unit[:, 1:2]  # brighter on top
    color_mean = np.clip(shading * np.array([1.0, 0.8, 0.7]), 0, 1)
    return {
        "mean_mm": mean_mm, "triangles": triangles,
        "shape_components": orthonormal_columns(3 * num_vertices, 3, 1),
        "color_mean": color_mean, "color_components": orthonormal_columns(3 * num_vertices, 2, 2),
    }


def write_bfm2009(path, truth, *, triangles=None):
    """BFM 2009's 01_MorphableModel.mat (MATLAB v5): micrometres, colour 0..255, 1-based tl."""
    triangles = truth["triangles"] if triangles is None else triangles
    scipy.io.savemat(path, {
        "shapeMU": (truth["mean_mm"].reshape(-1, 1) * 1000).astype(np.float32),
        "shapePC": truth["shape_components"].astype(np.float32),
        "shapeEV": (SHAPE_STD_MM * 1000).reshape(-1, 1),
        "texMU": (truth["color_mean"].reshape(-1, 1) * 255).astype(np.float32),
        "texPC": truth["color_components"].astype(np.float32),
        "texEV": (COLOR_STD * 255).reshape(-1, 1),
        "tl": (triangles + 1).astype(np.float64),
        "segbin": np.zeros((len(truth["mean_mm"]), 4)),  # other keys are ignored
    })
    return str(path)


def write_bfm2009_v73(path, truth):
    """The same as MATLAB v7.3 writes it: HDF5 after a 512-byte header, every array transposed."""
    arrays = scipy.io.loadmat(write_bfm2009(str(path) + ".v5.mat", truth))
    with h5py.File(path, "w", userblock_size=512) as file:
        for key in bfm.BFM2009_KEYS:
            file.create_dataset(key, data=np.asarray(arrays[key]).T)
    with open(path, "r+b") as file:
        file.write(b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 HDF5 schema 1.00 .")
    return str(path)


def write_bfm2017(path, truth):
    """A BFM 2017 (statismo) .h5: millimetres, variances, colour 0..1, cells [3, T] 0-based."""
    with h5py.File(path, "w") as file:
        file["shape/model/mean"] = truth["mean_mm"].reshape(-1).astype(np.float32)
        file["shape/model/pcaBasis"] = truth["shape_components"].astype(np.float32)
        file["shape/model/pcaVariance"] = (SHAPE_STD_MM ** 2).astype(np.float32)
        file["color/model/mean"] = truth["color_mean"].reshape(-1).astype(np.float32)
        file["color/model/pcaBasis"] = truth["color_components"].astype(np.float32)
        file["color/model/pcaVariance"] = (COLOR_STD ** 2).astype(np.float32)
        file["shape/representer/cells"] = truth["triangles"].T.astype(np.int32)
        file["shape/representer/points"] = truth["mean_mm"].T.astype(np.float32)
        file["expression/model/mean"] = np.zeros(3 * len(truth["mean_mm"]), np.float32)  # ignored
    return str(path)


@pytest.fixture(scope="module")
def files(truth, tmp_path_factory):
    directory = tmp_path_factory.mktemp("bfm")
    return {
        "2009": write_bfm2009(directory / "01_MorphableModel.mat", truth),
        "2009 v7.3": write_bfm2009_v73(directory / "01_MorphableModel_v73.mat", truth),
        "2017": write_bfm2017(directory / "model2017-1_bfm_nomouth.h5", truth),
    }


def test_loaded_model_has_the_files_shapes_and_values(truth, files):
    mean = truth["mean_mm"]
    centre = (mean.min(0) + mean.max(0)) / 2
    radius = np.linalg.norm(mean - centre, axis=1).max()
    num_vertices = len(mean)
    for name, path in files.items():
        model = bfm.load_bfm(path)
        assert (model.num_vertices, model.num_shape_modes, model.num_albedo_modes) == (42, 3, 2), name
        # Centred on the bounding box, the farthest mean vertex 1 unit away; the frame a little larger.
        np.testing.assert_allclose(model.mean_shape, (mean - centre) / radius, atol=1e-5, err_msg=name)
        assert np.linalg.norm(model.mean_shape, axis=1).max() == pytest.approx(1.0, abs=1e-5)
        assert model.frame_radius == pytest.approx(bfm.FRAME_MARGIN)
        # Each basis vector is its component times its standard deviation, in the same units.
        expected_shape_basis = (truth["shape_components"] * SHAPE_STD_MM).T.reshape(3, num_vertices, 3) / radius
        np.testing.assert_allclose(model.shape_basis, expected_shape_basis, atol=1e-5, err_msg=name)
        # Gray albedo: luma of the RGB mean and of every RGB component, in 0..1.
        np.testing.assert_allclose(model.mean_albedo, truth["color_mean"] @ LUMA, atol=1e-5, err_msg=name)
        gray_components = np.einsum("vck,c->kv", truth["color_components"].reshape(num_vertices, 3, 2), LUMA)
        np.testing.assert_allclose(model.albedo_basis, gray_components * COLOR_STD[:, None], atol=1e-6, err_msg=name)
        np.testing.assert_array_equal(model.triangles, truth["triangles"])  # 0-based, winding kept
        # An instance is the mean plus the scaled components.
        vertices, albedo = model.instance([1.0, 0.0, 0.0], [0.0, 1.0])
        np.testing.assert_allclose(vertices, model.mean_shape + model.shape_basis[0], atol=1e-6)
        np.testing.assert_allclose(albedo, np.clip(model.mean_albedo + model.albedo_basis[1], 0, 1), atol=1e-6)
    assert bfm.read_bfm(files["2009 v7.3"]).format == "BFM 2009 (MATLAB v7.3)"
    assert bfm.load_bfm(files["2017"]) is bfm.load_bfm(files["2017"])  # cached


def test_inward_winding_is_flipped_and_the_model_renders_like_the_renderer_expects(truth, files, tmp_path):
    reversed_path = write_bfm2009(tmp_path / "reversed.mat", truth, triangles=truth["triangles"][:, ::-1])
    reversed_model = bfm.load_bfm(reversed_path)
    model = bfm.load_bfm(files["2009"])
    a, b, c = (reversed_model.mean_shape[reversed_model.triangles[:, k]] for k in range(3))
    normals = np.cross(b - a, c - a)
    assert np.all(np.einsum("ij,ij->i", normals, (a + b + c) / 3) > 0)  # every normal points outwards
    frontal = render(model.mean_shape, model.triangles, model.mean_albedo, image_size=32,
                     frame_radius=model.frame_radius)
    np.testing.assert_array_equal(frontal, render(reversed_model.mean_shape, reversed_model.triangles,
                                                  reversed_model.mean_albedo, image_size=32,
                                                  frame_radius=model.frame_radius))
    # The ellipsoid is taller (y) than wide (x): the silhouette is taller than wide, and lit on top (y up).
    rows, columns = np.nonzero(frontal)
    assert np.ptp(rows) > np.ptp(columns) and 0.3 < (frontal > 0).mean() < 0.9
    assert frontal[rows.min() + 2, 16] > frontal[rows.max() - 2, 16]


def test_make_faces_renders_a_dataset_from_the_bfm(files, tmp_path):
    config = faces.FacesConfig(image_size=32, group_size=3, groups_per_factor=2, test_groups_per_factor=1,
                                    num_shards=1, seed=3, face_model=f"bfm:{files['2017']}")
    data_dir = str(tmp_path / "faces")
    faces.generate(data_dir, config, processes=1, progress=False)
    info = DatasetInfo.load(data_dir)
    assert info.generator["face_model"] == f"bfm:{files['2017']}"
    input_pipeline.check_shards(data_dir, "train")
    batches = input_pipeline.make_dataset(data_dir, "train", 4, factors=["identity"], shuffle=False, repeat=False,
                                          deterministic=True)
    images = next(iter(batches))["images"].numpy()[:, :, :, :, 0]  # [groups, G, S, S]
    assert np.all((images > 0).mean(axis=(2, 3)) > 0.2)  # a head in every image
    assert np.abs(images[:, 0] - images[:, 1]).max() > 0.01  # identities differ
    # Two processes give the same bytes (forked workers reuse the cached model).
    parallel = str(tmp_path / "parallel")
    faces.generate(parallel, config, processes=2, progress=False)
    for path in info.shard_paths(data_dir, "train", "azimuth"):
        with open(path, "rb") as first, open(path.replace(data_dir, parallel), "rb") as second:
            assert first.read() == second.read()


def test_bad_files_give_one_line_errors(truth, files, tmp_path):
    text = tmp_path / "notes.mat"
    text.write_text("not a model")
    no_tl = tmp_path / "no_tl.mat"
    scipy.io.savemat(no_tl, {key: value for key, value in scipy.io.loadmat(files["2009"]).items()
                             if key in bfm.BFM2009_KEYS and key != "tl"})
    zero_based = write_bfm2009(tmp_path / "zero_based.mat", truth, triangles=truth["triangles"] - 1)
    other_h5 = tmp_path / "other.h5"
    with h5py.File(other_h5, "w") as file:
        file["weights"] = np.zeros(3)
    missing_color = tmp_path / "missing_color.h5"
    with h5py.File(write_bfm2017(missing_color, truth), "a") as file:
        del file["color/model/pcaVariance"]
    bad_shape = tmp_path / "bad_shape.h5"
    with h5py.File(write_bfm2017(bad_shape, truth), "a") as file:
        del file["shape/model/pcaBasis"]
        file["shape/model/pcaBasis"] = np.zeros((10, 3), np.float32)
    cases = {
        str(tmp_path / "absent.mat"): "no such file",
        str(text): "not a MATLAB .mat or HDF5 file",
        str(no_tl): "without ['tl']",
        zero_based: "expected 1..42 (1-based)",
        str(other_h5): "neither BFM 2017's shape/model/mean nor BFM 2009's shapeMU",
        str(missing_color): "no 'color/model/pcaVariance'",
        str(bad_shape): "shape/model/pcaBasis has shape (10, 3), expected [126, K]",
    }
    for path, message in cases.items():
        with pytest.raises(bfm.BfmError) as raised:
            faces.load_face_model(f"bfm:{path}")
        assert message in str(raised.value) and "\n" not in str(raised.value), str(raised.value)
    with pytest.raises(ValueError, match="'procedural', 'bfm:PATH'"):
        faces.load_face_model("basel")

    result = subprocess.run([sys.executable, "-m", "dcign_tf.data.make_faces", f"--data_dir={tmp_path}/out",
                             f"--face_model=bfm:{text}", "--image_size=32"], cwd=REPO, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("dcign_tf.data.make_faces: error:")
    assert "not a MATLAB .mat or HDF5 file" in result.stderr
