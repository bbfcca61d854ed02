"""The package layout keeps its promises: imports only go down the declared layers, there is no
import cycle (module-level or inside functions), and every module imports on its own."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Lowest first. A module may import modules of its own layer or below, never above.
LAYERS = [
    ("scorekit", "scorekit._validate", "scorekit.io", "scorekit.rng", "scorekit.ranks",
     "scorekit.lock", "scorekit.provenance"),
    ("scorekit.processes",),
    ("scorekit.scores",),
    ("scorekit.data", "scorekit.objectives", "scorekit.nets"),
    ("samplers",),
    ("scorekit.evaluation",),
    ("scorekit.training", "scorekit.cli"),
    # Re-exports under the original import paths: nothing in the package may import them.
    ("scorekit.sde", "scorekit.reflected", "scorekit.dirichlet", "scorekit.train",
     "scorekit.metrics", "scorekit.config"),
    ("scripts", "benchmarks"),
]


def _modules() -> dict[str, Path]:
    found = {}
    for top in ("scorekit", "samplers", "scripts", "benchmarks"):
        for path in sorted((ROOT / top).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


MODULES = _modules()


def _layer(name: str) -> int:
    best, depth = None, -1
    for i, prefixes in enumerate(LAYERS):
        for p in prefixes:
            if (name == p or name.startswith(p + ".")) and p.count(".") > depth:
                best, depth = i, p.count(".")
    assert best is not None, f"module {name} is in no declared layer"
    return best


def _imports(name: str, path: Path) -> set[str]:
    """Internal modules that `name` imports anywhere in its file (function bodies included)."""
    out = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1]
                                + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base
                       for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
            # Importing a.b.c first runs the packages a and a.b: edges to those of them that
            # are not already being imported as packages of `name` itself.
            parent = target.rpartition(".")[0]
            while parent:
                if parent in MODULES and not name.startswith(parent + "."):
                    out.add(parent)
                parent = parent.rpartition(".")[0]
    return out


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def test_every_module_is_in_a_layer():
    for name in MODULES:
        _layer(name)


def test_imports_only_go_down_the_layers():
    bad = [f"{a} (layer {_layer(a)}) imports {b} (layer {_layer(b)})"
           for a, targets in GRAPH.items() for b in targets if _layer(b) > _layer(a)]
    assert not bad, "\n".join(bad)


def test_no_module_imports_its_own_package():
    """A registry or re-export lives in the package __init__, which imports the submodules;
    a submodule importing its package back would be an upward import."""
    bad = [f"{a} imports {b}" for a, targets in GRAPH.items() for b in targets
           if a.startswith(b + ".") and MODULES[b].name == "__init__.py"]
    assert not bad, "\n".join(bad)


def test_no_import_cycles():
    """Tarjan's strongly connected components over every import edge; any component with more
    than one module is a cycle."""
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    assert not cycles, "\n".join("cycle: " + ", ".join(c) for c in cycles)


def test_the_check_finds_a_cycle_and_an_upward_import():
    """Negative control: an edge processes -> training would be both."""
    GRAPH["scorekit.processes.base"].add("scorekit.training.trainer")
    try:
        with pytest.raises(AssertionError, match="imports scorekit.training.trainer"):
            test_imports_only_go_down_the_layers()
        with pytest.raises(AssertionError, match="scorekit.processes.base"):
            test_no_import_cycles()
    finally:
        GRAPH["scorekit.processes.base"].discard("scorekit.training.trainer")


def test_every_module_imports_first():
    """Each library module imported first (the others forgotten, torch kept), so an import
    order that only works from the package's __init__ fails here."""
    names = [n for n in MODULES if n.split(".")[0] in ("scorekit", "samplers")
             and n != "samplers.kernels.triton_ops"]
    code = ("import importlib, sys, torch\n"
            "bad = []\n"
            f"for n in {names!r}:\n"
            "    for m in [m for m in sys.modules\n"
            "              if m.split('.')[0] in ('scorekit', 'samplers')]:\n"
            "        del sys.modules[m]\n"
            "    try:\n"
            "        importlib.import_module(n)\n"
            "    except Exception as e:\n"
            "        bad.append(f'{n}: {type(e).__name__}: {e}')\n"
            "print('\\n'.join(bad))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, timeout=600)
    assert out.returncode == 0 and not out.stdout.strip(), out.stdout + out.stderr
