"""Every entry point follows the one CLI convention (dcign_tf.cli.run): `--help` prints its doc and exits 0,
an unknown flag is one line `PROGRAM: error: ...` on stderr and exit 2, no traceback; importing it defines
no flags; the installed console scripts run these same `main` functions.

In one process through each module's `main([...])`, to stay quick; one fresh process checks the imports
and one console script runs as a command.
"""

import ast
import importlib
import importlib.metadata
import os
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# module -> its console script (None: a developer tool outside the package, run with `python -m` from the repo).
ENTRY_POINTS = {
    "dcign_tf.train": "dcign-train",
    "dcign_tf.evaluate": "dcign-evaluate",
    "dcign_tf.render": "dcign-render",
    "dcign_tf.studio": "dcign-studio",
    "dcign_tf.study": "dcign-study",
    "dcign_tf.data.make_faces": "dcign-make-faces",
    "dcign_tf.data.make_chairs": "dcign-make-chairs",
    "dcign_tf.data.make_smallnorb": "dcign-make-smallnorb",
    "benchmarks.bench": None,
    "benchmarks.render_speed": None,
    "benchmarks.deterministic_cost": None,
    "tools.contact_sheet": None,
    "tools.make_pretrained": None,
    "tools.refit_decoder": None,
}


def modules_with_main(package_dir):
    """Dotted names of the modules under `package_dir` (relative to the repo) that define a top-level main()."""
    found = set()
    for root, _, files in os.walk(os.path.join(REPO, package_dir)):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(root, name)
                with open(path, encoding="utf-8") as file:
                    tree = ast.parse(file.read())
                if any(isinstance(node, ast.FunctionDef) and node.name == "main" for node in tree.body):
                    found.add(os.path.relpath(path, REPO)[:-3].replace(os.sep, "."))
    return found


def test_every_module_with_a_main_is_an_entry_point_listed_here():
    assert modules_with_main("dcign_tf") | modules_with_main("benchmarks") | modules_with_main("tools") == set(
        ENTRY_POINTS)


@pytest.mark.parametrize("module_name", list(ENTRY_POINTS))
def test_help_and_an_unknown_flag(module_name, capsys):
    module = importlib.import_module(module_name)
    assert module.main([module_name, "--help"]) == 0
    out = capsys.readouterr().out
    assert module.__doc__.strip().splitlines()[0] in out and "--" in out

    assert module.main([module_name, "--no_such_flag=1"]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith(f"{module.PROGRAM}: error: "), err
    assert "no_such_flag" in err and "Traceback" not in err


def test_importing_the_entry_points_defines_no_flags():
    """A fresh process: after importing every entry point, absl's global FLAGS hold none of their flags."""
    script = f"""
import importlib
from absl import flags
names = {{}}
for module_name in {list(ENTRY_POINTS)!r}:
    module = importlib.import_module(module_name)
    own = flags.FlagValues()
    module.define_flags(own)
    names[module_name] = set(own)
leaked = {{module: sorted(own & set(flags.FLAGS)) for module, own in names.items() if own & set(flags.FLAGS)}}
assert all(names.values()), names
print("leaked", leaked)
"""
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "leaked {}" in result.stdout, result.stdout


def test_console_scripts_are_installed_and_run_the_modules_main():
    scripts = {entry.name: entry for entry in importlib.metadata.entry_points(group="console_scripts")
               if entry.name.startswith("dcign-")}
    expected = {script: module for module, script in ENTRY_POINTS.items() if script}
    assert set(scripts) == set(expected), "reinstall with `pip install -e .` after editing setup.py"
    for script, module in expected.items():
        assert scripts[script].value == f"{module}:main"
        assert scripts[script].load() is importlib.import_module(module).main
        assert shutil.which(script), f"{script} is not on PATH"
    # One as a command: the installed wrapper passes main's exit status on.
    result = subprocess.run(["dcign-make-faces", "--no_such_flag=1"], capture_output=True, text=True, timeout=300)
    lines = [line for line in result.stderr.splitlines() if line.startswith("dcign_tf.data.make_faces") or "Traceback" in line]
    assert result.returncode == 2 and len(lines) == 1 and "error: Unknown command line flag" in lines[0], result.stderr
