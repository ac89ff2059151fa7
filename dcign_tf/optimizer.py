"""The optimiser the paper calls "rmsprop".

The paper (§4) trains with "rmsprop" at "meta learning rate 0.0005, momentum decay 0.1 and
weight decay 0.01". The released Torch code's `rmsprop` is in fact Adam-like:

    m <- (1 - momentum_decay) * m + momentum_decay * g          (momentum decay 0.1  = 1 - beta_1)
    v <- (1 - update_decay) * v + update_decay * g^2            (update decay 0.01   = 1 - beta_2)
    m_hat = m / (1 - (1 - momentum_decay)^t),  v_hat = v / (1 - (1 - update_decay)^t)
    w <- w - lr * m_hat / sqrt(v_hat + epsilon)

What the paper calls "weight decay 0.01" is this update decay; there is no L2 penalty.
Keras' Adam(beta_1=0.9, beta_2=0.99) is the same update except that it adds epsilon outside
the square root; this class keeps the released code's form exactly.
"""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="dcign_tf")
class DCIGNRMSprop(keras.optimizers.Optimizer):
    """The released DC-IGN code's "rmsprop" (bias-corrected, Adam-like), as a Keras optimizer.

    Args:
      learning_rate: the paper's "meta learning rate" (0.0005).
      momentum_decay: 1 - beta_1 (0.1).
      update_decay: 1 - beta_2 (0.01); the paper's "weight decay".
      epsilon: added to v_hat inside the square root (1e-8).
    """

    def __init__(self, learning_rate=5e-4, momentum_decay=0.1, update_decay=0.01, epsilon=1e-8,
                 name="dcign_rmsprop", **kwargs):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        self.momentum_decay = momentum_decay
        self.update_decay = update_decay
        self.epsilon = epsilon

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        self._momentums, self._velocities = self.add_optimizer_variables(var_list, ["momentum", "velocity"])

    def update_step(self, gradient, variable, learning_rate):
        lr = ops.cast(learning_rate, variable.dtype)
        gradient = ops.cast(gradient, variable.dtype)
        step = ops.cast(self.iterations + 1, variable.dtype)
        momentum = self._momentums[self._get_variable_index(variable)]
        velocity = self._velocities[self._get_variable_index(variable)]
        self.assign_add(momentum, (gradient - momentum) * self.momentum_decay)
        self.assign_add(velocity, (ops.square(gradient) - velocity) * self.update_decay)
        momentum_hat = momentum / (1.0 - ops.power(1.0 - self.momentum_decay, step))
        velocity_hat = velocity / (1.0 - ops.power(1.0 - self.update_decay, step))
        self.assign_sub(variable, lr * momentum_hat / ops.sqrt(velocity_hat + self.epsilon))

    def get_config(self):
        config = super().get_config()
        config.update(momentum_decay=self.momentum_decay, update_decay=self.update_decay, epsilon=self.epsilon)
        return config


def learning_rate(peak: float, schedule: str = "constant", steps: int = 1, warmup_steps: int = 0):
    """The step size: `peak` throughout ("constant", the paper), or "cosine": a linear warm-up from
    0 over `warmup_steps`, then a cosine decay from `peak` to 0 at `steps`."""
    if schedule == "constant":
        return peak
    if schedule != "cosine":
        raise ValueError(f"learning-rate schedule must be constant or cosine, got {schedule!r}")
    warmup_steps = min(warmup_steps, steps - 1)
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warmup_steps else peak, decay_steps=max(1, steps - warmup_steps),
        warmup_target=peak if warmup_steps else None, warmup_steps=warmup_steps)
