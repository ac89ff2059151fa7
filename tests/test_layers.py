"""The README's architecture section stays true: its layer table names every module of the package, and
no module imports from a layer above its own."""

import ast
import fnmatch
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "dcign_tf")


def architecture_rows():
    """The README's layer table: [(layer name, [module paths relative to dcign_tf/, as written])]."""
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    section = readme[readme.index("### Architecture"):]
    rows = []
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("| ") and len(cells) == 3 and cells[0] not in ("layer", "---"):
            rows.append((cells[0], re.findall(r"`([\w/*]+(?:\.py|/))`", cells[1])))
    return rows


def module_names():
    """Every module of the package as a dotted name relative to dcign_tf ("data.sources.faces")."""
    names = []
    for directory, _, files in os.walk(PACKAGE):
        for file in files:
            if file.endswith(".py") and file != "__init__.py":
                path = os.path.relpath(os.path.join(directory, file), PACKAGE)
                names.append(path[:-3].replace(os.sep, "."))
    return sorted(names)


def layer_of(module, rows):
    """The index of the first README row naming `module`: its file (`data/records.py`, wildcards
    allowed: `data/make_*.py`) or a package holding it (`analysis/`); None when no row does."""
    for index, (_, entries) in enumerate(rows):
        for entry in entries:
            if entry.endswith("/") and module.startswith(entry[:-1].replace("/", ".") + "."):
                return index
            if entry.endswith(".py") and fnmatch.fnmatchcase(module, entry[:-3].replace("/", ".")):
                return index
    return None


def imported_modules(module):
    """The dcign_tf modules `module` imports (at the top or inside functions), as dotted names."""
    tree = ast.parse(open(os.path.join(PACKAGE, *module.split(".")) + ".py", encoding="utf-8").read())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("dcign_tf"):
            base = node.module.removeprefix("dcign_tf").lstrip(".")
            for alias in node.names:
                names.add(f"{base}.{alias.name}".lstrip("."))
                names.add(base)
    return {name for name in names if name}


def test_the_layer_table_names_every_module():
    rows = architecture_rows()
    assert len(rows) >= 8, rows
    unplaced = [module for module in module_names() if layer_of(module, rows) is None]
    assert not unplaced, f"README.md's architecture table does not name {unplaced}"


def test_no_module_imports_from_a_layer_above_its_own():
    rows = architecture_rows()
    upward = []
    for module in module_names():
        own = layer_of(module, rows)
        for imported in imported_modules(module):
            theirs = layer_of(imported, rows)
            if own is None:
                continue  # the other test names it
            if theirs is not None and theirs > own:
                upward.append(f"{module} ({rows[own][0]}) imports {imported} ({rows[theirs][0]})")
    assert not upward, upward
