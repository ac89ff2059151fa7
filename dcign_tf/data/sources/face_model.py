"""A linear morphable face model and a procedural stand-in for the Basel Face Model.

The DC-IGN paper rendered its faces from the Basel Face Model (BFM), which cannot be
downloaded here.  ``procedural_face_model`` builds a model with the same structure from
analytic shapes: a mean head mesh (skull, brow ridge, eye sockets with eyeballs, nose,
cheeks, lips, chin, ears and a neck stub) plus PCA-like shape and albedo bases made of
smooth, named deformations.  A real BFM can be loaded into the same ``MorphableModel``
class (see ``MorphableModel.from_flat_pca``) and rendered by the same renderer.

Units and axes: one model unit is about 11.5 cm (half the chin-to-crown height, so the head
is about 2 units tall); x runs left-to-right as the viewer sees the face (image right),
y up and z out of the face (the face looks along +z).  The rotation centre is the origin,
near the middle of the skull.
"""
from __future__ import annotations

import dataclasses
import functools

import numpy as np


# ----------------------------------------------------------------------------------------
# The container.
# ----------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, eq=False)
class MorphableModel:
    """A linear (PCA) model of face shape and grayscale albedo over one triangle mesh.

    An identity is a pair of coefficient vectors (shape [Ks], albedo [Ka]) drawn from
    N(0, I); because every basis vector is already scaled by its standard deviation, the
    instance is simply ``mean + coefficients @ basis``.

    Attributes:
      mean_shape: [V, 3] float32 mean vertex positions, model units.
      shape_basis: [Ks, V, 3] float32 vertex displacements, each scaled by its std dev.
      mean_albedo: [V] float32 mean grayscale reflectance in [0, 1].
      albedo_basis: [Ka, V] float32 albedo changes, each scaled by its std dev.
      triangles: [T, 3] int32 vertex indices (0-based), counter-clockwise seen from outside.
      frame_radius: model-space radius around the origin that should fill the image
        half-width (pass it to ``rasterizer.render_batch``).
      shape_mode_names, albedo_mode_names: optional human-readable names of the modes.
    """

    mean_shape: np.ndarray
    shape_basis: np.ndarray
    mean_albedo: np.ndarray
    albedo_basis: np.ndarray
    triangles: np.ndarray
    frame_radius: float
    shape_mode_names: tuple[str, ...] = ()
    albedo_mode_names: tuple[str, ...] = ()

    def __repr__(self):
        return (f"MorphableModel(vertices={self.num_vertices}, triangles={len(self.triangles)}, "
                f"shape_modes={self.num_shape_modes}, albedo_modes={self.num_albedo_modes}, "
                f"frame_radius={self.frame_radius:.3f})")

    def __post_init__(self):
        num_vertices = self.mean_shape.shape[0]
        if self.mean_shape.shape != (num_vertices, 3):
            raise ValueError(f"mean_shape must be [V, 3], got {self.mean_shape.shape}")
        if self.shape_basis.shape[1:] != (num_vertices, 3):
            raise ValueError(f"shape_basis must be [Ks, {num_vertices}, 3], got {self.shape_basis.shape}")
        if self.mean_albedo.shape != (num_vertices,):
            raise ValueError(f"mean_albedo must be [{num_vertices}], got {self.mean_albedo.shape}")
        if self.albedo_basis.shape[1:] != (num_vertices,):
            raise ValueError(f"albedo_basis must be [Ka, {num_vertices}], got {self.albedo_basis.shape}")
        if self.triangles.ndim != 2 or self.triangles.shape[1] != 3:
            raise ValueError(f"triangles must be [T, 3], got {self.triangles.shape}")
        if self.triangles.min() < 0 or self.triangles.max() >= num_vertices:
            raise ValueError("triangles index vertices that do not exist")
        # The model is shared (and cached), so its arrays are made read-only.
        for field in ("mean_shape", "shape_basis", "mean_albedo", "albedo_basis", "triangles"):
            dtype = np.int32 if field == "triangles" else np.float32
            array = np.array(getattr(self, field), dtype, copy=True, order="C")
            array.setflags(write=False)
            object.__setattr__(self, field, array)

    @classmethod
    def from_flat_pca(cls, shape_mean, shape_pcs, shape_std, albedo_mean, albedo_pcs, albedo_std,
                      triangles, *, frame_radius=None, one_based_triangles=False, scale=1.0,
                      shape_mode_names=(), albedo_mode_names=()) -> "MorphableModel":
        """Builds a model from arrays laid out like the Basel Face Model's.

        Args:
          shape_mean: [3V] interleaved x0, y0, z0, x1, ... (BFM ``shapeMU``).
          shape_pcs: [3V, Ks] orthonormal principal components (BFM ``shapePC``).
          shape_std: [Ks] standard deviations (BFM ``shapeEV``).  BFM 2009 stores standard
            deviations; if your file stores variances, pass their square root.
          albedo_mean, albedo_pcs, albedo_std: the same for grayscale albedo, [V], [V, Ka],
            [Ka], in [0, 1] (convert BFM's RGB 0-255 ``texMU``/``texPC`` to gray first).
          triangles: [T, 3] vertex indices (BFM ``tl``), counter-clockwise from outside.
          frame_radius: model-space radius filling half the image; by default 1.15 times
            the largest distance of a mean vertex from the origin, after scaling.
          one_based_triangles: subtract 1 from ``triangles`` (BFM 2009 ``tl`` is 1-based).
          scale: multiplies all positions (e.g. BFM micrometres -> your units); centre the
            mean shape on the rotation centre before calling.
        """
        shape_mean = np.asarray(shape_mean, np.float64).reshape(-1, 3) * scale
        num_vertices = len(shape_mean)
        shape_basis = (np.asarray(shape_pcs, np.float64) * np.asarray(shape_std, np.float64)).T
        shape_basis = shape_basis.reshape(-1, num_vertices, 3) * scale
        albedo_basis = (np.asarray(albedo_pcs, np.float64) * np.asarray(albedo_std, np.float64)).T
        triangles = np.asarray(triangles, np.int64) - (1 if one_based_triangles else 0)
        if frame_radius is None:
            frame_radius = 1.15 * float(np.linalg.norm(shape_mean, axis=1).max())
        return cls(shape_mean, shape_basis, np.asarray(albedo_mean).reshape(-1), albedo_basis,
                   triangles, float(frame_radius), tuple(shape_mode_names), tuple(albedo_mode_names))

    @property
    def num_vertices(self) -> int:
        return self.mean_shape.shape[0]

    @property
    def num_shape_modes(self) -> int:
        return self.shape_basis.shape[0]

    @property
    def num_albedo_modes(self) -> int:
        return self.albedo_basis.shape[0]

    def sample_identity(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Draws one identity: (shape coefficients [Ks], albedo coefficients [Ka]) ~ N(0, I)."""
        return (rng.standard_normal(self.num_shape_modes).astype(np.float32),
                rng.standard_normal(self.num_albedo_modes).astype(np.float32))

    def sample_identities(self, rng: np.random.Generator, num: int) -> tuple[np.ndarray, np.ndarray]:
        """Draws ``num`` identities: ([num, Ks], [num, Ka]) float32 ~ N(0, I)."""
        return (rng.standard_normal((num, self.num_shape_modes)).astype(np.float32),
                rng.standard_normal((num, self.num_albedo_modes)).astype(np.float32))

    def instance(self, shape_coeffs, albedo_coeffs) -> tuple[np.ndarray, np.ndarray]:
        """One face: vertices [V, 3] in model units and albedo [V] clipped to [0, 1]."""
        vertices, albedo = self.instances(np.asarray(shape_coeffs)[None], np.asarray(albedo_coeffs)[None])
        return vertices[0], albedo[0]

    def instances(self, shape_coeffs, albedo_coeffs) -> tuple[np.ndarray, np.ndarray]:
        """A batch of faces.

        Args:
          shape_coeffs: [N, Ks] float, in standard deviations.
          albedo_coeffs: [N, Ka] float, in standard deviations.

        Returns:
          vertices [N, V, 3] float32 in model units, albedo [N, V] float32 in [0, 1].
        """
        shape_coeffs = np.asarray(shape_coeffs, np.float32)
        albedo_coeffs = np.asarray(albedo_coeffs, np.float32)
        # einsum instead of `@`: a multi-threaded BLAS call here leaves its threads
        # spinning and slows the (single-threaded) renderer after it by 2-3x.
        vertices = np.einsum("nk,kvd->nvd", shape_coeffs, self.shape_basis) + self.mean_shape
        albedo = np.einsum("nk,kv->nv", albedo_coeffs, self.albedo_basis) + self.mean_albedo
        return vertices, np.clip(albedo, 0.0, 1.0, out=albedo)


# ----------------------------------------------------------------------------------------
# Mesh primitives.
# ----------------------------------------------------------------------------------------
def sphere_grid(polar_angles, azimuth_angles) -> tuple[np.ndarray, np.ndarray]:
    """A closed sphere mesh from a latitude/longitude grid, with one vertex at each pole.

    Args:
      polar_angles: [R] increasing angles in (0, pi) from the +y pole.
      azimuth_angles: [C] increasing angles covering [-pi, pi), 0 = +z, pi/2 = +x.

    Returns:
      unit vectors [2 + R * C, 3] float64 (top pole, the grid row by row, bottom pole) and
      triangles [2 * R * C, 3] int32, counter-clockwise seen from outside.
    """
    polar = np.asarray(polar_angles, np.float64)[:, None]
    azimuth = np.asarray(azimuth_angles, np.float64)[None, :]
    num_rows, num_columns = polar.shape[0], azimuth.shape[1]
    grid = np.stack(np.broadcast_arrays(np.sin(polar) * np.sin(azimuth), np.cos(polar),
                                        np.sin(polar) * np.cos(azimuth)), -1).reshape(-1, 3)
    directions = np.concatenate([[[0.0, 1.0, 0.0]], grid, [[0.0, -1.0, 0.0]]])
    bottom = len(directions) - 1

    def index(row, column):
        return 1 + row * num_columns + column % num_columns

    row, column = np.meshgrid(np.arange(num_rows - 1), np.arange(num_columns), indexing="ij")
    row, column = row.reshape(-1), column.reshape(-1)
    quads_a = np.stack([index(row, column), index(row + 1, column), index(row + 1, column + 1)], -1)
    quads_b = np.stack([index(row, column), index(row + 1, column + 1), index(row, column + 1)], -1)
    column = np.arange(num_columns)
    top_cap = np.stack([np.zeros_like(column), index(0, column), index(0, column + 1)], -1)
    bottom_cap = np.stack([np.full_like(column, bottom), index(num_rows - 1, column + 1),
                           index(num_rows - 1, column)], -1)
    triangles = np.concatenate([top_cap, quads_a, quads_b, bottom_cap]).astype(np.int32)
    return directions, triangles


def uv_sphere(num_rows: int, num_columns: int) -> tuple[np.ndarray, np.ndarray]:
    """A unit sphere with evenly spaced latitude rows and longitude columns.

    Returns:
      vertices [2 + R * C, 3] float64 on the unit sphere and triangles [2 R C, 3] int32,
      counter-clockwise seen from outside.
    """
    polar = np.pi * np.arange(1, num_rows + 1) / (num_rows + 1)
    azimuth = np.pi * (2.0 * np.arange(num_columns) / num_columns - 1.0)
    return sphere_grid(polar, azimuth)


def _smoothstep(edge0, edge1, x):
    """0 below edge0, 1 above edge1 (or the reverse if edge0 > edge1), smooth in between."""
    t = np.clip((np.asarray(x, np.float64) - edge0) / (edge1 - edge0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _smooth_abs(x, softness=0.03):
    """|x| rounded off near 0, so mirrored features meet without a crease at x = 0."""
    return np.sqrt(x * x + softness * softness)


def _gaussian(x, y, centre_x, centre_y, sigma_x, sigma_y):
    """An axis-aligned 2D Gaussian bump with peak 1."""
    return np.exp(-0.5 * (((x - centre_x) / sigma_x) ** 2 + ((y - centre_y) / sigma_y) ** 2))


# ----------------------------------------------------------------------------------------
# The procedural mean head.
# ----------------------------------------------------------------------------------------
# Where the face's landmarks sit (model units, see the module docstring).
_EYE_X, _EYE_Y = 0.29, 0.02
_EYEBALL_RADIUS = 0.105
_BROW_Y = 0.2
_NOSE_TIP_Y = -0.3
_MOUTH_Y = -0.52
_CHIN_Y = -0.8
_EAR_ANCHOR = np.array([0.7, -0.07, -0.1])
_NECK_CENTRE_Z, _NECK_RADIUS = -0.2, 0.42

# Component labels of the merged mesh.
_HEAD, _EYE, _EAR, _NECK = 0, 1, 2, 3


def _face_relief(x, y):
    """Heightfields (model units, along +z) of the facial features over the frontal plane.

    Returns a dict name -> [V] array; their sum is the face relief.  Keeping them apart
    lets the shape basis scale a single feature (e.g. only the nose).
    """
    ax = _smooth_abs(x)
    # Nose: a ridge from the nasion down to the tip that rises and widens, then drops
    # sharply under the tip; plus the tip ball and the two alae (nostril wings).
    along = np.clip((0.12 - y) / (0.12 - _NOSE_TIP_Y), 0.0, None)  # 0 at the nasion, 1 at tip
    ridge_height = 0.05 + 0.2 * np.clip(along, 0, 1) ** 1.4
    ridge_height = ridge_height * np.exp(-0.5 * (np.clip(y - _NOSE_TIP_Y - 0.005, None, 0) / 0.05) ** 2)
    ridge_height = ridge_height * _smoothstep(0.22, 0.1, y)
    ridge_width = 0.055 + 0.035 * np.clip(along, 0, 1)
    nose = ridge_height * np.exp(-0.5 * (x / ridge_width) ** 2)
    nose += 0.05 * _gaussian(x, y, 0.0, _NOSE_TIP_Y + 0.01, 0.055, 0.045)
    nose += 0.085 * _gaussian(ax, y, 0.08, _NOSE_TIP_Y - 0.035, 0.045, 0.035)
    # Eye sockets: almond-shaped hollows the eyeballs sit in.
    sockets = -0.12 * _gaussian(ax, y, _EYE_X, _EYE_Y, 0.12, 0.055)
    # Eyelids: ridges over the top and bottom of the eyeball that narrow the opening.
    sockets += 0.028 * _gaussian(ax, y, _EYE_X, _EYE_Y + 0.05, 0.085, 0.02)
    sockets += 0.02 * _gaussian(ax, y, _EYE_X, _EYE_Y - 0.055, 0.08, 0.018)
    # Brow ridge above the eyes, arched.
    brow_y = _BROW_Y - 0.05 * ((ax - 0.27) / 0.25) ** 2
    brow = 0.05 * np.exp(-0.5 * ((y - brow_y) / 0.06) ** 2) * _smoothstep(0.6, 0.3, ax)
    # Cheeks and cheekbones.
    cheeks = (0.06 * _gaussian(ax, y, 0.36, -0.24, 0.14, 0.13)
              + 0.03 * _gaussian(ax, y, 0.46, -0.06, 0.08, 0.06))
    # Lips: upper and lower lip bumps with the mouth line between them.
    upper_lip = 0.075 * _gaussian(x, y, 0.0, _MOUTH_Y + 0.05, 0.17, 0.04)
    lower_lip = 0.065 * _gaussian(x, y, 0.0, _MOUTH_Y - 0.045, 0.14, 0.035)
    mouth_line = -0.03 * _gaussian(x, y, 0.0, _MOUTH_Y, 0.17, 0.012)
    lips = upper_lip + lower_lip + mouth_line
    # Chin and the dip between lower lip and chin.
    chin = (0.06 * _gaussian(x, y, 0.0, _CHIN_Y, 0.13, 0.09)
            - 0.02 * _gaussian(x, y, 0.0, _MOUTH_Y - 0.14, 0.12, 0.04))
    return {"nose": nose, "sockets": sockets, "brow": brow, "cheeks": cheeks, "lips": lips,
            "chin": chin}


def _head_surface(directions):
    """Maps unit directions to the skull + face surface (before the facial relief).

    A superellipsoid (flatter at the front and sides than an ellipsoid) with a narrower,
    forward-reaching jaw.  Returns positions [V, 3].
    """
    dx, dy, dz = directions.T
    radius_x = 0.72
    radius_z = np.where(dz > 0, 0.84, 0.95)  # the back of the skull reaches further
    radius_y = np.where(dy > 0, 1.0, 0.98)
    exponent = 2.3  # > 2 squares the horizontal cross-section off
    horizontal = (np.abs(dx / radius_x) ** exponent + np.abs(dz / radius_z) ** exponent) ** (2 / exponent)
    scale = 1.0 / np.sqrt(horizontal + (dy / radius_y) ** 2)
    x, y, z = dx * scale, dy * scale, dz * scale
    # Lower face: narrower jaw, and a chin that reaches forward instead of curving away.
    lower = _smoothstep(-0.05, -0.9, y)
    x = x * (1.0 - 0.16 * lower)
    frontness = _smoothstep(0.0, 0.6, dz)
    z = z + 0.3 * lower * frontness * np.exp(-0.5 * (x / 0.45) ** 2)
    return np.stack([x, y, z], -1)


def _front_weight(base):
    """How much a point belongs to the face (1) rather than the side/back of the head (0)."""
    return _smoothstep(0.15, 0.55, base[:, 2] / np.linalg.norm(base, axis=1))


def _build_head(num_rows: int, num_columns: int):
    """The head as one closed mesh.  Returns (vertices, triangles, base positions)."""
    # Denser rows and columns where the face is: warp uniform parameters.
    t = np.arange(1, num_rows + 1) / (num_rows + 1)
    polar = np.pi * (t + 0.55 / (2 * np.pi) * np.sin(2 * np.pi * (t - 0.04)))
    u = 2.0 * np.arange(num_columns) / num_columns - 1.0
    azimuth = np.pi * (u - 0.6 / np.pi * np.sin(np.pi * u))
    directions, triangles = sphere_grid(polar, azimuth)
    base = _head_surface(directions)
    relief = sum(_face_relief(base[:, 0], base[:, 1]).values())
    vertices = base.copy()
    vertices[:, 2] += relief * _front_weight(base)
    return vertices, triangles, base


def _surface_z(head_vertices, x, y):
    """z of the face surface at (x, y): inverse-distance weighted over the nearest vertices."""
    front = head_vertices[:, 2] > 0
    distance = np.hypot(head_vertices[:, 0] - x, head_vertices[:, 1] - y)
    distance[~front] = np.inf
    nearest = np.argsort(distance)[:6]
    weights = 1.0 / (distance[nearest] + 1e-6)
    return float((head_vertices[nearest, 2] * weights).sum() / weights.sum())


def _build_eyes(head_vertices):
    """Two eyeballs sitting in the sockets.  Returns (vertices, triangles, centres [2, 3])."""
    # Rows crowd around the front pole so the iris and pupil get a round outline.
    polar = np.array([0.11, 0.22, 0.33, 0.44, 0.55, 0.7, 0.9, 1.15, 1.45, 1.85, 2.35, 2.8])
    unit, triangles = sphere_grid(polar, np.pi * (2.0 * np.arange(18) / 18 - 1.0))
    # Rotate by +90 degrees about x, (x, y, z) -> (x, -z, y): the +y pole looks along +z.
    unit = np.stack([unit[:, 0], -unit[:, 2], unit[:, 1]], -1)
    centres, parts = [], []
    for side in (-1.0, 1.0):
        surface = _surface_z(head_vertices, side * _EYE_X, _EYE_Y)
        centre = np.array([side * _EYE_X, _EYE_Y, surface - 0.6 * _EYEBALL_RADIUS])
        centres.append(centre)
        parts.append(centre + _EYEBALL_RADIUS * unit)
    vertices = np.concatenate(parts)
    return vertices, np.concatenate([triangles, triangles + len(unit)]), np.array(centres)


def _build_ears():
    """Two ears: thin cupped discs with a thick rim, flared away from the skull."""
    unit, triangles = uv_sphere(12, 20)
    # Local ear frame: a = out of the ear plane (outwards), b = up, c = forwards.
    a, b, c = unit[:, 0], unit[:, 1], unit[:, 2]
    height, width = 0.26, 0.15
    in_plane = np.hypot(b, c)  # 0 at the ear's centre, 1 on its rim
    # A narrower lobe at the bottom.
    c_pos = width * c * (1.0 - 0.3 * _smoothstep(0.0, -1.0, b))
    b_pos = height * b
    thickness = 0.012 + 0.045 * in_plane ** 4  # a thick rolled rim (helix), thin bowl
    a_pos = thickness * a + 0.01 + 0.08 * in_plane ** 2  # cupped: the rim stands out
    # Tilt the top back and let the back edge stand off the skull.
    tilt = np.deg2rad(12.0)
    b_rot = b_pos * np.cos(tilt) + c_pos * np.sin(tilt)
    c_rot = -b_pos * np.sin(tilt) + c_pos * np.cos(tilt)
    flare = np.deg2rad(15.0)
    a_rot = a_pos * np.cos(flare) - c_rot * np.sin(flare)
    c_rot = a_pos * np.sin(flare) + c_rot * np.cos(flare)
    right = np.stack([a_rot, b_rot, c_rot], -1) + _EAR_ANCHOR
    left = right * np.array([-1.0, 1.0, 1.0])
    # Mirroring flips the winding, so the left ear's triangles are reversed.
    vertices = np.concatenate([left, right])
    return vertices, np.concatenate([triangles[:, ::-1], triangles + len(unit)])


def _build_neck():
    """An open cylinder from inside the head down out of the frame."""
    num_rows, num_columns = 6, 24
    azimuth = 2 * np.pi * np.arange(num_columns) / num_columns
    y = np.linspace(-0.45, -1.7, num_rows)
    yy, aa = np.meshgrid(y, azimuth, indexing="ij")
    vertices = np.stack([_NECK_RADIUS * 0.95 * np.sin(aa), yy,
                         _NECK_CENTRE_Z + _NECK_RADIUS * np.cos(aa)], -1).reshape(-1, 3)
    row, column = np.meshgrid(np.arange(num_rows - 1), np.arange(num_columns), indexing="ij")
    row, column = row.reshape(-1), column.reshape(-1)

    def index(r, c):
        return r * num_columns + c % num_columns

    triangles = np.concatenate([
        np.stack([index(row, column), index(row + 1, column), index(row + 1, column + 1)], -1),
        np.stack([index(row, column), index(row + 1, column + 1), index(row, column + 1)], -1)])
    return vertices, triangles.astype(np.int32)


def _hairline_height(azimuth):
    """Height y of the hairline around the head; azimuth 0 = front, +-pi = back."""
    return np.interp(np.abs(azimuth), [0.0, 0.6, 1.0, 1.45, 1.9, 2.4, np.pi],
                     [0.56, 0.52, 0.4, 0.32, 0.15, -0.25, -0.45])


@dataclasses.dataclass
class _MeanHead:
    """The merged mean mesh and what the bases need to know about it."""
    vertices: np.ndarray      # [V, 3]
    triangles: np.ndarray     # [T, 3]
    component: np.ndarray     # [V] _HEAD / _EYE / _EAR / _NECK
    base: np.ndarray          # [V, 3] head vertices before the facial relief (others: themselves)
    eye_centres: np.ndarray   # [2, 3]
    eye_of_vertex: np.ndarray  # [V] 0 / 1 for eyeball vertices, -1 otherwise


def _build_mean_head(num_rows: int, num_columns: int) -> _MeanHead:
    head, head_triangles, head_base = _build_head(num_rows, num_columns)
    eyes, eye_triangles, eye_centres = _build_eyes(head)
    ears, ear_triangles = _build_ears()
    neck, neck_triangles = _build_neck()
    parts = [(head, head_triangles, _HEAD), (eyes, eye_triangles, _EYE),
             (ears, ear_triangles, _EAR), (neck, neck_triangles, _NECK)]
    vertices, triangles, component, offset = [], [], [], 0
    for part_vertices, part_triangles, label in parts:
        vertices.append(part_vertices)
        triangles.append(part_triangles + offset)
        component.append(np.full(len(part_vertices), label))
        offset += len(part_vertices)
    vertices = np.concatenate(vertices)
    component = np.concatenate(component)
    base = vertices.copy()
    base[: len(head)] = head_base
    eye_of_vertex = np.full(len(vertices), -1)
    eye_of_vertex[component == _EYE] = np.repeat([0, 1], len(eyes) // 2)
    return _MeanHead(vertices, np.concatenate(triangles), component, base, eye_centres, eye_of_vertex)


def _mean_albedo(mesh: _MeanHead) -> np.ndarray:
    """Grayscale reflectance per vertex: skin, hair, brows, lips, eyes."""
    x, y, z = mesh.vertices.T
    ax = _smooth_abs(x)
    skin = 0.62
    albedo = np.full(len(x), skin)
    front = _front_weight(mesh.base)
    # Hair covers the skull above the hairline.
    hair = _hair_mask(mesh)
    albedo = albedo * (1 - hair) + 0.16 * hair
    # Eyebrows: dark arcs along the brow ridge.
    brow_y = _BROW_Y + 0.015 - 0.05 * ((ax - 0.27) / 0.25) ** 2
    brows = (np.exp(-0.5 * ((y - brow_y) / 0.022) ** 2) * _smoothstep(0.07, 0.13, ax)
             * _smoothstep(0.5, 0.42, ax) * front)
    albedo -= 0.38 * brows
    # Lips and the dark mouth line; a shadowy socket around the eyes; dark nostrils.
    lips = _smoothstep(0.25, 0.6, _gaussian(x, y, 0.0, _MOUTH_Y, 0.15, 0.06)) * front
    albedo -= 0.16 * lips + 0.15 * _gaussian(x, y, 0.0, _MOUTH_Y, 0.15, 0.01) * front
    albedo -= 0.08 * _gaussian(ax, y, _EYE_X, _EYE_Y, 0.14, 0.09) * front
    albedo -= 0.3 * _gaussian(ax, y, _EYE_X, _EYE_Y + 0.035, 0.075, 0.012) * front  # lashes
    for side in (-1, 1):
        albedo -= 0.35 * _gaussian(x, y, side * 0.045, _NOSE_TIP_Y - 0.055, 0.02, 0.015) * front
    albedo[mesh.component == _NECK] = 0.56
    # Ears: a darker bowl (concha) inside a lighter rim, so they read at small sizes.
    is_ear = mesh.component == _EAR
    ear_local = np.abs(x[is_ear]) - _EAR_ANCHOR[0], y[is_ear] - _EAR_ANCHOR[1], z[is_ear] - _EAR_ANCHOR[2]
    ear_radius = np.hypot(ear_local[1] / 0.24, ear_local[2] / 0.14)
    albedo[is_ear] = 0.44 + 0.16 * _smoothstep(0.45, 0.8, ear_radius)
    # Eyes: white sclera, dark iris, black pupil, by angle from the eyeball's forward axis.
    is_eye = mesh.eye_of_vertex >= 0
    offset = mesh.vertices[is_eye] - mesh.eye_centres[mesh.eye_of_vertex[is_eye]]
    forward = offset[:, 2] / np.linalg.norm(offset, axis=1)
    angle = np.arccos(np.clip(forward, -1, 1))
    albedo[is_eye] = np.where(angle < 0.2, 0.05, np.where(angle < 0.5, 0.28, 0.8))
    return np.clip(albedo, 0.0, 1.0)


def _hair_mask(mesh: _MeanHead, shift: float = 0.0, softness: float = 0.08) -> np.ndarray:
    """1 where the skull has hair (hairline moved up by ``shift``), 0 elsewhere."""
    azimuth = np.arctan2(mesh.base[:, 0], mesh.base[:, 2])
    line = _hairline_height(azimuth) + shift
    return _smoothstep(line - softness, line + softness, mesh.base[:, 1]) * (mesh.component == _HEAD)


# ----------------------------------------------------------------------------------------
# Shape and albedo bases.
# ----------------------------------------------------------------------------------------
def _shape_modes(mesh: _MeanHead, rng: np.random.Generator, num_random: int):
    """Named displacement fields [V, 3], each one standard deviation of a face trait."""
    p = mesh.vertices
    x, y, z = p.T
    ax, sx = _smooth_abs(x), np.tanh(x / 0.05)  # smooth |x| and sign(x)
    front = _front_weight(mesh.base) * (mesh.component != _NECK)
    is_ear = (mesh.component == _EAR).astype(float)
    relief = _face_relief(mesh.base[:, 0], mesh.base[:, 1])
    zeros = np.zeros_like(x)

    def field(dx=zeros, dy=zeros, dz=zeros):
        return np.stack(np.broadcast_arrays(dx, dy, dz), -1).astype(np.float64)

    # Offset of ear vertices from their own ear's anchor (mirrored for the left ear).
    ear_offset = p - _EAR_ANCHOR * np.array([np.sign(x), np.ones_like(x), np.ones_like(x)]).T
    eye_region = _gaussian(ax, y, _EYE_X, _EYE_Y, 0.16, 0.12) * front
    modes = {
        "head width": field(dx=0.07 * x),
        "skull height": field(dy=0.07 * y * _smoothstep(-0.1, 0.8, y)),
        "skull depth": field(dz=0.08 * z * _smoothstep(0.2, -0.6, z)),
        "face length": field(dy=0.08 * np.minimum(y + 0.15, 0) * (mesh.component != _NECK)
                             - 0.08 * 0.8 * (mesh.component == _NECK)),
        "jaw width": field(dx=0.11 * x * np.exp(-0.5 * ((y + 0.62) / 0.22) ** 2)
                           * (mesh.component == _HEAD)),
        "chin": field(dy=-0.025 * _gaussian(x, y, 0, _CHIN_Y, 0.18, 0.12) * front,
                      dz=0.035 * _gaussian(x, y, 0, _CHIN_Y, 0.18, 0.12) * front),
        "nose length": field(dz=0.12 * relief["nose"] * front),
        "nose width": field(dx=0.35 * x * _gaussian(x, y, 0, _NOSE_TIP_Y + 0.05, 0.12, 0.12) * front),
        "nose hump": field(dz=0.035 * _gaussian(x, y, 0, -0.05, 0.05, 0.07) * front),
        "nose tip": field(dy=0.035 * _gaussian(x, y, 0, _NOSE_TIP_Y, 0.1, 0.05) * front),
        "eye spacing": field(dx=0.03 * sx * eye_region),
        "eye depth": field(dz=-0.035 * eye_region),
        "brow ridge": field(dz=0.7 * relief["brow"] * front),
        "cheekbones": field(dx=0.035 * sx * _gaussian(ax, y, 0.46, -0.06, 0.12, 0.1) * front,
                            dz=0.02 * _gaussian(ax, y, 0.46, -0.06, 0.12, 0.1) * front),
        "cheeks": field(dz=0.6 * relief["cheeks"] * front),
        "lips": field(dz=0.35 * np.maximum(relief["lips"], 0) * front),
        "mouth width": field(dx=0.25 * x * _gaussian(x, y, 0, _MOUTH_Y, 0.18, 0.07) * front),
        "ear size": field(*(0.15 * ear_offset * is_ear[:, None]).T),
        "ear angle": field(dx=-0.2 * sx * (z - _EAR_ANCHOR[2]) * is_ear),
        "forehead slope": field(dz=-0.06 * _smoothstep(0.2, 0.95, y) * front),
        "lower face depth": field(dz=0.04 * _smoothstep(-0.1, -0.8, y) * front),
    }
    # Extra anonymous modes: symmetric pairs of smooth random bumps on the face.
    for index in range(num_random):
        total = np.zeros_like(p)
        for _ in range(3):
            centre = np.array([rng.uniform(0, 0.45), rng.uniform(-0.8, 0.5)])
            sigma = rng.uniform(0.1, 0.25)
            amplitude = rng.uniform(0.015, 0.03) * rng.choice([-1, 1])
            bump = _gaussian(ax, y, centre[0], centre[1], sigma, sigma) * front
            total[:, 2] += amplitude * bump
            total[:, 0] += 2.0 * amplitude * x * bump * rng.uniform(-1, 1)
        modes[f"random {index}"] = total
    names = list(modes)
    basis = np.stack([modes[name] for name in names])  # [Ks, V, 3]
    # Eyeballs move rigidly with the socket around them instead of stretching.
    for eye in (0, 1):
        members = mesh.eye_of_vertex == eye
        centre = mesh.eye_centres[eye]
        nearest_face = np.argmin(np.where(mesh.component == _HEAD,
                                          np.linalg.norm(p - centre, axis=1), np.inf))
        basis[:, members] = basis[:, nearest_face][:, None]
    return names, basis


def _albedo_modes(mesh: _MeanHead, rng: np.random.Generator, num_random: int):
    """Named albedo change fields [V], each one standard deviation of a trait."""
    x, y, z = mesh.vertices.T
    ax = _smooth_abs(x)
    front = _front_weight(mesh.base)
    hair = _hair_mask(mesh)
    skin = (mesh.component != _EYE) * (1.0 - hair)
    brow_y = _BROW_Y + 0.015 - 0.05 * ((ax - 0.27) / 0.25) ** 2
    brows = (np.exp(-0.5 * ((y - brow_y) / 0.03) ** 2) * _smoothstep(0.07, 0.13, ax)
             * _smoothstep(0.52, 0.42, ax) * front)
    beard = (_smoothstep(-0.35, -0.6, y) * _smoothstep(0.75, 0.45, ax)
             * (mesh.component == _HEAD) * (1 - _gaussian(x, y, 0, _MOUTH_Y, 0.12, 0.05)))
    modes = {
        "skin tone": 0.07 * skin,
        "hair darkness": 0.07 * hair,
        # Brightens the front of the hair (receding) or darkens it into the skin (full).
        "hairline": 0.15 * (hair - _hair_mask(mesh, 0.25, softness=0.2)),
        "eyebrows": -0.1 * brows,
        "lips": -0.06 * _smoothstep(0.25, 0.6, _gaussian(x, y, 0, _MOUTH_Y, 0.15, 0.06)) * front,
        "beard shadow": -0.06 * beard,
        "cheek colour": -0.04 * _gaussian(ax, y, 0.35, -0.2, 0.1, 0.1) * front,
        "eye shadow": -0.05 * _gaussian(ax, y, _EYE_X, _EYE_Y, 0.12, 0.08) * front,
    }
    for index in range(num_random):
        total = np.zeros_like(x)
        for _ in range(4):
            centre = np.array([rng.uniform(-0.6, 0.6), rng.uniform(-0.9, 0.7)])
            sigma = rng.uniform(0.08, 0.3)
            total += rng.uniform(-0.02, 0.02) * _gaussian(x, y, *centre, sigma, sigma)
        modes[f"blotches {index}"] = total * skin * front
    names = list(modes)
    return names, np.stack([modes[name] for name in names])


@functools.lru_cache(maxsize=4)
def procedural_face_model(seed: int = 0, num_rows: int = 64, num_columns: int = 96,
                          num_random_shape_modes: int = 6,
                          num_random_albedo_modes: int = 4) -> MorphableModel:
    """The procedural morphable head model (a stand-in for the Basel Face Model).

    Deterministic for given arguments and cached, so calling it again is free.

    Args:
      seed: seeds the anonymous random shape and albedo modes.
      num_rows, num_columns: latitude/longitude resolution of the head surface (the mesh
        has ``num_rows * num_columns`` head vertices plus about 1,200 for eyes, ears, neck).
      num_random_shape_modes, num_random_albedo_modes: how many anonymous smooth modes
        to append to the named ones.

    Returns:
      A read-only ``MorphableModel``; vertices in model units (head about 2 units tall).
    """
    rng = np.random.default_rng(seed)
    mesh = _build_mean_head(num_rows, num_columns)
    shape_names, shape_basis = _shape_modes(mesh, rng, num_random_shape_modes)
    albedo_names, albedo_basis = _albedo_modes(mesh, rng, num_random_albedo_modes)
    head_extent = np.linalg.norm(mesh.vertices[mesh.component != _NECK], axis=1).max()
    return MorphableModel(
        mean_shape=mesh.vertices, shape_basis=shape_basis, mean_albedo=_mean_albedo(mesh),
        albedo_basis=albedo_basis, triangles=mesh.triangles, frame_radius=float(1.04 * head_extent),
        shape_mode_names=tuple(shape_names), albedo_mode_names=tuple(albedo_names))
