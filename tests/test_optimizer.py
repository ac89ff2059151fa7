import numpy as np
import keras

from dcign_tf.optimizer import DCIGNRMSprop


def test_update_is_the_released_codes_rmsprop():
    """m, v as exponential averages with decays 0.1 and 0.01, bias-corrected, lr*m/sqrt(v+eps)."""
    rng = np.random.default_rng(0)
    weights = rng.normal(size=5).astype(np.float32)
    variable = keras.Variable(weights.copy())
    optimizer = DCIGNRMSprop(learning_rate=5e-4)
    m = np.zeros(5)
    v = np.zeros(5)
    expected = weights.astype(np.float64)
    for step in range(1, 5):
        gradient = rng.normal(size=5).astype(np.float32)
        optimizer.apply([keras.ops.convert_to_tensor(gradient)], [variable])
        m = 0.9 * m + 0.1 * gradient
        v = 0.99 * v + 0.01 * gradient.astype(np.float64) ** 2
        m_hat = m / (1 - 0.9 ** step)
        v_hat = v / (1 - 0.99 ** step)
        expected -= 5e-4 * m_hat / np.sqrt(v_hat + 1e-8)
        np.testing.assert_allclose(variable.numpy(), expected, rtol=1e-5, atol=1e-7)


def test_round_trips_through_its_config():
    optimizer = DCIGNRMSprop(learning_rate=1e-3, momentum_decay=0.2)
    clone = DCIGNRMSprop.from_config(optimizer.get_config())
    assert clone.momentum_decay == 0.2 and clone.update_decay == 0.01
