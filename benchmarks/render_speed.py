"""Measures the throughput of the faces graphics engine: sample identities, then render.

    python -m benchmarks.render_speed [--seconds=5] [--processes=N] [--batch=20]   # from the repository root

prints images/s at 64x64 and 150x150 using every core (one process per core, each with
its own copy of the face model built once by the pool initializer).  Every image gets a
fresh random identity, pose and light, which is the worst case for the dataset generator
(a group of 20 images shares one identity, so its normals could be reused).
"""
from __future__ import annotations

import multiprocessing
import os
import sys
import time
from typing import Sequence

import numpy as np
from absl import flags

from dcign_tf import cli
from dcign_tf.data.sources import face_model, rasterizer

PROGRAM = "benchmarks.render_speed"

# Pose and light ranges the throughput is measured over (radians), as in the dataset.
_AZIMUTH_RANGE, _ELEVATION_RANGE, _LIGHT_RANGE = 1.5, 0.4, np.deg2rad(80.0)
# Seconds of untimed rendering per worker before timing starts (caches, page faults).
_WARMUP_SECONDS = 0.3


def _render_one_batch(model, rng, image_size: int, batch: int) -> np.ndarray:
    """Samples ``batch`` identities and poses and renders them: [batch, S, S] float32."""
    shape, albedo = model.sample_identities(rng, batch)
    vertices, albedo = model.instances(shape, albedo)
    return rasterizer.render_batch(
        vertices, model.triangles, albedo,
        rng.uniform(-_AZIMUTH_RANGE, _AZIMUTH_RANGE, batch),
        rng.uniform(-_ELEVATION_RANGE, _ELEVATION_RANGE, batch),
        rng.uniform(-_LIGHT_RANGE, _LIGHT_RANGE, batch), image_size,
        frame_radius=model.frame_radius)


def _render_for(image_size: int, seconds: float, batch: int, seed: int) -> tuple[int, float, float]:
    """Renders batches for ``seconds`` of wall time.

    Returns:
      (images rendered, wall seconds taken, CPU seconds this process used meanwhile).
    """
    model = face_model.procedural_face_model()
    rng = np.random.default_rng(seed)
    warmup_end = time.perf_counter() + _WARMUP_SECONDS
    while time.perf_counter() < warmup_end:
        _render_one_batch(model, rng, image_size, batch)
    images, start, cpu_start = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - start < seconds:
        _render_one_batch(model, rng, image_size, batch)
        images += batch
    return images, time.perf_counter() - start, time.process_time() - cpu_start


_start_barrier = None


def _init_worker(barrier) -> None:
    """Pool initializer: builds (and caches) the face model once per process."""
    global _start_barrier
    _start_barrier = barrier
    face_model.procedural_face_model()


def _timed_worker(args) -> tuple[int, float, float]:
    image_size, seconds, batch, seed = args
    _start_barrier.wait()  # all workers measure the same wall-clock window
    return _render_for(image_size, seconds, batch, seed)


def measure_render_throughput(image_size: int, processes: int | None = None,
                              seconds: float = 5.0, batch: int = 20) -> float:
    """Images per (wall-clock) second of sampling identities + rendering, all processes.

    Args:
      image_size: S of the square images.
      processes: worker processes (default: one per CPU core); 1 runs in this process.
      seconds: how long each worker renders after a short warm-up.
      batch: images per ``render_batch`` call (the dataset generator uses 20).

    Returns:
      Throughput in images per second.
    """
    return _measure(image_size, processes, seconds, batch)[0]


def _measure(image_size: int, processes: int | None, seconds: float, batch: int):
    """Returns (images per wall second, images per CPU second of one process * processes).

    The second number is what the processes would reach with their cores to themselves:
    on a machine shared with other jobs the wall-clock number is lower.
    """
    processes = processes or os.cpu_count() or 1
    if processes == 1:
        images, elapsed, cpu = _render_for(image_size, seconds, batch, seed=0)
        return images / elapsed, images / cpu
    # "spawn" is safe even if the caller has already started threads (e.g. TensorFlow);
    # one BLAS thread per worker, since the workers already occupy every core.
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(processes)
    saved = os.environ.get("OPENBLAS_NUM_THREADS")
    os.environ["OPENBLAS_NUM_THREADS"] = "1"
    try:
        with context.Pool(processes, initializer=_init_worker, initargs=(barrier,)) as pool:
            results = pool.map(_timed_worker, [(image_size, seconds, batch, seed)
                                               for seed in range(processes)], chunksize=1)
    finally:
        if saved is None:
            os.environ.pop("OPENBLAS_NUM_THREADS", None)
        else:
            os.environ["OPENBLAS_NUM_THREADS"] = saved
    wall_rate = sum(images / elapsed for images, elapsed, _ in results)
    cpu_rate = sum(images / cpu for images, _, cpu in results)
    return wall_rate, cpu_rate


def define_flags(flag_values: flags.FlagValues) -> None:
    flags.DEFINE_float("seconds", 5.0, "Timed seconds per size.", flag_values=flag_values)
    flags.DEFINE_integer("processes", None, "Worker processes (default: one per core).", flag_values=flag_values)
    flags.DEFINE_integer("batch", 20, "Images per render call.", flag_values=flag_values)


def body(flag_values: flags.FlagValues) -> None:
    processes = flag_values.processes or os.cpu_count() or 1
    if flag_values.seconds <= 0 or flag_values.batch < 1 or processes < 1:
        raise cli.UsageError("--seconds, --batch and --processes must be positive")
    for image_size in (64, 150):
        wall_rate, cpu_rate = _measure(image_size, processes, flag_values.seconds, flag_values.batch)
        print(f"{image_size}x{image_size}: {wall_rate:7.1f} images/s wall-clock, "
              f"{cpu_rate:7.1f} images/s if the {processes} cores were free "
              f"({processes} processes, batch {flag_values.batch}, load average "
              f"{os.getloadavg()[0]:.1f})")


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the CLI on argv (the program name first; None: sys.argv); returns the exit status."""
    return cli.run(argv, PROGRAM, __doc__, define_flags, body, lambda: ())


if __name__ == "__main__":
    sys.exit(main())
