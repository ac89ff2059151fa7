"""What `--deterministic` costs: the quickstart's training speed with and without it, as a ratio.

    python -m benchmarks.deterministic_cost --data_dir=data/faces_small [--steps=120 --rounds=2]   # repo root

Runs `dcign_tf.train --flagfile=configs/faces_small.flags` for `--steps` steps, alternating without and
with --deterministic (`rounds` times each, in fresh workdirs), and compares the images per second
that each run logs after its first log interval (which holds the tracing). Checks that the two
deterministic runs of a round end with the same weights. Prints one JSON line.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from typing import Sequence

from absl import flags

from dcign_tf import cli

PROGRAM = "benchmarks.deterministic_cost"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def steady_rate(workdir: str) -> float:
    """Mean of train/images_per_second over the run's log intervals but the first."""
    import tensorflow as tf
    from tensorboard.backend.event_processing import event_accumulator

    accumulator = event_accumulator.EventAccumulator(os.path.join(workdir, "train"),
                                                     size_guidance={event_accumulator.TENSORS: 0})
    accumulator.Reload()
    values = [float(tf.make_ndarray(event.tensor_proto)) for event in accumulator.Tensors("train/images_per_second")]
    return statistics.mean(values[1:])


def train(workdir: str, data_dir: str, steps: int, deterministic: bool) -> tuple[float, str]:
    """(steady images per second, final weights' fingerprint) of one run."""
    command = [sys.executable, "-m", "dcign_tf.train", "--flagfile=configs/faces_small.flags", f"--workdir={workdir}",
               f"--data_dir={data_dir}", "--dataset=prebuilt", f"--steps={steps}", "--log_every=10",
               f"--checkpoint_every={steps}", "--eval_every=0", f"--image_every={10 * steps}", "--progress=none",
               f"--deterministic={str(deterministic).lower()}"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"training failed:\n{result.stderr[-3000:]}")
    fingerprint = re.findall(r"fingerprint (\w+)", result.stderr)[-1]
    return steady_rate(workdir), fingerprint


def define_flags(flag_values: flags.FlagValues) -> None:
    flags.DEFINE_string("data_dir", "data/faces_small", "A 64x64 faces dataset with groups of 20 (made by "
                        "python -m dcign_tf.train --flagfile=configs/faces_small.flags).", flag_values=flag_values)
    flags.DEFINE_integer("steps", 120, "Training steps per run.", flag_values=flag_values)
    flags.DEFINE_integer("rounds", 2, "Rounds of four runs (two per mode).", flag_values=flag_values)


def body(flag_values: flags.FlagValues) -> None:
    if not os.path.exists(os.path.join(flag_values.data_dir, "dataset.json")):
        raise cli.UsageError(f"--data_dir={flag_values.data_dir} holds no dataset (no dataset.json); make it with "
                             "python -m dcign_tf.train --flagfile=configs/faces_small.flags or pass another")
    if flag_values.steps < 20 or flag_values.rounds < 1:
        raise cli.UsageError("--steps must be at least 20 (two log intervals after the first) and --rounds positive")
    data_dir = os.path.abspath(flag_values.data_dir)  # the runs start in the repository root
    rates = {False: [], True: []}
    fingerprints = {False: [], True: []}
    with tempfile.TemporaryDirectory() as scratch:
        for round_ in range(flag_values.rounds):
            for deterministic in (False, True, True, False) if round_ % 2 else (True, False, False, True):
                workdir = os.path.join(scratch, f"run{len(rates[False]) + len(rates[True])}")
                rate, fingerprint = train(workdir, data_dir, flag_values.steps, deterministic)
                rates[deterministic].append(rate)
                fingerprints[deterministic].append(fingerprint)
    report = {
        "images_per_second": {"default": statistics.median(rates[False]),
                              "deterministic": statistics.median(rates[True])},
        "ratio_deterministic_over_default": statistics.median(rates[True]) / statistics.median(rates[False]),
        "deterministic_runs_identical": len(set(fingerprints[True])) == 1,
        "default_runs_identical": len(set(fingerprints[False])) == 1,
        "runs_per_mode": len(rates[True]), "steps": flag_values.steps,
    }
    print(json.dumps(report))


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the comparison on argv (the program name first; None: sys.argv); returns the exit status."""
    return cli.run(argv, PROGRAM, __doc__, define_flags, body, lambda: ())


if __name__ == "__main__":
    sys.exit(main())
