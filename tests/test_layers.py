"""The package layers as docs/architecture.md draws them: read from the source's own import statements
(module level and inside functions alike, since a lazy import is still a dependency)."""

from __future__ import annotations

import ast
from pathlib import Path

import ingero

ROOT = Path(ingero.__file__).parent


def _modules() -> dict[str, Path]:
    mods = {}
    for p in ROOT.rglob("*.py"):
        parts = ("ingero", *p.relative_to(ROOT).with_suffix("").parts)
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        mods[name] = p
    return mods


def _graph() -> dict[str, set[str]]:
    mods = _modules()

    def owner(name: str) -> str:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name

    graph: dict[str, set[str]] = {}
    for m, p in mods.items():
        deps: set[str] = set()
        for node in ast.walk(ast.parse(p.read_text(), str(p))):
            if isinstance(node, ast.Import):
                deps |= {owner(a.name) for a in node.names if a.name.startswith("ingero")}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("ingero"):
                for a in node.names:
                    full = f"{node.module}.{a.name}"
                    deps.add(full if full in mods else owner(node.module or ""))
        deps.discard(m)
        graph[m] = deps
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph.get(w, ())))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
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
    return out


def test_the_checker_does_not_import_the_compiler():
    graph = _graph()
    wrong = {m: sorted(d for d in deps if d.startswith("ingero.compiler")) for m, deps in graph.items()}
    wrong = {m: d for m, d in wrong.items() if m.startswith("ingero.dsl") and d}
    assert wrong == {}
    # and the placement both use sits below both
    assert "ingero.abi" in graph["ingero.dsl.fields"] and "ingero.abi" in graph["ingero.compiler.codegen"]


def test_no_import_cycle():
    assert _cycles(_graph()) == []


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


#: The named exceptions to the 600-line rule (docs/architecture.md names them too): the C declaration parser
#: of the catalogue build, and generated tables (none is a Python module today).
LONG_MODULES = {"ingero.catalogue.cparse"}
MAX_LINES = 600


def test_no_module_over_600_lines():
    lines = {m: len(p.read_text().splitlines()) for m, p in _modules().items()}
    assert {m: n for m, n in lines.items() if n > MAX_LINES and m not in LONG_MODULES} == {}


def test_the_exceptions_are_named_in_the_architecture_doc():
    doc = (ROOT.parent / "docs" / "architecture.md").read_text()
    section = doc[doc.index("## Modules over 600 lines"):].split("\n## ")[0]
    for m in LONG_MODULES:
        assert f"`{m.removeprefix('ingero.').replace('.', '/')}.py`" in section, m
