"""The package's shape, checked: no import cycle among its modules (function-level imports count), no
module over 500 lines, and no file of the repository citing a document the repository does not hold."""
import ast
import os
import re
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PKG = os.path.join(ROOT, "fused_resnet")


def _modules() -> dict:
    mods = {}
    for dirpath, _, files in os.walk(PKG):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(dirpath, f)
                name = os.path.relpath(path[:-3], ROOT).replace(os.sep, ".")
                mods[name[:-len(".__init__")] if name.endswith(".__init__") else name] = path
    return mods


def _imports(name: str, path: str, mods: dict) -> set:
    """The package modules ``name`` imports anywhere in its body (module level or inside functions)."""
    package = name if path.endswith("__init__.py") else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(max(node.level - 1, 0)):
                base = base.rsplit(".", 1)[0]
            mod = (base + ("." + node.module if node.module else "")) if node.level else node.module
            for alias in node.names:
                full = f"{mod}.{alias.name}"
                out.add(full if full in mods else mod)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return {m for m in out if m in mods and m != name}


def _cycles(graph: dict) -> list:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
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
                found.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle_in_the_package():
    mods = _modules()
    graph = {name: _imports(name, path, mods) for name, path in mods.items()}
    assert "fused_resnet.tactics.eager" in graph and "fused_resnet._env" in graph["fused_resnet.tactics.eager"]
    assert _cycles(graph) == []
    # the self-check of the checker: a cycle it must see
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c"]]


def test_no_module_over_500_lines():
    long = {n: sum(1 for _ in open(p)) for n, p in _modules().items()}
    assert {n: k for n, k in long.items() if k > 500} == {}


def test_every_cited_document_exists():
    try:
        files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    cited = set()
    for f in files:
        if f.endswith((".py", ".md", ".sh", ".cpp", ".cu", ".cuh", ".h", ".toml", ".txt")) or f == "Makefile":
            text = open(os.path.join(ROOT, f), errors="replace").read()
            for m in re.finditer(r"(?<![\w/.-])([\w./-]*[A-Z][\w./-]*\.md)\b", text):
                cited.add((f, m.group(1)))
    missing = sorted((f, doc) for f, doc in cited
                     if not os.path.exists(os.path.join(ROOT, doc))
                     and not os.path.exists(os.path.join(ROOT, os.path.dirname(f), doc)))
    assert missing == []
