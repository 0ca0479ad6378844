"""The package's shape: every module imports on its own, no import cycles (also none hidden in
function-level imports), no module imports another module's private names."""

from __future__ import annotations

import ast
import importlib
import pkgutil
import subprocess
import sys
from pathlib import Path

import conclugen

PKG = Path(conclugen.__file__).parent


def _modules() -> list[str]:
    return sorted(m.name for m in pkgutil.walk_packages([str(PKG)], "conclugen."))


def _imports(path: Path, name: str) -> list[tuple[str, list[str], int]]:
    """(imported module, imported names, line) for every import of a conclugen module in the file,
    at any depth (function-level imports included)."""
    is_pkg = path.name == "__init__.py"
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(a.name, [], node.lineno) for a in node.names if a.name.startswith("conclugen")]
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level:  # relative import: resolve against this module's package
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                mod = ".".join([*base, mod] if mod else base)
            if mod.startswith("conclugen"):
                out.append((mod, [a.name for a in node.names], node.lineno))
    return out


def _graph() -> dict[str, set[str]]:
    mods = set(_modules())
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m in mods:
        spec = importlib.util.find_spec(m)
        for target, names, _ in _imports(Path(spec.origin), m):
            for n in names:  # `from conclugen.data import synthetic` imports a module
                if f"{target}.{n}" in mods:
                    graph[m].add(f"{target}.{n}")
            if target in mods and target != m:
                graph[m].add(target)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _package_of(name: str) -> str:
    return name.rsplit(".", 1)[0]


def test_no_import_cycles() -> None:
    # A package __init__ importing its own submodules is not a cycle unless a submodule imports it back.
    assert _cycles(_graph()) == []


def test_cycle_scan_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_private_names_imported_across_modules() -> None:
    bad = []
    for m in _modules():
        path = Path(importlib.util.find_spec(m).origin)
        for target, names, line in _imports(path, m):
            for n in names:
                if n.startswith("_") and not n.startswith("__") and target != m:
                    bad.append(f"{path.relative_to(PKG.parent)}:{line} imports {target}.{n}")
    assert bad == []


def test_every_module_imports_in_a_fresh_interpreter() -> None:
    # One interpreter, but conclugen's modules are dropped before each import, so each module is
    # imported first (as a user's `import conclugen.x` would) and an order-dependent cycle shows.
    code = (
        "import importlib, sys, traceback\n"
        f"mods = {_modules()!r}\n"
        "bad = []\n"
        "for m in mods:\n"
        "    for k in [k for k in sys.modules if k == 'conclugen' or k.startswith('conclugen.')]:\n"
        "        del sys.modules[k]\n"
        "    try:\n"
        "        importlib.import_module(m)\n"
        "    except Exception:\n"
        "        bad.append(m + ': ' + traceback.format_exc(limit=1).strip().splitlines()[-1])\n"
        "print('\\n'.join(bad))\n"
        "sys.exit(1 if bad else 0)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr[-2000:]
