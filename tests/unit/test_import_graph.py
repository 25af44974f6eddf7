"""No module of `openrlhf_darts` imports one that imports it back (issue 14).

The graph is read from the source with `ast` (nothing is imported): every `import` and `from ... import` anywhere in a
module (module level, inside functions, under `if TYPE_CHECKING`) is an edge to the package module it names. `from
pkg import name` is an edge to `pkg.name` when that is a module of the package, else to `pkg` itself. Importing a
submodule also runs its parent packages' `__init__`; those implicit edges are left out, so a package `__init__` may
re-export its submodules.
"""

from __future__ import annotations

import ast
from pathlib import Path

import openrlhf_darts

PACKAGE_DIR = Path(openrlhf_darts.__file__).parent
ROOT = "openrlhf_darts"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {
        _module_name(path): path
        for path in sorted(PACKAGE_DIR.rglob("*.py"))
        # The vendored flash_attn stand-in is its own top-level package (`flash_attn`), never imported by name.
        if "flash_attn_fallback" not in path.parts
    }


def _absolute(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _absolute(name, path.name == "__init__.py", node)
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    targets.append(sub if sub in modules else base)
            for target in targets:
                # `import a.b.c` names a.b.c; fall back to the longest prefix that is a module of the package.
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target.startswith(ROOT) and target in modules and target != name:
                    graph[name].add(target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a path [a, b, ..., a], or None (iterative depth-first search, white/grey/black)."""
    state: dict[str, int] = {}
    for start in sorted(graph):
        if state.get(start):
            continue
        stack = [(start, iter(sorted(graph[start])))]
        path = [start]
        state[start] = 1
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                state[node] = 2
                stack.pop()
                path.pop()
            elif state.get(child) == 1:
                return path[path.index(child) :] + [child]
            elif not state.get(child):
                state[child] = 1
                path.append(child)
                stack.append((child, iter(sorted(graph[child]))))
    return None


def test_the_graph_sees_known_edges():
    # Precondition: the parser finds real edges, module-level and function-level, else "no cycle" proves nothing.
    graph = import_graph()
    assert len(graph) > 50
    assert "openrlhf_darts.core.types" in graph["openrlhf_darts.config"]  # module level
    assert "openrlhf_darts.trainer.experience_maker" in graph["openrlhf_darts.trainer.ppo_trainer"]  # in a function


def test_find_cycle_reports_the_path():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_no_import_cycle_in_the_package():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)
