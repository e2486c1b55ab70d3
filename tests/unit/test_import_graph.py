"""No two modules of cregistry import each other, directly or around a loop, not even
from inside a function (the usual way a cycle hides)."""

from __future__ import annotations

import ast
from pathlib import Path

import cregistry

PACKAGE = Path(cregistry.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The cregistry modules `path` imports anywhere in its text (TYPE_CHECKING blocks aside)."""
    return imports_in(path.read_text(), module_name(path), path.name == "__init__.py", modules)


def imports_in(source: str, name: str, is_package: bool, modules: set[str]) -> set[str]:
    """The modules among `modules` that the source of module `name` imports,
    relative imports resolved against it."""
    tree = ast.parse(source)
    package = name if is_package else name.rpartition(".")[0]
    typing_only: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            typing_only.update(id(child) for child in ast.walk(node))
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # `from . import x`, `from ..web import y`
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        found.update(name for name in names if name in modules)
    return found


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    visiting: list[str] = []
    done: set[str] = set()

    def visit(node: str) -> list[str] | None:
        if node in visiting:
            return visiting[visiting.index(node) :] + [node]
        if node in done:
            return None
        visiting.append(node)
        for target in sorted(graph[node]):
            cycle = visit(target)
            if cycle:
                return cycle
        visiting.pop()
        done.add(node)
        return None

    for start in sorted(graph):
        cycle = visit(start)
        if cycle:
            return cycle
    return None


def test_the_package_imports_form_no_cycle() -> None:
    paths = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    modules = set(paths)
    # `from cregistry.web import x` inside cregistry.web.y names its own parent package, which is
    # already loading: only the submodule x counts as an edge.
    graph = {
        name: {target for target in imports_of(path, modules) if not name.startswith(target + ".") and target != name}
        for name, path in paths.items()
    }
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_the_cycle_finder_finds_a_loop() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_imports_are_found_in_functions_and_relative_ones_resolved_but_not_typing_only_ones() -> None:
    modules = {"cregistry", "cregistry.web", "cregistry.web.a", "cregistry.web.b", "cregistry.users", "cregistry.keys"}
    source = """
from typing import TYPE_CHECKING
from . import b
if TYPE_CHECKING:
    from cregistry.keys import Keys
def later():
    from ..users import UserStore
"""
    assert imports_in(source, "cregistry.web.a", False, modules) == {
        "cregistry.web",
        "cregistry.web.b",
        "cregistry.users",
    }
    assert imports_in("from .a import x", "cregistry.web", True, modules) == {"cregistry.web.a"}
