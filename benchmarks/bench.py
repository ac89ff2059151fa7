r"""Benchmarks of the DC-IGN training system, measured side by side in one run. From the repository root:

    python -m benchmarks.bench --out=bench.json [--size=tiny|small|full] \
        [--sections=clamp,torch,flops,pipeline,renderer,studio,growth] [--markdown] [--data_dir=DIR]
    python -m benchmarks.bench --render=bench.json --markdown     # re-print a saved report

Sections (each can be selected alone; a section that cannot run says why instead of failing), one module each
in benchmarks/sections/:
  clamp     train-step images/s of DC-IGN (clamped) against the same network trained as a plain VAE.
  torch     the same network and DC-IGN step written in plain PyTorch (benchmarks/torch_reference.py),
            eager and torch.compile, against Keras; skipped when torch is not installed.
  flops     FLOPs per image (paper architecture and executed sub-pixel count) x images/s, as a fraction
            of a large dense matmul's FLOP rate measured in the same run; variants: XLA, bf16, naive
            decoder, and the convolutions in NHWC vs NCHW. A GPU column appears when a GPU is visible.
  pipeline  the tf.data input pipeline alone, and training fed by it against an in-memory batch.
  renderer  images/s of the faces renderer (benchmarks.render_speed) at 64x64 and 150x150.
  studio    the studio's render latency: milliseconds per slider move (dcign_tf.studio.render_latency).
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

import dataclasses
import json
import os
import sys
import time
import traceback
import types
from typing import Sequence

from absl import flags

from benchmarks import report as report_lib
from benchmarks.harness import PRESETS, TARGETS, Bench, Preset, set_tf_threads
from benchmarks.sections import clamp, flops, growth, pipeline, renderer, studio, torch_comparison
from benchmarks.timing import Skip, error_text
from dcign_tf import cli

PROGRAM = "benchmarks.bench"
# Section name (--sections, and the report's key) -> its run(bench), in the order they run and print.
SECTIONS = {"clamp": clamp.run, "torch": torch_comparison.run, "flops": flops.run, "pipeline": pipeline.run,
            "renderer": renderer.run, "studio": studio.run, "growth": growth.run}
_KEEP_ALIVE = []


def run_benchmarks(preset: Preset, sections: list[str], threads: int = 2, data_dir: str | None = None,
                   log=print) -> dict:
    """The report (JSON-serialisable) of the `sections` run at `preset`; the others are marked skipped."""
    set_tf_threads(threads)
    started = time.time()
    report = {"benchmark": PROGRAM, "size": preset.name, "preset": dataclasses.asdict(preset),
              "created": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "machine": report_lib.machine(threads),
              "targets": TARGETS,
              "note": "Ratios are of medians of interleaved blocks measured in this one run; absolute numbers "
                      "depend on what else the machine ran meanwhile (see load_average_*)."}
    bench = Bench(preset, threads, data_dir, log)
    for section, run_section in SECTIONS.items():
        if section not in sections:
            report[section] = {"status": "skipped", "reason": "not selected (--sections)"}
            continue
        section_start = time.perf_counter()
        load_average = os.getloadavg()
        try:
            report[section] = {"status": "ok", **run_section(bench)}
        except Skip as reason:
            report[section] = {"status": "skipped", "reason": str(reason)}
        except Exception as error:  # noqa: BLE001 - one broken section must not lose the others
            report[section] = {"status": "error", "reason": error_text(error),
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


def format_table(report: dict) -> str:
    return report_lib.format_table(report, SECTIONS)


def format_markdown(report: dict) -> str:
    return report_lib.format_markdown(report, SECTIONS, f"python -m {PROGRAM}")


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


def _read_report(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as file:
            return json.load(file)
    except (OSError, ValueError) as error:
        raise cli.UsageError(f"--render={path}: cannot read a report ({error})") from None


def body(flag_values: flags.FlagValues) -> int:
    args = arguments(flag_values)
    if args.worker:
        print(growth.WORKER_PREFIX + json.dumps(growth.worker(json.loads(args.worker))), flush=True)
        return 0
    if args.render:
        report = _read_report(args.render)
    else:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        overrides = {key: getattr(args, key) for key in ("repeats", "block_seconds") if getattr(args, key) is not None}
        preset = dataclasses.replace(PRESETS[args.size], **overrides)

        def log(message):
            print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

        report = run_benchmarks(preset, args.sections, args.threads, args.data_dir, log)
        log("writing the report")
        from dcign_tf.io_utils import write_text_atomic

        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        write_text_atomic(args.out, json.dumps(report, indent=1, allow_nan=False))
    print(format_table(report))
    if args.markdown:
        print()
        print(format_markdown(report))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the benchmark on argv (the program name first; None: sys.argv); returns the exit status."""
    return cli.run(argv, PROGRAM, __doc__, define_flags, body, lambda: ())


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # Skips interpreter teardown: destroying TensorFlow's and PyTorch's runtimes can take many seconds on a busy
    # machine, and everything is written already.
    os._exit(code)
