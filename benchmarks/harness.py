"""What every section of the benchmark shares: the sizes (presets), the Keras training step as `model.fit`
runs it, and one `Bench` per run holding them."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time

from benchmarks.timing import Contender, interleave, warm_up_all
from dcign_tf.data.sources.faces import FACTOR_NAMES as FACTORS  # the faces dataset's factors, in its column order
from dcign_tf.latents import FACES_LAYOUT as LAYOUT  # the paper's faces layout: z1-z3 pose and light, the rest identity

TARGETS = {"clamp": 0.95, "torch_eager": 1.3, "pipeline": 0.95, "render_64": 500.0, "render_150": 150.0,
           "studio_ms": 100.0}  # studio_ms: an upper bound, milliseconds per slider move (issue 15)
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass(frozen=True)
class Preset:
    """How big and how long: the network, the sizes each section runs at, and the timing budget."""

    name: str
    encoder_filters: tuple[int, ...]
    decoder_filters: tuple[int, ...]
    num_latents: int
    group_size: int
    clamp_sizes: tuple[int, ...]
    torch_sizes: tuple[int, ...]
    torch_compile_sizes: tuple[int, ...]  # torch.compile takes minutes per shape on 2 cores
    flops_sizes: tuple[int, ...]
    matmul_size: int
    repeats: int
    block_seconds: float  # wall time of one timed block (at least one step)
    pipeline_size: int
    pipeline_groups_per_factor: int
    pipeline_seconds: float
    render_seconds: float
    growth_sizes: tuple[int, ...]
    growth_groups: tuple[int, ...]
    growth_steps: int
    studio_size: int
    studio_renders: int  # slider moves timed
    # Runs the growth processes at the same time: only for the smoke test, whose timings mean nothing.
    growth_concurrent: bool = False
    flops_variants: tuple[str, ...] = ("float32", "float32_xla", "mixed_bfloat16", "mixed_bfloat16_xla",
                                       "float32_naive_decoder")


PRESETS = {
    "tiny": Preset("tiny", (4, 4, 4), (4, 4, 4), 8, 4, clamp_sizes=(32,), torch_sizes=(32,), torch_compile_sizes=(),
                   flops_sizes=(32,), matmul_size=256, repeats=2, block_seconds=0.02, pipeline_size=32,
                   pipeline_groups_per_factor=2, pipeline_seconds=0.2, render_seconds=0.2, growth_sizes=(32, 48),
                   growth_groups=(1, 2), growth_steps=2, studio_size=32, studio_renders=5, growth_concurrent=True,
                   flops_variants=("float32", "float32_xla", "mixed_bfloat16", "float32_naive_decoder")),
    "small": Preset("small", (96, 48, 24), (48, 96, 96), 200, 20, clamp_sizes=(64,), torch_sizes=(64,),
                    torch_compile_sizes=(64,), flops_sizes=(64,), matmul_size=2048, repeats=3, block_seconds=1.0,
                    pipeline_size=64, pipeline_groups_per_factor=10, pipeline_seconds=2.0, render_seconds=2.0,
                    growth_sizes=(64, 128), growth_groups=(1, 2), growth_steps=2, studio_size=64, studio_renders=30),
    "full": Preset("full", (96, 48, 24), (48, 96, 96), 200, 20, clamp_sizes=(64, 150), torch_sizes=(64, 150),
                   torch_compile_sizes=(64,), flops_sizes=(64, 150), matmul_size=4096, repeats=5, block_seconds=2.0,
                   pipeline_size=64, pipeline_groups_per_factor=25, pipeline_seconds=5.0, render_seconds=5.0,
                   growth_sizes=(64, 128, 150), growth_groups=(1, 2, 4), growth_steps=3, studio_size=64,
                   studio_renders=50),
}


def model_config(preset: Preset, image_size: int, **fields):
    """The `ModelConfig` of the preset's network at `image_size`; `fields` override the rest (mode, ...)."""
    from dcign_tf.config import ModelConfig

    return ModelConfig(latent_layout=LAYOUT, image_size=image_size, num_latents=preset.num_latents,
                       encoder_filters=preset.encoder_filters, decoder_filters=preset.decoder_filters, **fields)


def synthetic_batch(groups: int, group_size: int, image_size: int, seed: int = 0) -> dict:
    """A batch shaped like the input pipeline's (images in [0, 1], one active factor per group)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return {"images": rng.uniform(size=(groups, group_size, image_size, image_size, 1)).astype(np.float32),
            "active_factor": (np.arange(groups) % len(FACTORS)).astype(np.int32)}


def set_tf_threads(threads: int) -> None:
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:
        pass  # TensorFlow already started (an in-process caller); the report gives the threads in force.


class KerasTrainer:
    """A compiled `dcign_tf.model.DCIGN` and its Keras train function, as `model.fit` runs it."""

    def __init__(self, preset: Preset, image_size: int, mode: str = "dcign", jit_compile: bool = False,
                 precision: str = "float32", implementation: str = "subpixel", groups: int = 1,
                 device: str | None = None, dataset=None):
        import keras
        import tensorflow as tf

        from dcign_tf.model import DCIGN
        from dcign_tf.optimizer import DCIGNRMSprop

        self.images_per_step = groups * preset.group_size
        self.device = device
        previous_policy = keras.mixed_precision.global_policy()
        keras.mixed_precision.set_global_policy(precision)
        try:
            with self._on_device():
                self.model = DCIGN(FACTORS, model_config(preset, image_size, mode=mode,
                                                         decoder_implementation=implementation))
                optimizer = DCIGNRMSprop()
                if precision == "mixed_float16":
                    optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
                self.model.compile(optimizer=optimizer, jit_compile=jit_compile)
                optimizer.build(self.model.trainable_variables)
                self.model.make_train_function()
        finally:
            keras.mixed_precision.set_global_policy(previous_policy)
        if dataset is None:
            dataset = tf.data.Dataset.from_tensors(synthetic_batch(groups, preset.group_size, image_size)).repeat()
        self.iterator = iter(dataset)

    def _on_device(self):
        import tensorflow as tf

        return tf.device(self.device) if self.device else contextlib.nullcontext()

    def run(self, steps: int, iterator=None) -> float:
        iterator = iterator or self.iterator
        with self._on_device():
            start = time.perf_counter()
            for _ in range(steps):
                logs = self.model.train_function(iterator)
            float(logs["loss"])  # waits for the device
            return time.perf_counter() - start


class Bench:
    """One benchmark run: the preset, the threads, and Keras trainers shared between sections."""

    def __init__(self, preset: Preset, threads: int, data_dir: str | None, log=print):
        self.preset = preset
        self.threads = threads
        self.data_dir = data_dir
        self.log = log
        self._trainers = {}

    def trainer(self, image_size: int, **options) -> KerasTrainer:
        defaults = dict(mode="dcign", jit_compile=False, precision="float32", implementation="subpixel", groups=1,
                        device=None)
        key = (image_size, tuple(sorted({**defaults, **options}.items())))
        if key not in self._trainers:
            self._trainers[key] = KerasTrainer(self.preset, image_size, **options)
        return self._trainers[key]

    def keras_contender(self, name: str, image_size: int, **options) -> Contender:
        trainer = self.trainer(image_size, **options)
        return Contender(name, trainer.run, trainer.images_per_step)

    def measure(self, contenders: list[Contender]) -> tuple[dict, dict]:
        """Warm up, interleave; returns ({name: summary}, {name: error})."""
        working, errors = warm_up_all(contenders, self.preset.block_seconds)
        interleave(working, self.preset.repeats)
        return {c.name: c.summary() for c in working}, errors

    def config(self, image_size: int, **fields):
        return model_config(self.preset, image_size, **fields)
