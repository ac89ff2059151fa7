"""Memory and step time against image size and groups per batch, one fresh process per configuration."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import subprocess
import sys

from benchmarks.harness import PRESETS, REPO_ROOT, Bench, KerasTrainer, set_tf_threads
from benchmarks.timing import comparison

WORKER_PREFIX = "BENCH_WORKER_RESULT "
MIB = 1024.0 ** 2


def run_workers(tasks: list[dict]) -> list[dict]:
    """Runs each task in a fresh `python -m benchmarks.bench --worker=...` (all at once) and returns their results."""
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    processes = [subprocess.Popen([sys.executable, "-m", "benchmarks.bench", f"--worker={json.dumps(task)}"],
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
    """One configuration, in this (fresh) process: the step times and the memory training took, in MiB."""
    import tensorflow as tf

    set_tf_threads(task["threads"])
    trainer = KerasTrainer(PRESETS[task["preset"]], task["image_size"], groups=task["groups"])
    rss_before = _current_rss_bytes()
    first = trainer.run(1)
    first_peak = _peak_rss_bytes()
    reset = _reset_peak_rss()
    seconds = trainer.run(task["steps"])
    steps_peak = _peak_rss_bytes()
    # Not ru_maxrss where VmHWM exists: a child started by fork + exec inherits its parent's peak in ru_maxrss.
    peak = max(steps_peak, first_peak)
    result = {"image_size": task["image_size"], "groups": task["groups"],
              "images_per_step": trainer.images_per_step, "first_step_s": first, "step_s": seconds / task["steps"],
              "images_per_s": trainer.images_per_step * task["steps"] / seconds, "steps": task["steps"],
              "rss_before_training_mib": rss_before / MIB, "first_step_peak_rss_mib": first_peak / MIB,
              "steps_peak_rss_mib": steps_peak / MIB if reset else None, "peak_rss_mib": peak / MIB,
              "training_memory_mib": (peak - rss_before) / MIB}
    if tf.config.list_physical_devices("GPU"):
        result["gpu_peak_mib"] = tf.config.experimental.get_memory_info("GPU:0")["peak"] / MIB
    return result


def run(bench: Bench) -> dict:
    from dcign_tf.model import flops_per_image

    preset = bench.preset
    configs = [(size, preset.growth_groups[0]) for size in preset.growth_sizes]
    configs += [(preset.growth_sizes[0], groups) for groups in preset.growth_groups[1:]]
    tasks = [{"task": "growth", "preset": preset.name, "image_size": size, "groups": groups,
              "steps": preset.growth_steps, "threads": bench.threads} for size, groups in configs]
    if preset.growth_concurrent:
        bench.log(f"growth: {len(tasks)} configurations in concurrent fresh processes (smoke test only)")
        entries = run_workers(tasks)
    else:
        entries = []
        for task in tasks:
            bench.log(f"growth: {task['image_size']}x{task['image_size']}, {task['groups']} group(s) per batch "
                      "(fresh process)")
            entries.extend(run_workers([task]))
    measured = {}
    for (size, groups), entry in zip(configs, entries):
        entry["train_flops_per_step"] = flops_per_image(bench.config(size))["train"] * groups * preset.group_size
        measured[f"size{size}_groups{groups}"] = entry
    base_name = f"size{preset.growth_sizes[0]}_groups{preset.growth_groups[0]}"
    base = measured[base_name]
    comparisons = []
    for name, entry in measured.items():
        if entry is base:
            continue
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
    return {"method": method, "results": [{"measurements": measured, "comparisons": comparisons}]}
