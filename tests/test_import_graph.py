"""The package's layout rules, read from the source: the library never imports the command line,
and imports run one way (no circle).

Imports are read with `ast`, not by importing, so optional extras (torch, ray)
need not be installed and every module counts.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "fastmtcnn"
CLI_SIDE = ("fastmtcnn.cli", "fastmtcnn.commands", "fastmtcnn.__main__")  # `python -m fastmtcnn` is the CLI too


def modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package."""
    out = {}
    for f in sorted(PACKAGE.rglob("*.py")):
        parts = list(f.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = f
    return out


def _is_package(name: str, mods: dict[str, Path]) -> bool:
    return mods[name].name == "__init__.py"


def _imports(body: list[ast.stmt]):
    """Every import statement that can run: at module level or deferred into a function, not under TYPE_CHECKING.

    A deferred import hides a circle from Python; it does not remove it, so it counts.
    """
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            yield from _imports(node.orelse)
        else:
            for child in ast.iter_child_nodes(node):
                yield from _imports([child] if isinstance(child, ast.stmt) else [])


def imports_of(name: str, mods: dict[str, Path]) -> set[str]:
    """Modules of the package that `name` imports.

    `from pkg import x` counts as importing `pkg.x` when that is a module, else `pkg`. A
    package a module sits in is already being imported when the module runs, so an import
    of one of its own parent packages is no edge (Python allows it; it is no circle).
    """
    tree = ast.parse(mods[name].read_text(), str(mods[name]))
    here = name if _is_package(name, mods) else name.rpartition(".")[0]
    found = set()
    for node in _imports(tree.body):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            base = node.module or ""
            if node.level:
                anchor = here.split(".")[: len(here.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
        for t in targets:
            while t and t not in mods:  # import a.b.c where c is a name: the module is a.b
                t = t.rpartition(".")[0]
            if t and t != name and not name.startswith(t + "."):
                found.add(t)
    return found


def test_only_the_command_line_imports_the_cli_or_argparse():
    mods = modules()
    offenders = {}
    for name, path in mods.items():
        if name.startswith(CLI_SIDE):
            continue
        bad = {m for m in imports_of(name, mods) if m.startswith(CLI_SIDE)}
        tree = ast.parse(path.read_text())
        if any(isinstance(n, ast.Import) and any(a.name == "argparse" for a in n.names)
               or isinstance(n, ast.ImportFrom) and n.module == "argparse" for n in ast.walk(tree)):
            bad.add("argparse")
        if bad:
            offenders[name] = sorted(bad)
    assert not offenders, f"library modules that import the command line: {offenders}"


def test_imports_run_one_way_with_no_circle():
    mods = modules()
    graph = {name: imports_of(name, mods) for name in mods}
    circles = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                circles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not circles, "import circles: " + "; ".join(" -> ".join(c) for c in circles)


@pytest.mark.parametrize("source, expected", [
    ("from .a import f", {"fastmtcnn.a"}),
    ("from . import a", {"fastmtcnn.a"}),
    ("import fastmtcnn.a.b", {"fastmtcnn.a"}),
    ("def f():\n    from . import a", {"fastmtcnn.a"}),
    ("class C:\n    def f(self):\n        if x:\n            import fastmtcnn.a", {"fastmtcnn.a"}),
    ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import a", set()),
    ("try:\n    from . import a\nexcept ImportError:\n    pass", {"fastmtcnn.a"}),
])
def test_the_import_reader_sees_every_import_but_type_checking_ones(tmp_path, source, expected):
    (tmp_path / "m.py").write_text(source)
    (tmp_path / "a.py").write_text("")
    mods = {"fastmtcnn": tmp_path / "__init__.py", "fastmtcnn.m": tmp_path / "m.py", "fastmtcnn.a": tmp_path / "a.py"}
    assert imports_of("fastmtcnn.m", mods) == expected
