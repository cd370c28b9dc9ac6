"""Imports flow one way: kernel interface ← pure formats and planners ← image
store and cycle steps ← engine ← daemon / CLI; the lab, the model and the demo
serve the tests and the product never imports them (docs/DEVELOPING.md,
"Layers").  The graph is read from the source with ast (tests/import_layers.py);
nothing is imported or run."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from tests.import_layers import Rule, Violation, import_graph, unknown_names, violations

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "kexechibd"


def dev_only_modules(makefile: Path = REPO / "Makefile") -> tuple[str, ...]:
    """The Makefile's DEV_ONLY (what `make install` leaves out), as module names:
    one list says what is not the product."""
    match = re.search(r"^DEV_ONLY :=(.*)$", makefile.read_text(), re.M)
    assert match, "Makefile has no DEV_ONLY line"
    return tuple(p.removesuffix(".py").replace("/", ".") for p in match.group(1).split())


DEV_ONLY = dev_only_modules()
KERNEL = ("kexechibd.kernel",)
# The pure core: formats, command lines, range and stage arithmetic.  Given
# values, they compute; they know no engine, front end or configuration file.
PURE = (
    "kexechibd.bootproto",
    "kexechibd.cmdline",
    "kexechibd.compression",
    "kexechibd.cpio",
    "kexechibd.ranges",
    "kexechibd.cycle.elfcorehdr",
    "kexechibd.cycle.plan",
    "kexechibd.cycle.window",
    "kexechibd.image.codec",
    "kexechibd.image.format",
    "kexechibd.image.meta",
    "kexechibd.image.zeroscan",
)
# The engine and the operation contract it serves (kexechibd/operation.py).
ENGINE = ("kexechibd.cycle.engine", "kexechibd.operation")
DAEMON = ("kexechibd.daemon",)
CTL = ("kexechibd.ctl",)

RULES = (
    Rule(
        "the kernel interface is the bottom layer: it imports only itself and the error types",
        importers=KERNEL,
        only=(*KERNEL, "kexechibd.errors"),
    ),
    Rule(
        "the pure formats and planners know no engine, front end or configuration",
        importers=PURE,
        forbidden=(*ENGINE, *DAEMON, *CTL, "kexechibd.config"),
    ),
    Rule(
        "the image store serves the cycle, engine and front ends; it imports none of them",
        importers=("kexechibd.image",),
        forbidden=("kexechibd.cycle", *ENGINE, *DAEMON, *CTL),
    ),
    Rule(
        "the engine is driven by the daemon and the CLI, never the reverse",
        importers=ENGINE,
        forbidden=(*DAEMON, *CTL),
    ),
    Rule(
        "the CLI is a client of the daemon over the bus, not of its code",
        importers=CTL,
        forbidden=DAEMON,
    ),
    Rule("the daemon does not import the CLI", importers=DAEMON, forbidden=CTL),
    Rule(
        "the bus address and message helpers are shared by the daemon and the CLI, so"
        " they import neither",
        importers=("kexechibd.busapi", "kexechibd.busutil"),
        forbidden=(*ENGINE, *DAEMON, *CTL, "kexechibd.config"),
    ),
    Rule(
        "the daemon's routing decides from a call's header alone: it knows no Manager,"
        " authorization, engine, image or configuration",
        importers=("kexechibd.daemon.routing",),
        forbidden=(
            "kexechibd.daemon.manager",
            "kexechibd.daemon.auth",
            "kexechibd.daemon.service",
            *ENGINE,
            "kexechibd.cycle",
            "kexechibd.image",
            "kexechibd.config",
        ),
    ),
    Rule(
        "the model is a model of the kernel, not of kexechibd: it imports only the"
        " kernel interface and the pure formats",
        importers=("kexechibd.model",),
        forbidden=(
            "kexechibd.cycle",
            *ENGINE,
            *DAEMON,
            *CTL,
            "kexechibd.image",
            "kexechibd.config",
            "kexechibd.initramfs",
        ),
    ),
    Rule(
        "the installed product imports nothing that serves only the tests (Makefile DEV_ONLY)",
        importers=("kexechibd",),
        # The one door: ``backend = model`` (development checkouts) imports the
        # model when asked, and without it says so (tests/test_packaging.py).
        except_importers=(*DEV_ONLY, "kexechibd.daemon.backend"),
        forbidden=DEV_ONLY,
    ),
)

# Today's code breaks these, and other branches of issue 14 fix them: the
# lead empties this list at merge (a fixed entry fails test_allowed_are_still_broken).
ALLOWED: frozenset[tuple[str, str]] = frozenset()


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph(PACKAGE)


def _pairs(found: list[Violation]) -> set[tuple[str, str]]:
    return {(v.importer, v.imported) for v in found}


def test_kexechibd_imports_flow_one_way(graph: dict[str, set[str]]) -> None:
    found = [v for v in violations(graph, RULES) if (v.importer, v.imported) not in ALLOWED]
    assert not found, "\n".join(map(str, found))


def test_allowed_are_still_broken(graph: dict[str, set[str]]) -> None:
    stale = ALLOWED - _pairs(violations(graph, RULES))
    assert not stale, f"fixed: remove from ALLOWED: {sorted(stale)}"


def test_every_name_in_the_rules_is_a_module(graph: dict[str, set[str]]) -> None:
    # A renamed module must be renamed in the rules too, or they check nothing.
    assert unknown_names(graph, RULES) == []


def _not_source(directory: str, names: list[str]) -> set[str]:
    return {
        n
        for n in names
        if n == "__pycache__" or (Path(directory, n).is_file() and not n.endswith(".py"))
    }


def _copy_with(tmp_path: Path, module: str, line: str) -> Path:
    """A copy of kexechibd's source with ``line`` added to ``module``."""
    copy = tmp_path / "kexechibd"
    shutil.copytree(PACKAGE, copy, ignore=_not_source)
    path = copy.joinpath(*module.split(".")[1:])
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    path.write_text(path.read_text() + "\n" + line + "\n")
    return copy


@pytest.mark.parametrize(
    ("module", "line", "imported"),
    [
        (
            "kexechibd.kernel.abi",
            "from kexechibd.daemon import manager",
            "kexechibd.daemon.manager",
        ),
        ("kexechibd.kernel.linux", "import kexechibd.config", "kexechibd.config"),
        (
            "kexechibd.cycle.plan",
            "from kexechibd.cycle.engine import Engine",
            "kexechibd.cycle.engine",
        ),
        ("kexechibd.image.format", "from ..cycle import engine", "kexechibd.cycle.engine"),
        (
            "kexechibd.ctl.main",
            "def f():\n    from kexechibd.daemon.main import main",
            "kexechibd.daemon.main",
        ),
        ("kexechibd.daemon.manager", "from kexechibd import demo", "kexechibd.demo"),
        (
            "kexechibd.config",
            "import typing\nif typing.TYPE_CHECKING:\n    from kexechibd.model import kernel",
            "kexechibd.model.kernel",
        ),
        ("kexechibd.model.machine", "from kexechibd.image import open_store", "kexechibd.image"),
    ],
)
def test_a_wrong_import_fails_the_check(
    tmp_path: Path, module: str, line: str, imported: str
) -> None:
    wrong = import_graph(_copy_with(tmp_path, module, line))
    found = _pairs(violations(wrong, RULES)) - ALLOWED
    assert found == {(module, imported)}


def test_a_rule_naming_no_module_is_reported(graph: dict[str, set[str]]) -> None:
    renamed = Rule("x", importers=("kexechibd.cycle.enginez",), forbidden=DAEMON)
    assert unknown_names(graph, [renamed]) == ["kexechibd.cycle.enginez"]


def test_dev_only_is_read_from_the_makefile(tmp_path: Path) -> None:
    makefile = tmp_path / "Makefile"
    makefile.write_text("X := 1\nDEV_ONLY := pkg/lab pkg/demo.py\n")
    assert dev_only_modules(makefile) == ("pkg.lab", "pkg.demo")


# ---------------------------------------------------------------- the tests' own imports

TESTS = REPO / "tests"


def _is_test_module(name: str) -> bool:
    return name.rpartition(".")[2].startswith("test_")


def test_test_modules_share_helpers_only_through_non_collected_modules() -> None:
    """A helper in a collected module runs that module's tests again wherever
    it is imported (its fixtures too), and hides what is shared.  Helpers live
    in tests/*_support.py, tests/model_cycle.py or tests/sizes.py; fixtures
    that several files use, in a conftest.py."""
    graph = import_graph(TESTS)
    imported = {
        (importer, dep) for importer, deps in graph.items() for dep in deps if _is_test_module(dep)
    }
    assert not imported, sorted(imported)
