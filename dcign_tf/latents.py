"""Which latents belong to which factor, and the DC-IGN clamp.

The graphics code is a vector of `num_latents` latents. A `LatentLayout` names, for each
factor of variation in the data (for faces: azimuth, elevation, light, identity), the
latents that encode it. In a training group only one factor changes; the latents of every
other factor are clamped to their mean over the group (paper §3.1, Figure 3).
"""

from __future__ import annotations

import dataclasses
import re
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import tensorflow as tf

# The paper's faces layout (Figure 2): one latent each for face azimuth, face elevation and
# light azimuth, the rest for the face's intrinsic properties (shape and texture).
FACES_LAYOUT = "azimuth=0,elevation=1,light=2,identity=rest"


class LayoutError(ValueError):
    """A latent layout that is malformed or does not match the data's factors."""


@dataclasses.dataclass(frozen=True)
class LatentLayout:
    """Factor name -> the latent indices that encode it.

    Attributes:
      num_latents: size of the graphics code z.
      factor_latents: ordered mapping from factor name to a tuple of latent indices. Every
        latent belongs to exactly one factor.
    """

    num_latents: int
    factor_latents: dict[str, tuple[int, ...]]

    @property
    def factors(self) -> list[str]:
        return list(self.factor_latents)

    @classmethod
    def parse(cls, spec: str, num_latents: int) -> "LatentLayout":
        """Parses "azimuth=0,elevation=1,light=2,identity=rest".

        Each entry is `factor=INDICES`, where INDICES is a latent index (`0`), an inclusive
        range (`3-199`), several of those joined by `+` (`0+5-7`), or `rest` for every latent
        no other factor claims (at most one factor may say `rest`).
        """
        if num_latents < 1:
            raise LayoutError(f"num_latents must be positive, got {num_latents}")
        entries = [entry.strip() for entry in spec.split(",") if entry.strip()]
        if not entries:
            raise LayoutError("the latent layout is empty; expected e.g. " + FACES_LAYOUT)
        factor_latents: dict[str, tuple[int, ...]] = {}
        rest_factor = None
        for entry in entries:
            match = re.fullmatch(r"([A-Za-z_][\w-]*)\s*=\s*(\S+)", entry)
            if not match:
                raise LayoutError(
                    f"latent layout entry {entry!r} is not FACTOR=INDICES (e.g. azimuth=0, identity=3-199)")
            name, indices_spec = match.groups()
            if name in factor_latents or name == rest_factor:
                raise LayoutError(f"factor {name!r} appears twice in the latent layout")
            if indices_spec == "rest":
                if rest_factor is not None:
                    raise LayoutError(f"both {rest_factor!r} and {name!r} ask for the rest of the latents")
                rest_factor = name
                factor_latents[name] = ()
                continue
            factor_latents[name] = tuple(_parse_indices(indices_spec, name, num_latents))
        claimed = [i for indices in factor_latents.values() for i in indices]
        duplicates = sorted({i for i in claimed if claimed.count(i) > 1})
        if duplicates:
            raise LayoutError(f"latents {duplicates} are assigned to more than one factor")
        unclaimed = tuple(i for i in range(num_latents) if i not in set(claimed))
        if rest_factor is not None:
            if not unclaimed:
                raise LayoutError(f"no latents are left for {rest_factor!r}=rest")
            factor_latents[rest_factor] = unclaimed
        elif unclaimed:
            raise LayoutError(
                f"latents {_format_indices(unclaimed)} belong to no factor; give them to one (e.g. identity=rest)")
        return cls(num_latents=num_latents, factor_latents=factor_latents)

    def to_spec(self) -> str:
        """The inverse of `parse`: a string that parses back to this layout."""
        return ",".join(f"{name}={_format_indices(indices, sep='+')}" for name, indices in self.factor_latents.items())

    def check_factors(self, data_factors: list[str]) -> None:
        """Raises LayoutError unless the layout names exactly the data's factors."""
        missing = [name for name in data_factors if name not in self.factor_latents]
        extra = [name for name in self.factor_latents if name not in data_factors]
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"the data has factors {missing} that the latent layout does not name")
            if extra:
                parts.append(f"the latent layout names factors {extra} that the data does not have")
            raise LayoutError("; ".join(parts) + f" (data factors: {data_factors}; fix --latent_layout)")

    def active_mask(self, factor_order: list[str]) -> np.ndarray:
        """[num_factors, num_latents] float32: row f is 1 on the latents of factor_order[f]."""
        self.check_factors(factor_order)
        mask = np.zeros((len(factor_order), self.num_latents), np.float32)
        for row, name in enumerate(factor_order):
            mask[row, list(self.factor_latents[name])] = 1.0
        return mask


def _parse_indices(spec: str, name: str, num_latents: int) -> list[int]:
    indices: list[int] = []
    for part in spec.split("+"):
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not match:
            raise LayoutError(f"latents {spec!r} of factor {name!r} are not an index, a range a-b, or 'rest'")
        first = int(match.group(1))
        last = int(match.group(2)) if match.group(2) else first
        if last < first or last >= num_latents:
            raise LayoutError(
                f"latents {part!r} of factor {name!r} are outside 0..{num_latents - 1} (num_latents={num_latents})")
        indices.extend(range(first, last + 1))
    return indices


def _format_indices(indices, sep: str = ",") -> str:
    """(3, 4, 5, 9) -> '3-5<sep>9'."""
    runs, start = [], None
    for position, index in enumerate(indices):
        if start is None:
            start = index
        if position + 1 == len(indices) or indices[position + 1] != index + 1:
            runs.append(str(start) if start == index else f"{start}-{index}")
            start = None
    return sep.join(runs)


def group_mean(values: tf.Tensor) -> tf.Tensor:
    """Mean over each group: values [groups, group_size, L] -> [groups, 1, L]."""
    import tensorflow as tf  # here, not at the top: the layout is read where TensorFlow is not needed

    return tf.reduce_mean(values, axis=1, keepdims=True)


def clamp_to_group_mean(values: tf.Tensor, active: tf.Tensor) -> tf.Tensor:
    """The DC-IGN forward clamp.

    Args:
      values: encoder outputs (posterior mean or log-variance) [groups, group_size, L].
      active: [groups, 1, L], 1 on the active factor's latents of each group, else 0.

    Returns:
      [groups, group_size, L]: active latents pass through; every other latent is replaced by
      its mean over the group (the paper's mean, not the released code's first sample). The
      mean is a constant for autodiff: clamped latents get no reconstruction gradient, the
      caller gives them the invariance gradient instead.
    """
    import tensorflow as tf

    return active * values + (1.0 - active) * tf.stop_gradient(group_mean(values))


def invariance_gradient(values: tf.Tensor, active: tf.Tensor, weight: float) -> tf.Tensor:
    """The gradient the paper gives a clamped latent: weight * (h - group mean of h).

    Args:
      values: encoder outputs before the clamp, h [groups, group_size, L].
      active: [groups, 1, L] active-latent indicator.
      weight: the invariance weight (the paper's 1/100).

    Returns:
      [groups, group_size, L], zero on the active latents. Under gradient descent it pulls
      each clamped latent toward its group mean (the released Torch code has the sign
      reversed; this follows the paper).
    """
    return weight * (1.0 - active) * (values - group_mean(values))


def clamped_deviation(values: tf.Tensor, active: tf.Tensor) -> tf.Tensor:
    """Mean squared deviation of the clamped latents from their group mean (a scalar).

    values [groups, group_size, L], active [groups, 1, L]. 0 means perfectly invariant.
    """
    import tensorflow as tf

    inactive = 1.0 - active
    squared = inactive * tf.square(values - group_mean(values))
    count = tf.reduce_sum(inactive) * tf.cast(tf.shape(values)[1], values.dtype)
    return tf.math.divide_no_nan(tf.reduce_sum(squared), count)
