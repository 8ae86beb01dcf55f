"""Imports run one way between the sub-packages, and no module imports itself back through others.

The order, lowest first: utils < config < tokenization < data < modeling < solver < checkpoint < tasks <
evaluation < engine.  A module may import from its own sub-package and from lower ones only, function-level
imports included (read from the syntax trees, nothing is imported).  A new sub-package must be placed in LAYERS.
"""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Set, Tuple

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "uniperceiver"
LAYERS = ["utils", "config", "tokenization", "data", "modeling", "solver", "checkpoint", "tasks", "evaluation",
          "engine"]
# Old import paths kept for users: each re-exports a lower layer's names and is never imported by our code.
COMPAT = {"uniperceiver.modeling.tokenization", "uniperceiver.evaluation.decoding", "uniperceiver.evaluation.lockstep"}


def modules() -> Dict[str, Tuple[Path, bool]]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        if is_pkg:
            parts = parts[:-1]
        out[".".join(parts)] = (path, is_pkg)
    return out


def imports(name: str, path: Path, is_pkg: bool) -> List[Tuple[str, int]]:
    """Every ``uniperceiver...`` module name an import statement of the file names (relative ones resolved),
    with its line; ``from X import y`` gives X and X.y."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            found += [(prefix, node.lineno)] + [(f"{prefix}.{a.name}", node.lineno) for a in node.names]
    return [(m, line) for m, line in found if m == "uniperceiver" or m.startswith("uniperceiver.")]


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_every_sub_package_has_a_layer():
    subs = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert subs <= set(LAYERS), f"place {sorted(subs - set(LAYERS))} in LAYERS (tests/test_layers.py)"


def test_imports_run_one_way():
    rank = {name: i for i, name in enumerate(LAYERS)}
    bad = []
    for name, (path, is_pkg) in modules().items():
        mine = layer(name)
        if mine not in rank:
            continue
        for target, line in imports(name, path, is_pkg):
            other = layer(target)
            if target in COMPAT and name not in COMPAT:
                bad.append(f"{path.relative_to(REPO)}:{line} imports the compatibility path {target}")
            elif other in rank and other != mine and rank[other] > rank[mine]:
                bad.append(f"{path.relative_to(REPO)}:{line} ({mine}) imports {target} ({other})")
    assert not bad, "imports against the layer order:\n" + "\n".join(bad)


def test_no_import_cycles():
    mods = modules()
    graph: Dict[str, Set[str]] = {
        name: {m for m, _ in imports(name, path, is_pkg) if m in mods and m != name}
        for name, (path, is_pkg) in mods.items()
    }
    # Tarjan's strongly connected components: any component of more than one module is a cycle
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    cycles: List[List[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
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

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_the_checker_sees_a_violation(tmp_path):
    """The walk resolves relative and function-level imports (a check that could not fail proves nothing)."""
    path = tmp_path / "demo.py"
    path.write_text("def f():\n    from ..engine import hooks\n    import uniperceiver.tasks.base\n")
    found = {m for m, _ in imports("uniperceiver.data.demo", path, False)}
    assert {"uniperceiver.engine", "uniperceiver.engine.hooks", "uniperceiver.tasks.base"} <= found


def test_no_test_module_imports_another():
    """Shared test helpers live in tests/conftest.py; a test module importing another one would run (or skip)
    that module's import-time code and hide where a helper lives."""
    tests = {p.stem for p in (REPO / "tests").glob("test_*.py")}
    found = []
    for path in sorted((REPO / "tests").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            found += [f"{path.name}:{node.lineno} imports {n}" for n in names
                      if n.split(".")[-1] in tests or n.startswith("tests.")]
    assert not found, found
