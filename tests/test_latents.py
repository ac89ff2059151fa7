import numpy as np
import pytest
import tensorflow as tf

from dcign_tf import latents
from dcign_tf.latents import LatentLayout, LayoutError


def test_faces_layout_is_the_papers():
    layout = LatentLayout.parse(latents.FACES_LAYOUT, 200)
    assert layout.factor_latents["azimuth"] == (0,)
    assert layout.factor_latents["elevation"] == (1,)
    assert layout.factor_latents["light"] == (2,)
    assert layout.factor_latents["identity"] == tuple(range(3, 200))
    assert LatentLayout.parse(layout.to_spec(), 200) == layout


def test_ranges_and_plus_lists():
    layout = LatentLayout.parse("a=0+4,b=1-3,c=rest", 8)
    assert layout.factor_latents == {"a": (0, 4), "b": (1, 2, 3), "c": (5, 6, 7)}
    mask = layout.active_mask(["c", "a", "b"])
    np.testing.assert_array_equal(mask.sum(axis=0), np.ones(8))
    np.testing.assert_array_equal(np.nonzero(mask[1])[0], [0, 4])


@pytest.mark.parametrize("spec, message", [
    ("a=0,b=0,c=rest", "more than one factor"),
    ("a=0,b=1", "belong to no factor"),
    ("a=0,b=9,c=rest", "outside 0..7"),
    ("a=0,a=1,c=rest", "appears twice"),
    ("a=rest,b=rest", "both"),
    ("a:0", "not FACTOR=INDICES"),
    ("", "empty"),
])
def test_bad_layouts_are_clear_errors(spec, message):
    with pytest.raises(LayoutError, match=message):
        LatentLayout.parse(spec, 8)


def test_layout_must_match_the_datas_factors():
    layout = LatentLayout.parse("azimuth=0,identity=rest", 8)
    with pytest.raises(LayoutError, match=r"data has factors \['light'\]"):
        layout.check_factors(["azimuth", "light", "identity"])
    with pytest.raises(LayoutError, match=r"layout names factors \['azimuth'\]"):
        layout.check_factors(["identity"])


def test_clamp_replaces_inactive_latents_by_the_group_mean():
    values = tf.constant(np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4) ** 1.5)
    active = tf.constant([[[1, 0, 0, 0]], [[0, 0, 1, 1]]], tf.float32)
    clamped = latents.clamp_to_group_mean(values, active).numpy()
    v = values.numpy()
    np.testing.assert_allclose(clamped[0, :, 0], v[0, :, 0])          # active passes
    np.testing.assert_allclose(clamped[0, :, 1], v[0, :, 1].mean())   # inactive -> mean, not first sample
    np.testing.assert_allclose(clamped[1, :, 2:], v[1, :, 2:])
    np.testing.assert_allclose(clamped[1, :, 0], v[1, :, 0].mean())
    # Each group's statistics are its own.
    assert clamped[0, 0, 1] != clamped[1, 0, 1]


def test_clamped_deviation_is_zero_for_invariant_latents():
    values = tf.constant(np.random.default_rng(0).normal(size=(2, 5, 3)), tf.float32)
    active = tf.constant([[[1, 0, 0]], [[1, 0, 0]]], tf.float32)
    assert latents.clamped_deviation(values, active).numpy() > 0.1
    invariant = tf.concat([values[:, :, :1], tf.ones_like(values[:, :, 1:])], axis=-1)
    assert latents.clamped_deviation(invariant, active).numpy() == pytest.approx(0.0)
