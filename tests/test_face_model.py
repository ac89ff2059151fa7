"""Tests of the procedural morphable face model and its contact sheet."""
import numpy as np
import pytest
from PIL import Image
from scipy.spatial import cKDTree

from tools import contact_sheet
from dcign_tf.data.sources import face_model, rasterizer


@pytest.fixture(scope="module")
def model():
    return face_model.procedural_face_model()


def test_mesh_is_large_and_valid(model):
    assert model.num_vertices >= 5000
    assert model.mean_shape.shape == (model.num_vertices, 3) and model.mean_shape.dtype == np.float32
    assert model.triangles.dtype == np.int32
    assert model.triangles.min() >= 0 and model.triangles.max() < model.num_vertices
    # No degenerate triangles (repeated corners).
    t = model.triangles
    assert np.all((t[:, 0] != t[:, 1]) & (t[:, 1] != t[:, 2]) & (t[:, 0] != t[:, 2]))
    assert np.all(np.isfinite(model.mean_shape))
    assert 0.0 <= model.mean_albedo.min() and model.mean_albedo.max() <= 1.0


def test_triangles_wind_counter_clockwise_seen_from_outside(model):
    normals = rasterizer.vertex_normals(model.mean_shape, model.triangles)
    crown = np.argmax(model.mean_shape[:, 1])
    nose_tip = np.argmax(model.mean_shape[:, 2])
    assert normals[crown, 1] > 0.9  # the top of the head faces up
    assert normals[nose_tip, 2] > 0.5  # the nose tip faces forwards


def test_mean_face_is_left_right_symmetric(model):
    mirrored = model.mean_shape * np.array([-1.0, 1.0, 1.0], np.float32)
    distance, match = cKDTree(model.mean_shape).query(mirrored)
    assert distance.max() < 1e-4
    np.testing.assert_allclose(model.mean_albedo[match], model.mean_albedo, atol=1e-4)


def test_model_is_deterministic_and_seeded():
    build = face_model.procedural_face_model.__wrapped__  # bypass the cache
    first, second, other = build(seed=0), build(seed=0), build(seed=1)
    for field in ("mean_shape", "shape_basis", "mean_albedo", "albedo_basis", "triangles"):
        assert getattr(first, field).tobytes() == getattr(second, field).tobytes()
    assert not np.array_equal(first.shape_basis, other.shape_basis)
    assert face_model.procedural_face_model(0) is face_model.procedural_face_model(0)  # cached


def test_model_arrays_are_read_only(model):
    with pytest.raises(ValueError):
        model.mean_shape[0, 0] = 1.0


def test_instances_shapes_and_ranges(model):
    rng = np.random.default_rng(0)
    shape, albedo = model.sample_identities(rng, 5)
    assert shape.shape == (5, model.num_shape_modes) and albedo.shape == (5, model.num_albedo_modes)
    vertices, albedo_values = model.instances(shape, albedo)
    assert vertices.shape == (5, model.num_vertices, 3) and vertices.dtype == np.float32
    assert albedo_values.shape == (5, model.num_vertices)
    assert albedo_values.min() >= 0.0 and albedo_values.max() <= 1.0
    one_vertices, one_albedo = model.instance(shape[2], albedo[2])
    np.testing.assert_allclose(one_vertices, vertices[2], atol=1e-5)
    np.testing.assert_allclose(one_albedo, albedo_values[2], atol=1e-6)
    zero_vertices, _ = model.instance(np.zeros(model.num_shape_modes),
                                      np.zeros(model.num_albedo_modes))
    np.testing.assert_allclose(zero_vertices, model.mean_shape, atol=1e-6)
    single_shape, single_albedo = model.sample_identity(rng)
    assert single_shape.shape == (model.num_shape_modes,)
    assert single_albedo.shape == (model.num_albedo_modes,)


def test_modes_are_named_and_smooth(model):
    assert len(model.shape_mode_names) == model.num_shape_modes >= 10
    assert len(model.albedo_mode_names) == model.num_albedo_modes >= 5
    # One standard deviation moves vertices by a visible but moderate amount.
    largest = np.linalg.norm(model.shape_basis, axis=2).max(axis=1)
    assert np.all(largest > 0.005) and np.all(largest < 0.15)


def _face_normals(vertices, triangles):
    corner = vertices[..., triangles, :]  # [..., T, 3, 3]
    return np.cross(corner[..., 1, :] - corner[..., 0, :], corner[..., 2, :] - corner[..., 0, :])


def test_extreme_identities_stay_plausible(model):
    # Every mode at +-3 standard deviations, one at a time: no folded-over triangles and the
    # head stays (nearly) inside the frame.
    mean_normals = _face_normals(model.mean_shape, model.triangles)
    for sign in (-3.0, 3.0):
        vertices, _ = model.instances(sign * np.eye(model.num_shape_modes),
                                      np.zeros((model.num_shape_modes, model.num_albedo_modes)))
        flipped = np.einsum("ntk,tk->nt", _face_normals(vertices, model.triangles), mean_normals) <= 0
        assert flipped.mean(axis=1).max() < 0.002, [model.shape_mode_names[k] for k in
                                                     np.nonzero(flipped.mean(axis=1) >= 0.002)[0]]
        above_neck = vertices[:, :, 1] > -0.9
        extent = np.linalg.norm(vertices, axis=2)[above_neck.nonzero()].max()
        assert extent < model.frame_radius * 1.05


def test_different_identities_render_substantially_differently(model):
    rng = np.random.default_rng(7)
    vertices, albedo = model.instances(*model.sample_identities(rng, 4))
    images = rasterizer.render_batch(vertices, model.triangles, albedo, 0.2, 0.0, -0.5, 64,
                                   frame_radius=model.frame_radius)
    same = rasterizer.render_batch(vertices[:1], model.triangles, albedo[:1], 0.2, 0.0, -0.5, 64,
                                 frame_radius=model.frame_radius)
    assert np.array_equal(same[0], images[0])
    for i in range(4):
        for j in range(i + 1, 4):
            assert np.abs(images[i] - images[j]).mean() > 0.015


def test_from_flat_pca_matches_the_container_layout(model):
    num_vertices = model.num_vertices
    shape_std = np.linalg.norm(model.shape_basis.reshape(model.num_shape_modes, -1), axis=1)
    shape_pcs = (model.shape_basis.reshape(model.num_shape_modes, -1) / shape_std[:, None]).T
    albedo_std = np.linalg.norm(model.albedo_basis, axis=1)
    albedo_pcs = (model.albedo_basis / albedo_std[:, None]).T
    rebuilt = face_model.MorphableModel.from_flat_pca(
        model.mean_shape.reshape(-1), shape_pcs, shape_std, model.mean_albedo, albedo_pcs,
        albedo_std, model.triangles + 1, one_based_triangles=True, frame_radius=model.frame_radius)
    assert rebuilt.num_vertices == num_vertices
    np.testing.assert_allclose(rebuilt.shape_basis, model.shape_basis, atol=1e-6)
    np.testing.assert_array_equal(rebuilt.triangles, model.triangles)


def test_contact_sheet_cli_writes_a_png(tmp_path):
    out = tmp_path / "sheet.png"
    assert contact_sheet.main([contact_sheet.PROGRAM, f"--out={out}", "--image_size=32", "--seed=1"]) == 0
    picture = np.asarray(Image.open(out))
    rows = contact_sheet.IDENTITY_ROWS + 4
    assert picture.shape == (rows * (32 + contact_sheet.LABEL_HEIGHT), 9 * 32)
    assert picture.max() > 100


def test_contact_sheet_cli_rejects_bad_input_in_one_line(tmp_path, capsys):
    assert contact_sheet.main([contact_sheet.PROGRAM, f"--out={tmp_path / 'x.png'}", "--image_size=8"]) == 2
    error = capsys.readouterr().err.strip()
    assert "image_size" in error and "\n" not in error
    assert contact_sheet.main([contact_sheet.PROGRAM, f"--out={tmp_path / 'missing' / 'dir' / 'x.jpg'}"]) == 2
