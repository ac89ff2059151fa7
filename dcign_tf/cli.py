"""Flag parsing shared by every dcign_tf command: one line on stderr and exit code 2 for anything the
user can fix, instead of absl's "FATAL Flags parsing error" (exit 1) or a traceback.

Every entry point is a module ending in `main(argv) -> int: return cli.run(argv, PROGRAM, __doc__,
define_flags, body, user_error_types)`: its flags are defined in a FlagValues of its own, at run time
(no module defines flags when imported, so the commands can share a process), and parsed by `parse`.

Flagfiles are checked before absl reads them: a missing, unreadable or non-text flagfile, and a
flagfile that includes itself (directly or through others; absl would skip it with a warning and go
on with the defaults), are refused with one line naming the file.
"""

from __future__ import annotations

import os
import sys
from typing import Callable, Sequence

from absl import flags

EXIT_USAGE = 2
FLAGS_HINT = "(--helpfull lists the flags)"


class UsageError(ValueError):
    """A command line that cannot run as given; the message is one line saying what to change."""


def usage_error(program: str, message: str) -> int:
    """Prints `program: error: message` as one line on stderr; returns the exit status 2."""
    print(f"{program}: error: {one_line(message)}", file=sys.stderr)
    return EXIT_USAGE


def one_line(message: str) -> str:
    """`message` with its lines joined by "; " (absl's and TF's messages can span lines)."""
    return "; ".join(line.strip() for line in str(message).splitlines() if line.strip()) or "no message"


def _flagfile_name(arg: str, next_arg: str | None) -> tuple[str | None, bool]:
    """(the file a --flagfile argument names, whether it consumed the next argument), as absl reads it."""
    for prefix in ("--flagfile=", "-flagfile="):
        if arg.startswith(prefix):
            return os.path.expanduser(arg[len(prefix):].strip()), False
    if arg in ("--flagfile", "-flagfile"):
        if next_arg is None:
            raise UsageError("--flagfile needs a file name: --flagfile=FILE")
        return os.path.expanduser(next_arg), True
    return None, False


def check_flagfiles(args: Sequence[str]) -> None:
    """Follows every --flagfile in `args` (argv without the program name) and in the files it names,
    as absl will; raises UsageError for a missing, unreadable or non-text flagfile and for a cycle."""

    def visit(path: str, chain: list[tuple[str, str]]) -> None:
        """chain: (real path, name as written) of the flagfiles that led here."""
        real = os.path.realpath(path)
        reals = [real_path for real_path, _ in chain]
        if real in reals:
            cycle = " -> ".join([*(name for _, name in chain[reals.index(real):]), path])
            raise UsageError(f"--flagfile={path} includes itself ({cycle}); remove the --flagfile line that "
                             "closes the loop")
        try:
            with open(path, encoding="utf-8") as file:
                lines = file.readlines()
        except FileNotFoundError:
            raise UsageError(f"--flagfile={path}: no such file") from None
        except UnicodeDecodeError:
            raise UsageError(f"--flagfile={path} is not a text file of --name=value lines") from None
        except OSError as error:
            raise UsageError(f"--flagfile={path}: cannot read it ({error.strerror or error})") from None
        for line in lines:
            if line.isspace() or line.startswith(("#", "//")):
                continue  # absl's comment rule: only at the start of a line.
            name, _ = _flagfile_name(line, None)  # absl matches the unstripped line, as here.
            if name:
                visit(name, [*chain, (real, path)])

    index = 0
    while index < len(args):
        if args[index] == "--":
            return
        name, consumed = _flagfile_name(args[index], args[index + 1] if index + 1 < len(args) else None)
        if name:  # absl ignores an empty --flagfile=.
            visit(name, [])
        index += 2 if consumed else 1


def parse(flag_values: flags.FlagValues, argv: Sequence[str]) -> list[str]:
    """Parses argv (argv[0] is the program name) into `flag_values`; returns the remaining arguments.

    Raises UsageError with a one-line message for a bad flagfile, an unknown flag or a bad value.
    """
    check_flagfiles(list(argv[1:]))
    try:
        return flag_values(list(argv))
    except flags.Error as error:
        raise UsageError(f"{one_line(error)} {FLAGS_HINT}") from None


def log_to_stderr() -> None:
    """absl's INFO lines on stderr, as `absl.app.run` set them up: for bodies that log with absl.

    The global FLAGS are marked parsed (they hold no flags of ours): absl otherwise prefixes the first
    line with "Logging before flag parsing goes to stderr".
    """
    from absl import logging

    flags.FLAGS.mark_as_parsed()
    logging.use_absl_handler()
    logging.set_verbosity(logging.INFO)


def run(argv: Sequence[str] | None, program: str, doc: str, define_flags: Callable[[flags.FlagValues], None],
        body: Callable[[flags.FlagValues], int | None], user_errors: Callable[[], tuple[type, ...]]) -> int:
    """Parses argv (argv[0] is the program name) and runs `body(flag_values)`; returns the exit status
    (body's return value, or 0 when it returns None).

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
        rest = parse(flag_values, argv)
        if len(rest) > 1:
            raise UsageError(f"unexpected arguments {rest[1:]}; flags take the form --name=value")
    except UsageError as error:
        return usage_error(program, str(error))
    try:
        status = body(flag_values)
    except Exception as error:  # noqa: BLE001 - filtered just below
        if isinstance(error, (UsageError, *user_errors())):
            return usage_error(program, str(error))
        raise
    return 0 if status is None else int(status)
