"""The module graph of ``bico`` and ``bico_kernels``: layers that import downward only, no cycles.

The graph is read from the source with ``ast`` (nothing is imported to build it). An edge
``a -> b`` is a static import in module ``a`` of a module ``b`` of either package: ``import b``,
``from b import name`` and relative ``from .b import name`` (``from pkg import name`` counts as
``pkg.name`` where that is a module, else as ``pkg``). An import is *module-level* when it runs as
the module is imported (the top level, and inside ``if``/``try``/``with``/class bodies there);
*function-level* when it sits in a function (a lazy import). Dynamic imports
(``importlib.import_module``, the package's lazy ``__getattr__``) are not edges.

* No cycle among module-level edges (a cycle of lazy imports is allowed: it cannot deadlock an import).
* No edge, module- or function-level, from a layer to a layer above it (:data:`LAYERS`).
* ``bico_kernels`` imports nothing from ``bico`` (it is usable, and tested, on its own).
* The package ``bico`` itself is the public façade: it imports no module statically, and no module
  imports it (``from bico import X`` names the module ``bico.X``).
* The modules in :data:`TORCH_FREE` (every ``bico.cli`` module among them) import no torch when
  imported: checked at run time, in a fresh interpreter each.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import ROOT

SOURCES = {"bico": ROOT / "bico", "bico_kernels": ROOT / "kernels" / "bico_kernels"}

# Lowest first; a module may import from its own layer and the layers below. A module belongs to the
# first entry that is its name or a package above it.
LAYERS = [
    (
        "base",
        [
            "bico.errors",
            "bico.paths",
            "bico.io_utils",
            "bico.yaml_load",
            "bico.resources",
            "bico.machine",
            "bico.termination",
            "bico_kernels",
        ],
    ),
    # config checks the data section through bico.data.identity and the data layer reads config's
    # DATA_FORMATS: recipes and the data they name are one layer
    ("core", ["bico.config", "bico.masks", "bico.attention", "bico.collate", "bico.objectives", "bico.data"]),
    ("models", ["bico.models", "bico.wordtok"]),
    ("training", ["bico.training", "bico.hf"]),
    ("evaluation", ["bico.evaluation"]),
    ("tools", ["bico.tools"]),
    ("cli", ["bico.cli", "bico.__main__"]),
]
FACADE = "bico"
# Imported by the command line before a command runs, or by a check that must stay cheap.
TORCH_FREE_EXTRA = [
    "bico",
    "bico.errors",
    "bico.paths",
    "bico.config",
    "bico.training.rundir",
    "bico.training.checkpoints",
    "bico.tools.bench_options",
    "bico.tools.plan",
    "bico.tools.ablate",
]
# Engines: the loop picks one; the plain engine must not pull in DeepSpeed or the loop.
NOT_IMPORTED_BY = {"bico.training.engine": {"bico.training.deepspeed_engine", "bico.training.train", "deepspeed"}}


def _modules() -> dict[str, Path]:
    found = {}
    for package, folder in SOURCES.items():
        for path in sorted(folder.rglob("*.py")):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join([package, *parts])] = path
    return found


MODULES = _modules()


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _imports(name: str) -> list[tuple[str, bool]]:
    """``(imported module, module-level?)`` for every static import in module ``name``."""
    tree = ast.parse(MODULES[name].read_text(), str(MODULES[name]))
    here = name if _is_package(name) else name.rpartition(".")[0]  # what "." means in this module
    found = []

    def visit(node, lazy: bool):
        for child in ast.iter_child_nodes(node):
            inner = lazy or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                found.extend((alias.name, not lazy) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = here.split(".")[: len(here.split(".")) - child.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                for alias in child.names:
                    target = f"{base}.{alias.name}"
                    found.append((target if target in MODULES else base, not lazy))
            visit(child, inner)

    visit(tree, False)
    return found


def _internal(target: str) -> str | None:
    """The module of bico or bico_kernels that ``target`` names (itself, or the package above it)."""
    while target and target not in MODULES:
        target = target.rpartition(".")[0]
    return target or None


EDGES = {name: [(_internal(t), t, top) for t, top in _imports(name)] for name in MODULES}


def _layer(name: str) -> int:
    for rank, (_, prefixes) in enumerate(LAYERS):
        if any(name == p or name.startswith(p + ".") for p in prefixes):
            return rank
    raise AssertionError(f"{name} is in no layer of tests/test_import_graph.py: add it to LAYERS")


def test_the_graph_sees_every_module_and_its_imports():
    assert {"bico.cli", "bico.training.train", "bico.training.step", "bico_kernels.tuning"} <= set(MODULES)
    assert ("bico.training.step", True) in {(t, top) for t, _, top in EDGES["bico.training.train"]}
    assert ("bico.tools.pipeline", False) in {(t, top) for t, _, top in EDGES["bico.cli.train"]}  # lazy import
    assert ("bico_kernels.blocks", True) in {(t, top) for t, _, top in EDGES["bico_kernels"]}  # relative import


def test_every_module_has_a_layer_and_imports_downward_only():
    upward = [
        f"{a} ({LAYERS[_layer(a)][0]}) -> {b} ({LAYERS[_layer(b)][0]})"
        for a in MODULES
        if a != FACADE
        for b, _, _ in EDGES[a]
        if b and b != FACADE and _layer(b) > _layer(a)
    ]
    assert upward == []


def test_no_cycle_among_module_level_imports():
    graph = {a: {b for b, _, top in EDGES[a] if b and top and b != a} for a in MODULES}
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def connect(v):  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(graph)))
    for v in graph:
        if v not in index:
            connect(v)
    assert cycles == []


def test_bico_kernels_imports_nothing_from_bico():
    assert [
        (a, t)
        for a in MODULES
        if a.startswith("bico_kernels")
        for _, t, _ in EDGES[a]
        if t == "bico" or t.startswith("bico.")
    ] == []


def test_the_package_is_a_facade_that_nothing_inside_imports():
    assert [t for _, t, _ in EDGES[FACADE] if _internal(t)] == []
    assert [a for a in MODULES for b, t, _ in EDGES[a] if b == FACADE and a != FACADE] == []


def test_modules_that_must_not_import_some_others():
    for name, forbidden in NOT_IMPORTED_BY.items():
        imported = {t for _, t, _ in EDGES[name]} | {b for b, _, _ in EDGES[name] if b}
        assert not imported & forbidden, (name, imported & forbidden)


TORCH_FREE = sorted(set(TORCH_FREE_EXTRA) | {m for m in MODULES if m == "bico.cli" or m.startswith("bico.cli.")})


@pytest.mark.parametrize("module", TORCH_FREE)
def test_modules_import_no_torch(module):
    probe = (
        f"import sys, {module}\n"
        "print(sorted(m for m in ('torch', 'transformers', 'deepspeed', 'bico.training.deepspeed_engine') "
        "if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "[]", f"import {module} loads {done.stdout.strip()}"


def test_the_engine_loads_neither_deepspeed_nor_its_engine():
    probe = (
        "import sys, bico.training.engine\n"
        "print(sorted(m for m in ('bico.training.deepspeed_engine', 'deepspeed') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stderr[-3000:]
