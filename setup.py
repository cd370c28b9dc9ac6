"""What a wheel needs beyond setup.cfg's metadata.

Two build steps that declarative setup.cfg cannot express:

* the wheel leaves out the modules that serve only the tests (the machine
  model and the lab are left out by ``[options.packages.find] exclude``;
  these are single modules, which ``find`` cannot exclude);
* the wheel carries the purgatory object as package data,
  ``kexechibd/data/purgatory.ro``, built here with ``make -C purgatory``
  (gcc); kexechibd/purgatory.py looks there after ``$KEXECHIB_PURGATORY``.

An editable install (``pip install -e .[test]``) maps the whole source
directory, so the tests still import the model, the lab and these modules,
and find the purgatory in ``purgatory/`` (``make purgatory``).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

# (package, module) pairs that serve only the tests, the demo and the benchmarks.
DEV_ONLY_MODULES = {("kexechibd", "demo"), ("kexechibd", "privatebus")}
PURGATORY_SOURCE = Path("purgatory")
PURGATORY_DATA = Path("kexechibd", "data", "purgatory.ro")


class BuildPy(build_py):
    def find_package_modules(self, package: str, package_dir: str) -> list[tuple[str, str, str]]:
        modules = super().find_package_modules(package, package_dir)
        return [m for m in modules if (m[0], m[1]) not in DEV_ONLY_MODULES]

    def run(self) -> None:
        super().run()
        if self.editable_mode:
            return
        subprocess.run(["make", "-s", "-C", str(PURGATORY_SOURCE), "purgatory.ro"], check=True)
        target = Path(self.build_lib) / PURGATORY_DATA
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(PURGATORY_SOURCE / "purgatory.ro", target)


setup(cmdclass={"build_py": BuildPy})
