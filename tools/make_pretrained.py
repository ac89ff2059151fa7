r"""Packs a trained and evaluated run as the committed quickstart model (pretrained/faces_small).

    python -m tools.make_pretrained --workdir=RUN [--out=pretrained/faces_small]    # from the repository root

RUN must have been trained (export/) and evaluated (eval/metrics.json, with the calibration saved into
its export). The model is exported again without the optimizer's state (dcign_tf.export), next to the
run's flags.txt and metrics.json and a COMMAND file saying how it was made. The whole directory is
written aside and renamed over --out, so a failure leaves the old model in place.
"""
from __future__ import annotations

import os
import shutil
import sys
from typing import Sequence

from absl import flags

from dcign_tf import cli, io_utils

PROGRAM = "tools.make_pretrained"
MAX_MEGABYTES = 10.0  # what the repository takes for its one pretrained model


def define_flags(flag_values: flags.FlagValues) -> None:
    flags.DEFINE_string("workdir", None, "The trained and evaluated run.", flag_values=flag_values)
    flags.DEFINE_string("out", "pretrained/faces_small", "The model directory to write.", flag_values=flag_values)
    flags.DEFINE_string("command", None, "How RUN was made, written to COMMAND (default: read from "
                        "RUN/COMMAND, else the training and evaluation commands its flags.txt implies).",
                        flag_values=flag_values)


def default_command(workdir: str) -> str:
    return (f"python -m dcign_tf.train --flagfile=configs/faces_small.flags --workdir={workdir}\n"
            f"python -m dcign_tf.evaluate --workdir={workdir} --groups_per_factor=0\n")


def directory_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(path) for name in names)


def body(flag_values: flags.FlagValues) -> None:
    workdir, out = flag_values.workdir, flag_values.out.rstrip("/")
    if not workdir:
        raise cli.UsageError("--workdir=RUN is required: a trained and evaluated run")
    needed = [os.path.join(workdir, "export", "model_info.json"), os.path.join(workdir, "flags.txt"),
              os.path.join(workdir, "eval", "metrics.json")]
    missing = [path for path in needed if not os.path.exists(path)]
    if missing:
        raise cli.UsageError(f"{missing[0]} is missing: train RUN to the end and run python -m dcign_tf.evaluate "
                             f"--workdir={workdir} first")
    from dcign_tf import export as export_lib  # TensorFlow loads here, after the checks.

    model, info = export_lib.load_model(os.path.join(workdir, "export"))
    if "calibration" not in info:
        raise cli.UsageError(f"{workdir}/export has no calibration: evaluate it without --nocalibrate first")
    command = flag_values.command
    if command is None:
        recorded = os.path.join(workdir, "COMMAND")
        command = open(recorded, encoding="utf-8").read() if os.path.exists(recorded) else default_command(workdir)
    temporary = f"{out}.tmp-{os.getpid()}"
    shutil.rmtree(temporary, ignore_errors=True)
    try:
        export_lib.export_model(model, temporary, info)
        for name, source in (("flags.txt", needed[1]), ("metrics.json", needed[2])):
            shutil.copyfile(source, os.path.join(temporary, name))
        io_utils.write_text_atomic(os.path.join(temporary, "COMMAND"), command.rstrip("\n") + "\n")
        size = directory_bytes(temporary)
        if size > MAX_MEGABYTES * 1e6:
            raise cli.UsageError(f"the model takes {size / 1e6:.1f} MB, over the {MAX_MEGABYTES:g} MB the repository "
                                 "allows; train a smaller one")
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    export_lib.replace_directory(temporary, out)
    print(f"wrote {out} ({size / 1e6:.1f} MB) from {workdir} at step {info.get('step')}")


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the CLI on argv (the program name first; None: sys.argv); returns the exit status."""
    return cli.run(argv, PROGRAM, __doc__, define_flags, body, lambda: (OSError,))


if __name__ == "__main__":
    sys.exit(main())
