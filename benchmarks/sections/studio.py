"""The studio's render latency: milliseconds per slider move (`dcign_tf.studio.render_latency`: what
/api/render computes, PNG encoding included, HTTP excluded) on a run of the preset's network."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

from benchmarks.harness import REPO_ROOT, TARGETS, Bench


def _train_one_step(bench: Bench, workdir: str, data_dir: str) -> None:
    """A one-step run of the preset's network at its studio size, exported: the render's cost does not depend
    on what the weights learned. `python -m dcign_tf.train` builds the small faces set it reads."""
    preset, size = bench.preset, bench.preset.studio_size
    command = [sys.executable, "-m", "dcign_tf.train", f"--workdir={workdir}", f"--data_dir={data_dir}",
               "--dataset=faces", f"--image_size={size}", f"--group_size={preset.group_size}",
               "--dataset_groups_per_factor=2", "--dataset_test_groups_per_factor=2", "--dataset_num_shards=1",
               f"--num_latents={preset.num_latents}", f"--encoder_filters={','.join(map(str, preset.encoder_filters))}",
               f"--decoder_filters={','.join(map(str, preset.decoder_filters))}", "--groups_per_batch=1", "--steps=1",
               "--log_every=1", "--checkpoint_every=1", "--image_every=1000", "--eval_every=0", "--progress=none"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"training the studio's run failed (exit {result.returncode}): "
                           f"{result.stderr.strip().splitlines()[-1:]}")


def run(bench: Bench) -> dict:
    from dcign_tf import studio as studio_lib

    preset, size = bench.preset, bench.preset.studio_size
    with tempfile.TemporaryDirectory(prefix="dcign_bench_studio_") as scratch:
        workdir = os.path.join(scratch, "run")
        bench.log(f"studio: a one-step run at {size}x{size}")
        _train_one_step(bench, workdir, os.path.join(scratch, "data"))
        studio = studio_lib.Studio(workdir, log=lambda line: None)
        if not studio.ready:
            raise RuntimeError("; ".join(message["text"] for message in studio.messages))
        bench.log(f"studio: {preset.studio_renders} slider moves")
        milliseconds = studio_lib.render_latency(studio, renders=preset.studio_renders)
    target = TARGETS["studio_ms"]
    return {"method": f"dcign_tf.studio.render_latency(studio, renders={preset.studio_renders}): the median wall "
                      "time of one slider move of the first factor on gallery face 0 (what /api/render computes, "
                      "PNG encoding included, HTTP excluded; the first move, which traces, is not counted), in "
                      f"this process with {bench.threads} TensorFlow threads, on a run of the preset's network "
                      f"at {size}x{size} trained for one step (the cost does not depend on the weights). The "
                      "target is an upper bound.",
            "results": [{"image_size": size, "measurements": {"slider_move": {
                "ms_per_render": milliseconds, "renders": preset.studio_renders, "target_ms": target,
                "met": bool(milliseconds <= target)}}, "comparisons": []}]}
