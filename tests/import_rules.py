"""tuner/'s architecture as a test: its sub-packages are layers, and every arrow points down.

    cli  →  job  →  present, record  →  cluster  →  core

A module may import modules of its own sub-package and of any layer below its own; ``present`` and
``record`` are side by side and never import each other. Across the whole package: no import cycle
(function-level imports included: hiding a cycle inside a function does not remove it), and no
private name (``_name``) of another module, whether imported by name or reached as an attribute.
``trainables`` and ``search_spaces`` never import ``tuner``.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

LAYERS = {"cli": 4, "job": 3, "present": 2, "record": 2, "cluster": 1, "core": 0}


@dataclass(frozen=True)
class Arrow:
    source: str  # the importing module
    target: str  # the imported module
    line: int
    names: tuple[str, ...]  # names imported from it (from-imports)


def modules(root: Path, package: str) -> dict[str, Path]:
    out = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _resolve(name: str, known: dict[str, Path]) -> str | None:
    """The known module ``name`` is, or is inside of (``tuner.job.plan.TuneJob`` → ``tuner.job.plan``)."""
    while name:
        if name in known:
            return name
        name = name.rpartition(".")[0]
    return None


def arrows(root: Path, package: str) -> list[Arrow]:
    known = modules(root, package)
    out = []
    for name, path in known.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        is_pkg = path.name == "__init__.py"
        aliases: dict[str, str] = {}  # local name → module, for attribute access
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    target = _resolve(a.name, known)
                    if target and target != name:
                        out.append(Arrow(name, target, node.lineno, ()))
                        aliases[a.asname or a.name] = target
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    here = name if is_pkg else name.rpartition(".")[0]
                    for _ in range(node.level - 1):
                        here = here.rpartition(".")[0]
                    base = f"{here}.{base}" if base else here
                for a in node.names:
                    sub = _resolve(f"{base}.{a.name}", known)
                    if sub and sub != base and sub == f"{base}.{a.name}":  # `from pkg import module`
                        if sub != name:
                            out.append(Arrow(name, sub, node.lineno, ()))
                            aliases[a.asname or a.name] = sub
                        continue
                    target = _resolve(base, known)
                    if target and target != name:
                        out.append(Arrow(name, target, node.lineno, (a.name,)))
        for node in ast.walk(tree):  # module._private, through an imported module
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                    and node.attr.startswith("_") and not node.attr.startswith("__")):
                out.append(Arrow(name, aliases[node.value.id], node.lineno, (node.attr,)))
    return out


def layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else None


def problems(root: Path, package: str, layers: dict[str, int] = LAYERS) -> list[str]:
    found = []
    graph: dict[str, set[str]] = {}
    for a in arrows(root, package):
        graph.setdefault(a.source, set()).add(a.target)
        where = f"{a.source} (line {a.line})"
        private = [n for n in a.names if n.startswith("_") and not n.startswith("__")]
        if private:
            found.append(f"{where} uses private {', '.join(private)} of {a.target}")
        src, dst = layer(a.source), layer(a.target)
        if src is None and a.source != package:
            found.append(f"{a.source} is in no layer ({', '.join(layers)})")
        if src and dst and src != dst and layers[dst] >= layers[src]:
            found.append(f"{where} imports {a.target}: an arrow from {src} to {dst}, "
                         f"which is {'beside' if layers[dst] == layers[src] else 'above'} it")
        if src and a.target == package:
            pass  # the package itself (its __version__) is the ground everyone stands on
    found += [f"import cycle: {' → '.join(c)}" for c in cycles(graph)]
    return sorted(set(found))


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Each strongly connected component of more than one module (Tarjan), as a path through it."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
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
                out.append(_loop(graph, set(comp)))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _loop(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """A real path round a strongly connected component: from its first module back to it (breadth
    first, so the shortest such path)."""
    start = min(component)
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph.get(v, ())):
                if w not in component:
                    continue
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [start, *reversed(path[:-1]), start] if len(path) > 1 else [start, v, start]
                if w not in previous:
                    previous[w] = v
                    nxt.append(w)
        frontier = nxt
    return sorted(component) + [start]  # unreachable for a strongly connected component
