"""Prints the project's import graph between its parts, its cycles and its upward arrows.

    python bench/import_graph.py            # parts = packages and root modules (engine.align.methods, app.ui, ...)
    python bench/import_graph.py --files    # parts = every module

A part is a module's package (``engine/align/methods/nabla.py`` -> ``engine.align.methods``); module-level
and function-level imports both count. Exits 1 when there is an import cycle or an upward
arrow (engine/ importing app/, bench/ or tests/; app/ importing bench/ or tests/; bench/ importing tests/),
so a test can hold the shape.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOP = ("engine", "app", "bench", "tests")


def modules() -> dict[str, Path]:
    found = {}
    for top in TOP:
        for path in sorted((ROOT / top).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    found["app_main"] = ROOT / "app.py"
    return found


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Project modules ``name`` imports (resolving relative imports, ``from pkg import module``)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name and not name.startswith(target + "."):  # a package's own __init__ runs anyway
                out.add(target)
    return out


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one member (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
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

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def package_of(module: str, known: dict[str, Path]) -> str:
    if known[module].name == "__init__.py":
        return module
    parent = module.rpartition(".")[0]
    return module if parent in ("", "engine", "app") else parent


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", action="store_true", help="one node per module instead of per package")
    args = ap.parse_args(argv)
    known = modules()
    graph = {m: imports(m, p, set(known)) for m, p in known.items()}
    # tests and bench may import anything; the shape that matters is engine/ and app/
    product = {m: {t for t in ts if t.split(".")[0] in ("engine", "app")} for m, ts in graph.items()
               if m.split(".")[0] in ("engine", "app") or m == "app_main"}
    lines = {m: len(known[m].read_text().splitlines()) for m in product}
    if args.files:
        nodes, arrows = product, {(a, b) for a, ts in product.items() for b in ts}
    else:
        arrows = {(package_of(a, known), package_of(b, known)) for a, ts in product.items() for b in ts}
        arrows = {(a, b) for a, b in arrows if a != b}
        nodes = {package_of(m, known) for m in product}
    print(f"{len(product)} modules, {sum(lines.values())} lines; {len(nodes)} parts, {len(arrows)} arrows between them")
    by_source = defaultdict(list)
    for a, b in sorted(arrows):
        by_source[a].append(b)
    for a in sorted(by_source):
        print(f"  {a} -> {', '.join(by_source[a])}")
    bad = 0
    found = cycles(product)
    if not args.files:  # cycles between parts, except a subpackage using its parent's modules (methods -> align.rollout)
        parts = {a: {b for x, b in arrows if x == a and not a.startswith(b + ".")} for a in nodes}
        found += [c for c in cycles(parts) if c not in found]
    for comp in found:
        print("cycle:", " <-> ".join(comp))
    bad += len(found)
    above = {"engine": ("app", "bench", "tests"), "app": ("bench", "tests"), "bench": ("tests",)}
    for a, ts in sorted(graph.items()):
        for b in sorted(ts):
            if b.split(".")[0] in above.get(a.split(".")[0], ()):
                print(f"upward: {a} imports {b} ({a.split('.')[0]}/ never imports {b.split('.')[0]}/)")
                bad += 1
    print(f"{len(found)} import cycle(s)")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
