"""The image library's modules stand on their own: each imports alone, none
imports another in a cycle, none reaches into another's private names, and
a store is chosen by a plain function, not by a constructor that returns
subclasses defined in modules importing it (issue 14)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import kexechibd.image
from kexechibd.image.store import ImageStore

PACKAGE = Path(kexechibd.image.__file__).parent
MODULES = sorted(
    "kexechibd.image" + ("" if p.stem == "__init__" else f".{p.stem}") for p in PACKAGE.glob("*.py")
)


def source_of(module: str) -> Path:
    name = module.removeprefix("kexechibd.image").lstrip(".")
    return PACKAGE / f"{name or '__init__'}.py"


def image_imports(module: str) -> set[str]:
    """The kexechibd.image modules ``module`` imports, anywhere in it (lazy
    and type-checking imports too: a cycle through them is one refactor
    away from a real one).  ``from kexechibd.image import x`` imports the
    submodule ``x`` when there is one, else a name of the package's own.
    (Python always runs the package's ``__init__`` first.)"""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source_of(module).read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            subs = [f"{node.module}.{a.name}" for a in node.names]
            names = [n for n in subs if n in MODULES]
            if len(names) < len(subs):  # a name the package itself defines
                names.append(node.module)
        found |= {n for n in names if n in MODULES}
    return found - {module}


def test_the_image_modules_import_each_other_without_a_cycle() -> None:
    graph = {m: image_imports(m) for m in MODULES if m != "kexechibd.image"}
    done: set[str] = set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        if module in path:
            cycle = " → ".join((*path[path.index(module) :], module))
            pytest.fail(f"import cycle: {cycle}")
        if module in done:
            return
        for imported in sorted(graph.get(module, ())):
            visit(imported, (*path, module))
        done.add(module)

    for module in graph:
        visit(module, ())


def test_no_image_module_takes_a_name_from_the_package_that_imports_it() -> None:
    """``kexechibd/image/__init__.py`` imports every module: while a module
    runs, the package's own names are not there yet."""
    importers = [
        m for m in MODULES if m != "kexechibd.image" and "kexechibd.image" in image_imports(m)
    ]
    assert importers == []


def import_alone(module: str, then: str = "") -> subprocess.CompletedProcess[str]:
    """Import ``module`` in a fresh interpreter, the package's ``__init__``
    (which Python runs before any submodule, and which imports them all)
    replaced by a bare package: the module brings in only what it imports
    itself.  ``then`` runs after it."""
    code = (
        "import sys, types\n"
        "package = types.ModuleType('kexechibd.image')\n"
        f"package.__path__ = [{str(PACKAGE)!r}]\n"
        "sys.modules['kexechibd.image'] = package\n"
        f"import {module}\n{then}"
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)


@pytest.mark.parametrize("module", [m for m in MODULES if m != "kexechibd.image"])
def test_each_image_module_imports_alone(module: str) -> None:
    """With nothing imported before it: an order that only works when
    another module came first fails here."""
    done = import_alone(module)
    assert done.returncode == 0, done.stderr


def test_the_package_imports_in_a_fresh_interpreter() -> None:
    done = subprocess.run([sys.executable, "-c", "import kexechibd.image"], capture_output=True)
    assert done.returncode == 0, done.stderr


def test_a_module_imported_alone_brings_in_only_its_own_imports() -> None:
    """What the test above relies on: the bare package keeps the rest out."""
    done = import_alone(
        "kexechibd.image.slots",
        "print(sorted(m for m in sys.modules if m.startswith('kexechibd.image.')))",
    )
    assert done.stdout.strip() == "['kexechibd.image.meta', 'kexechibd.image.slots']"


def private_reaches(path: Path) -> list[str]:
    """Imports of private names, and private attributes of anything but
    ``self``/``cls``: what one module should not take from another."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module != "__future__":
            found += [
                f"{path.name}:{node.lineno}: from {node.module} import {a.name}"
                for a in node.names
                if a.name.startswith("_") and not a.name.startswith("__")
            ]
        elif (
            isinstance(node, ast.Attribute)
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
            and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))
        ):
            found.append(f"{path.name}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_no_image_module_uses_another_objects_private_names() -> None:
    assert [r for p in sorted(PACKAGE.glob("*.py")) for r in private_reaches(p)] == []


def test_the_private_name_check_catches_what_it_is_for(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text(
        "from kexechibd.image.writer import _write_all\n"
        "def publish(w):\n    w._commit_hooks.append(print)\n"
        "class A:\n    def f(self):\n        return self._ok\n"
    )
    assert private_reaches(bad) == [
        "bad.py:1: from kexechibd.image.writer import _write_all",
        "bad.py:3: w._commit_hooks",
    ]


def test_the_cycle_check_sees_imports_inside_functions(tmp_path: Path) -> None:
    assert "kexechibd.image.blockstore" in image_imports("kexechibd.image.location")


def test_image_store_is_abstract_and_chooses_nothing() -> None:
    """``open_store`` chooses; the base class is only the interface."""
    assert "__new__" not in vars(ImageStore)
    with pytest.raises(TypeError):
        ImageStore("/nonexistent")  # type: ignore[abstract]
