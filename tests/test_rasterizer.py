"""dcign_tf.data.sources.rasterizer, the numpy z-buffer rasterizer: conventions, coverage, depth, determinism."""
import numpy as np
import pytest

from dcign_tf.data.sources import face_model, rasterizer


def _sphere(radius=0.8, rows=40, columns=80):
    vertices, triangles = face_model.uv_sphere(rows, columns)
    return (radius * vertices).astype(np.float32), triangles


def _quad(half_size, z, clockwise=False):
    """A square facing +z (counter-clockwise seen from the camera unless ``clockwise``)."""
    h = half_size
    vertices = np.array([[-h, -h, z], [h, -h, z], [h, h, z], [-h, h, z]], np.float32)
    triangles = np.array([[0, 1, 2], [0, 2, 3]], np.int32)
    return vertices, (triangles[:, ::-1] if clockwise else triangles)


@pytest.mark.parametrize("size", [32, 64, 150, 256])
def test_sphere_covers_a_disc_of_the_expected_area(size):
    radius = 0.8
    vertices, triangles = _sphere(radius)
    image = rasterizer.render(vertices, triangles, np.ones(len(vertices)), image_size=size,
                            frame_radius=1.0)
    assert image.shape == (size, size) and image.dtype == np.float32
    assert image.min() >= 0.0 and image.max() <= 1.0
    expected_area = np.pi * (radius * size / 2) ** 2
    assert abs((image > 0).sum() / expected_area - 1) < 0.03
    # Everything clearly outside the disc is exactly background.
    centres = np.arange(size) + 0.5 - size / 2
    distance = np.hypot(*np.meshgrid(centres, centres))
    assert np.all(image[distance > radius * size / 2 + 1.0] == 0.0)
    assert np.all(image[distance < radius * size / 2 - 1.0] > 0.0)


def test_frame_radius_scales_the_projection():
    vertices, triangles = _sphere(0.5)
    small = rasterizer.render(vertices, triangles, np.ones(len(vertices)), image_size=64, frame_radius=2.0)
    large = rasterizer.render(vertices, triangles, np.ones(len(vertices)), image_size=64, frame_radius=1.0)
    assert abs((large > 0).sum() / (small > 0).sum() - 4.0) < 0.2


@pytest.mark.parametrize("light_azimuth, brighter", [(-1.2, "left"), (1.2, "right")])
def test_light_azimuth_lights_the_matching_side_of_a_sphere(light_azimuth, brighter):
    vertices, triangles = _sphere()
    image = rasterizer.render(vertices, triangles, np.ones(len(vertices)),
                            light_azimuth=light_azimuth, image_size=64)
    left, right = image[:, :32].sum(), image[:, 32:].sum()
    assert (left > 1.5 * right) if brighter == "left" else (right > 1.5 * left)


def test_light_from_the_camera_gives_lambert_plus_ambient():
    vertices, triangles = _quad(0.5, 0.0)
    image = rasterizer.render(vertices, triangles, np.full(4, 0.5), image_size=32, ambient=0.3)
    assert np.allclose(image[16, 16], 0.5)  # normal faces the light: albedo * 1
    image = rasterizer.render(vertices, triangles, np.full(4, 0.5), light_azimuth=np.pi / 2,
                            image_size=32, ambient=0.3)
    assert np.allclose(image[16, 16], 0.5 * 0.3)  # grazing light: ambient only


@pytest.mark.parametrize("near_first", [True, False])
def test_z_buffer_keeps_the_nearest_surface(near_first):
    near, near_triangles = _quad(0.3, 0.5)
    far, far_triangles = _quad(0.8, 0.0)
    near_albedo, far_albedo = np.full(4, 0.25), np.full(4, 0.75)
    parts = [(near, near_triangles, near_albedo), (far, far_triangles, far_albedo)]
    if not near_first:
        parts.reverse()
    vertices = np.concatenate([parts[0][0], parts[1][0]])
    triangles = np.concatenate([parts[0][1], parts[1][1] + 4])
    albedo = np.concatenate([parts[0][2], parts[1][2]])
    image = rasterizer.render(vertices, triangles, albedo, image_size=64)
    assert np.allclose(image[32, 32], 0.25)  # the near quad hides the far one
    assert np.allclose(image[32, 10], 0.75)  # only the far quad is there
    assert image[0, 0] == 0.0


def test_back_faces_are_culled_unless_asked_not_to():
    vertices, triangles = _quad(0.5, 0.0, clockwise=True)
    albedo = np.ones(4)
    assert rasterizer.render(vertices, triangles, albedo, image_size=32).max() == 0.0
    two_sided = rasterizer.render(vertices, triangles, albedo, image_size=32, cull_back_faces=False)
    assert (two_sided > 0).sum() == 16 * 16 and np.allclose(two_sided[16, 16], 1.0)


def _marked_face(marker):
    """The mean face with albedo 1 on the ``marker`` vertices and 0.1 elsewhere."""
    model = face_model.procedural_face_model()
    albedo = np.where(marker(model.mean_shape), 1.0, 0.1).astype(np.float32)
    return model, albedo


def _bright_centroid(image):
    rows, columns = np.nonzero(image > 0.6)
    assert len(rows) > 0
    return rows.mean(), columns.mean()


def _nose_tip(vertices):
    return vertices[:, 2] > vertices[:, 2].max() - 0.05


def test_positive_azimuth_turns_the_nose_to_image_right():
    model, albedo = _marked_face(_nose_tip)
    images = rasterizer.render_batch(model.mean_shape, model.triangles, albedo, [-0.6, 0.0, 0.6], 0.0,
                                   0.0, 64, frame_radius=model.frame_radius)
    columns = [_bright_centroid(image)[1] for image in images]
    assert columns[0] < 32 - 5 and abs(columns[1] - 32) < 2 and columns[2] > 32 + 5
    # The silhouette follows: in profile the nose sticks out on the side it turned to.
    for azimuth in (-1.2, 1.2):
        image = rasterizer.render(model.mean_shape, model.triangles, albedo, azimuth, 0.0, 0.0, 64,
                                frame_radius=model.frame_radius)
        row = int(round(_bright_centroid(image)[0]))
        columns = np.nonzero(image[row] > 0)[0]
        left_reach, right_reach = 32 - columns.min(), columns.max() + 1 - 32
        assert (right_reach > left_reach + 3) if azimuth > 0 else (left_reach > right_reach + 3)


def test_positive_elevation_tilts_the_nose_up():
    model, albedo = _marked_face(_nose_tip)
    images = rasterizer.render_batch(model.mean_shape, model.triangles, albedo, 0.0, [-0.4, 0.0, 0.4],
                                   0.0, 64, frame_radius=model.frame_radius)
    rows = [_bright_centroid(image)[0] for image in images]
    assert rows[2] < rows[1] - 4 and rows[0] > rows[1] + 4  # row 0 is the top


def test_light_from_the_left_brightens_the_left_of_the_face():
    model = face_model.procedural_face_model()
    images = rasterizer.render_batch(model.mean_shape, model.triangles, model.mean_albedo, 0.0, 0.0,
                                   [-1.0, 1.0], 64, frame_radius=model.frame_radius)
    for image, brighter_left in zip(images, (True, False)):
        left, right = image[:, :32].sum(), image[:, 32:].sum()
        assert (left > 1.3 * right) if brighter_left else (right > 1.3 * left)


def test_head_is_centred_and_fills_the_frame_at_every_pose():
    model = face_model.procedural_face_model()
    azimuth = np.linspace(-1.5, 1.5, 7)
    images = rasterizer.render_batch(model.mean_shape, model.triangles, model.mean_albedo, azimuth,
                                   0.0, 0.0, 64, frame_radius=model.frame_radius)
    for image in images:
        rows, columns = np.nonzero(image[:44] > 0)  # the head, above the neck
        assert abs(columns.mean() - 32) < 8
        assert columns.max() - columns.min() > 0.6 * 64
        # Nothing is cut off at the sides or the top.
        assert image[:, 0].max() == 0 and image[:, -1].max() == 0 and image[0].max() == 0


def test_rendering_is_deterministic():
    model = face_model.procedural_face_model()
    rng = np.random.default_rng(3)
    vertices, albedo = model.instances(*model.sample_identities(rng, 4))
    args = (vertices, model.triangles, albedo, rng.uniform(-1, 1, 4), rng.uniform(-0.3, 0.3, 4),
            rng.uniform(-1, 1, 4), 48)
    first = rasterizer.render_batch(*args, frame_radius=model.frame_radius)
    second = rasterizer.render_batch(*args, frame_radius=model.frame_radius)
    assert first.tobytes() == second.tobytes()


def test_batch_equals_single_images_and_broadcasts_shared_inputs():
    model = face_model.procedural_face_model()
    azimuth = np.array([-0.5, 0.2, 0.9])
    batch = rasterizer.render_batch(model.mean_shape, model.triangles, model.mean_albedo, azimuth,
                                  0.1, -0.3, 40, frame_radius=model.frame_radius)
    assert batch.shape == (3, 40, 40)
    for image, angle in zip(batch, azimuth):
        single = rasterizer.render(model.mean_shape, model.triangles, model.mean_albedo, angle, 0.1,
                                 -0.3, 40, frame_radius=model.frame_radius)
        np.testing.assert_allclose(single, image, atol=1e-6)


def test_mismatched_batch_sizes_are_rejected():
    vertices, triangles = _sphere()
    with pytest.raises(ValueError, match="batch size"):
        rasterizer.render_batch(np.stack([vertices] * 3), triangles, np.ones((2, len(vertices))),
                              0.0, 0.0, 0.0, 32)
    with pytest.raises(ValueError, match="do not exist"):
        rasterizer.render_batch(vertices, triangles + len(vertices), np.ones(len(vertices)),
                              0.0, 0.0, 0.0, 32)


def test_vertex_normals_point_outwards_on_a_sphere():
    vertices, triangles = _sphere(1.0, 20, 30)
    normals = rasterizer.vertex_normals(vertices, triangles)
    assert normals.shape == vertices.shape
    assert np.all(np.einsum("vk,vk->v", normals, vertices) > 0.98)
