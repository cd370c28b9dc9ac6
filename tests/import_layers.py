"""The import graph of a package, read from its source, and rules over it.

Not a test module (pytest does not collect it): tests/test_layering.py states
kexechibd's rules with it and also runs it on synthetic packages to show it
fails on a wrong import.  Every ``import`` and ``from … import`` counts,
wherever it stands (inside a function, under ``if TYPE_CHECKING:``): a lazy
or typing-only import is still a dependency in that direction.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path


def module_names(package_dir: Path) -> dict[str, Path]:
    """Every module of the package in ``package_dir``, by dotted name."""
    root = package_dir.name
    modules: dict[str, Path] = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = path.relative_to(package_dir).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join((root, *parts))] = path
    return modules


def _imported(
    name: str, path: Path, node: ast.Import | ast.ImportFrom, modules: dict[str, Path]
) -> Iterator[str]:
    if isinstance(node, ast.Import):
        for alias in node.names:
            yield alias.name
        return
    base = node.module or ""
    if node.level:
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        parts = package.split(".")
        parts = parts[: len(parts) - node.level + 1]
        base = ".".join([*parts, *([node.module] if node.module else [])])
    for alias in node.names:
        # `from pkg import mod` imports the module pkg.mod; `from mod import x`
        # imports mod.
        candidate = f"{base}.{alias.name}"
        yield candidate if candidate in modules else base


def import_graph(package_dir: Path) -> dict[str, set[str]]:
    """For each module of the package, the modules of the same package it imports."""
    modules = module_names(package_dir)
    root = package_dir.name
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import | ast.ImportFrom):
                deps.update(
                    d
                    for d in _imported(name, path, node, modules)
                    if d == root or d.startswith(root + ".")
                )
        deps.discard(name)
        graph[name] = deps
    return graph


def within(module: str, prefixes: Iterable[str]) -> bool:
    """Whether ``module`` is one of ``prefixes`` or inside one of them."""
    return any(module == p or module.startswith(p + ".") for p in prefixes)


@dataclass(frozen=True)
class Rule:
    """Modules in ``importers`` (minus ``except_importers``) import nothing in
    ``forbidden``; or, with ``only`` set, nothing of the package outside ``only``."""

    why: str
    importers: tuple[str, ...]
    forbidden: tuple[str, ...] = ()
    only: tuple[str, ...] | None = None
    except_importers: tuple[str, ...] = ()

    def applies_to(self, module: str) -> bool:
        return within(module, self.importers) and not within(module, self.except_importers)

    def breaks(self, imported: str) -> bool:
        if self.only is not None:
            return not within(imported, self.only)
        return within(imported, self.forbidden)

    def names(self) -> tuple[str, ...]:
        return (*self.importers, *self.forbidden, *(self.only or ()), *self.except_importers)


@dataclass(frozen=True, order=True)
class Violation:
    importer: str
    imported: str
    why: str

    def __str__(self) -> str:
        return f"{self.importer} imports {self.imported}: {self.why}"


def violations(graph: dict[str, set[str]], rules: Iterable[Rule]) -> list[Violation]:
    found = {
        Violation(importer, imported, rule.why)
        for rule in rules
        for importer, deps in graph.items()
        if rule.applies_to(importer)
        for imported in deps
        if rule.breaks(imported)
    }
    return sorted(found)


def unknown_names(graph: dict[str, set[str]], rules: Iterable[Rule]) -> list[str]:
    """Names in the rules that match no module: a rule about a renamed or
    removed module would otherwise pass without checking anything."""
    return sorted(
        {n for rule in rules for n in rule.names() if not any(within(m, [n]) for m in graph)}
    )
