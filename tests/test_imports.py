"""The package arrows run one way, ``model`` <- ``hw`` <- ``sim``: no module imports a package
above its own, no two modules import each other (directly or round a longer circle), and no
module imports another module's private (``_``-prefixed) name."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LEVEL = {"model": 0, "hw": 1, "sim": 2, "tests": 3, "benchmarks": 3}


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg in LEVEL:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            if "build" in path.relative_to(ROOT).parts:
                continue
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join(parts)] = path
    return mods


def _imports(name: str, path: Path):
    """``(target module, [imported names], line)`` for every import in the file."""
    tree = ast.parse(path.read_text(), str(path))
    pkg = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, [], node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg[: len(pkg) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            yield mod, [a.name for a in node.names], node.lineno


def _graph():
    mods = _modules()
    edges, problems = {}, []
    for name, path in mods.items():
        here = name.split(".")[0]
        for mod, names, line in _imports(name, path):
            top = mod.split(".")[0]
            if top not in LEVEL:
                continue
            where = f"{path.relative_to(ROOT)}:{line}"
            if LEVEL[top] > LEVEL[here]:
                problems.append(f"{where}: {here} imports {mod} (an upward arrow)")
            targets = [f"{mod}.{n}" for n in names if f"{mod}.{n}" in mods] or [mod]
            for t in targets:
                if t in mods and t != name:
                    edges.setdefault(name, set()).add(t)
            if mod in mods and mod != name:
                private = [n for n in names if n.startswith("_") and f"{mod}.{n}" not in mods]
                if private:
                    problems.append(f"{where}: imports the private {', '.join(private)} of {mod}")
    return mods, edges, problems


def _cycles(edges) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
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

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_no_upward_arrow_and_no_private_import():
    _, _, problems = _graph()
    assert problems == []


def test_no_import_circle():
    _, edges, _ = _graph()
    assert _cycles(edges) == []


def test_the_checker_sees_arrows():
    """The graph is not empty: the checker parses real imports (hw reads model's contract)."""
    mods, edges, _ = _graph()
    assert "model.params" in mods and "hw.accel.accelerator" in mods
    assert "model.params" in edges["hw.accel.accelerator"] or any(
        t.startswith("model.") for t in edges["hw.accel.accelerator"]
    )
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
