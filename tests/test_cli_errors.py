"""Every command line program answers bad flags the same way: one line on stderr, exit code 2, no traceback.

The classes of error: an unknown flag, a value of the wrong type, a flagfile that is missing, not text,
or holds a bad line, and a flagfile that includes itself, directly or through another (absl would skip
it with a warning and run with the defaults). All programs go through dcign_tf.cli.
"""

import importlib
import os
import re
import subprocess
import sys
from concurrent import futures

import pytest
from absl import flags

from dcign_tf import cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# module -> (the program name its errors start with, a flag given a value of the wrong type)
PROGRAMS = {
    "dcign_tf.train": ("dcign_tf.train", "--steps=abc"),
    "dcign_tf.evaluate": ("dcign_tf.evaluate", "--groups_per_factor=abc"),
    "dcign_tf.render": ("dcign_tf.render", "--raw=maybe"),
    "dcign_tf.study": ("dcign_tf.study", "--parallel=abc"),
    "benchmarks.bench": ("benchmarks.bench", "--threads=abc"),
    "dcign_tf.data.make_faces": ("dcign_tf.data.make_faces", "--image_size=abc"),
    "dcign_tf.data.make_chairs": ("dcign_tf.data.make_chairs", "--image_size=abc"),
    "dcign_tf.data.make_smallnorb": ("dcign_tf.data.make_smallnorb", "--image_size=abc"),
    "tools.contact_sheet": ("tools.contact_sheet", "--image_size=abc"),
    "benchmarks.render_speed": ("benchmarks.render_speed", "--seconds=abc"),
}
# TensorFlow's C++ start-up lines, which it prints to stderr whatever the program does.
TF_NOISE = re.compile(r"^([IWEF]\d{4} |WARNING: All log messages before absl::InitializeLog|To enable the following)")


def flagfiles(directory):
    """name -> path of the flagfiles the cases use."""
    paths = {name: os.path.join(directory, f"{name}.flags") for name in ("self", "a", "b", "binary", "bad_line")}
    with open(paths["self"], "w") as file:
        file.write(f"# includes itself\n--flagfile={paths['self']}\n")
    with open(paths["a"], "w") as file:
        file.write(f"--flagfile={paths['b']}\n")
    with open(paths["b"], "w") as file:
        file.write(f"--flagfile={paths['a']}\n")
    with open(paths["binary"], "wb") as file:
        file.write(bytes(range(256)) * 4)
    with open(paths["bad_line"], "w") as file:
        file.write("--no_such_flag=1\n")
    return paths


def cases(bad_value, files):
    """case name -> (arguments, a fragment of the error line)."""
    return {
        "unknown flag": (["--no_such_flag=1"], "Unknown command line flag 'no_such_flag'"),
        "bad value": ([bad_value], bad_value.split("=")[0]),
        "missing flagfile": (["--flagfile=/nonexistent/x.flags"], "--flagfile=/nonexistent/x.flags: no such file"),
        "flagfile that is not text": ([f"--flagfile={files['binary']}"], "is not a text file"),
        "flagfile with a bad line": ([f"--flagfile={files['bad_line']}"], "no_such_flag"),
        "flagfile that includes itself": ([f"--flagfile={files['self']}"], "includes itself"),
        "flagfiles that include each other": ([f"--flagfile={files['a']}"], f"({files['a']} -> {files['b']} -> "),
        "unexpected argument": (["stray"], "unexpected arguments ['stray']"),
    }


def run(module, args):
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300)


def assert_one_line(case, status, stderr, program, fragment):
    other = [line for line in stderr.splitlines() if line and not TF_NOISE.match(line)]
    assert status == 2 and len(other) == 1, (case, status, stderr[-2000:])
    assert other[0].startswith(f"{program}: error: ") and fragment in other[0], (case, other[0])
    assert "Traceback" not in stderr and "FATAL" not in stderr, (case, stderr[-2000:])


# Run as processes for every program: these show that its `python -m` entry goes through dcign_tf.cli (and
# its own check of stray arguments). The other cases take the same path; they run in-process below.
PROCESS_CASES = ("unknown flag", "unexpected argument")


@pytest.mark.parametrize("module", list(PROGRAMS))
def test_every_program_answers_bad_flags_in_one_line_with_exit_2(module, tmp_path):
    program, bad_value = PROGRAMS[module]
    program_cases = {case: value for case, value in cases(bad_value, flagfiles(str(tmp_path))).items()
                     if case in PROCESS_CASES}
    # Both at once: train and study import TensorFlow, which takes seconds.
    with futures.ThreadPoolExecutor(2) as pool:
        results = dict(zip(program_cases, pool.map(lambda case: run(module, program_cases[case][0]), program_cases)))
    for case, result in results.items():
        assert_one_line(case, result.returncode, result.stderr, program, program_cases[case][1])


# Every program has a main(argv) that returns the exit status: all cases run in-process, for the programs
# above and three more (tools.make_pretrained has no flag of a checked type; tests/test_entry_points.py
# lists them all).
ALL_PROGRAMS = {**PROGRAMS,
                "dcign_tf.studio": ("dcign_tf.studio", "--port=abc"),
                "tools.refit_decoder": ("tools.refit_decoder", "--steps=abc"),
                "benchmarks.deterministic_cost": ("benchmarks.deterministic_cost", "--steps=abc")}


def run_in_process(module, args):
    return importlib.import_module(module).main([module, *args])


@pytest.mark.parametrize("module", list(ALL_PROGRAMS))
def test_every_class_of_flag_error(module, tmp_path, capsys):
    program, bad_value = ALL_PROGRAMS[module]
    for case, (args, fragment) in cases(bad_value, flagfiles(str(tmp_path))).items():
        status = run_in_process(module, args)
        assert_one_line(case, status, capsys.readouterr().err, program, fragment)


class TestFlagfileChecks:
    """cli.check_flagfiles on its own: which files absl would read, and what it refuses."""

    def test_includes_are_followed_as_absl_follows_them(self, tmp_path):
        leaf, middle = tmp_path / "leaf.flags", tmp_path / "middle.flags"
        leaf.write_text("--steps=3\n")
        # Comments, blank lines and an indented line are not includes, as in absl; includes may repeat (a diamond).
        middle.write_text(f"# --flagfile=/nowhere\n\n  --flagfile=/nowhere\n--flagfile={leaf}\n--flagfile={leaf}\n")
        cli.check_flagfiles([f"--flagfile={middle}", "--flagfile", str(leaf), "--flagfile=", "--", "--flagfile=/x"])

    @pytest.mark.parametrize("args, message", [
        (["--flagfile"], "--flagfile needs a file name"),
        (["--flagfile=/nowhere"], "no such file"),
        (["--flagfile", "/nowhere"], "no such file"),
    ])
    def test_refusals(self, args, message):
        with pytest.raises(cli.UsageError, match=message):
            cli.check_flagfiles(args)

    def test_a_cycle_through_a_symlink_is_one(self, tmp_path):
        real = tmp_path / "real.flags"
        os.symlink(real, tmp_path / "link.flags")
        real.write_text(f"--flagfile={tmp_path / 'link.flags'}\n")
        with pytest.raises(cli.UsageError, match="includes itself"):
            cli.check_flagfiles([f"--flagfile={real}"])

    def test_parse_gives_one_line_for_absl_errors(self):
        flag_values = flags.FlagValues()
        flags.DEFINE_integer("steps", 1, "Steps.", flag_values=flag_values)
        with pytest.raises(cli.UsageError) as error:
            cli.parse(flag_values, ["prog", "--steps=1.5"])
        assert "\n" not in str(error.value) and "--steps=1.5" in str(error.value)
        assert cli.parse(flag_values, ["prog", "--steps=4", "rest"]) == ["prog", "rest"] and flag_values.steps == 4
