"""Print the package's shape: the largest files and functions, the function-local imports of its own modules
(with where they are), and the imports between its parts (and any cycle among them).

    python scripts/structure.py [SRC_DIR]      # default: src/ijepa
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path


def module_name(path: Path, root: Path) -> str:
    rel = path.relative_to(root.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def resolve(mod: str, is_pkg: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def part_of(mod: str) -> str:
    """ijepa.train.loop -> train; ijepa.io -> io (a bottom module)."""
    bits = mod.split(".")
    return bits[1] if len(bits) > 1 else "ijepa"


def main(src: str = "src/ijepa") -> None:
    root = Path(src)
    files = sorted(root.rglob("*.py"))
    names = {module_name(f, root).replace(".", "/") for f in files}
    sizes, funcs, local, edges, mod_edges = [], [], [], defaultdict(set), defaultdict(set)
    for f in files:
        text = f.read_text()
        mod, is_pkg = module_name(f, root), f.name == "__init__.py"
        sizes.append((len(text.splitlines()), str(f.relative_to(root.parent))))
        tree = ast.parse(text)
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                funcs.append((node.end_lineno - node.lineno + 1, f"{f.relative_to(root.parent)}:{node.name}"))
                for sub in ast.walk(node):
                    if isinstance(sub, ast.ImportFrom):
                        target = resolve(mod, is_pkg, sub)
                        if target.startswith("ijepa"):
                            local.append(f"{f.relative_to(root.parent)}:{sub.lineno} {node.name}: from {target}")
                    elif isinstance(sub, ast.Import):
                        for a in sub.names:
                            if a.name.startswith("ijepa"):
                                local.append(f"{f.relative_to(root.parent)}:{sub.lineno} {node.name}: import {a.name}")
            if isinstance(node, ast.ImportFrom):
                target = resolve(mod, is_pkg, node)
                if target.startswith("ijepa") and part_of(target) != part_of(mod):
                    edges[part_of(mod)].add(part_of(target))
        for node in tree.body:  # module-level imports: what runs when the module is imported
            if isinstance(node, ast.ImportFrom):
                target = resolve(mod, is_pkg, node)
                if target.startswith("ijepa"):
                    for a in node.names:  # `from . import x` may name a submodule
                        sub = f"{target}.{a.name}"
                        mod_edges[mod].add(sub if sub.replace(".", "/") in names else target)
    print("largest files:")
    for n, name in sorted(sizes, reverse=True)[:5]:
        print(f"  {n:5d}  {name}")
    print("largest functions:")
    for n, name in sorted(funcs, reverse=True)[:5]:
        print(f"  {n:5d}  {name}")
    print(f"function-local imports of the package's own modules: {len(local)}")
    for line in local:
        print("  " + line)
    print("imports between parts (module-level and local):")
    for a in sorted(edges):
        print(f"  {a:10s} -> {', '.join(sorted(edges[a]))}")
    # cycles among parts, by depth-first search
    cycles, state = [], {}

    def visit(n, stack):
        state[n] = 1
        for m in sorted(edges.get(n, ())):
            if state.get(m) == 1:
                cycles.append(stack[stack.index(m):] + [m])
            elif m not in state:
                visit(m, stack + [m])
        state[n] = 2

    for n in sorted(edges):
        if n not in state:
            visit(n, [n])
    print("cycles between parts: " + ("; ".join(" -> ".join(c) for c in cycles) if cycles else "none"))
    cycles, state = [], {}
    edges = mod_edges
    for n in sorted(mod_edges):
        if n not in state:
            visit(n, [n])
    cycles = [c for c in cycles if len(c) > 2 or c[0] != c[1]]
    print("import cycles between modules (module-level imports): "
          + ("; ".join(" -> ".join(c) for c in cycles) if cycles else "none"))


if __name__ == "__main__":
    main(*sys.argv[1:])
