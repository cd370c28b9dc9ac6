"""What users install: `make install` (which the Debian package is built
from), the wheel, and the .deb itself.  The lab, the machine model, the demo
and the private bus serve the tests only: none of them is installed, and the
installed product works without them."""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

import kexechibd
from kexechibd.config import Config, DaemonSettings
from kexechibd.daemon import backend
from kexechibd.errors import ConfigError
from kexechibd.lab.debian import package_depends

REPO = Path(__file__).resolve().parents[1]
PACKAGE_DIR = "usr/lib/python3/dist-packages"
# What serves only the tests, the demo and the benchmarks (Makefile DEV_ONLY,
# setup.cfg's exclude, setup.py's DEV_ONLY_MODULES).
DEV_ONLY = ("kexechibd/lab/", "kexechibd/model/", "kexechibd/demo.py", "kexechibd/privatebus.py")
MAN_PAGES = (
    "usr/share/man/man8/kexechibd.8",
    "usr/share/man/man8/kexechibctl.8",
    "usr/share/man/man5/kexechibd.conf.5",
)
DEBIAN_PYTHON = Path("/usr/bin/python3")


def dev_only(name: str) -> bool:
    return any(part in name for part in DEV_ONLY)


# The Debian package of each third-party module the product may import.
DEBIAN_MODULES = {
    "cffi": "python3-cffi",
    "dbus_next": "python3-dbus-next",
    "elftools": "python3-pyelftools",
    "lz4": "python3-lz4",
    "systemd": "python3-systemd",
    "zstandard": "python3-zstandard",
}


def debian_python_has_the_dependencies() -> bool:
    probe = "import " + ", ".join(DEBIAN_MODULES)
    return (
        DEBIAN_PYTHON.exists()
        and subprocess.run([DEBIAN_PYTHON, "-c", probe], capture_output=True).returncode == 0
    )


needs_debian_python = pytest.mark.skipif(
    not debian_python_has_the_dependencies(),
    reason=f"Debian's python3 with {', '.join(DEBIAN_MODULES.values())} is not installed",
)


# ---------------------------------------------------------------- one version


def test_the_debian_changelog_names_the_packages_version() -> None:
    first = (REPO / "debian/changelog").read_text().splitlines()[0]
    match = re.match(r"kexechibd \(([^)]+)\) ", first)
    assert match, first
    assert match.group(1) == kexechibd.__version__


def test_the_man_pages_name_the_packages_version() -> None:
    for page in (REPO / "docs/man").iterdir():
        th = next(line for line in page.read_text().splitlines() if line.startswith(".TH "))
        assert f'"kexechibd {kexechibd.__version__}"' in th, page.name


# ---------------------------------------------------------------- the model is optional


def test_backend_model_without_the_model_says_it_is_for_development_checkouts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Stands in for an installation without kexechibd/model (sys.modules
    entry None makes its import fail as a missing module would)."""
    monkeypatch.setitem(sys.modules, "kexechibd.model.kernel", None)
    config = Config(daemon=DaemonSettings(backend="model"))
    with pytest.raises(ConfigError, match=r"machine model is not installed.*development"):
        backend.open_kernel(config)


# ---------------------------------------------------------------- make install


def installed_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_make_install_leaves_out_the_lab_the_model_and_the_demo(installed: Path) -> None:
    files = installed_files(installed)
    assert f"{PACKAGE_DIR}/kexechibd/daemon/main.py" in files
    assert [f for f in files if dev_only(f)] == []


def test_make_install_installs_the_initramfs_tools_hook_and_script(installed: Path) -> None:
    # Debian's initramfs resumes before the root is checked or mounted (DESIGN §6.4).
    for shipped, where in (
        ("initramfs-tools/hooks/kexechibd", "usr/share/initramfs-tools/hooks/kexechibd"),
        (
            "initramfs-tools/scripts/local-premount/kexechib",
            "usr/share/initramfs-tools/scripts/local-premount/kexechib",
        ),
    ):
        assert (installed / where).read_bytes() == (REPO / shipped).read_bytes()
        assert os.access(installed / where, os.X_OK)


def test_make_install_installs_the_man_pages(installed: Path) -> None:
    for page in MAN_PAGES:
        assert (installed / page).read_bytes() == (REPO / "docs/man" / Path(page).name).read_bytes()


def run_installed(installed: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    """Debian's python3 with only the installed tree added to its path: no
    user site, no script or current directory (-s -P), started outside the
    checkout, without the venv's environment."""
    return subprocess.run(
        argv,
        cwd=installed,
        env={"PYTHONPATH": str(installed / PACKAGE_DIR), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=False,
    )


def test_the_deb_depends_on_everything_the_installed_product_imports(installed: Path) -> None:
    imported = set()
    for module in (installed / PACKAGE_DIR / "kexechibd").rglob("*.py"):
        for node in ast.walk(ast.parse(module.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                imported.add(node.module.split(".")[0])
    third_party = imported - set(sys.stdlib_module_names) - {"kexechibd"}
    unknown = third_party - DEBIAN_MODULES.keys()
    assert unknown == set(), f"no Debian package known for {sorted(unknown)}: add it here"
    depends = set(package_depends())
    missing = {DEBIAN_MODULES[m] for m in third_party} - depends
    assert missing == set(), f"debian/control's Depends lacks {sorted(missing)}"


@needs_debian_python
def test_the_installed_tree_alone_imports_the_daemon_and_the_cli(installed: Path) -> None:
    probe = (
        "import importlib.util, kexechibd, kexechibd.daemon.main, kexechibd.ctl.main\n"
        "print(kexechibd.__file__)\n"
        "print(importlib.util.find_spec('kexechibd.model'))"
    )
    result = run_installed(installed, str(DEBIAN_PYTHON), "-s", "-P", "-c", probe)
    assert result.returncode == 0, result.stderr
    module, model = result.stdout.splitlines()
    assert Path(module).is_relative_to(installed)
    assert model == "None"


@needs_debian_python
@pytest.mark.parametrize("program", ["usr/sbin/kexechibd", "usr/bin/kexechibctl"])
def test_the_installed_programs_print_their_help(installed: Path, program: str) -> None:
    result = run_installed(installed, str(installed / program), "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: ")


@needs_debian_python
def test_the_installed_daemon_refuses_backend_model_with_a_clear_error(
    installed: Path, tmp_path: Path
) -> None:
    """The real program on the installed tree: the configuration asks for the
    model, which is not there; the daemon stops before it touches any bus."""
    conf = tmp_path / "kexechibd.conf"
    conf.write_text("[daemon]\nbackend = model\n")
    result = run_installed(installed, str(installed / "usr/sbin/kexechibd"), "--config", str(conf))
    assert result.returncode == 1
    assert "machine model is not installed" in result.stderr
    assert "development checkouts" in result.stderr


# ---------------------------------------------------------------- the wheel


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Built by setuptools from this checkout, offline, with the venv's
    setuptools and wheel (pyproject.toml's build requirements)."""
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "-w",
            str(out),
            str(REPO),
        ],
        check=True,
        capture_output=True,
    )
    (built,) = out.glob("kexechibd-*.whl")
    return built


def test_the_wheel_leaves_out_the_lab_the_model_and_the_demo(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    assert "kexechibd/daemon/main.py" in names
    assert "kexechibd/ctl/main.py" in names
    assert [n for n in names if dev_only(n)] == []


def test_the_wheel_carries_the_purgatory_built_from_this_tree(wheel: Path) -> None:
    data = zipfile.ZipFile(wheel).read("kexechibd/data/purgatory.ro")
    assert data == (REPO / "purgatory/purgatory.ro").read_bytes()


def test_an_installed_wheel_finds_its_own_purgatory(wheel: Path, tmp_path: Path) -> None:
    zipfile.ZipFile(wheel).extractall(tmp_path)
    probe = "from kexechibd import purgatory; print(purgatory.default_purgatory_path())"
    env = {k: v for k, v in os.environ.items() if k != "KEXECHIB_PURGATORY"}
    result = subprocess.run(
        [sys.executable, "-s", "-P", "-c", probe],
        cwd=tmp_path,
        env={**env, "PYTHONPATH": str(tmp_path)},
        capture_output=True,
        text=True,
        check=True,
    )
    assert Path(result.stdout.strip()) == tmp_path / "kexechibd/data/purgatory.ro"


# ---------------------------------------------------------------- the .deb

DEB_TOOLS = ("dpkg-buildpackage", "dh", "dh_python3", "lintian", "dpkg-deb")


@dataclass(frozen=True)
class Build:
    deb: Path
    output: str  # make's, with lintian's report


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory) -> Build:
    """`make deb` once per test module: dpkg-buildpackage, then lintian,
    which fails the target on an error (about 30 s on 2 busy cores)."""
    missing = [tool for tool in DEB_TOOLS if shutil.which(tool) is None]
    if missing:
        pytest.skip(reason=f"{', '.join(missing)} missing (make setup installs them)")
    out = tmp_path_factory.mktemp("deb")
    result = subprocess.run(
        ["make", "-s", "deb", f"DEB_DIR={out}"], cwd=REPO, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (built,) = out.glob("kexechibd_*.deb")
    return Build(built, result.stdout + result.stderr)


@pytest.fixture(scope="module")
def deb(build: Build) -> Path:
    return build.deb


def deb_files(deb: Path) -> list[str]:
    listing = subprocess.run(
        ["dpkg-deb", "--fsys-tarfile", str(deb)], capture_output=True, check=True
    ).stdout
    names = subprocess.run(
        ["tar", "-t"], input=listing, capture_output=True, check=True
    ).stdout.decode()
    return [n.removeprefix("./") for n in names.splitlines()]


def deb_field(deb: Path, field: str) -> str:
    return subprocess.run(
        ["dpkg-deb", "--field", str(deb), field], capture_output=True, text=True, check=True
    ).stdout.strip()


@pytest.mark.slow
def test_the_deb_is_named_for_the_version_and_amd64(deb: Path) -> None:
    assert deb.name == f"kexechibd_{kexechibd.__version__}_amd64.deb"
    assert deb_field(deb, "Architecture") == "amd64"


@pytest.mark.slow
def test_lintian_finds_no_error_in_the_deb(build: Build) -> None:
    """`make deb` ran lintian (--fail-on error: the build fixture saw it
    succeed); its report has no error line either."""
    assert [line for line in build.output.splitlines() if line.startswith("E:")] == []


@pytest.mark.slow
def test_the_deb_holds_the_product_and_nothing_of_the_lab_the_model_or_the_demo(
    deb: Path,
) -> None:
    files = deb_files(deb)
    assert [f for f in files if dev_only(f)] == []
    for expected in (
        "usr/sbin/kexechibd",
        "usr/bin/kexechibctl",
        "usr/lib/kexechibd/purgatory.ro",
        f"{PACKAGE_DIR}/kexechibd/daemon/main.py",
        "usr/share/polkit-1/actions/org.kexechib1.policy",
        "usr/share/dbus-1/system.d/org.kexechib1.conf",
        "etc/kexechibd.conf",
        "usr/share/initramfs-tools/hooks/kexechibd",
        "usr/share/initramfs-tools/scripts/local-premount/kexechib",
        *(f"{page}.gz" for page in MAN_PAGES),
    ):
        assert expected in files
    assert any(f.endswith("/kexechib-resume.service") for f in files)


@pytest.mark.slow
def test_the_deb_depends_on_what_debian_control_names(deb: Path) -> None:
    depends = {d.split()[0] for d in deb_field(deb, "Depends").split(", ")}
    # debian/control's own names, and python3 from ${python3:Depends}.
    assert {"python3:any", *package_depends()} <= depends


@pytest.mark.slow
def test_the_deb_enables_resume_at_boot_but_not_the_bus_activated_daemon(
    deb: Path, tmp_path: Path
) -> None:
    subprocess.run(["dpkg-deb", "--control", str(deb), str(tmp_path)], check=True)
    postinst = (tmp_path / "postinst").read_text()
    assert "deb-systemd-helper enable 'kexechib-resume.service'" in postinst
    # dh_installsystemd --no-enable: kexechibd.service is enabled again on an
    # upgrade only where it was installed and enabled before (by the
    # administrator), never on a first installation.
    assert "deb-systemd-helper debian-installed 'kexechibd.service'" in postinst
    assert "deb-systemd-helper debian-installed 'kexechib-resume.service'" not in postinst
    assert "deb-systemd-invoke start" not in postinst
    assert "/etc/kexechibd.conf" in (tmp_path / "conffiles").read_text()


@pytest.mark.slow
def test_purging_the_deb_removes_the_daemons_state_directory(deb: Path, tmp_path: Path) -> None:
    """Read, not run (it would remove this machine's directory): the default
    image in the unit's StateDirectory= holds all of a system's memory."""
    subprocess.run(["dpkg-deb", "--control", str(deb), str(tmp_path)], check=True)
    postrm = (tmp_path / "postrm").read_text()
    unit = (REPO / "systemd/kexechibd.service").read_text()
    (state,) = re.findall(r"^StateDirectory=(\S+)$", unit, re.MULTILINE)
    purge = postrm[postrm.index('if [ "$1" = "purge" ]; then') :]
    assert purge.splitlines()[1].strip() == f"rm -rf /var/lib/{state}"


def test_debian_rules_decides_for_every_unit_that_can_be_enabled() -> None:
    """dh_installsystemd handles only the units debian/rules names: a unit
    with an [Install] section left out would be neither enabled nor
    stopped on removal."""
    rules = (REPO / "debian/rules").read_text()
    handled = set(re.findall(r"^\tdh_installsystemd .*?(\S+)$", rules, re.MULTILINE))
    installable = {
        unit.name
        for unit in (REPO / "systemd").iterdir()
        if unit.is_file() and re.search(r"^\[Install\]", unit.read_text(), re.MULTILINE)
    }
    assert installable - handled == set(), f"debian/rules does not name {installable - handled}"


@pytest.mark.slow
@needs_debian_python
def test_the_programs_in_the_deb_run_on_debians_python(deb: Path, tmp_path: Path) -> None:
    """The .deb unpacked (not installed: that would put units on this
    machine), each program run from it alone."""
    subprocess.run(["dpkg-deb", "--extract", str(deb), str(tmp_path)], check=True)
    for program in ("usr/sbin/kexechibd", "usr/bin/kexechibctl"):
        result = run_installed(tmp_path, str(tmp_path / program), "--version")
        assert result.returncode == 0, result.stderr
        assert result.stdout.split() == [Path(program).name, kexechibd.__version__]
