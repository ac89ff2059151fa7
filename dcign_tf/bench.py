r"""Benchmarks of the DC-IGN training system, measured side by side in one run.

    python -m dcign_tf.bench --out=bench.json [--size=tiny|small|full] \
        [--sections=clamp,torch,flops,pipeline,renderer,growth] [--markdown] [--data_dir=DIR]
    python -m dcign_tf.bench --render=bench.json --markdown     # re-print a saved report

Sections (each can be selected alone; a section that cannot run says why instead of failing):
  clamp     train-step images/s of DC-IGN (clamped) against the same network trained as a plain VAE.
  torch     the same network and DC-IGN step written in plain PyTorch (benchmarks/torch_reference.py),
            eager and torch.compile, against Keras; skipped when torch is not installed.
  flops     FLOPs per image (paper architecture and executed sub-pixel count) x images/s, as a fraction
            of a large dense matmul's FLOP rate measured in the same run; variants: XLA, bf16, naive
            decoder, and the convolutions in NHWC vs NCHW. A GPU column appears when a GPU is visible.
  pipeline  the tf.data input pipeline alone, and training fed by it against an in-memory batch.
  renderer  images/s of the faces renderer (dcign_tf.data.render_speed) at 64x64 and 150x150.
  growth    step time and peak memory against image size and groups per batch, one fresh process each.

Every timing that is compared is measured interleaved: blocks of steps of each contender in turn
(A B, B A, A B, ...) for several repeats, each block about the same wall time, and the medians are
compared. The machine may be shared with other jobs, so absolute numbers are noisy; ratios hold better, but
not perfectly: each timed number carries `cores_busy` (process CPU seconds per wall second) and each section
the load average at its start, to show how much of the machine a measurement had.
Both frameworks get the same number of threads (--threads, default 2) and the same batch.

--size: tiny is the smoke test (a toy network, seconds); small is the paper's network at 64x64 with
short runs; full is the paper's network (96,48,24 / 48,96,96, 200 latents, groups of 20) at 64x64 and
150x150.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import types
from typing import Callable

from absl import flags

from dcign_tf import cli

SECTIONS = ("clamp", "torch", "flops", "pipeline", "renderer", "growth")
FACTORS = ("azimuth", "elevation", "light", "identity")  # the faces set's factors (make_faces.FACTOR_NAMES)
LAYOUT = "azimuth=0,elevation=1,light=2,identity=rest"
TARGETS = {"clamp": 0.95, "torch_eager": 1.3, "pipeline": 0.95, "render_64": 500.0, "render_150": 150.0}
WORKER_PREFIX = "BENCH_WORKER_RESULT "
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_KEEP_ALIVE = []


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
    # Runs the growth processes at the same time: only for the smoke test, whose timings mean nothing.
    growth_concurrent: bool = False
    flops_variants: tuple[str, ...] = ("float32", "float32_xla", "mixed_bfloat16", "mixed_bfloat16_xla",
                                       "float32_naive_decoder")


PRESETS = {
    "tiny": Preset("tiny", (4, 4, 4), (4, 4, 4), 8, 4, clamp_sizes=(32,), torch_sizes=(32,), torch_compile_sizes=(),
                   flops_sizes=(32,), matmul_size=256, repeats=2, block_seconds=0.02, pipeline_size=32,
                   pipeline_groups_per_factor=2, pipeline_seconds=0.2, render_seconds=0.2, growth_sizes=(32, 48),
                   growth_groups=(1, 2), growth_steps=2, growth_concurrent=True,
                   flops_variants=("float32", "float32_xla", "mixed_bfloat16", "float32_naive_decoder")),
    "small": Preset("small", (96, 48, 24), (48, 96, 96), 200, 20, clamp_sizes=(64,), torch_sizes=(64,),
                    torch_compile_sizes=(64,), flops_sizes=(64,), matmul_size=2048, repeats=3, block_seconds=1.0,
                    pipeline_size=64, pipeline_groups_per_factor=10, pipeline_seconds=2.0, render_seconds=2.0,
                    growth_sizes=(64, 128), growth_groups=(1, 2), growth_steps=2),
    "full": Preset("full", (96, 48, 24), (48, 96, 96), 200, 20, clamp_sizes=(64, 150), torch_sizes=(64, 150),
                   torch_compile_sizes=(64,), flops_sizes=(64, 150), matmul_size=4096, repeats=5, block_seconds=2.0,
                   pipeline_size=64, pipeline_groups_per_factor=25, pipeline_seconds=5.0, render_seconds=5.0,
                   growth_sizes=(64, 128, 150), growth_groups=(1, 2, 4), growth_steps=3),
}


class Skip(Exception):
    """A section (or a variant) that cannot run here; the message says why."""


# ---------------------------------------------------------------------------------------------------------------
# Timing


@dataclasses.dataclass
class Contender:
    """Something timed in an interleaved comparison. `run(n)` does n calls and returns their wall seconds."""

    name: str
    run: Callable[[int], float]
    units_per_call: float  # images (or FLOPs) per call
    first_call_s: float = float("nan")
    calls_per_block: int = 1
    samples: list = dataclasses.field(default_factory=list)
    # CPU seconds of this whole process per wall second in each block: how many cores the contender kept busy
    # (spinning included). Below the thread count when other jobs took the cores.
    cores_busy: list = dataclasses.field(default_factory=list)

    def warm_up(self, block_seconds: float) -> None:
        """The first call (tracing, compiling), then one more to size the timed blocks."""
        self.first_call_s = self.run(1)
        self.calls_per_block = max(1, round(block_seconds / max(self.run(1), 1e-9)))

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    def summary(self, unit: str = "images_per_s") -> dict:
        return {unit: self.median, "samples": self.samples, "calls_per_block": self.calls_per_block,
                "first_call_s": self.first_call_s, "cores_busy": statistics.median(self.cores_busy)}


def interleave(contenders: list[Contender], repeats: int) -> None:
    """Times blocks of each contender in turn, the order reversed every other repeat (A B, B A, ...), so
    that load from other jobs and drift hit all of them alike. Fills each contender's `samples` (rates)."""
    for repeat in range(repeats):
        for contender in (contenders if repeat % 2 == 0 else contenders[::-1]):
            cpu = time.process_time()
            seconds = contender.run(contender.calls_per_block)
            contender.cores_busy.append((time.process_time() - cpu) / seconds)
            contender.samples.append(contender.units_per_call * contender.calls_per_block / seconds)


def warm_up_all(contenders: list[Contender], block_seconds: float) -> tuple[list[Contender], dict]:
    """Warms each contender; returns (the ones that work, {name: error} for the ones that raised)."""
    working, errors = [], {}
    for contender in contenders:
        try:
            contender.warm_up(block_seconds)
            working.append(contender)
        except Exception as error:  # noqa: BLE001 - a failing variant is reported, the rest still run
            errors[contender.name] = _error_text(error)
    return working, errors


def comparison(name: str, numerator: str, numerator_value: float, denominator: str, denominator_value: float,
               unit: str = "images/s", target: float | None = None, note: str | None = None) -> dict:
    """A ratio with the two numbers it is the quotient of, and its target if it has one."""
    entry = {"name": name, "numerator": numerator, "numerator_value": numerator_value, "denominator": denominator,
             "denominator_value": denominator_value, "unit": unit, "ratio": numerator_value / denominator_value}
    if target is not None:
        entry.update(target=target, met=bool(entry["ratio"] >= target))
    if note:
        entry["note"] = note
    return entry


def _error_text(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:300] if text else ''}".rstrip(": ")


# ---------------------------------------------------------------------------------------------------------------
# Keras and PyTorch training steps


def synthetic_batch(groups: int, group_size: int, image_size: int, seed: int = 0) -> dict:
    """A batch shaped like the input pipeline's (images in [0, 1], one active factor per group)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return {"images": rng.uniform(size=(groups, group_size, image_size, image_size, 1)).astype(np.float32),
            "active_factor": (np.arange(groups) % len(FACTORS)).astype(np.int32)}


class KerasTrainer:
    """A compiled `dcign_tf.model.DCIGN` and its Keras train function, as `model.fit` runs it."""

    def __init__(self, preset: Preset, image_size: int, mode: str = "dcign", jit_compile: bool = False,
                 precision: str = "float32", implementation: str = "subpixel", groups: int = 1,
                 device: str | None = None, dataset=None):
        import keras
        import tensorflow as tf

        from dcign_tf.model import DCIGN, UpsampleConv2D
        from dcign_tf.optimizer import DCIGNRMSprop

        self.images_per_step = groups * preset.group_size
        self.device = device
        previous_policy = keras.mixed_precision.global_policy()
        keras.mixed_precision.set_global_policy(precision)
        try:
            with self._on_device():
                self.model = DCIGN(FACTORS, LAYOUT, image_size=image_size, num_latents=preset.num_latents,
                                   encoder_filters=preset.encoder_filters, decoder_filters=preset.decoder_filters,
                                   mode=mode)
                for layer in self.model.decoder.layers:
                    if isinstance(layer, UpsampleConv2D):
                        layer.implementation = implementation  # same weights, same function
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


def import_torch_reference():
    """(torch, benchmarks.torch_reference); Skip when torch is not installed."""
    try:
        import torch  # noqa: F401
    except ImportError:
        raise Skip("PyTorch is not installed (pip install -e '.[torch]', or torch==2.13.0 for the CPU wheel)") from None
    if REPO_ROOT not in sys.path:
        sys.path.insert(0, REPO_ROOT)
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

    # -- 1. clamp overhead ---------------------------------------------------------------------------------------
    def clamp(self) -> dict:
        results = []
        for size in self.preset.clamp_sizes:
            self.log(f"clamp: {size}x{size}")
            measured, errors = self.measure([self.keras_contender("dcign", size, mode="dcign"),
                                             self.keras_contender("baseline", size, mode="baseline")])
            if errors:
                raise RuntimeError(f"{size}x{size}: {errors}")
            results.append({"image_size": size, "measurements": measured, "comparisons": [comparison(
                f"clamp_{size}", "dcign", measured["dcign"]["images_per_s"], "baseline",
                measured["baseline"]["images_per_s"], target=TARGETS["clamp"])]})
        return {"method": "Keras train function (as model.fit runs it) on one in-memory batch, float32, no XLA; "
                          "DC-IGN (mode dcign: clamp + gradient rewrite) vs the same network as a plain VAE "
                          "(mode baseline), interleaved, medians.",
                "results": results}

    # -- 2. PyTorch reference ------------------------------------------------------------------------------------
    def torch(self) -> dict:
        torch, _ = import_torch_reference()
        torch.set_num_threads(self.threads)
        with contextlib.suppress(RuntimeError):  # only settable before torch's first parallel work
            torch.set_num_interop_threads(self.threads)
        from dcign_tf.model import flops_per_image

        results = []
        for size in self.preset.torch_sizes:
            self.log(f"torch: {size}x{size}")
            contenders = [self.keras_contender("keras", size),
                          self.keras_contender("keras_naive_decoder", size, implementation="naive")]
            reference = TorchTrainer(self.preset, size)
            contenders.append(Contender("torch_eager", reference.run, reference.images_per_step))
            compile_note = None
            if size in self.preset.torch_compile_sizes:
                compiled = TorchTrainer(self.preset, size, compile_model=True)
                contenders.append(Contender("torch_compile", compiled.run, compiled.images_per_step))
            else:
                compile_note = (f"torch.compile not run at {size}x{size} with --size={self.preset.name} "
                                f"(compiling takes minutes on 2 cores); sizes with it: "
                                f"{list(self.preset.torch_compile_sizes) or 'none'}")
            measured, errors = self.measure(contenders)
            if "keras" not in measured or "torch_eager" not in measured:
                raise RuntimeError(f"{size}x{size}: {errors}")
            config = self._config(size)
            naive_config = dataclasses.replace(config, decoder_implementation="naive")
            executed = {"keras": flops_per_image(config)["train"],
                        "keras_naive_decoder": flops_per_image(naive_config)["train"]}
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
        return {"method": f"One group of {self.preset.group_size} images per step in both frameworks, "
                          f"{self.threads} threads each (tf.config.threading intra/inter-op; torch.set_num_threads), "
                          "DC-IGN step with the clamp, the invariance-gradient rewrite and the Adam-like optimiser; "
                          "the PyTorch reference (benchmarks/torch_reference.py) is plain NCHW upsample + conv; "
                          "torch.compile wraps its model (forward + loss; backward by AOTAutograd), default mode. "
                          "keras_naive_decoder is the Keras network with the decoder computed the plain way, "
                          "for a same-FLOPs comparison. cores_busy: process CPU seconds per wall second in the timed "
                          "blocks. PyTorch's OpenMP threads meet at barriers, so when other jobs take a core it loses "
                          "more than TensorFlow's work-sharing pool: on a shared machine the ratio comes out larger "
                          "than on an idle one (see cores_busy and the load average).",
                "torch_version": torch.__version__, "results": results}

    def _config(self, size: int):
        from dcign_tf.model import ModelConfig

        return ModelConfig(image_size=size, num_latents=self.preset.num_latents,
                           encoder_filters=self.preset.encoder_filters, decoder_filters=self.preset.decoder_filters)

    # -- 3. fraction of the machine's FLOP rate --------------------------------------------------------------------
    def flops(self) -> dict:
        import tensorflow as tf

        from dcign_tf.model import flops_per_image

        devices = ["CPU"] + (["GPU"] if tf.config.list_physical_devices("GPU") else [])
        results = []
        for device in devices:
            for size in self.preset.flops_sizes:
                self.log(f"flops: {device} {size}x{size}")
                config = self._config(size)
                naive_config = dataclasses.replace(config, decoder_implementation="naive")
                counts = {"paper_architecture": flops_per_image(naive_config),
                          "subpixel_executed": flops_per_image(config)}
                contenders = [self._matmul_contender(device, "float32")]
                low = "bfloat16" if device == "CPU" else "float16"
                contenders.append(self._matmul_contender(device, low))
                variants = {name: options for name, options in _flops_variants(device).items()
                            if name in self.preset.flops_variants or name.replace("float16", "bfloat16")
                            in self.preset.flops_variants}
                for name, options in variants.items():
                    contenders.append(self.keras_contender(
                        name, size, device=None if device == "CPU" else f"/{device}:0", **options))
                measured, errors = self.measure(contenders)
                measured = {name: _rename(entry, "images_per_s", "flop_per_s") if name.startswith("matmul") else entry
                            for name, entry in measured.items()}
                comparisons = []
                for name, options in variants.items():
                    if name not in measured:
                        continue
                    entry = measured[name]
                    naive = options.get("implementation") == "naive"
                    executed = counts["paper_architecture" if naive else "subpixel_executed"]["train"]
                    entry["executed_train_flops_per_image"] = executed
                    entry["executed_flop_per_s"] = entry["images_per_s"] * executed
                    paper = counts["paper_architecture"]["train"]
                    entry["paper_architecture_flop_per_s"] = entry["images_per_s"] * paper
                    matmuls = ["matmul_float32"]
                    if options.get("precision", "float32") != "float32":
                        matmuls.append(f"matmul_{low}")
                    for matmul in matmuls:
                        if matmul not in measured:
                            continue
                        comparisons.append(comparison(
                            f"{name}_executed_fraction_of_{matmul}", f"{name}.executed_flop_per_s",
                            entry["executed_flop_per_s"], f"{matmul}.flop_per_s", measured[matmul]["flop_per_s"],
                            unit="FLOP/s"))
                        comparisons.append(comparison(
                            f"{name}_paper_fraction_of_{matmul}", f"{name}.paper_architecture_flop_per_s",
                            entry["paper_architecture_flop_per_s"], f"{matmul}.flop_per_s",
                            measured[matmul]["flop_per_s"], unit="FLOP/s",
                            note="counts the paper architecture's FLOPs (naive decoder), whatever was executed"))
                    if name != "float32" and "float32" in measured:
                        comparisons.append(comparison(f"{name}_vs_float32", name, entry["images_per_s"], "float32",
                                                      measured["float32"]["images_per_s"]))
                result = {"device": device, "image_size": size, "flops_per_image": counts,
                          "measurements": measured, "comparisons": comparisons}
                if errors:
                    result["errors"] = errors
                results.append(result)
            if device == "CPU":
                results.append(self._layout_result(self.preset.flops_sizes[0]))
        return {"method": "FLOPs per image from the layer shapes (dcign_tf.model.flops_per_image: multiply-adds x 2, "
                          "training = 3 x forward), x images/s, / the FLOP rate of an NxN tf.linalg.matmul timed "
                          f"in the same interleaved loop (N={self.preset.matmul_size}). 'executed' counts what runs "
                          "(sub-pixel decoder: 16 instead of 49 taps); 'paper' counts the paper architecture "
                          "(naive upsample + 7x7 conv) whatever runs. Variants: XLA (jit_compile), "
                          "keras.mixed_precision mixed_bfloat16 (CPU) / mixed_float16 (GPU), naive decoder. "
                          "layout: the network's convolutions alone (encoder convs + pools, sub-pixel decoder convs, "
                          "forward + backward) in NHWC vs NCHW, since the Keras model is NHWC-only "
                          "(depth_to_space has no NCHW CPU kernel; NCHW uses a reshape/transpose).",
                "devices": devices, "results": results}

    def _matmul_contender(self, device: str, dtype: str) -> Contender:
        import tensorflow as tf

        n = self.preset.matmul_size
        with tf.device(f"/{device}:0"):
            a = tf.cast(tf.random.uniform([n, n], -1.0, 1.0, seed=1), dtype)
            b = tf.cast(tf.random.uniform([n, n], -1.0, 1.0, seed=2), dtype)

        @tf.function
        def product():
            with tf.device(f"/{device}:0"):
                return tf.reduce_sum(tf.cast(tf.linalg.matmul(a, b), tf.float32))

        def run(calls):
            start = time.perf_counter()
            for _ in range(calls):
                result = product()
            float(result)
            return time.perf_counter() - start

        return Contender(f"matmul_{dtype}", run, 2.0 * n ** 3)

    def _layout_result(self, size: int) -> dict:
        self.log(f"flops: conv layout {size}x{size}")
        contenders = []
        for data_format in ("NHWC", "NCHW"):
            step = conv_stack_step(self._config(size), self.preset.group_size, data_format)

            def run(calls, step=step):
                start = time.perf_counter()
                for _ in range(calls):
                    result = step()
                float(result)
                return time.perf_counter() - start

            contenders.append(Contender(data_format, run, self.preset.group_size))
        measured, errors = self.measure(contenders)
        result = {"device": "CPU", "image_size": size, "variant": "conv_layout", "measurements": measured,
                  "comparisons": []}
        if "NHWC" in measured and "NCHW" in measured:
            result["comparisons"].append(comparison(f"conv_layout_nchw_vs_nhwc_{size}", "NCHW",
                                                    measured["NCHW"]["images_per_s"], "NHWC",
                                                    measured["NHWC"]["images_per_s"]))
        if errors:
            result["errors"] = errors
        return result

    # -- 4. input pipeline ---------------------------------------------------------------------------------------
    def pipeline(self) -> dict:
        import tensorflow as tf

        from dcign_tf.data import input_pipeline, make_faces

        preset = self.preset
        temporary = None
        data_dir = self.data_dir
        generated_s = None
        if data_dir is None or not os.path.exists(os.path.join(data_dir, "dataset.json")):
            if data_dir is None:
                data_dir = temporary = tempfile.mkdtemp(prefix="dcign_bench_faces_")
            config = make_faces.FacesConfig(image_size=preset.pipeline_size, group_size=preset.group_size,
                                            groups_per_factor=preset.pipeline_groups_per_factor,
                                            test_groups_per_factor=1, num_shards=2)
            self.log(f"pipeline: generating {config.groups_per_factor} groups per factor at "
                     f"{config.image_size}x{config.image_size} in {data_dir}")
            start = time.perf_counter()
            make_faces.generate(data_dir, config, progress=False)
            generated_s = time.perf_counter() - start
        try:
            info = input_pipeline.load_info(data_dir)
            if info.group_size != preset.group_size:
                raise Skip(f"{data_dir} has groups of {info.group_size}; --size={preset.name} trains groups of "
                           f"{preset.group_size}")
            images_per_batch = info.group_size

            def dataset():
                return input_pipeline.make_dataset(data_dir, "train", 1, expected_image_size=info.image_size)

            # The pipeline alone.
            self.log("pipeline: reading alone")
            iterator = iter(dataset())
            for _ in range(3):
                next(iterator)
            batches, start = 0, time.perf_counter()
            while time.perf_counter() - start < preset.pipeline_seconds:
                next(iterator)["images"].numpy()
                batches += 1
            alone = batches * images_per_batch / (time.perf_counter() - start)
            del iterator

            # Training fed by it, against training on one batch held in memory (same model).
            self.log("pipeline: training from the pipeline vs from memory")
            trainer = self.trainer(info.image_size)
            real = iter(dataset())
            memory = iter(tf.data.Dataset.from_tensors(next(real)).repeat())
            measured, errors = self.measure([
                Contender("train_from_pipeline", lambda n: trainer.run(n, real), images_per_batch),
                Contender("train_from_memory", lambda n: trainer.run(n, memory), images_per_batch)])
            if errors:
                raise RuntimeError(str(errors))
            measured["pipeline_alone"] = {"images_per_s": alone, "seconds": preset.pipeline_seconds}
            result = {"data_dir": None if temporary else data_dir, "image_size": info.image_size,
                      "group_size": info.group_size, "groups_per_batch": 1, "dataset_generation_s": generated_s,
                      "measurements": measured,
                      "comparisons": [comparison("train_pipeline_vs_memory", "train_from_pipeline",
                                                 measured["train_from_pipeline"]["images_per_s"], "train_from_memory",
                                                 measured["train_from_memory"]["images_per_s"],
                                                 target=TARGETS["pipeline"])]}
        finally:
            if temporary:
                shutil.rmtree(temporary, ignore_errors=True)
        return {"method": "input_pipeline.make_dataset(train, 1 group per batch) read alone for a fixed time; then "
                          "the same Keras DC-IGN train function fed by that pipeline (one persistent iterator, as "
                          "in a run) vs by tf.data.Dataset.from_tensors(batch).repeat(), interleaved. The pipeline "
                          "shares the cores with training.",
                "results": [result]}

    # -- 5. renderer ---------------------------------------------------------------------------------------------
    def renderer(self) -> dict:
        from dcign_tf.data.render_speed import measure_render_throughput

        measured = {}
        for size in (64, 150):
            self.log(f"renderer: {size}x{size}")
            rate = measure_render_throughput(size, seconds=self.preset.render_seconds)
            target = TARGETS[f"render_{size}"]
            measured[f"render_{size}"] = {"images_per_s": rate, "image_size": size, "target": target,
                                          "met": bool(rate >= target)}
        return {"method": f"dcign_tf.data.render_speed.measure_render_throughput(size, processes=one per core, "
                          f"seconds={self.preset.render_seconds}): sample identities and poses, render, wall clock.",
                "results": [{"measurements": measured, "comparisons": []}]}

    # -- 6. growth -----------------------------------------------------------------------------------------------
    def growth(self) -> dict:
        from dcign_tf.model import flops_per_image

        preset = self.preset
        configs = [(size, preset.growth_groups[0]) for size in preset.growth_sizes]
        configs += [(preset.growth_sizes[0], groups) for groups in preset.growth_groups[1:]]
        tasks = [{"task": "growth", "preset": preset.name, "image_size": size, "groups": groups,
                  "steps": preset.growth_steps, "threads": self.threads} for size, groups in configs]
        if preset.growth_concurrent:
            self.log(f"growth: {len(tasks)} configurations in concurrent fresh processes (smoke test only)")
            entries = run_workers(tasks)
        else:
            entries = []
            for task in tasks:
                self.log(f"growth: {task['image_size']}x{task['image_size']}, {task['groups']} group(s) per batch "
                         "(fresh process)")
                entries.extend(run_workers([task]))
        measured = {}
        for (size, groups), entry in zip(configs, entries):
            entry["train_flops_per_step"] = flops_per_image(self._config(size))["train"] * groups * preset.group_size
            measured[f"size{size}_groups{groups}"] = entry
        base_size, base_groups = preset.growth_sizes[0], preset.growth_groups[0]
        base = measured[f"size{base_size}_groups{base_groups}"]
        comparisons = []
        for name, entry in measured.items():
            if entry is base:
                continue
            base_name = f"size{base_size}_groups{base_groups}"
            comparisons.append(comparison(
                f"step_time_{name}_vs_{base_name}", f"{name}.step_s", entry["step_s"], f"{base_name}.step_s",
                base["step_s"], unit="s",
                note=f"train FLOPs per step grow {entry['train_flops_per_step'] / base['train_flops_per_step']:.2f}x"))
            comparisons.append(comparison(
                f"training_memory_{name}_vs_{base_name}", f"{name}.training_memory_mib", entry["training_memory_mib"],
                f"{base_name}.training_memory_mib", base["training_memory_mib"], unit="MiB"))
        method = ("One fresh Python process per configuration (so one configuration's peak cannot hide another's): "
                  "build the network, optimiser and in-memory batch and note the resident set size (RSS, "
                  "/proc/self/statm); run the first step (tracing, graph optimisation) and note the peak RSS "
                  "(VmHWM); reset the kernel's peak mark (/proc/self/clear_refs '5') and run `steps` timed steps "
                  "(steps_peak_rss_mib: the peak during them). peak_rss_mib is the larger of the two (not "
                  "getrusage ru_maxrss, which after fork + exec still holds the parent's peak) and "
                  "training_memory_mib = peak_rss_mib - the RSS before the first step: "
                  "what training needs on top of the built model (graph, activations, gradients, optimiser "
                  "slots, allocator caches). RSS sees TensorFlow's allocations, which tracemalloc would not. On a "
                  "GPU, tf.config.experimental.get_memory_info('GPU:0')['peak'] is reported too. Not interleaved: "
                  "noisier than the other sections.")
        if preset.growth_concurrent:
            method += " (--size=tiny runs the processes concurrently, so its timings mean nothing.)"
        return {"method": method,
                "results": [{"measurements": measured, "comparisons": comparisons}]}


def _flops_variants(device: str) -> dict[str, dict]:
    if device == "CPU":
        return {"float32": {}, "float32_xla": {"jit_compile": True}, "mixed_bfloat16": {"precision": "mixed_bfloat16"},
                "mixed_bfloat16_xla": {"precision": "mixed_bfloat16", "jit_compile": True},
                "float32_naive_decoder": {"implementation": "naive"}}
    return {"float32": {}, "float32_xla": {"jit_compile": True}, "mixed_float16": {"precision": "mixed_float16"},
            "mixed_float16_xla": {"precision": "mixed_float16", "jit_compile": True},
            "float32_naive_decoder": {"implementation": "naive"}}


def _rename(entry: dict, old: str, new: str) -> dict:
    return {(new if key == old else key): value for key, value in entry.items()}


def conv_stack_step(config, batch: int, data_format: str):
    """A tf.function: forward + backward of the network's convolutions (encoder convs, pools, ReLUs; decoder
    sub-pixel convs, ReLUs) for `batch` images in `data_format`, with random weights. Returns a scalar."""
    import numpy as np
    import tensorflow as tf

    from dcign_tf.model import UpsampleConv2D, decoder_start_size

    channels_first = data_format == "NCHW"
    rng = np.random.default_rng(0)
    padding = config.resolved_encoder_padding.upper()
    def random_kernel(size, channels_in, channels_out):
        return tf.Variable(rng.normal(0, 0.05, (size, size, channels_in, channels_out)).astype("float32"))

    widths = (1,) + tuple(config.encoder_filters)
    encoder_kernels = [random_kernel(5, widths[index], widths[index + 1]) for index in range(3)]
    phase_taps = UpsampleConv2D(1)._phase_taps
    widths = (config.encoder_filters[-1],) + tuple(config.decoder_filters) + (1,)
    decoder_kernels = [random_kernel(7, widths[index], widths[index + 1]) for index in range(4)]
    start = decoder_start_size(config.image_size)

    def shape(n, h, w, c):
        return [n, c, h, w] if channels_first else [n, h, w, c]

    images = tf.constant(rng.uniform(size=shape(batch, config.image_size, config.image_size, 1)).astype("float32"))
    features = tf.constant(rng.uniform(size=shape(batch, start, start, widths[0])).astype("float32"))

    def depth_to_space(x, filters):
        if not channels_first:
            return tf.nn.depth_to_space(x, 2)
        n, _, h, w = x.shape  # channels are (row phase, column phase, filter)
        x = tf.reshape(x, [n, 2, 2, filters, h, w])
        x = tf.transpose(x, [0, 3, 4, 1, 5, 2])
        return tf.reshape(x, [n, filters, 2 * h, 2 * w])

    @tf.function
    @tf.autograph.experimental.do_not_convert  # plain Python loops over layers, nothing to convert
    def step():
        with tf.GradientTape() as tape:
            x = images
            for kernel in encoder_kernels:
                x = tf.nn.conv2d(x, kernel, 1, padding, data_format=data_format)
                x = tf.nn.relu(tf.nn.max_pool2d(x, 2, 2, "VALID", data_format=data_format))
            y = features
            for index, kernel in enumerate(decoder_kernels):
                filters = kernel.shape[-1]
                phase = tf.einsum("pia,qjb,abcd->ijcpqd", phase_taps, phase_taps, kernel)
                phase = tf.reshape(phase, [4, 4, -1, 4 * filters])
                y = depth_to_space(tf.nn.conv2d(y, phase, 1, "VALID", data_format=data_format), filters)
                if index < 3:
                    y = tf.nn.relu(y)
            loss = tf.reduce_sum(x) + tf.reduce_sum(y)
        gradients = tape.gradient(loss, encoder_kernels + decoder_kernels)
        return loss + tf.add_n([tf.reduce_sum(g) for g in gradients])

    return step


# ---------------------------------------------------------------------------------------------------------------
# Worker processes (growth)


def run_workers(tasks: list[dict]) -> list[dict]:
    """Runs each task in a fresh `python -m dcign_tf.bench --worker=...` (all at once) and returns their results."""
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    processes = [subprocess.Popen([sys.executable, "-m", "dcign_tf.bench", f"--worker={json.dumps(task)}"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO_ROOT)
                 for task in tasks]
    results = []
    for task, process in zip(tasks, processes):
        stdout, stderr = process.communicate()
        lines = [line for line in stdout.splitlines() if line.startswith(WORKER_PREFIX)]
        if not lines:
            raise RuntimeError(f"worker {task} failed (exit {process.returncode}): "
                               f"{stderr.strip().splitlines()[-1:] or stdout[-300:]}")
        results.append(json.loads(lines[-1][len(WORKER_PREFIX):]))
    return results


def _current_rss_bytes() -> int:
    with open("/proc/self/statm") as file:
        return int(file.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss_bytes() -> int:
    """The kernel's peak-RSS mark (VmHWM), which `_reset_peak_rss` can lower; ru_maxrss where it is missing."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status") as file:
            for line in file:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux


def _reset_peak_rss() -> bool:
    """Sets the peak-RSS mark to the current RSS (Linux >= 4.0); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as file:
            file.write("5")
        return True
    except OSError:
        return False


def worker(task: dict) -> dict:
    import tensorflow as tf

    set_tf_threads(task["threads"])
    preset = PRESETS[task["preset"]]
    trainer = KerasTrainer(preset, task["image_size"], groups=task["groups"])
    rss_before = _current_rss_bytes()
    first = trainer.run(1)
    first_peak = _peak_rss_bytes()
    reset = _reset_peak_rss()
    seconds = trainer.run(task["steps"])
    steps_peak = _peak_rss_bytes()
    mib = 1024.0 ** 2
    # Not ru_maxrss where VmHWM exists: a child started by fork + exec inherits its parent's peak in ru_maxrss.
    peak = max(steps_peak, first_peak)
    result = {"image_size": task["image_size"], "groups": task["groups"],
              "images_per_step": trainer.images_per_step, "first_step_s": first, "step_s": seconds / task["steps"],
              "images_per_s": trainer.images_per_step * task["steps"] / seconds, "steps": task["steps"],
              "rss_before_training_mib": rss_before / mib, "first_step_peak_rss_mib": first_peak / mib,
              "steps_peak_rss_mib": steps_peak / mib if reset else None, "peak_rss_mib": peak / mib,
              "training_memory_mib": (peak - rss_before) / mib}
    if tf.config.list_physical_devices("GPU"):
        result["gpu_peak_mib"] = tf.config.experimental.get_memory_info("GPU:0")["peak"] / mib
    return result


# ---------------------------------------------------------------------------------------------------------------
# Report


def set_tf_threads(threads: int) -> None:
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:
        pass  # TensorFlow already started (an in-process caller); machine() reports the threads in force.


def machine(threads: int) -> dict:
    import keras
    import numpy as np
    import tensorflow as tf

    cpu_model, flags = platform.processor() or "unknown", set()
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as file:
            for line in file:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and cpu_model in ("unknown", platform.processor()):
                    cpu_model = value.strip()
                if key.strip() == "flags" and not flags:
                    flags = set(value.split())
    info = {"cpu_model": cpu_model, "cores": os.cpu_count(),
            "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "cpu_features": sorted(flags & {"avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16",
                                            "amx_tile"}),
            "python": platform.python_version(), "platform": platform.platform(), "tensorflow": tf.__version__,
            "keras": keras.__version__, "numpy": np.__version__,
            "tf_intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
            "tf_inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
            "threads": threads, "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default (on for x86 Linux)"),
            "gpus": [device.name for device in tf.config.list_physical_devices("GPU")],
            "load_average_start": os.getloadavg()}
    try:
        import torch

        info["torch"] = torch.__version__
    except ImportError:
        info["torch"] = None
    return info


def run_benchmarks(preset: Preset, sections: list[str], threads: int = 2, data_dir: str | None = None,
                   log=print) -> dict:
    set_tf_threads(threads)
    started = time.time()
    report = {"benchmark": "dcign_tf.bench", "size": preset.name, "preset": dataclasses.asdict(preset),
              "created": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "machine": machine(threads), "targets": TARGETS,
              "note": "Ratios are of medians of interleaved blocks measured in this one run; absolute numbers "
                      "depend on what else the machine ran meanwhile (see load_average_*)."}
    bench = Bench(preset, threads, data_dir, log)
    for section in SECTIONS:
        if section not in sections:
            report[section] = {"status": "skipped", "reason": "not selected (--sections)"}
            continue
        section_start = time.perf_counter()
        load_average = os.getloadavg()
        try:
            report[section] = {"status": "ok", **getattr(bench, section)()}
        except Skip as reason:
            report[section] = {"status": "skipped", "reason": str(reason)}
        except Exception as error:  # noqa: BLE001 - one broken section must not lose the others
            report[section] = {"status": "error", "reason": _error_text(error),
                               "traceback": traceback.format_exc()[-2000:]}
        report[section]["seconds"] = time.perf_counter() - section_start
        report[section]["load_average_at_start"] = load_average
        log(f"{section}: {report[section]['status']} ({report[section]['seconds']:.0f} s)")
    report["machine"]["load_average_end"] = os.getloadavg()
    report["seconds"] = time.time() - started
    # Tearing down the trainers (traced functions, compiled models, input pipelines) can take a minute on a busy
    # machine and serves nothing: they live as long as the process.
    _KEEP_ALIVE.append(bench)
    return report


def _format(value, unit: str = "") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if unit in ("FLOP/s", "flop_per_s"):
        return f"{value / 1e9:.1f} GFLOP/s"
    if abs(value) >= 100:
        text = f"{value:.0f}"
    elif abs(value) >= 10:
        text = f"{value:.1f}"
    else:
        text = f"{value:.3g}"
    return f"{text} {unit}".strip()


def table_rows(report: dict) -> list[tuple[str, str, str, str, str, str]]:
    """(section, what, value, ratio, target, met) rows of the report's headline numbers."""
    rows = []
    for section in SECTIONS:
        block = report.get(section, {})
        if block.get("status") != "ok":
            rows.append((section, f"{block.get('status', 'missing')}: {block.get('reason', '')}", "", "", "", ""))
            continue
        for result in block["results"]:
            where = " ".join(part for part in (
                result.get("device") if result.get("device", "CPU") != "CPU" else None,
                f"{result['image_size']}px" if "image_size" in result else None, result.get("variant")) if part)
            for name, entry in result["measurements"].items():
                if "images_per_s" in entry:
                    value = _format(entry["images_per_s"], "img/s")
                    if "cores_busy" in entry:
                        value += f" ({entry['cores_busy']:.1f} cores busy)"
                    if "step_s" in entry:
                        value += (f", {_format(entry['step_s'], 's')}/step, peak RSS {entry['peak_rss_mib']:.0f} "
                                  f"MiB (training +{entry['training_memory_mib']:.0f})")
                elif "flop_per_s" in entry:
                    value = _format(entry["flop_per_s"], "FLOP/s")
                else:
                    continue
                target = entry.get("target")
                rows.append((section, f"{where} {name}".strip(), value, "", _format(target) if target else "",
                             ("yes" if entry["met"] else "NO") if "met" in entry else ""))
            for entry in result["comparisons"]:
                rows.append((section, f"{where} {entry['numerator']} / {entry['denominator']}".strip(), "",
                             f"{entry['ratio']:.3f}", _format(entry.get("target")) if "target" in entry else "",
                             ("yes" if entry["met"] else "NO") if "met" in entry else ""))
            for key in ("torch_compile_error", "torch_compile_skipped"):
                if key in result:
                    rows.append((section, f"{where} torch_compile", result[key][:120], "", "", ""))
            for name, error in result.get("errors", {}).items():
                rows.append((section, f"{where} {name}", f"failed: {error[:120]}", "", "", ""))
    return rows


HEADER = ("section", "measurement", "value", "ratio", "target", "met")


def format_table(report: dict) -> str:
    rows = [HEADER] + table_rows(report)
    widths = [min(70, max(len(row[i]) for row in rows)) for i in range(len(HEADER))]
    lines = ["  ".join(cell[:70].ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def format_markdown(report: dict) -> str:
    m = report["machine"]
    lines = [f"Measured with `python -m dcign_tf.bench --size={report['size']}` on {m['cpu_model']} "
             f"({m['cores']} cores, {m['threads']} threads per framework), TensorFlow {m['tensorflow']}, "
             f"Keras {m['keras']}" + (f", PyTorch {m['torch']}" if m.get("torch") else "") +
             f"; load average {m['load_average_start'][0]:.1f} at the start (a shared machine: compare ratios, "
             "which were measured side by side, rather than absolute numbers).", "",
             "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for row in table_rows(report):
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |")
    return "\n".join(lines)


PROGRAM = "dcign_tf.bench"


def define_flags(flag_values: flags.FlagValues) -> None:
    fv = flag_values
    flags.DEFINE_string("out", None, "Write the JSON report here.", flag_values=fv)
    flags.DEFINE_enum("size", "full", sorted(PRESETS), "tiny (a smoke test), small or full.", flag_values=fv)
    flags.DEFINE_string("sections", ",".join(SECTIONS), f"Comma-separated, from {','.join(SECTIONS)} (default: all).",
                        flag_values=fv)
    flags.DEFINE_bool("markdown", False, "Also print the table as Markdown (for README.md).", flag_values=fv)
    flags.DEFINE_string("data_dir", None, "Faces dataset for the pipeline section, made there if missing "
                        "(default: a small one generated in a temporary directory).", flag_values=fv)
    flags.DEFINE_integer("threads", 2, "Threads per framework (TF intra/inter-op, torch).", flag_values=fv)
    flags.DEFINE_integer("repeats", None, "Interleaved repeats (default: the size's).", flag_values=fv)
    flags.DEFINE_float("block_seconds", None, "Seconds per timed block (default: the size's).", flag_values=fv)
    flags.DEFINE_string("render", None, "Print the tables of a saved report (REPORT.json) and exit.", flag_values=fv)
    flags.DEFINE_string("worker", None, "Internal: one growth task as JSON, run in a fresh process.", flag_values=fv)


def arguments(flag_values: flags.FlagValues) -> types.SimpleNamespace:
    """The parsed flags as attributes, `sections` as a list; cli.UsageError for bad combinations."""
    args = types.SimpleNamespace(**{name: flag_values[name].value for name in flag_values})
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = [s for s in args.sections if s not in SECTIONS]
    if unknown:
        raise cli.UsageError(f"unknown sections {unknown}; choose from {','.join(SECTIONS)}")
    if not (args.out or args.render or args.worker):
        raise cli.UsageError("--out=FILE.json is required")
    return args


def parse_args(argv) -> types.SimpleNamespace:
    """argv: the arguments after the program name. Exits (status 2, one line on stderr) on bad arguments,
    and with 0 after --help."""
    parsed = []
    status = cli.run([PROGRAM, *argv], PROGRAM, __doc__, define_flags, lambda fv: parsed.append(arguments(fv)),
                     lambda: ())
    if not parsed:
        sys.exit(status)
    return parsed[0]


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.worker:
        print(WORKER_PREFIX + json.dumps(worker(json.loads(args.worker))), flush=True)
        return 0
    if args.render:
        try:
            with open(args.render, encoding="utf-8") as file:
                report = json.load(file)
        except (OSError, ValueError) as error:
            return cli.usage_error(PROGRAM, f"--render={args.render}: cannot read a report ({error})")
    else:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        preset = PRESETS[args.size]
        overrides = {key: getattr(args, key) for key in ("repeats", "block_seconds") if getattr(args, key) is not None}
        preset = dataclasses.replace(preset, **overrides)

        def log(message):
            print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

        report = run_benchmarks(preset, args.sections, args.threads, args.data_dir, log)
        log("writing the report")
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w", encoding="utf-8") as file:
            json.dump(report, file, indent=1, allow_nan=False)
    print(format_table(report))
    if args.markdown:
        print()
        print(format_markdown(report))
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # Skips interpreter teardown: destroying TensorFlow's and PyTorch's runtimes can take many seconds on a busy
    # machine, and everything is written already.
    os._exit(code)
