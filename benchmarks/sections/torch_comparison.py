"""The same network and DC-IGN step written in plain PyTorch (benchmarks/torch_reference.py), eager and
torch.compile, against Keras; skipped when torch is not installed."""

from __future__ import annotations

import contextlib
import time

from benchmarks.harness import FACTORS, LAYOUT, TARGETS, Bench, Preset, synthetic_batch
from benchmarks.timing import Contender, Skip, comparison


def import_torch_reference():
    """(torch, benchmarks.torch_reference); Skip when torch is not installed."""
    try:
        import torch  # noqa: F401
    except ImportError:
        raise Skip("PyTorch is not installed (pip install -e '.[torch]', or torch==2.13.0 for the CPU wheel)") from None
    from benchmarks import torch_reference

    return torch, torch_reference


class TorchTrainer:
    """The PyTorch reference's train step (eager, or its model wrapped in torch.compile)."""

    def __init__(self, preset: Preset, image_size: int, mode: str = "dcign", compile_model: bool = False,
                 groups: int = 1):
        import numpy as np

        from dcign_tf.latents import LatentLayout

        torch, reference = import_torch_reference()
        self.torch, self.reference = torch, reference
        masks = LatentLayout.parse(LAYOUT, preset.num_latents).active_mask(list(FACTORS))
        self.model = reference.DCIGN(masks, image_size=image_size, num_latents=preset.num_latents,
                                     encoder_filters=preset.encoder_filters, decoder_filters=preset.decoder_filters,
                                     mode=mode)
        self.optimizer = reference.DCIGNRMSprop(self.model.parameters())
        self.forward = torch.compile(self.model) if compile_model else self.model
        batch = synthetic_batch(groups, preset.group_size, image_size)
        self.images = torch.from_numpy(np.ascontiguousarray(np.moveaxis(batch["images"], -1, 2)))
        self.active = torch.from_numpy(batch["active_factor"].astype(np.int64))
        self.images_per_step = groups * preset.group_size

    def run(self, steps: int) -> float:
        start = time.perf_counter()
        for _ in range(steps):
            loss = self.reference.train_step(self.forward, self.optimizer, self.images, self.active)
        loss.item()
        return time.perf_counter() - start


def run(bench: Bench) -> dict:
    torch, _ = import_torch_reference()
    torch.set_num_threads(bench.threads)
    with contextlib.suppress(RuntimeError):  # only settable before torch's first parallel work
        torch.set_num_interop_threads(bench.threads)
    from dcign_tf.model import flops_per_image

    preset = bench.preset
    results = []
    for size in preset.torch_sizes:
        bench.log(f"torch: {size}x{size}")
        contenders = [bench.keras_contender("keras", size),
                      bench.keras_contender("keras_naive_decoder", size, implementation="naive")]
        reference = TorchTrainer(preset, size)
        contenders.append(Contender("torch_eager", reference.run, reference.images_per_step))
        compile_note = None
        if size in preset.torch_compile_sizes:
            compiled = TorchTrainer(preset, size, compile_model=True)
            contenders.append(Contender("torch_compile", compiled.run, compiled.images_per_step))
        else:
            compile_note = (f"torch.compile not run at {size}x{size} with --size={preset.name} "
                            f"(compiling takes minutes on 2 cores); sizes with it: "
                            f"{list(preset.torch_compile_sizes) or 'none'}")
        measured, errors = bench.measure(contenders)
        if "keras" not in measured or "torch_eager" not in measured:
            raise RuntimeError(f"{size}x{size}: {errors}")
        executed = {"keras": flops_per_image(bench.config(size))["train"],
                    "keras_naive_decoder": flops_per_image(bench.config(size, decoder_implementation="naive"))["train"]}
        for name in ("torch_eager", "torch_compile"):
            executed[name] = executed["keras_naive_decoder"]  # plain upsample + 7x7 conv
        for name, entry in measured.items():
            entry["executed_train_flops_per_image"] = executed[name]
            entry["executed_gflop_per_s"] = entry["images_per_s"] * executed[name] / 1e9
        comparisons = [comparison(f"keras_vs_torch_eager_{size}", "keras", measured["keras"]["images_per_s"],
                                  "torch_eager", measured["torch_eager"]["images_per_s"],
                                  target=TARGETS["torch_eager"])]
        if "keras_naive_decoder" in measured:
            comparisons.append(comparison(
                f"keras_naive_vs_torch_eager_{size}", "keras_naive_decoder",
                measured["keras_naive_decoder"]["images_per_s"], "torch_eager",
                measured["torch_eager"]["images_per_s"],
                note="same FLOPs on both sides (plain upsample + conv): the framework alone"))
        if "torch_compile" in measured:
            comparisons.append(comparison(f"keras_vs_torch_compile_{size}", "keras",
                                          measured["keras"]["images_per_s"], "torch_compile",
                                          measured["torch_compile"]["images_per_s"]))
        result = {"image_size": size, "measurements": measured, "comparisons": comparisons}
        if "torch_compile" in errors:
            result["torch_compile_error"] = errors.pop("torch_compile")
        elif compile_note:
            result["torch_compile_skipped"] = compile_note
        if errors:
            result["errors"] = errors
        results.append(result)
    return {"method": f"One group of {preset.group_size} images per step in both frameworks, "
                      f"{bench.threads} threads each (tf.config.threading intra/inter-op; torch.set_num_threads), "
                      "DC-IGN step with the clamp, the invariance-gradient rewrite and the Adam-like optimiser; "
                      "the PyTorch reference (benchmarks/torch_reference.py) is plain NCHW upsample + conv; "
                      "torch.compile wraps its model (forward + loss; backward by AOTAutograd), default mode. "
                      "keras_naive_decoder is the Keras network with the decoder computed the plain way, "
                      "for a same-FLOPs comparison. cores_busy: process CPU seconds per wall second in the timed "
                      "blocks. PyTorch's OpenMP threads meet at barriers, so when other jobs take a core it loses "
                      "more than TensorFlow's work-sharing pool: on a shared machine the ratio comes out larger "
                      "than on an idle one (see cores_busy and the load average).",
            "torch_version": torch.__version__, "results": results}
