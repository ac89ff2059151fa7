"""What `--deterministic` costs: the quickstart's training speed with and without it, as a ratio.

    python benchmarks/deterministic_cost.py --data_dir=data/faces_small [--steps=120 --rounds=2]

Runs `dcign_tf.train --flagfile=configs/faces_small.flags` for `--steps` steps, alternating without and
with --deterministic (`rounds` times each, in fresh workdirs), and compares the images per second
that each run logs after its first log interval (which holds the tracing). Checks that the two
deterministic runs of a round end with the same weights. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile

import tensorflow as tf
from tensorboard.backend.event_processing import event_accumulator

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def steady_rate(workdir: str) -> float:
    """Mean of train/images_per_second over the run's log intervals but the first."""
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", default="data/faces_small", help="a 64x64 dataset with groups of 20")
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    rates = {False: [], True: []}
    fingerprints = {False: [], True: []}
    with tempfile.TemporaryDirectory() as scratch:
        for round_ in range(args.rounds):
            for deterministic in (False, True, True, False) if round_ % 2 else (True, False, False, True):
                workdir = os.path.join(scratch, f"run{len(rates[False]) + len(rates[True])}")
                rate, fingerprint = train(workdir, args.data_dir, args.steps, deterministic)
                rates[deterministic].append(rate)
                fingerprints[deterministic].append(fingerprint)
    report = {
        "images_per_second": {"default": statistics.median(rates[False]),
                              "deterministic": statistics.median(rates[True])},
        "ratio_deterministic_over_default": statistics.median(rates[True]) / statistics.median(rates[False]),
        "deterministic_runs_identical": len(set(fingerprints[True])) == 1,
        "default_runs_identical": len(set(fingerprints[False])) == 1,
        "runs_per_mode": len(rates[True]), "steps": args.steps,
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
