"""The Python part of an initramfs: the interpreter's stdlib (pruned), the
modules kexechibd imports from outside the stdlib, and kexechibd itself,
all taken from the installed system.

Modules go in *sourceless*: ``foo.pyc`` where ``foo.py`` was, which Python
imports without the source, from the ``__pycache__`` file Debian compiled at
install time (or that we compile).  That halves the bytes; tracebacks still
name the file and the line.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from kexechibd.errors import Failed

PYC_TAG = "cpython-311"

# Parts of the stdlib that neither kexechibd nor the lab's guest scripts
# import: test suites, IDEs, GUIs, build
# support (the 25 MB config-3.11 directory holds the static libpython),
# databases, mail, web and multiprocessing. Fewer bytes boot faster under TCG
# and leave kernel B's window more room: B unpacks the whole archive into it.
# (The lab's guests use the same list: kexechibd/lab/userspace.py.)
STDLIB_PRUNED = frozenset(
    {
        "test",
        "idlelib",
        "tkinter",
        "turtledemo",
        "turtle.py",
        "ensurepip",
        "lib2to3",
        "pydoc_data",
        "pydoc.py",
        "doctest.py",
        "distutils",
        "venv",
        "unittest",
        "sqlite3",
        "curses",
        "dbm",
        "email",
        "http",
        "html",
        "wsgiref",
        "xmlrpc",
        "multiprocessing",
        "mailbox.py",
        "imaplib.py",
        "nntplib.py",
        "smtplib.py",
        "smtpd.py",
        "ftplib.py",
        "telnetlib.py",
        "_pydecimal.py",
        "site-packages",
        "dist-packages",
        "config-3.11-x86_64-linux-gnu",
    }
)
# C extensions left out of lib-dynload (prefixes): tests, the same modules as
# above, and OpenSSL (hashlib falls back to its built-in SHA-2; OpenSSL's
# libraries would add 5 MB).
DYNLOAD_PRUNED = (
    "_test",
    "_xx",
    "xx",
    "_ctypes_test",
    "_curses",
    "_dbm",
    "_gdbm",
    "_sqlite3",
    "_tkinter",
    "_ssl",
    "_hashlib",
    "_codecs_",
    "audioop",
    "ossaudiodev",
    "nis",
    "readline",
)


def guest_module(path: Path, tag: str = PYC_TAG) -> tuple[str, Path]:
    """(archive path, file) for a module at ``path`` on this system: its
    compiled form in place of the source when ``__pycache__`` has it (the
    archive path then ends in ``.pyc``), else the file itself."""
    if path.suffix == ".py":
        pyc = path.parent / "__pycache__" / f"{path.stem}.{tag}.pyc"
        if pyc.is_file():
            return str(path.with_suffix(".pyc")).lstrip("/"), pyc
    return str(path).lstrip("/"), path


def stdlib_files(stdlib: Path) -> Iterator[Path]:
    """The files of the stdlib directory ``stdlib`` that go in (not pruned)."""
    for dirpath, dirnames, filenames in os.walk(stdlib):
        dirnames[:] = sorted(d for d in dirnames if _kept(d) and d != "__pycache__")
        here = Path(dirpath)
        for name in sorted(filenames):
            if here == stdlib and not _kept(name):
                continue
            if here.name == "lib-dynload" and name.startswith(DYNLOAD_PRUNED):
                continue
            yield here / name


def _kept(name: str) -> bool:
    return name not in STDLIB_PRUNED and not name.startswith("config-")


def tree_files(top: Path) -> Iterator[Path]:
    """Every file of a package directory (or the module file ``top``),
    without compiled caches, packaging metadata and test suites."""
    if top.is_file():
        yield top
        return
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames[:] = sorted(
            d
            for d in dirnames
            if d not in ("__pycache__", "test", "tests")
            and not d.endswith((".dist-info", ".egg-info"))
        )
        for name in sorted(filenames):
            yield Path(dirpath) / name


# Parts of kexechibd that are not the product: they serve the tests and never
# run in kernel B (nor may the product import them).
NOT_PRODUCT = ("lab", "model", "demo.py")


def package_files(package: Path) -> list[Path]:
    """kexechibd's own files that go in: its modules, not the lab, the
    model or the demo (sorted; the manifest's hash covers exactly these)."""
    out = []
    for path in sorted(package.rglob("*")):
        rel = path.relative_to(package)
        if rel.parts[0] in NOT_PRODUCT or "__pycache__" in rel.parts or not path.is_file():
            continue
        if path.suffix == ".py" or path.name == "py.typed":
            out.append(path)
    return out


# Imported when installed, used never by kexechibd: dbus-next imports PyGObject
# (python3-gi) for its GLib main loop if it can; kexechibd uses asyncio's.
# setuptools' .pth file imports _distutils_hack at start-up; no .pth goes in.
OPTIONAL_DEPENDENCIES = frozenset({"gi", "_distutils_hack"})

# Run by the target interpreter: import every product module of kexechibd
# (not the entry points, which would run) and report what got imported from
# where, and the interpreter's own layout.
_PROBE = r"""
import importlib, json, os, pkgutil, platform, sys, sysconfig
sys.path.insert(0, sys.argv[1])
import kexechibd
skip = set(sys.argv[2].split(","))
for info in pkgutil.walk_packages(kexechibd.__path__, "kexechibd."):
    parts = info.name.split(".")
    if parts[1] in skip or parts[-1] == "__main__":
        continue
    importlib.import_module(info.name)
search = sys.path[1:]
print(json.dumps({
    "executable": os.path.realpath(sys.executable),
    "version": platform.python_version(),
    "cache_tag": sys.implementation.cache_tag,
    "stdlib": sysconfig.get_paths()["stdlib"],
    "path": search,
    "files": sorted({m.__file__ for m in list(sys.modules.values())
                     if getattr(m, "__file__", None)}),
}))
"""


@dataclass(frozen=True)
class PythonLayout:
    """What the target interpreter imports kexechibd with."""

    executable: Path  # the interpreter binary (symlinks resolved)
    version: str
    cache_tag: str
    stdlib: Path
    site: Path  # where kexechibd goes: a directory on the default sys.path
    dependencies: tuple[Path, ...]  # package directories and module files outside the stdlib


def probe(python: Path, package: Path) -> PythonLayout:
    """Ask ``python`` (isolated: no PYTHONPATH, no user site) to import
    kexechibd from ``package`` and say what else that imported."""
    skip = ",".join(name.removesuffix(".py") for name in NOT_PRODUCT)
    result = subprocess.run(
        [str(python), "-I", "-c", _PROBE, str(package.parent), skip],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise Failed(f"{python} cannot import kexechibd from {package}: {last}")
    data = json.loads(result.stdout)
    return layout_from_probe(data, package)


def layout_from_probe(data: dict[str, object], package: Path) -> PythonLayout:
    """The layout from the probe's report (pure): each imported module outside
    the stdlib and kexechibd is taken whole, as the top-level package (or
    module file) of the sys.path entry that holds it."""
    stdlib = Path(str(data["stdlib"]))
    raw_path = data["path"]
    raw_files = data["files"]
    assert isinstance(raw_path, list) and isinstance(raw_files, list)
    search = [Path(p) for p in raw_path if p and Path(p).is_absolute()]
    dependencies: set[Path] = set()
    for text in raw_files:
        file = Path(text)
        if not file.is_absolute() or file.is_relative_to(package) or file.is_relative_to(stdlib):
            continue  # also "<frozen …>"-like names of modules without a file
        entries = [p for p in search if file.is_relative_to(p)]
        if not entries:
            raise Failed(f"{file} is not on the interpreter's default module path")
        entry = max(entries, key=lambda p: len(p.parts))
        top = file.relative_to(entry).parts[0]
        if top not in OPTIONAL_DEPENDENCIES:
            dependencies.add(entry / top)
    site = package.parent
    if site not in search:
        debian = Path("/usr/lib/python3/dist-packages")
        site = debian if debian in search else search[-1]
    return PythonLayout(
        executable=Path(str(data["executable"])),
        version=str(data["version"]),
        cache_tag=str(data["cache_tag"]),
        stdlib=stdlib,
        site=site,
        dependencies=tuple(sorted(dependencies)),
    )
