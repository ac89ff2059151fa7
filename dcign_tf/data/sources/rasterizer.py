"""A vectorised numpy z-buffer rasterizer for triangle meshes with per-vertex albedo.

This is the graphics engine of the embedded faces dataset.  It renders *any* triangle
mesh (the procedural face model, a Basel Face Model instance, a test sphere) with smooth
Lambertian + ambient shading under one directional light, orthographic projection and a
black background.  There are no per-pixel or per-triangle Python loops: a whole batch of
images is rasterized with a handful of numpy array operations.

Conventions (other code relies on them)
---------------------------------------
* Model space is right-handed: x points to image right, y up, z towards the camera; an
  unrotated face looks along +z.
* ``azimuth`` (radians) turns the head about the vertical axis; positive azimuth turns
  the nose towards image right.  ``elevation`` (radians) tilts it about the horizontal
  axis; positive elevation tilts the nose up.  The head is rotated by
  ``R = R_x(elevation) @ R_y(azimuth)``, i.e. a camera orbiting the head.
* ``light_azimuth`` (radians) is the horizontal direction the light comes *from* in the
  camera frame: 0 = from the camera, positive = from image right.  ``light_elevation``
  positive = from above.  The light does not turn with the head.
* Image row 0 is the top; the model-space point (x, y) lands at column
  ``(x / frame_radius + 1) * S / 2`` and row ``(1 - y / frame_radius) * S / 2``.
* Triangles are counter-clockwise when seen from outside the surface; back faces are
  culled by default.

How the rasterizer works, in one paragraph
------------------------------------------
Every (image, triangle) pair gets the box of pixel centres it can cover; back-facing and
empty boxes are dropped.  Small boxes (up to 4 x 4 pixels, nearly all triangles of a
dense mesh) are grouped by box shape so that each group tests its fixed grid of offsets
in one broadcast; larger boxes expand into exactly ``width * height`` candidates with
``np.repeat``.  A candidate is kept when its three barycentric weights are >= 0.  The
depth test is a single ``np.minimum.at`` scatter of keys that pack the depth above the
candidate index, so the minimum per pixel names the nearest surface.  Only those winners
are shaded (normals and albedo interpolated with the barycentric weights).
"""
from __future__ import annotations

import functools

import numpy as np
import scipy.sparse

# Default ambient term: the fraction of albedo seen by surfaces facing away from the light.
DEFAULT_AMBIENT = 0.2
# Pixel centres this far outside a triangle (in barycentric units) still count as inside,
# so that no pixel on an edge shared by two triangles is lost to float rounding.
_EDGE_TOLERANCE = -1e-5
# Boxes up to this many pixels wide and high are rasterized in shape buckets.
_SMALL_BOX = 4


def rotation_matrices(azimuth, elevation) -> np.ndarray:
    """Head rotation matrices ``R_x(elevation) @ R_y(azimuth)``.

    Args:
      azimuth: [N] or scalar, radians; positive turns the nose towards image right.
      elevation: [N] or scalar, radians; positive tilts the nose up.

    Returns:
      [N, 3, 3] float32; a model-space column vector p maps to camera space as ``R @ p``.
    """
    azimuth, elevation = np.broadcast_arrays(
        np.atleast_1d(np.asarray(azimuth, np.float64)),
        np.atleast_1d(np.asarray(elevation, np.float64)))
    ca, sa = np.cos(azimuth), np.sin(azimuth)
    ce, se = np.cos(elevation), np.sin(elevation)
    zeros, ones = np.zeros_like(ca), np.ones_like(ca)
    # R_y(a): x' = x cos a + z sin a, z' = -x sin a + z cos a (nose +z moves to +x).
    rot_y = np.stack([np.stack([ca, zeros, sa], -1),
                      np.stack([zeros, ones, zeros], -1),
                      np.stack([-sa, zeros, ca], -1)], -2)
    # R_x(e): y' = y cos e + z sin e, z' = -y sin e + z cos e (nose +z moves to +y).
    rot_x = np.stack([np.stack([ones, zeros, zeros], -1),
                      np.stack([zeros, ce, se], -1),
                      np.stack([zeros, -se, ce], -1)], -2)
    return (rot_x @ rot_y).astype(np.float32)


def light_directions(light_azimuth, light_elevation=0.0) -> np.ndarray:
    """Unit vectors pointing from the surface towards the light, in camera space.

    Args:
      light_azimuth: [N] or scalar radians; 0 = from the camera, positive = from image right.
      light_elevation: [N] or scalar radians; positive = from above.

    Returns:
      [N, 3] float32.
    """
    light_azimuth, light_elevation = np.broadcast_arrays(
        np.atleast_1d(np.asarray(light_azimuth, np.float64)),
        np.atleast_1d(np.asarray(light_elevation, np.float64)))
    ce = np.cos(light_elevation)
    return np.stack([np.sin(light_azimuth) * ce, np.sin(light_elevation),
                     np.cos(light_azimuth) * ce], -1).astype(np.float32)


@functools.lru_cache(maxsize=8)
def _vertex_face_incidence(triangles_bytes: bytes, num_vertices: int) -> scipy.sparse.csr_matrix:
    """Sparse [V, T] matrix with a 1 where vertex v is a corner of triangle t."""
    triangles = np.frombuffer(triangles_bytes, dtype=np.int32).reshape(-1, 3)
    rows = triangles.reshape(-1)
    cols = np.repeat(np.arange(len(triangles), dtype=np.int32), 3)
    data = np.ones(len(rows), np.float32)
    return scipy.sparse.csr_matrix((data, (rows, cols)), shape=(num_vertices, len(triangles)))


def _vertex_normal_components(x, y, z, triangles: np.ndarray):
    """Unit vertex normals of a batch given as [V, N] float32 coordinate arrays.

    Returns:
      (nx, ny, nz), each [V, N] float32.
    """
    corner = [[np.take(coord, triangles[:, k], axis=0) for k in range(3)] for coord in (x, y, z)]
    (x0, x1, x2), (y0, y1, y2), (z0, z1, z2) = corner  # [T, N] each
    ex1, ey1, ez1 = x1 - x0, y1 - y0, z1 - z0
    ex2, ey2, ez2 = x2 - x0, y2 - y0, z2 - z0
    # The cross product's length is twice the triangle area, which gives the area weighting.
    face_normal = (ey1 * ez2 - ez1 * ey2, ez1 * ex2 - ex1 * ez2, ex1 * ey2 - ey1 * ex2)
    incidence = _vertex_face_incidence(triangles.tobytes(), x.shape[0])
    # Summing face normals onto vertices is one sparse [V, T] @ [T, N] product per axis.
    nx, ny, nz = (np.asarray(incidence @ component, np.float32) for component in face_normal)
    inverse_length = 1.0 / np.maximum(np.sqrt(nx * nx + ny * ny + nz * nz), np.float32(1e-12))
    return nx * inverse_length, ny * inverse_length, nz * inverse_length


def vertex_normals(vertices: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """Smooth unit vertex normals: the area-weighted mean of the adjacent face normals.

    Args:
      vertices: [N, V, 3] or [V, 3] float (any units).
      triangles: [T, 3] int, counter-clockwise seen from outside.

    Returns:
      Same shape as ``vertices``, float32 unit vectors pointing outwards ((0, 0, 0) for
      vertices no triangle uses).
    """
    vertices = np.asarray(vertices, np.float32)
    batch = _as_batch(vertices, 2)
    components = _vertex_normal_components(
        *(np.ascontiguousarray(batch[..., k].T) for k in range(3)),
        np.ascontiguousarray(triangles, np.int32))
    normals = np.stack(components, -1).transpose(1, 0, 2)  # [N, V, 3]
    return normals[0] if vertices.ndim == 2 else normals


def _as_batch(values, per_image_ndim: int, dtype=np.float32) -> np.ndarray:
    """Adds a leading batch axis of size 1 to an unbatched array."""
    values = np.asarray(values, dtype)
    return values[None] if values.ndim == per_image_ndim else values


def render_batch(vertices, triangles, albedo, azimuth, elevation, light_azimuth, image_size,
                 *, frame_radius: float = 1.0, ambient: float = DEFAULT_AMBIENT,
                 light_elevation=0.0, cull_back_faces: bool = True) -> np.ndarray:
    """Renders a batch of grayscale images of triangle meshes.

    Args:
      vertices: [N, V, 3] or [V, 3] (shared by all images) float, model units.
      triangles: [T, 3] int vertex indices, counter-clockwise seen from outside.
      albedo: [N, V] or [V] float in [0, 1], per-vertex grayscale reflectance.
      azimuth: [N] or scalar, radians, head turn (positive: nose to image right).
      elevation: [N] or scalar, radians, head tilt (positive: nose up).
      light_azimuth: [N] or scalar, radians, where the light comes from (positive: from
        image right).
      image_size: S, the side of the square output in pixels (any size >= 1).
      frame_radius: the model-space distance from the rotation centre (the origin) that
        maps to half the image width.
      ambient: fraction of the albedo that is lit whatever the light direction; the
        remaining ``1 - ambient`` is Lambertian.
      light_elevation: [N] or scalar, radians (positive: light from above).
      cull_back_faces: drop triangles facing away from the camera.  Turn it off for meshes
        with inconsistent winding; normals then get flipped towards the camera.

    Returns:
      [N, S, S] float32 in [0, 1]; background pixels are exactly 0.
    """
    size = int(image_size)
    if size < 1:
        raise ValueError(f"image_size must be >= 1, got {image_size}")
    triangles = np.ascontiguousarray(triangles, np.int32)
    vertices = _as_batch(vertices, 2)
    albedo = _as_batch(albedo, 1)
    rotations = rotation_matrices(azimuth, elevation)  # [N, 3, 3]
    lights = light_directions(light_azimuth, light_elevation)  # [N, 3]
    batched = {"vertices": len(vertices), "albedo": len(albedo), "angles": len(rotations),
               "light angles": len(lights)}
    num_images = max(batched.values()) if 0 not in batched.values() else 0
    for name, length in batched.items():
        if length not in (1, num_images):
            raise ValueError(f"{name} has batch size {length}, expected 1 or {num_images}")
    if num_images == 0:
        return np.zeros((0, size, size), np.float32)
    if triangles.size and (triangles.min() < 0 or triangles.max() >= vertices.shape[1]):
        raise ValueError("triangles index vertices that do not exist")
    rotations = np.broadcast_to(rotations, (num_images, 3, 3))
    lights = np.broadcast_to(lights, (num_images, 3))

    # Vertex-major [V, N] coordinate arrays turn every per-triangle gather into a row copy.
    model_x, model_y, model_z = (np.ascontiguousarray(vertices[..., k].T) for k in range(3))
    normal_x, normal_y, normal_z = _vertex_normal_components(model_x, model_y, model_z, triangles)
    # Model -> screen: column = (R0 . p) * scale + S/2, row = S/2 - (R1 . p) * scale.
    scale = size / (2.0 * float(frame_radius))
    to_screen = rotations * np.array([scale, -scale, 1.0], np.float32)[:, None]  # [N, 3, 3]
    half = np.float32(size / 2.0)

    def project(axis):  # -> [V, N]
        row = to_screen[:, axis]  # [N, 3]
        return model_x * row[:, 0] + model_y * row[:, 1] + model_z * row[:, 2]

    pixel_index, triangle, image, bary1, bary2 = _rasterize(
        project(0) + half, project(1) + half, project(2), triangles, size, cull_back_faces)

    # Shade only the visible pixels.  Lighting is evaluated in model space (the light is
    # rotated into each image's model frame), so the normals never need rotating.
    bary0 = 1.0 - bary1 - bary2
    corner_vertex = triangles[triangle]  # [W, 3]

    def interpolate(per_vertex):  # [V, N] or [V, 1] -> [W]
        columns = per_vertex.shape[1]
        flat = per_vertex.reshape(-1)
        column = image if columns > 1 else 0
        return (flat[corner_vertex[:, 0] * columns + column] * bary0
                + flat[corner_vertex[:, 1] * columns + column] * bary1
                + flat[corner_vertex[:, 2] * columns + column] * bary2)

    normal = np.stack([interpolate(normal_x), interpolate(normal_y), interpolate(normal_z)], -1)
    normal /= np.maximum(np.linalg.norm(normal, axis=-1, keepdims=True), np.float32(1e-12))
    model_lights = np.einsum("nji,nj->ni", rotations, lights)  # R^T l, [N, 3]
    lambert = np.einsum("wk,wk->w", normal, model_lights[image])
    if not cull_back_faces:
        # Two-sided lighting: a surface seen from behind is lit like its front.
        facing_camera = np.einsum("wk,wk->w", normal, rotations[image, 2]) >= 0
        lambert = np.where(facing_camera, lambert, -lambert)
    surface_albedo = interpolate(np.ascontiguousarray(albedo.T))
    ambient = np.float32(ambient)
    shade = surface_albedo * (ambient + (1 - ambient) * np.maximum(lambert, 0))

    images = np.zeros(num_images * size * size, np.float32)
    images[pixel_index] = np.clip(shade, 0.0, 1.0)
    return images.reshape(num_images, size, size)


def render(vertices, triangles, albedo, azimuth=0.0, elevation=0.0, light_azimuth=0.0,
           image_size=64, **kwargs) -> np.ndarray:
    """Renders one image; see ``render_batch`` for the arguments.

    Args:
      vertices: [V, 3] float, model units.  albedo: [V] in [0, 1].  Angles: scalar radians.

    Returns:
      [S, S] float32 in [0, 1].
    """
    return render_batch(vertices, triangles, albedo, azimuth, elevation, light_azimuth,
                        image_size, **kwargs)[0]


def _rasterize(screen_x: np.ndarray, screen_y: np.ndarray, depth: np.ndarray,
               triangles: np.ndarray, size: int, cull_back_faces: bool):
    """Z-buffer rasterization of a batch of projected meshes.

    Args:
      screen_x, screen_y: [V, N] float32 pixel coordinates (column right, row down; pixel
        (i, j) has its centre at (i + 0.5, j + 0.5)).
      depth: [V, N] float32, larger is nearer.
      triangles: [T, 3] int32.
      size: S, the image side in pixels.
      cull_back_faces: drop triangles whose projection is clockwise on screen.

    Returns:
      For each of the W covered pixels: its flat index into [N * S * S], the index of the
      visible triangle into ``triangles``, the image index, and the barycentric weights
      of corners 1 and 2 at the pixel centre ([W] float32 each).
    """
    num_images = screen_x.shape[1]
    x0, x1, x2 = (np.take(screen_x, triangles[:, k], axis=0) for k in range(3))  # [T, N]
    y0, y1, y2 = (np.take(screen_y, triangles[:, k], axis=0) for k in range(3))
    # Twice the signed area; with rows pointing down a counter-clockwise (front) face is < 0.
    double_area = (x1 - x0) * (y2 - y0) - (x2 - x0) * (y1 - y0)
    # Integer box of the pixel centres (i + 0.5) a triangle can contain.
    col_min = np.ceil(np.minimum(np.minimum(x0, x1), x2) - np.float32(0.5))
    col_max = np.floor(np.maximum(np.maximum(x0, x1), x2) - np.float32(0.5))
    row_min = np.ceil(np.minimum(np.minimum(y0, y1), y2) - np.float32(0.5))
    row_max = np.floor(np.maximum(np.maximum(y0, y1), y2) - np.float32(0.5))
    np.maximum(col_min, 0, out=col_min)
    np.minimum(col_max, size - 1, out=col_max)
    np.maximum(row_min, 0, out=row_min)
    np.minimum(row_max, size - 1, out=row_max)
    keep = (col_max >= col_min) & (row_max >= row_min)
    keep &= (double_area < -1e-12) if cull_back_faces else (np.abs(double_area) > 1e-12)
    kept = np.flatnonzero(keep)  # flat index: triangle * N + image

    def take(per_triangle):
        return np.take(per_triangle.reshape(-1), kept)

    x0, y0 = take(x0), take(y0)
    inverse_area = 1.0 / take(double_area)
    col_min, row_min = take(col_min), take(row_min)
    width = (take(col_max) - col_min).astype(np.int32) + 1
    height = (take(row_max) - row_min).astype(np.int32) + 1
    # The barycentric weight of corner k is affine in the pixel centre:
    # b_k = d_k + a_k * dx + c_k * dy, with (dx, dy) the integer offset inside the box.
    # Measuring from corner 0 keeps the numbers small (no float32 cancellation).
    a1 = (take(y2) - y0) * inverse_area
    c1 = (x0 - take(x2)) * inverse_area
    a2 = (y0 - take(y1)) * inverse_area
    c2 = (take(x1) - x0) * inverse_area
    origin_x = col_min + np.float32(0.5) - x0
    origin_y = row_min + np.float32(0.5) - y0
    d1 = a1 * origin_x + c1 * origin_y
    d2 = a2 * origin_x + c2 * origin_y
    box_origin = ((kept % num_images) * (size * size) + row_min.astype(np.int64) * size
                  + col_min.astype(np.int64))
    # Depth at corner 0 and its change towards corners 1 and 2, per kept triangle.
    z0, z1, z2 = (take(np.take(depth, triangles[:, k], axis=0)) for k in range(3))
    z1 -= z0
    z2 -= z0

    # Bucket the triangles by box shape: every box of one small shape tests the same fixed
    # grid of offsets with one broadcast, and only large boxes pay for the general path.
    bucket = np.where((width <= _SMALL_BOX) & (height <= _SMALL_BOX),
                      (height - 1) * _SMALL_BOX + width - 1, _SMALL_BOX ** 2).astype(np.int16)
    by_bucket = np.argsort(bucket, kind="stable")  # a linear-time radix sort on int16
    bucket_end = np.cumsum(np.bincount(bucket, minlength=_SMALL_BOX ** 2 + 1))
    hit_triangle, hit_offset, hit_bary1, hit_bary2 = [], [], [], []
    for code in range(_SMALL_BOX ** 2 + 1):
        members = by_bucket[bucket_end[code - 1] if code else 0:bucket_end[code]]
        if not len(members):
            continue
        if code < _SMALL_BOX ** 2:
            box_width, box_height = code % _SMALL_BOX + 1, code // _SMALL_BOX + 1
            offset_y, offset_x = np.divmod(np.arange(box_width * box_height), box_width)
            fx, fy = offset_x.astype(np.float32), offset_y.astype(np.float32)
            # [K_b, box_width * box_height] barycentrics at every offset of every box.
            b1, b2 = d1[members, None], d2[members, None]
            if box_width * box_height > 1:  # (1 x 1 boxes, the most common, need no offsets)
                b1 = b1 + a1[members, None] * fx + c1[members, None] * fy
                b2 = b2 + a2[members, None] * fx + c2[members, None] * fy
            member_row, offset_column = np.nonzero((b1 >= _EDGE_TOLERANCE) & (b2 >= _EDGE_TOLERANCE)
                                                   & (b1 + b2 <= 1 - _EDGE_TOLERANCE))
            hit_triangle.append(members[member_row])
            hit_offset.append(offset_y[offset_column] * size + offset_x[offset_column])
            hit_bary1.append(b1[member_row, offset_column])
            hit_bary2.append(b2[member_row, offset_column])
        else:
            # Large boxes: expand each into exactly width * height candidate pixels.
            counts = width[members] * height[members]
            candidate = np.repeat(members, counts)
            first = np.cumsum(counts) - counts
            local = np.arange(int(counts.sum())) - np.repeat(first, counts)
            offset_y, offset_x = np.divmod(local, width[candidate])
            fx, fy = offset_x.astype(np.float32), offset_y.astype(np.float32)
            b1 = d1[candidate] + a1[candidate] * fx + c1[candidate] * fy
            b2 = d2[candidate] + a2[candidate] * fx + c2[candidate] * fy
            inside = np.flatnonzero((b1 >= _EDGE_TOLERANCE) & (b2 >= _EDGE_TOLERANCE)
                                    & (b1 + b2 <= 1 - _EDGE_TOLERANCE))
            hit_triangle.append(candidate[inside])
            hit_offset.append(offset_y[inside] * size + offset_x[inside])
            hit_bary1.append(b1[inside])
            hit_bary2.append(b2[inside])
    if not hit_triangle:
        empty = np.zeros(0, np.int64)
        return empty, empty, empty, np.zeros(0, np.float32), np.zeros(0, np.float32)
    hit = np.concatenate(hit_triangle)  # index into the kept triangles
    bary1 = np.concatenate(hit_bary1)
    bary2 = np.concatenate(hit_bary2)
    pixel_index = box_origin[hit] + np.concatenate(hit_offset)

    # Depth test in one scatter-min: each candidate's key packs its depth (float32 bits of
    # a non-negative distance, which order like the floats) above its own index, so the
    # minimum per pixel is the nearest candidate, with exact ties going to the lowest index.
    distance = np.float32(depth.max()) - (z0[hit] + bary1 * z1[hit] + bary2 * z2[hit])
    np.maximum(distance, 0, out=distance)
    packed = (distance.view(np.int32).astype(np.int64) << 32) | np.arange(len(distance))
    no_candidate = np.iinfo(np.int64).max
    nearest = np.full(num_images * size * size, no_candidate, np.int64)
    np.minimum.at(nearest, pixel_index, packed)
    covered = np.flatnonzero(nearest != no_candidate)
    winner = nearest[covered] & 0xFFFFFFFF
    triangle, image = np.divmod(kept[hit[winner]], num_images)
    return covered, triangle, image, bary1[winner], bary2[winner]
