"""`kexechibctl hibernate` through logind, and kexechibd's verdict for
logind (the sleep.conf drop-in), on the tests' private bus.

logind here is a stand-in (tests/dbus/fake_logind.py: this host has no
systemd as PID 1, so the real logind cannot run); it behaves as systemd
252's for HibernateWithFlags and runs what our systemd-hibernate.service
drop-in runs as its job.  The daemon is real (the scripted engine in place of
the kernel work), and so are the bus, its policy files and kexechibctl.
"""

from __future__ import annotations

import configparser

import pytest

from kexechibd.errors import BadImage
from kexechibd.sleepconf import NAME
from tests.dbus.conftest import ctl_argv, run, start_daemon, stop_daemon
from tests.dbus.fake_logind import FakeLogind, serve
from tests.dbus.scripted_engine import NO_KEXEC, ScriptedEngine


@pytest.fixture
async def logind(system_bus, ctl_env):
    # The job: the drop-in's ExecStart= (systemd/systemd-hibernate.service.d).
    fake = FakeLogind(ctl_argv(system_bus, "--no-ask-password", "hibernate", "--direct"), ctl_env)
    bus = await serve(system_bus.address, fake)
    yield fake
    await fake.settle()
    bus.disconnect()
    await bus.wait_for_disconnect()


async def hibernate(system_bus, ctl_env, *args):
    return await run(ctl_argv(system_bus, "hibernate", *args), env=ctl_env)


async def test_hibernate_asks_logind_and_reports_the_daemons_success(
    daemon, logind, system_bus, ctl_env
):
    result = await hibernate(system_bus, ctl_env)
    assert result.returncode == 0, result.stderr
    # Root, too, is held by block inhibitors, as a desktop user is.
    assert logind.calls == [("HibernateWithFlags", 1)]
    assert logind.job_status == 0, logind.job_output
    assert [c[0] for c in daemon.engine.operations] == ["hibernate"]
    lines = result.stdout.splitlines()
    # Progress comes from the daemon, which the job (not kexechibctl) called.
    assert "hibernate: preparing" in lines and "hibernate: jumping" in lines
    assert lines[-1] == "hibernate: resumed"


async def test_a_failure_of_the_daemon_is_reported_once_logind_is_done(
    daemon, logind, system_bus, ctl_env
):
    daemon.engine.failure = BadImage("cannot preallocate the image: no space left on /var")
    result = await hibernate(system_bus, ctl_env)
    assert result.returncode == 1
    assert logind.job_status == 1
    assert result.stderr.strip().endswith(
        "kexechibctl: hibernate: org.kexechib1.Error.BadImage: cannot preallocate the "
        "image: no space left on /var"
    )


async def test_a_block_inhibitor_refuses_and_nothing_happens(daemon, logind, system_bus, ctl_env):
    logind.inhibited_by = "systemd-inhibit --what=sleep --mode=block"
    result = await hibernate(system_bus, ctl_env)
    assert result.returncode == 1
    assert (
        "kexechibctl: logind refused: Access denied to root due to active block inhibitor "
        "[org.freedesktop.DBus.Error.AccessDenied]" in result.stderr
    )
    assert daemon.engine.operations == []


async def test_a_logind_job_that_never_reached_kexechibd_is_a_failure(daemon, system_bus, ctl_env):
    """E.g. systemd-hibernate.service failed before its ExecStart=."""
    fake = FakeLogind([], ctl_env)
    bus = await serve(system_bus.address, fake)
    try:
        result = await hibernate(system_bus, ctl_env)
    finally:
        bus.disconnect()
    assert result.returncode == 1
    assert "logind's hibernation ended but kexechibd never started one" in result.stderr


async def test_without_logind_it_says_to_ask_kexechibd_directly(daemon, system_bus, ctl_env):
    result = await hibernate(system_bus, ctl_env)
    assert result.returncode == 1
    assert "systemd-logind is not running on this bus" in result.stderr
    assert "kexechibctl hibernate --direct" in result.stderr
    assert daemon.engine.operations == []


@pytest.mark.parametrize(
    "option",
    [["--mode", "checkpoint"], ["--compression", "lz4"], ["--level", "3"], ["--image", "/x"]],
)
async def test_the_daemons_own_options_need_direct(system_bus, ctl_env, option):
    result = await hibernate(system_bus, ctl_env, *option)
    assert result.returncode == 2
    assert f"{option[0]}: kexechibd's own options, which logind's Hibernate cannot carry" in (
        result.stderr
    )
    assert "add --direct" in result.stderr


# ------------------------------------------------------------ the daemon's verdict for logind


def allow_hibernation(path):
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str
    parser.read(path)
    return parser["Sleep"]["AllowHibernation"]


async def test_the_daemon_tells_logind_at_start_and_on_can_hibernate(system_bus, tmp_path):
    engine = ScriptedEngine(image_location=str(tmp_path / "image"))
    path = tmp_path / "run/systemd/sleep.conf.d" / NAME
    running = await start_daemon(system_bus, engine, sleep_conf=path)
    try:
        assert allow_hibernation(path) == "yes"
        engine.support_report = NO_KEXEC
        result = await run(
            ["busctl", f"--address={system_bus.address}", "call", "org.kexechib1",
             "/org/kexechib1", "org.kexechib1.Manager", "CanHibernate"]
        )  # fmt: skip
        assert result.stdout.strip() == 's "na"'
        assert allow_hibernation(path) == "no"
        assert "# kexechibd cannot hibernate: " in path.read_text()
    finally:
        assert await stop_daemon(running) == 0
