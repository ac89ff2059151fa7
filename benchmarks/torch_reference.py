"""DC-IGN in PyTorch, written the way a PyTorch user would: the reference for `benchmarks.bench`.

The same network as `dcign_tf.model` (Kulkarni et al. 2015):
  encoder: three 5x5 convolutions (96, 48, 24 maps), each followed by 2x2 max-pooling and a ReLU,
           then two linear heads for the posterior mean and log-variance of z;
  decoder: linear -> 24 x s x s (ReLU), four blocks of nearest 2x upsampling + 7x7 valid convolution
           (48, 96, 96, 1 maps) with ReLU between blocks; the sigmoid lives in BCE-with-logits;
           sizes where 16 s - 90 != S are cropped to the centre, like `build_decoder`.
and the same DC-IGN training step: within each group the inactive factors' latents (mean and
log-variance) are clamped to the group mean in the forward pass, and their gradient is replaced by
`invariance_weight * (h - group mean of h)` (scaled like the objective), with the released code's
Adam-like "rmsprop".

It is deliberately plain PyTorch: `nn.Module`s in NCHW, `F.interpolate` + `nn.Conv2d` for the decoder
(no sub-pixel trick), an `autograd.Function` for the clamp, a `torch.optim.Optimizer` subclass. PyTorch
is optional: this module imports torch at import time, callers guard the import.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# The layer geometry is shared with the Keras model, so both networks have the same shapes.
from dcign_tf.config import ModelConfig, encoder_output_size
from dcign_tf.model import decoder_start_size

ENCODER_KERNEL = 5
DECODER_KERNEL = 7


class Encoder(nn.Module):
    def __init__(self, image_size=150, num_latents=200, filters=(96, 48, 24), padding="auto"):
        super().__init__()
        padding = ModelConfig(image_size=image_size, encoder_padding=padding).resolved_encoder_padding
        channels = (1,) + tuple(filters)
        self.convs = nn.ModuleList(
            nn.Conv2d(channels[i], channels[i + 1], ENCODER_KERNEL,
                      padding=0 if padding == "valid" else ENCODER_KERNEL // 2)
            for i in range(3))
        side = encoder_output_size(image_size, padding)
        self.mean = nn.Linear(filters[-1] * side * side, num_latents)
        self.log_variance = nn.Linear(filters[-1] * side * side, num_latents)

    def forward(self, images):
        """images [B, 1, S, S] -> (mean [B, L], log-variance [B, L])."""
        x = images
        for conv in self.convs:
            x = F.relu(F.max_pool2d(conv(x), 2))
        x = torch.flatten(x, 1)
        return self.mean(x), self.log_variance(x)


class Decoder(nn.Module):
    def __init__(self, image_size=150, num_latents=200, filters=(48, 96, 96), start_channels=24):
        super().__init__()
        self.image_size = image_size
        self.start = decoder_start_size(image_size)
        self.start_channels = start_channels
        self.dense = nn.Linear(num_latents, start_channels * self.start * self.start)
        channels = (start_channels,) + tuple(filters) + (1,)
        self.convs = nn.ModuleList(nn.Conv2d(channels[i], channels[i + 1], DECODER_KERNEL) for i in range(4))

    def forward(self, z):
        """z [B, L] -> pixel logits [B, 1, S, S]."""
        x = F.relu(self.dense(z)).view(-1, self.start_channels, self.start, self.start)
        for index, conv in enumerate(self.convs):
            x = conv(F.interpolate(x, scale_factor=2, mode="nearest"))
            if index < len(self.convs) - 1:
                x = F.relu(x)
        excess = x.shape[-1] - self.image_size
        if excess:
            top = excess // 2
            x = x[:, :, top:top + self.image_size, top:top + self.image_size]
        return x


class ClampToGroupMean(torch.autograd.Function):
    """Forward: inactive latents -> their group mean. Backward: active latents keep their gradient,
    inactive ones get `scale * (h - group mean of h)` (the paper's invariance gradient)."""

    @staticmethod
    def forward(ctx, values, active, scale):
        # values [groups, G, L]; active [groups, 1, L] in {0, 1}.
        ctx.save_for_backward(values, active)
        ctx.scale = scale
        return active * values + (1.0 - active) * values.mean(dim=1, keepdim=True)

    @staticmethod
    def backward(ctx, grad):
        values, active = ctx.saved_tensors
        return (active * grad + ctx.scale * (1.0 - active) * (values - values.mean(dim=1, keepdim=True)),
                None, None)


class DCIGN(nn.Module):
    """The network and its training loss. `forward` returns the loss to call `.backward()` on.

    active_masks: [num_factors, L] float, row f is 1 on factor f's latents (as `LatentLayout.active_mask`).
    """

    def __init__(self, active_masks, image_size=150, num_latents=200, encoder_filters=(96, 48, 24),
                 decoder_filters=(48, 96, 96), encoder_padding="auto", mode="dcign", invariance_weight=0.01,
                 kl_weight=1.0):
        super().__init__()
        if mode not in ("dcign", "baseline"):
            raise ValueError(f"mode must be dcign or baseline, got {mode!r}")
        self.encoder = Encoder(image_size, num_latents, encoder_filters, encoder_padding)
        self.decoder = Decoder(image_size, num_latents, decoder_filters, encoder_filters[-1])
        self.register_buffer("active_masks", torch.as_tensor(np.asarray(active_masks, np.float32)))
        self.mode = mode
        self.invariance_weight = float(invariance_weight)
        self.kl_weight = float(kl_weight)

    def terms(self, images, active_factor, noise=None):
        """images [groups, G, 1, S, S] in [0, 1]; active_factor [groups] int64; noise [groups, G, L].

        Returns a dict: loss (scalar), reconstruction and kl [groups * G], logits [groups * G, 1, S, S],
        mean and log_variance [groups, G, L] (before the clamp).
        """
        groups, group_size = images.shape[:2]
        batch = groups * group_size
        flat = images.reshape(batch, *images.shape[2:])
        flat_mean, flat_log_variance = self.encoder(flat)
        mean = flat_mean.view(groups, group_size, -1)
        log_variance = flat_log_variance.view(groups, group_size, -1)
        if self.mode == "dcign":
            active = self.active_masks[active_factor].unsqueeze(1)
            scale = self.invariance_weight / batch  # the objective is a mean over the batch
            clamped_mean = ClampToGroupMean.apply(mean, active, scale)
            clamped_log_variance = ClampToGroupMean.apply(log_variance, active, scale)
        else:
            clamped_mean, clamped_log_variance = mean, log_variance
        if noise is None:
            noise = torch.randn_like(clamped_mean)
        z = clamped_mean + torch.exp(0.5 * clamped_log_variance) * noise
        logits = self.decoder(z.reshape(batch, -1))
        reconstruction = F.binary_cross_entropy_with_logits(logits, flat, reduction="none").sum(dim=(1, 2, 3))
        kl = -0.5 * torch.sum(1.0 + clamped_log_variance - clamped_mean.square() - clamped_log_variance.exp(),
                              dim=2).reshape(batch)
        loss = (reconstruction + self.kl_weight * kl).sum() / batch
        return dict(loss=loss, reconstruction=reconstruction, kl=kl, logits=logits, mean=mean,
                    log_variance=log_variance)

    def forward(self, images, active_factor, noise=None):
        return self.terms(images, active_factor, noise)["loss"]


class DCIGNRMSprop(torch.optim.Optimizer):
    """The released DC-IGN code's "rmsprop" (bias-corrected, Adam-like, epsilon inside the root)."""

    def __init__(self, params, lr=5e-4, momentum_decay=0.1, update_decay=0.01, eps=1e-8):
        super().__init__(params, dict(lr=lr, momentum_decay=momentum_decay, update_decay=update_decay, eps=eps))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            lr, md, ud, eps = group["lr"], group["momentum_decay"], group["update_decay"], group["eps"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                state = self.state[param]
                if not state:
                    state["step"] = 0
                    state["momentum"] = torch.zeros_like(param)
                    state["velocity"] = torch.zeros_like(param)
                state["step"] += 1
                step, momentum, velocity = state["step"], state["momentum"], state["velocity"]
                grad = param.grad
                momentum.lerp_(grad, md)
                velocity.mul_(1.0 - ud).addcmul_(grad, grad, value=ud)
                denominator = (velocity / (1.0 - (1.0 - ud) ** step)).add_(eps).sqrt_()
                param.addcdiv_(momentum, denominator, value=-lr / (1.0 - (1.0 - md) ** step))


def train_step(model, optimizer, images, active_factor, noise=None):
    """One DC-IGN step: forward (clamped), backward (rewritten gradients), optimizer update."""
    optimizer.zero_grad(set_to_none=True)
    loss = model(images, active_factor, noise)
    loss.backward()
    optimizer.step()
    return loss


# Weight transfer from the Keras network (dcign_tf.model.DCIGN), for the equivalence test.

def _conv_kernel(kernel):
    """Keras [kh, kw, in, out] -> torch [out, in, kh, kw]."""
    return np.ascontiguousarray(np.transpose(kernel, (3, 2, 0, 1)))


def keras_to_torch_arrays(keras_model, model: DCIGN, values=None) -> dict:
    """PyTorch parameter name -> array, from a Keras `dcign_tf.model.DCIGN` (same architecture).

    values: Keras variable path ("conv1/kernel", ...) -> array, e.g. gradients aligned with
      `keras_model.trainable_variables`; default: the variables' values.
    Keras flattens NHWC maps in (h, w, c) order and PyTorch NCHW maps in (c, h, w) order, so the
    encoder heads' inputs and the decoder's dense outputs are permuted accordingly.
    """
    if values is None:
        values = {variable.path: variable.numpy() for variable in keras_model.trainable_variables}

    def weights(layer):
        return np.asarray(values[f"{layer}/kernel"]), np.asarray(values[f"{layer}/bias"])

    arrays = {}
    for index in range(3):
        kernel, bias = weights(f"conv{index + 1}")
        arrays[f"encoder.convs.{index}.weight"] = _conv_kernel(kernel)
        arrays[f"encoder.convs.{index}.bias"] = bias
    height, width, channels = keras_model.encoder.get_layer("flatten").input.shape[1:]
    for head in ("mean", "log_variance"):
        kernel, bias = weights(head)  # [h*w*c, L]
        latents = kernel.shape[1]
        arrays[f"encoder.{head}.weight"] = np.ascontiguousarray(
            kernel.reshape(height, width, channels, latents).transpose(3, 2, 0, 1).reshape(latents, -1))
        arrays[f"encoder.{head}.bias"] = bias
    kernel, bias = weights("dense")  # [L, s*s*c]
    side, channels = model.decoder.start, model.decoder.start_channels
    latents = kernel.shape[0]
    arrays["decoder.dense.weight"] = np.ascontiguousarray(
        kernel.reshape(latents, side, side, channels).transpose(3, 1, 2, 0).reshape(-1, latents))
    arrays["decoder.dense.bias"] = np.ascontiguousarray(
        bias.reshape(side, side, channels).transpose(2, 0, 1).reshape(-1))
    for index in range(4):
        kernel, bias = weights(f"deconv{index + 1}")
        arrays[f"decoder.convs.{index}.weight"] = _conv_kernel(kernel)
        arrays[f"decoder.convs.{index}.bias"] = bias
    parameters = dict(model.named_parameters())
    if set(arrays) != set(parameters):
        raise ValueError(f"Keras and PyTorch parameters differ: {sorted(set(arrays) ^ set(parameters))}")
    for name, array in arrays.items():
        if tuple(array.shape) != tuple(parameters[name].shape):
            raise ValueError(f"{name}: Keras gives {array.shape}, PyTorch has {tuple(parameters[name].shape)}")
    return arrays


def load_keras_weights(model: DCIGN, keras_model) -> None:
    """Copies a Keras `dcign_tf.model.DCIGN`'s weights into `model` (same architecture)."""
    arrays = keras_to_torch_arrays(keras_model, model)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            parameter.copy_(torch.as_tensor(np.asarray(arrays[name], np.float32)))


def from_keras(keras_model) -> DCIGN:
    """A PyTorch DCIGN with the architecture, settings and weights of a Keras `dcign_tf.model.DCIGN`."""
    config = keras_model.config
    model = DCIGN(keras_model.active_masks.numpy(), image_size=config.image_size, num_latents=config.num_latents,
                  encoder_filters=config.encoder_filters, decoder_filters=config.decoder_filters,
                  encoder_padding=config.encoder_padding, mode=config.mode,
                  invariance_weight=config.invariance_weight, kl_weight=config.kl_weight)
    load_keras_weights(model, keras_model)
    return model
