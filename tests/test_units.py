"""The systemd units and `make install`: every unit passes
`systemd-analyze verify` (no error, no warning) as installed, next to this
machine's own units, and `make install` puts every file where Debian
expects it."""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kexechibd import sleepconf
from kexechibd.config import Config

REPO = Path(__file__).resolve().parents[1]
UNITS = (
    "kexechibd.service",
    "kexechib-save.target",
    "kexechib-save.service",
    "kexechib-resume.service",
)
HOST_UNITS = Path("/usr/lib/systemd/system")
# What the units we install or extend run, other than our own programs
# (Debian's paths, through the merged /usr).
HOST_PROGRAMS = (
    Path("/usr/bin/run-parts"),
    Path("/usr/lib/systemd/systemd-logind"),
    Path("/usr/bin/echo"),
    Path("/usr/bin/false"),
)
# systemd's units we extend with a drop-in (systemd/<unit>.d/kexechib.conf).
EXTENDED = (
    "systemd-hibernate.service",
    "systemd-logind.service",
    "systemd-hybrid-sleep.service",
    "systemd-suspend-then-hibernate.service",
)


def pkg_config_variable(package: str, variable: str, fallback: str) -> str:
    """Where the package's pkg-config file says its files go (what Debian
    expects), or the usual place where the file is not installed."""
    result = subprocess.run(
        ["pkg-config", f"--variable={variable}", package],
        capture_output=True,
        text=True,
        check=False,
    )
    return result.stdout.strip() or fallback


# Relative to DESTDIR, as `make install` should choose them on this machine.
UNIT_DIR = pkg_config_variable("systemd", "systemdsystemunitdir", "/usr/lib/systemd/system")[1:]
TMPFILES_DIR = pkg_config_variable("systemd", "tmpfilesdir", "/usr/lib/tmpfiles.d")[1:]
DBUS_SERVICE_DIR = pkg_config_variable(
    "dbus-1", "system_bus_services_dir", "/usr/share/dbus-1/system-services"
)[1:]
DBUS_INTERFACE_DIR = pkg_config_variable(
    "dbus-1", "interfaces_dir", "/usr/share/dbus-1/interfaces"
)[1:]

pytestmark = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None,
    reason="systemd-analyze is missing (Debian package systemd)",
)


def unit(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=False, delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(path)
    return parser


@pytest.fixture(scope="module")
def root(installed: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A file-system root for `systemd-analyze verify --root`: what `make
    install` put there, this machine's units (hibernate.target,
    systemd-hibernate.service, sysinit.target …) and the programs the units
    run that are not ours."""
    root = tmp_path_factory.mktemp("root")
    for merged in ("bin", "sbin", "lib"):  # Debian's merged /usr, before what lands in /lib
        (root / "usr" / merged).mkdir(parents=True)
        (root / merged).symlink_to(f"usr/{merged}")
    shutil.copytree(installed, root, dirs_exist_ok=True, symlinks=True)
    units = root / "usr/lib/systemd/system"
    for host_unit in HOST_UNITS.iterdir():
        target = units / host_unit.name
        if not target.exists() and not target.is_symlink():
            if host_unit.is_dir() and not host_unit.is_symlink():
                shutil.copytree(host_unit, target, symlinks=True)
            else:
                shutil.copy2(host_unit, target, follow_symlinks=False)
    for program in HOST_PROGRAMS:
        shutil.copy2(program, root / program.relative_to("/"))
    (root / "etc/systemd/system").mkdir(parents=True)
    return root


def verify(root: Path, name: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["systemd-analyze", "verify", "--man=no", "--recursive-errors=no", f"--root={root}", name],
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.mark.parametrize("name", [*UNITS, *EXTENDED])
def test_every_unit_verifies_without_errors_or_warnings(root: Path, name: str) -> None:
    result = verify(root, name)
    assert result.returncode == 0, result.stderr
    assert result.stderr == "" and result.stdout == ""


def test_verify_does_see_a_broken_unit(root: Path, tmp_path: Path) -> None:
    """The check has teeth: a mistake in our drop-in fails it."""
    broken = tmp_path / "root"
    shutil.copytree(root, broken, symlinks=True)
    dropin = broken / "usr/lib/systemd/system/systemd-hibernate.service.d/kexechib.conf"
    dropin.write_text(dropin.read_text().replace("/usr/bin/kexechibctl", "/usr/bin/kexechibct"))
    result = verify(broken, "systemd-hibernate.service")
    assert result.returncode != 0
    assert "/usr/bin/kexechibct" in result.stderr


def test_make_install_puts_every_file_where_debian_expects_it(installed: Path) -> None:
    expected = {
        "usr/sbin/kexechibd",
        "usr/bin/kexechibctl",
        "usr/lib/kexechibd/purgatory.ro",
        *(f"{UNIT_DIR}/{u}" for u in UNITS),
        *(f"{UNIT_DIR}/{u}.d/kexechib.conf" for u in EXTENDED),
        "usr/lib/systemd/sleep.conf.d/10-kexechib.conf",
        f"{TMPFILES_DIR}/kexechib.conf",
        "usr/share/dbus-1/system.d/org.kexechib1.conf",
        f"{DBUS_SERVICE_DIR}/org.kexechib1.service",
        f"{DBUS_INTERFACE_DIR}/org.kexechib1.xml",
        "usr/share/polkit-1/actions/org.kexechib1.policy",
        "usr/share/doc/kexechibd/kexechibd.conf.example",
        "usr/share/doc/kexechibd/DESIGN.md",
        "usr/lib/python3/dist-packages/kexechibd/daemon/main.py",
        "usr/lib/python3/dist-packages/kexechibd/ctl/main.py",
        "usr/lib/python3/dist-packages/kexechibd/py.typed",
        "etc/kexechibd.conf",
    }
    files = {str(p.relative_to(installed)) for p in installed.rglob("*") if p.is_file()}
    assert expected <= files
    for program in ("usr/sbin/kexechibd", "usr/bin/kexechibctl"):
        assert (installed / program).stat().st_mode & 0o111
        assert (installed / program).read_text().startswith("#!/usr/bin/python3\n")


def test_the_installed_daemon_looks_for_the_purgatory_where_make_install_put_it(
    installed: Path,
) -> None:
    """Asked in the installed tree (this machine has no /usr/lib/kexechibd to
    search), the installed package names as its installed purgatory the file
    `make install` put there: the object built from purgatory/."""
    probe = "from kexechibd import purgatory as p; print(p.__file__); print(p.INSTALLED_PURGATORY)"
    result = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=installed,
        env={"PYTHONPATH": str(installed / "usr/lib/python3/dist-packages")},
        capture_output=True,
        text=True,
        check=True,
    )
    module, default = result.stdout.splitlines()
    assert Path(module).is_relative_to(installed)
    shipped = installed / Path(default).relative_to("/")
    assert shipped.read_bytes() == (REPO / "purgatory/purgatory.ro").read_bytes()


def test_make_install_puts_units_and_bus_files_where_pkg_config_says(tmp_path: Path) -> None:
    """The real pkg-config, reading .pc files that name other directories
    (dbus-1.pc is not installed here: it comes with libdbus-1-dev)."""
    pc_dir = tmp_path / "pkgconfig"
    pc_dir.mkdir()
    (pc_dir / "systemd.pc").write_text(
        "systemdsystemunitdir=/opt/units\nName: systemd\nDescription: x\nVersion: 252\n"
    )
    (pc_dir / "dbus-1.pc").write_text(
        "system_bus_services_dir=/opt/dbus/services\ninterfaces_dir=/opt/dbus/interfaces\n"
        "Name: dbus\nDescription: x\nVersion: 1.14\n"
    )
    destdir = tmp_path / "destdir"
    subprocess.run(
        ["make", "-s", "install", f"DESTDIR={destdir}"],
        cwd=REPO,
        env={**os.environ, "PKG_CONFIG_PATH": str(pc_dir)},
        check=True,
        capture_output=True,
    )
    assert (destdir / "opt/units/kexechibd.service").is_file()
    assert (destdir / "opt/dbus/services/org.kexechib1.service").is_file()
    assert (destdir / "opt/dbus/interfaces/org.kexechib1.xml").is_file()


def test_a_unit_directory_given_to_make_wins_over_pkg_config(tmp_path: Path) -> None:
    subprocess.run(
        ["make", "-s", "install", f"DESTDIR={tmp_path}", "UNITDIR=/srv/units"],
        cwd=REPO,
        check=True,
        capture_output=True,
    )
    assert (tmp_path / "srv/units/kexechibd.service").is_file()
    assert (tmp_path / "srv/units/systemd-hibernate.service.d/kexechib.conf").is_file()


def test_make_install_keeps_an_existing_configuration(tmp_path: Path) -> None:
    conf = tmp_path / "etc/kexechibd.conf"
    conf.parent.mkdir()
    conf.write_text("[image]\nlevel = 9\n")
    subprocess.run(
        ["make", "-s", "install", f"DESTDIR={tmp_path}"], cwd=REPO, check=True, capture_output=True
    )
    assert conf.read_text() == "[image]\nlevel = 9\n"


def test_the_installed_programs_start_on_debians_python(installed: Path) -> None:
    probe = subprocess.run(
        ["/usr/bin/python3", "-c", "import dbus_next, systemd.daemon"],
        capture_output=True,
        check=False,
    )
    if probe.returncode != 0:
        pytest.skip(reason="Debian's python3-dbus-next / python3-systemd are not installed")
    env = {"PYTHONPATH": str(installed / "usr/lib/python3/dist-packages"), "PATH": "/usr/bin:/bin"}
    for program in ("usr/sbin/kexechibd", "usr/bin/kexechibctl"):
        result = subprocess.run(
            [str(installed / program), "--version"],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert "0.1.0" in result.stdout


def test_the_daemon_unit_keeps_what_hibernation_needs() -> None:
    service = unit(REPO / "systemd/kexechibd.service")["Service"]
    assert service["Type"] == "notify"
    assert service["BusName"] == "org.kexechib1"
    assert "@reboot" in service["SystemCallFilter"]
    assert "CAP_SYS_BOOT" in service["CapabilityBoundingSet"].split()
    assert service["UMask"] == "0077"
    assert "WatchdogSec" in service


def test_the_default_image_is_in_the_one_directory_the_daemon_may_write() -> None:
    """ProtectSystem=strict leaves the daemon only its StateDirectory (an image
    elsewhere needs ReadWritePaths=, as the unit and the example say) and the
    directory of logind's sleep.conf drop-in."""
    service = unit(REPO / "systemd/kexechibd.service")["Service"]
    assert service["ProtectSystem"] == "strict"
    assert service["ReadWritePaths"] == f"-{sleepconf.RUNTIME_DIR}"
    state = Path("/var/lib") / service["StateDirectory"]
    assert Config().image.location.is_relative_to(state)


def test_the_hibernate_dropin_replaces_systemd_sleep_and_blocks_until_resume() -> None:
    text = (REPO / "systemd/systemd-hibernate.service.d/kexechib.conf").read_text()
    exec_starts = [line for line in text.splitlines() if line.startswith("ExecStart=")]
    assert exec_starts == [
        "ExecStart=",
        "ExecStart=/usr/bin/kexechibctl --no-ask-password hibernate --direct",
    ]


def test_logind_offers_hibernation_without_swap_for_the_kernels_image() -> None:
    """systemd 252's can_sleep() skips its swap check when this is set, so
    logind lets Hibernate through to our systemd-hibernate.service drop-in."""
    dropin = unit(REPO / "systemd/systemd-logind.service.d/kexechib.conf")
    assert dropin.sections() == ["Service"]
    assert dict(dropin["Service"]) == {"Environment": "SYSTEMD_BYPASS_HIBERNATION_MEMORY_CHECK=1"}


def test_kernel_b_boots_into_the_saver_only() -> None:
    target = unit(REPO / "systemd/kexechib-save.target")["Unit"]
    assert target["Requires"] == "kexechib-save.service"
    saver = unit(REPO / "systemd/kexechib-save.service")
    assert saver["Unit"]["DefaultDependencies"] == "no"  # no local-fs: A's disks stay untouched
    assert saver["Service"]["ExecStart"] == "/usr/sbin/kexechibd --oneshot"


def test_the_saver_pulls_in_the_journal_it_logs_to() -> None:
    saver = unit(REPO / "systemd/kexechib-save.service")
    assert saver["Service"]["StandardOutput"] == "journal+console"
    assert "systemd-journald.socket" in saver["Unit"]["Wants"].split()
    assert "systemd-journald.socket" in saver["Unit"]["After"].split()


def test_resume_runs_before_anything_is_mounted_read_write() -> None:
    resume = unit(REPO / "systemd/kexechib-resume.service")["Unit"]
    assert resume["DefaultDependencies"] == "no"
    before = resume["Before"].split()
    assert "local-fs-pre.target" in before and "systemd-remount-fs.service" in before


def sleep_settings(path: Path) -> dict[str, str]:
    return dict(unit(path)["Sleep"])


def test_logind_offers_no_hibernation_until_kexechibd_has_checked() -> None:
    """The shipped sleep.conf drop-in: logind (can_sleep()) answers na
    until kexechibd writes its verdict in a file of the same name in /run."""
    shipped = REPO / "systemd/sleep.conf.d" / sleepconf.NAME
    assert sleep_settings(shipped) == {
        "AllowHibernation": "no",
        "AllowHybridSleep": "no",
        "AllowSuspendThenHibernate": "no",
    }


@pytest.mark.parametrize("unavailable", ["", "kexec_load is disabled"])
def test_kexechibds_verdict_keeps_hybrid_sleep_and_suspend_then_hibernate_refused(
    unavailable: str, tmp_path: Path
) -> None:
    """The runtime file replaces the shipped one as a whole (systemd reads
    one file per name), so it repeats the refusals."""
    path = tmp_path / sleepconf.NAME
    path.write_text(sleepconf.sleep_conf_text(unavailable))
    settings = sleep_settings(path)
    assert settings["AllowHybridSleep"] == settings["AllowSuspendThenHibernate"] == "no"
    assert settings["AllowHibernation"] == ("no" if unavailable else "yes")


def test_tmpfiles_makes_the_directory_the_daemon_may_write(tmp_path: Path) -> None:
    """Run the real systemd-tmpfiles on our entry in a scratch root."""
    entry = REPO / "systemd/tmpfiles.d/kexechib.conf"
    subprocess.run(
        ["systemd-tmpfiles", "--create", f"--root={tmp_path}", str(entry)],
        check=True,
        capture_output=True,
    )
    made = tmp_path / sleepconf.RUNTIME_DIR.relative_to("/")
    assert made.is_dir() and made.stat().st_mode & 0o777 == 0o755


@pytest.mark.parametrize(
    "name", ["systemd-hybrid-sleep.service", "systemd-suspend-then-hibernate.service"]
)
def test_hybrid_sleep_and_suspend_then_hibernate_fail_saying_why(name: str) -> None:
    """Started behind logind's back (hybrid-sleep.target directly), they do not
    fall back to the kernel's own hibernation: they fail with a message."""
    text = (REPO / "systemd" / f"{name}.d/kexechib.conf").read_text()
    exec_starts = [line for line in text.splitlines() if line.startswith("ExecStart=")]
    assert exec_starts[0] == "ExecStart="
    assert exec_starts[1].startswith("ExecStart=/bin/echo ") and "not supported" in exec_starts[1]
    assert exec_starts[-1] == "ExecStart=/bin/false"


def test_the_hibernate_dropin_runs_the_sleep_hooks_as_systemd_sleep_does() -> None:
    service = unit(REPO / "systemd/systemd-hibernate.service.d/kexechib.conf")["Service"]
    assert service["Environment"] == "SYSTEMD_SLEEP_ACTION=hibernate"
    pre, post = service["ExecStartPre"].split(), service["ExecStopPost"].split()
    # "-": errors ignored; ExecStopPost=: "post" also after a failure.
    assert pre[0] == post[0] == "-/bin/run-parts"
    assert pre[-3:] == ["--arg=pre", "--arg=hibernate", "/usr/lib/systemd/system-sleep"]
    assert post[-3:] == ["--arg=post", "--arg=hibernate", "/usr/lib/systemd/system-sleep"]


def test_the_hook_regex_runs_what_systemd_sleep_runs_and_skips_backups(tmp_path: Path) -> None:
    """The real run-parts with the drop-in's regex (systemd's $$ unescaped)."""
    service = unit(REPO / "systemd/systemd-hibernate.service.d/kexechib.conf")["Service"]
    regex = service["ExecStartPre"].split()[1].replace("$$", "$")
    for name in ("50-nvidia", "hook.sh", "a", ".hidden", "old~"):
        hook = tmp_path / name
        hook.write_text("#!/bin/sh\n")
        hook.chmod(0o755)
    listed = subprocess.run(
        ["run-parts", "--list", regex, str(tmp_path)], capture_output=True, text=True, check=True
    )
    assert sorted(Path(p).name for p in listed.stdout.split()) == ["50-nvidia", "a", "hook.sh"]


def test_resume_at_boot_is_not_skipped_silently_by_noresume() -> None:
    """kexechibd --oneshot sees noresume itself and says so on the console."""
    resume = unit(REPO / "systemd/kexechib-resume.service")
    assert resume["Unit"]["ConditionKernelCommandLine"] == "!kexechib.role=save"
    assert resume["Service"]["StandardOutput"] == "journal+console"


def _run_hook(hook: Path, tmp_path: Path, *, fail: bool = False) -> tuple[int, str, str]:
    # A stand-in kexechibctl that records its arguments: the real one would
    # write kernel B's initramfs under /var/lib/kexechib of this machine.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    record = tmp_path / "args"
    stand_in = bin_dir / "kexechibctl"
    stand_in.write_text(f'#!/bin/sh\necho "$*" >> {record}\nexit {1 if fail else 0}\n')
    stand_in.chmod(0o755)
    result = subprocess.run(
        [str(hook), "6.1.0-13-amd64", "/boot/vmlinuz-6.1.0-13-amd64"],
        env={"PATH": f"{bin_dir}:/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=False,
    )
    return result.returncode, record.read_text() if record.exists() else "", result.stderr


def test_the_kernel_hooks_are_installed_executable(installed: Path) -> None:
    for when in ("postinst.d", "postrm.d"):
        hook = installed / "etc" / "kernel" / when / "kexechibd"
        assert hook.stat().st_mode & 0o777 == 0o755, hook


def test_a_new_kernel_gets_b_s_initramfs_built(installed: Path, tmp_path: Path) -> None:
    hook = installed / "etc/kernel/postinst.d/kexechibd"
    assert _run_hook(hook, tmp_path)[:2] == (0, "saver build --kernel-version 6.1.0-13-amd64\n")


def test_a_failed_build_warns_but_does_not_fail_the_kernel_s_installation(
    installed: Path, tmp_path: Path
) -> None:
    code, _, stderr = _run_hook(installed / "etc/kernel/postinst.d/kexechibd", tmp_path, fail=True)
    assert code == 0 and "hibernating is refused until" in stderr


def test_a_removed_kernel_takes_its_b_initramfs_along(installed: Path, tmp_path: Path) -> None:
    hook = installed / "etc/kernel/postrm.d/kexechibd"
    assert _run_hook(hook, tmp_path)[:2] == (0, "saver remove --kernel-version 6.1.0-13-amd64\n")
