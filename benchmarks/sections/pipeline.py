"""The tf.data input pipeline alone, and training fed by it against training on an in-memory batch."""

from __future__ import annotations

import os
import shutil
import tempfile
import time

from benchmarks.harness import TARGETS, Bench
from benchmarks.timing import Contender, Skip, comparison


def _faces_dataset(bench: Bench) -> tuple[str, str | None, float | None]:
    """(data_dir, the temporary directory to remove or None, seconds spent generating it or None): --data_dir,
    made there if it has no dataset yet, else a small one generated in a temporary directory."""
    from dcign_tf.data.sources import faces

    preset, data_dir, temporary = bench.preset, bench.data_dir, None
    if data_dir is not None and os.path.exists(os.path.join(data_dir, "dataset.json")):
        return data_dir, None, None
    if data_dir is None:
        data_dir = temporary = tempfile.mkdtemp(prefix="dcign_bench_faces_")
    config = faces.FacesConfig(image_size=preset.pipeline_size, group_size=preset.group_size,
                                    groups_per_factor=preset.pipeline_groups_per_factor,
                                    test_groups_per_factor=1, num_shards=2)
    bench.log(f"pipeline: generating {config.groups_per_factor} groups per factor at "
              f"{config.image_size}x{config.image_size} in {data_dir}")
    start = time.perf_counter()
    faces.generate(data_dir, config, progress=False)
    return data_dir, temporary, time.perf_counter() - start


def run(bench: Bench) -> dict:
    data_dir, temporary, generated_s = _faces_dataset(bench)
    try:
        result = _measure(bench, data_dir, temporary is not None, generated_s)
    finally:
        if temporary:
            shutil.rmtree(temporary, ignore_errors=True)
    return {"method": "input_pipeline.make_dataset(train, 1 group per batch) read alone for a fixed time; then "
                      "the same Keras DC-IGN train function fed by that pipeline (one persistent iterator, as "
                      "in a run) vs by tf.data.Dataset.from_tensors(batch).repeat(), interleaved. The pipeline "
                      "shares the cores with training.",
            "results": [result]}


def _measure(bench: Bench, data_dir: str, temporary: bool, generated_s: float | None) -> dict:
    import tensorflow as tf

    from dcign_tf.data import input_pipeline

    preset = bench.preset
    info = input_pipeline.load_info(data_dir)
    if info.group_size != preset.group_size:
        raise Skip(f"{data_dir} has groups of {info.group_size}; --size={preset.name} trains groups of "
                   f"{preset.group_size}")
    images_per_batch = info.group_size

    def dataset():
        return input_pipeline.make_dataset(data_dir, "train", 1, expected_image_size=info.image_size)

    # The pipeline alone.
    bench.log("pipeline: reading alone")
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
    bench.log("pipeline: training from the pipeline vs from memory")
    trainer = bench.trainer(info.image_size)
    real = iter(dataset())
    memory = iter(tf.data.Dataset.from_tensors(next(real)).repeat())
    measured, errors = bench.measure([
        Contender("train_from_pipeline", lambda n: trainer.run(n, real), images_per_batch),
        Contender("train_from_memory", lambda n: trainer.run(n, memory), images_per_batch)])
    if errors:
        raise RuntimeError(str(errors))
    measured["pipeline_alone"] = {"images_per_s": alone, "seconds": preset.pipeline_seconds}
    return {"data_dir": None if temporary else data_dir, "image_size": info.image_size,
            "group_size": info.group_size, "groups_per_batch": 1, "dataset_generation_s": generated_s,
            "measurements": measured,
            "comparisons": [comparison("train_pipeline_vs_memory", "train_from_pipeline",
                                       measured["train_from_pipeline"]["images_per_s"], "train_from_memory",
                                       measured["train_from_memory"]["images_per_s"], target=TARGETS["pipeline"])]}
