"""The Basel Face Model (2009 .mat or 2017 .h5) as a `MorphableModel` for the faces generator.

    python -m dcign_tf.data.make_faces --face_model=bfm:/path/to/01_MorphableModel.mat --data_dir=...
    python -m dcign_tf.train --dataset=faces --face_model=bfm:/path/to/model2017-1_bfm_nomouth.h5 ...

File structures read (V vertices, T triangles, K principal components):

  BFM 2009 (`01_MorphableModel.mat`; MATLAB v5, read with scipy.io.loadmat, or v7.3, an HDF5 file whose
  arrays h5py sees transposed):
    shapeMU [3V, 1]  mean vertex positions x0, y0, z0, x1, ... in micrometres
    shapePC [3V, K]  orthonormal principal components;  shapeEV [K, 1] their standard deviations
                     (an instance is shapeMU + shapePC * (alpha .* shapeEV), alpha ~ N(0, I))
    texMU, texPC, texEV  the same for per-vertex colour r0, g0, b0, r1, ... in 0..255
    tl [T, 3]        triangles, 1-based vertex indices
  BFM 2017 (`model2017-1_*.h5`, statismo layout):
    shape/model/mean [3V], shape/model/pcaBasis [3V, K], shape/model/pcaVariance [K] (variances), in mm
    color/model/{mean, pcaBasis, pcaVariance}   colour in 0..1
    shape/representer/cells [3, T]   triangles, 0-based
    (the expression model is not used: faces keep the neutral expression)

Conversion (see `to_morphable_model`):
  * Basis vectors are scaled by their standard deviation: 2009's EV as stored, 2017's sqrt(variance), so
    identities are N(0, I) coefficients like the procedural model's.
  * Positions are centred on the mean shape's bounding-box centre (the renderer's rotation centre) and scaled
    so that the mean vertex farthest from it is 1 model unit away; `frame_radius` is FRAME_MARGIN (1.05), so
    the head fills the frame at every pose (units do not matter to the renderer, only ratios).
  * Albedo: RGB -> gray with the ITU-R 601 luma weights (0.299, 0.587, 0.114), applied to the mean and to
    every colour component alike (gray is linear in RGB), divided by 255 when the mean colour exceeds 1.5
    (2009's 0..255; 2017's 0..1 is kept).
  * Axes: BFM's are the renderer's (x to image right for a frontal face, y up, z out of the face towards the
    camera). Triangles are made counter-clockwise seen from outside: if the file's winding makes the mean
    mesh's signed volume about the centre negative, every triangle is flipped.

Loaded models are cached per (path, size, modification time): the generator's forked workers reuse the
parent's copy. Every problem with the file raises BfmError, one line naming the file and what was expected.
"""

from __future__ import annotations

import dataclasses
import functools
import os

import numpy as np

from dcign_tf.data.sources.face_model import MorphableModel
from dcign_tf.data.records import DatasetError

LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114])  # ITU-R 601, the same as PIL's RGB -> "L".
FRAME_MARGIN = 1.05  # frame_radius in units of the mean head's largest distance from the rotation centre.
BFM2009_KEYS = ("shapeMU", "shapePC", "shapeEV", "texMU", "texPC", "texEV", "tl")
BFM2017_KEYS = ("shape/model/mean", "shape/model/pcaBasis", "shape/model/pcaVariance", "color/model/mean",
                "color/model/pcaBasis", "color/model/pcaVariance", "shape/representer/cells")
EXPECTED = ("the Basel Face Model: BFM 2009's 01_MorphableModel.mat (shapeMU, shapePC, shapeEV, texMU, texPC, "
            "texEV, tl) or a BFM 2017 .h5 (shape/model/{mean,pcaBasis,pcaVariance}, color/model/..., "
            "shape/representer/cells)")


class BfmError(DatasetError):
    """A file that is not a usable Basel Face Model; the message is one line naming the file and the problem."""


@dataclasses.dataclass(frozen=True)
class BfmArrays:
    """A BFM file's arrays, flattened and 0-based, before conversion.

    shape_mean [3V] (x0, y0, z0, x1, ...), shape_components [3V, K], shape_std [K] standard deviations;
    color_mean [3V] (r0, g0, b0, ...), color_components [3V, Kc], color_std [Kc]; triangles [T, 3] int64
    0-based; format: "BFM 2009 (MATLAB v5)", "BFM 2009 (MATLAB v7.3)" or "BFM 2017".
    """

    format: str
    shape_mean: np.ndarray
    shape_components: np.ndarray
    shape_std: np.ndarray
    color_mean: np.ndarray
    color_components: np.ndarray
    color_std: np.ndarray
    triangles: np.ndarray

    @property
    def num_vertices(self) -> int:
        return self.shape_mean.size // 3


def load_bfm(path: str) -> MorphableModel:
    """The `MorphableModel` of the BFM file at `path` (2009 .mat v5 or v7.3, or 2017 .h5); cached."""
    try:
        status = os.stat(path)
    except OSError:
        raise BfmError(f"{path}: no such file; --face_model=bfm:PATH needs {EXPECTED}") from None
    return _load_cached(os.path.realpath(path), status.st_size, status.st_mtime_ns)


@functools.lru_cache(maxsize=2)
def _load_cached(path: str, size: int, mtime_ns: int) -> MorphableModel:
    del size, mtime_ns  # Only part of the cache key: a changed file is read again.
    return to_morphable_model(read_bfm(path), path)


def read_bfm(path: str) -> BfmArrays:
    """Reads and checks the arrays of a BFM 2009 (.mat, v5 or v7.3) or BFM 2017 (.h5) file."""
    import h5py  # Lazy: only BFM needs it.

    if not os.path.isfile(path):
        raise BfmError(f"{path}: no such file; --face_model=bfm:PATH needs {EXPECTED}")
    if h5py.is_hdf5(path):
        try:
            with h5py.File(path, "r") as file:
                if "shape/model/mean" in file or "shape" in file:
                    return _check(path, "BFM 2017", {key: _read_h5(path, file, key) for key in BFM2017_KEYS})
                if "shapeMU" in file:
                    # MATLAB v7.3: h5py sees every array transposed (MATLAB is column-major).
                    return _check(path, "BFM 2009 (MATLAB v7.3)",
                                  {key: _read_h5(path, file, key).T for key in BFM2009_KEYS})
                found = sorted(file.keys())[:8]
        except OSError as error:
            raise BfmError(f"{path}: unreadable HDF5 file ({_first_line(error)}); expected {EXPECTED}") from None
        raise BfmError(f"{path}: an HDF5 file with neither BFM 2017's shape/model/mean nor BFM 2009's shapeMU "
                       f"(top-level keys {found}); expected {EXPECTED}")
    import scipy.io

    try:
        contents = scipy.io.loadmat(path, variable_names=list(BFM2009_KEYS))
    except NotImplementedError as error:  # scipy's answer to a v7.3 file it did not recognise as HDF5.
        raise BfmError(f"{path}: {_first_line(error)}; expected {EXPECTED}") from None
    except Exception as error:  # noqa: BLE001 - scipy raises ValueError, TypeError, MatReadError, OSError...
        raise BfmError(f"{path}: not a MATLAB .mat or HDF5 file ({type(error).__name__}: {_first_line(error)}); "
                       f"expected {EXPECTED}") from None
    missing = [key for key in BFM2009_KEYS if key not in contents]
    if missing:
        raise BfmError(f"{path}: a .mat file without {missing}; expected {EXPECTED}")
    return _check(path, "BFM 2009 (MATLAB v5)", {key: contents[key] for key in BFM2009_KEYS})


def _read_h5(path: str, file, key: str) -> np.ndarray:
    if key not in file:
        raise BfmError(f"{path}: no {key!r} in this HDF5 file; expected {EXPECTED}")
    return np.asarray(file[key])


def _check(path: str, file_format: str, arrays: dict) -> BfmArrays:
    """Flattens, converts to 0-based triangles and checks the shapes of one file's arrays."""
    if file_format == "BFM 2017":
        names = dict(zip(("shape_mean", "shape_components", "shape_variance", "color_mean", "color_components",
                          "color_variance", "triangles"), BFM2017_KEYS))
    else:
        names = dict(zip(("shape_mean", "shape_components", "shape_std", "color_mean", "color_components",
                          "color_std", "triangles"), BFM2009_KEYS))

    def fail(message: str) -> BfmError:
        return BfmError(f"{path} ({file_format}): {message}; expected {EXPECTED}")

    values = {}
    for field, key in names.items():
        array = np.asarray(arrays[key])
        if not np.issubdtype(array.dtype, np.number) or not np.all(np.isfinite(array)):
            raise fail(f"{key} is not an array of finite numbers")
        values[field] = array
    shape_mean = values["shape_mean"].reshape(-1)
    if shape_mean.size == 0 or shape_mean.size % 3:
        raise fail(f"{names['shape_mean']} has {shape_mean.size} values, not 3 per vertex")
    num_vertices = shape_mean.size // 3
    result = {"shape_mean": shape_mean}
    for kind in ("shape", "color"):
        mean = values[f"{kind}_mean"].reshape(-1)
        if mean.size != 3 * num_vertices:
            raise fail(f"{names[kind + '_mean']} has {mean.size} values, expected 3 x {num_vertices} vertices")
        components = values[f"{kind}_components"]
        if components.ndim != 2 or components.shape[0] != 3 * num_vertices:
            raise fail(f"{names[kind + '_components']} has shape {components.shape}, expected "
                       f"[{3 * num_vertices}, K]")
        spread_field = f"{kind}_variance" if file_format == "BFM 2017" else f"{kind}_std"
        spread = values[spread_field].reshape(-1)
        if spread.size != components.shape[1] or np.any(spread < 0):
            raise fail(f"{names[spread_field]} has {spread.size} values (negative ones: {int(np.sum(spread < 0))}), "
                       f"expected {components.shape[1]} non-negative ones, one per component")
        result[f"{kind}_mean"] = mean
        result[f"{kind}_components"] = components
        result[f"{kind}_std"] = np.sqrt(spread) if file_format == "BFM 2017" else spread
    triangles = values["triangles"]
    if file_format == "BFM 2017" and triangles.ndim == 2 and triangles.shape[0] == 3 and triangles.shape[1] != 3:
        triangles = triangles.T  # statismo stores cells as [3, T].
    if triangles.ndim != 2 or triangles.shape[1] != 3 or len(triangles) == 0:
        raise fail(f"{names['triangles']} has shape {triangles.shape}, expected "
                   f"{'[3, T]' if file_format == 'BFM 2017' else '[T, 3]'} vertex indices")
    if np.any(triangles != np.round(triangles)):
        raise fail(f"{names['triangles']} holds non-integer vertex indices")
    triangles = np.round(triangles).astype(np.int64)
    first = 0 if file_format == "BFM 2017" else 1  # MATLAB's tl is 1-based.
    if triangles.min() < first or triangles.max() >= num_vertices + first:
        raise fail(f"{names['triangles']} indexes vertices {triangles.min()}..{triangles.max()}, expected "
                   f"{first}..{num_vertices - 1 + first} ({'0' if first == 0 else '1'}-based)")
    return BfmArrays(format=file_format, triangles=triangles - first, **result)


def outward_triangles(vertices: np.ndarray, triangles: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """`triangles` [T, 3], flipped if needed so that they are counter-clockwise seen from outside.

    The test is the sign of the mesh's signed volume about `centre` (sum of (a-c) . ((b-c) x (d-c)) over
    triangles a, b, d): positive when the normals point away from the centre, for a closed mesh and for a face
    mask that wraps around its centre alike.
    """
    a, b, d = (vertices[triangles[:, k]] - centre for k in range(3))
    signed_volume = float(np.einsum("ij,ij->", a, np.cross(b, d)))
    return triangles if signed_volume >= 0 else triangles[:, ::-1].copy()


def to_morphable_model(arrays: BfmArrays, path: str = "BFM") -> MorphableModel:
    """A BFM's arrays as a renderable `MorphableModel` (see the module docstring for every conversion)."""
    num_vertices = arrays.num_vertices
    mean = arrays.shape_mean.reshape(num_vertices, 3).astype(np.float64)
    centre = (mean.min(axis=0) + mean.max(axis=0)) / 2.0
    radius = float(np.linalg.norm(mean - centre, axis=1).max())
    if not radius > 0:
        raise BfmError(f"{path}: every mean vertex is at the same place; expected {EXPECTED}")
    triangles = outward_triangles(mean, arrays.triangles, centre)
    color_scale = 255.0 if float(arrays.color_mean.max()) > 1.5 else 1.0
    gray_mean = arrays.color_mean.reshape(num_vertices, 3).astype(np.float64) @ LUMA_WEIGHTS / color_scale
    num_color_components = arrays.color_components.shape[1]
    gray_components = np.einsum("vck,c->vk", arrays.color_components.reshape(num_vertices, 3, num_color_components),
                                LUMA_WEIGHTS) / color_scale
    return MorphableModel.from_flat_pca(
        (mean - centre).reshape(-1), arrays.shape_components, arrays.shape_std,
        gray_mean, gray_components, arrays.color_std, triangles,
        frame_radius=FRAME_MARGIN, scale=1.0 / radius)


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0][:300] if lines else type(error).__name__
