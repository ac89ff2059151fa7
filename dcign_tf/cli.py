"""Scaffolding shared by the evaluate and render commands: their own absl FlagValues (so they can
share a process with `dcign_tf.train`, which defines the same names globally), `--help`, and one
line on stderr with exit code 2 for anything the user can fix."""

from __future__ import annotations

import sys
from typing import Callable, Sequence

from absl import flags


def usage_error(program: str, message: str) -> int:
    print(f"{program}: error: {message}", file=sys.stderr)
    return 2


def run(argv: Sequence[str] | None, program: str, doc: str, define_flags: Callable[[flags.FlagValues], None],
        body: Callable[[flags.FlagValues], None], user_errors: Callable[[], tuple[type, ...]]) -> int:
    """Parses argv (argv[0] is the program name) and runs `body(flag_values)`; returns the exit status.

    user_errors: returns the exception types to report as one line; called only after a failure, so
      that it can include the types of modules `body` loaded lazily.
    """
    argv = list(sys.argv if argv is None else argv)
    flag_values = flags.FlagValues()
    define_flags(flag_values)
    if any(arg in ("-h", "--help", "--helpshort", "--helpfull") for arg in argv[1:]):
        print(doc)
        print(flag_values.get_help())
        return 0
    try:
        rest = flag_values(argv)
    except flags.Error as error:
        return usage_error(program, str(error))
    if len(rest) > 1:
        return usage_error(program, f"unexpected arguments {rest[1:]}; flags take the form --name=value")
    try:
        body(flag_values)
    except Exception as error:  # noqa: BLE001 - filtered just below
        if isinstance(error, user_errors()):
            return usage_error(program, str(error))
        raise
    return 0
